"""Figures and counts of label correction: candidates, review decisions, the new version.

Inputs: a review folder written by ``label.find_issues`` and ``label.review``
(``candidates.csv``, ``decisions.jsonl``, ``summary.json``) and the ``stats/apply.json``
of the data version that ``label.apply`` wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data.scripts.common import stats_path
from label.review import DECISIONS, DECISIONS_FILE, read_decisions
from visualise.style import (
    NEUTRAL_COLOUR,
    Plot,
    annotate_bars,
    missing_plot,
    new_figure,
    read_json,
    save_figure,
)

CANDIDATES_FILE = "candidates.csv"
SUMMARY_FILE = "summary.json"
UNDECIDED = "undecided"
DECISION_COLOURS = {
    "accept": "#2e7d32",
    "keep": "#1565c0",
    "relabel": "#f9a825",
    "remove": "#c62828",
    UNDECIDED: "#cfd8dc",
}


def read_candidates(review_dir: Path) -> pd.DataFrame | None:
    """Return ``candidates.csv`` with a ``kind`` column (the reason without the other key)."""
    path = review_dir / CANDIDATES_FILE
    if not path.is_file():
        return None
    candidates = pd.read_csv(path, dtype={"key": str})
    candidates["kind"] = candidates["reason"].astype(str).str.split(":").str[0]
    return candidates


def decisions_per_key(review_dir: Path, candidates: pd.DataFrame) -> pd.DataFrame:
    """Return one row per candidate key: its given label and latest decision (or undecided)."""
    decisions = read_decisions(review_dir / DECISIONS_FILE)
    per_key = candidates.drop_duplicates("key")[["key", "given_label"]].copy()
    per_key["decision"] = [
        decisions.get(key, {}).get("decision", UNDECIDED) for key in per_key["key"]
    ]
    return per_key


def summary_rows(review_dir: Path, applied_dirs: list[Path]) -> list[tuple[str, Any]]:
    """Return the key counts of find-label-issues, review and apply as (quantity, value)."""
    rows: list[tuple[str, Any]] = []
    summary = read_json(review_dir / SUMMARY_FILE)
    if summary:
        rows.append(("images scored", summary.get("images")))
        for reason, count in summary.get("reasons", {}).items():
            rows.append((f"  candidates: {reason}", count))
        rows.append(("out-of-sample accuracy", summary.get("out_of_sample_accuracy")))
    candidates = read_candidates(review_dir)
    if candidates is not None:
        per_key = decisions_per_key(review_dir, candidates)
        rows.append(("images to review", len(per_key)))
        for decision, count in per_key["decision"].value_counts().items():
            rows.append((f"  {decision}", int(count)))
    for applied in applied_dirs:
        stats = read_json(stats_path(applied, "apply"))
        if stats:
            rows += apply_rows(applied, stats)
            break
    return rows


def apply_rows(applied: Path, stats: dict[str, Any]) -> list[tuple[str, Any]]:
    """Return the counts of ``stats/apply.json`` as (quantity, value) rows."""
    rows: list[tuple[str, Any]] = [
        ("new data version", str(applied)),
        ("  written from", stats.get("source")),
        ("  images", stats.get("images")),
    ]
    for source, count in (stats.get("label_source") or {}).items():
        rows.append((f"  rows {source}", count))
    for label, count in (stats.get("images_per_label") or {}).items():
        rows.append((f"  images of {label}", count))
    return rows


def plot_review(review_dir: Path, out_dir: Path) -> Plot:
    """Draw the candidates' quality scores and the review decisions per action and label."""
    name, title = "label_review", "Label-correction candidates and decisions"
    candidates = read_candidates(review_dir)
    if candidates is None:
        return missing_plot(name, title, "find-label-issues", review_dir / CANDIDATES_FILE)
    if candidates.empty:
        return Plot(name, title, note="find-label-issues found no candidates to review")

    per_key = decisions_per_key(review_dir, candidates)
    figure, (scores, actions, labels) = new_figure(15, 4.8, ncols=3)
    _draw_scores(scores, candidates)
    _draw_actions(actions, per_key)
    _draw_labels(labels, per_key)
    figure.suptitle(title)
    decided = int((per_key["decision"] != UNDECIDED).sum())
    caption = (
        "Left: label-quality scores of the candidates (cleanlab's self-confidence, low is "
        "likely wrong), per reason. Middle: the latest decision of each candidate image "
        f"({decided} of {len(per_key)} decided). Right: the same per given label."
    )
    return Plot(name, title, caption, save_figure(figure, out_dir, name))


def _draw_scores(axes: Any, candidates: pd.DataFrame) -> None:
    # Candidates are the low scores, so the axis ends at the highest one, not at 1.
    top = min(1.0, max(0.1, np.ceil(candidates["quality_score"].max() * 10) / 10))
    groups = list(candidates.groupby("kind")["quality_score"])
    axes.hist(
        [scores.values for _, scores in groups],
        bins=np.linspace(0, top, 21),
        stacked=True,
        label=[f"{kind} ({len(scores)})" for kind, scores in groups],
    )
    axes.set_xlim(0, top)
    axes.set_xlabel("label-quality score")
    axes.set_ylabel("candidates")
    axes.set_title("Quality scores")
    axes.legend()


def _draw_actions(axes: Any, per_key: pd.DataFrame) -> None:
    order = [*DECISIONS, UNDECIDED]
    counts = per_key["decision"].value_counts().reindex(order, fill_value=0)
    positions = np.arange(len(order))[::-1]
    bars = axes.barh(positions, counts.values, color=[DECISION_COLOURS[d] for d in order])
    annotate_bars(axes, bars, [f"{n:,}" for n in counts.values])
    axes.set_yticks(positions, order)
    axes.set_xlim(0, max(counts.max(), 1) * 1.2)
    axes.set_xlabel("candidate images")
    axes.set_title("Latest decision per image")
    axes.grid(axis="y", visible=False)


def _draw_labels(axes: Any, per_key: pd.DataFrame) -> None:
    table = pd.crosstab(per_key["given_label"], per_key["decision"])
    order = [d for d in [*DECISIONS, UNDECIDED] if d in table.columns]
    table = table[order]
    positions = np.arange(len(table))[::-1]
    left = np.zeros(len(table))
    for decision in order:
        values = table[decision].values
        axes.barh(
            positions,
            values,
            left=left,
            label=decision,
            color=DECISION_COLOURS.get(decision, NEUTRAL_COLOUR),
        )
        left += values
    axes.set_yticks(positions, table.index)
    axes.set_xlabel("candidate images")
    axes.set_title("Decisions per given label")
    axes.grid(axis="y", visible=False)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncols=len(order))
