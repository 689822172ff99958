"""Figures and counts of the data-preparation stages: extract, merge and relabel.

Inputs, all under a processed folder: ``stats/extract.json``, ``stats/merge.json``,
``stats/relabel.json``, ``extracted/*.arrow`` (for the rows per main category before
duplicates are dropped) and, when collection has run, ``stats/fetch.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from matplotlib.patches import Patch

from data.scripts.common import count_values, read_arrow, stats_path
from visualise.style import (
    FAILURE_COLOUR,
    NEUTRAL_COLOUR,
    Plot,
    annotate_bars,
    label_colours,
    missing_note,
    missing_plot,
    new_figure,
    read_json,
    save_figure,
    use_thousands_separators,
)

FLOW_COLOUR = "#1565c0"
DUPLICATE_COLOUR = "#ef6c00"
KEPT_COLOUR = "#2e7d32"


def read_stage_stats(processed_dir: Path) -> dict[str, Any]:
    """Return ``{stage: stats}`` of extract, merge and relabel; a stage not run is absent."""
    stats = {}
    for stage in ("extract", "merge", "relabel"):
        payload = read_json(stats_path(processed_dir, stage))
        if payload is not None:
            stats[stage] = payload
    return stats


def summary_rows(processed_dir: Path) -> list[tuple[str, Any]]:
    """Return the key counts of preparation as (quantity, value) rows; [] before extract."""
    stats = read_stage_stats(processed_dir)
    rows: list[tuple[str, Any]] = []
    extract = stats.get("extract")
    if extract:
        rows += [
            ("CSV files found", extract.get("files_found")),
            ("CSV files that failed", len(extract.get("files_failed", []))),
            ("CSV rows read", extract.get("rows_read")),
            ("rows rejected by extract", extract.get("rows_rejected")),
        ]
        for reason, count in extract.get("rows_rejected_by_reason", {}).items():
            rows.append((f"  rejected: {reason}", count))
    merge = stats.get("merge")
    if merge:
        for reason, count in merge.get("rows_dropped_by_reason", {}).items():
            rows.append((f"dropped by merge: {reason}", count))
        rows += [
            ("duplicate rows dropped", merge.get("duplicate_rows_dropped")),
            (
                "URLs under conflicting main categories",
                merge.get("urls_with_conflicting_categories"),
            ),
            ("unique URLs kept", merge.get("rows_kept")),
        ]
    relabel = stats.get("relabel")
    if relabel:
        rows.append(("rows in products.parquet", relabel.get("rows")))
        rows.append(
            ("URLs whose duplicates carry another label", relabel.get("urls_with_label_conflict"))
        )
        for label, count in relabel.get("rows_per_label", {}).items():
            rows.append((f"  label {label}", count))
        empty = relabel.get("labels_without_rows") or []
        if empty:
            rows.append(("labels without rows", ", ".join(empty)))
    return rows


def flow_steps(stats: dict[str, Any]) -> list[tuple[str, int, str]]:
    """Return the bars of the flow figure: (text, rows, colour), top to bottom."""
    extract, merge, relabel = (stats.get(stage) for stage in ("extract", "merge", "relabel"))
    steps = [("CSV rows read", int(extract["rows_read"]), FLOW_COLOUR)]
    for reason, count in sorted(extract.get("rows_rejected_by_reason", {}).items()):
        if count:
            steps.append((f"rejected by extract: {reason}", int(count), FAILURE_COLOUR))
    steps.append(("rows extracted", int(extract["rows_written"]), FLOW_COLOUR))
    if merge:
        for reason, count in merge.get("rows_dropped_by_reason", {}).items():
            if count:
                steps.append((f"no usable URL: {reason}", int(count), FAILURE_COLOUR))
        steps.append(
            ("duplicate rows dropped", int(merge["duplicate_rows_dropped"]), DUPLICATE_COLOUR)
        )
        steps.append(("unique URLs kept", int(merge["rows_kept"]), FLOW_COLOUR))
    if relabel:
        steps.append(("labelled rows (products.parquet)", int(relabel["rows"]), KEPT_COLOUR))
    return steps


def plot_preparation_flow(processed_dir: Path, out_dir: Path) -> Plot:
    """Draw the rows through extract, merge and relabel, with every drop reason."""
    name, title = "preparation_flow", "Rows through data preparation"
    stats = read_stage_stats(processed_dir)
    if "extract" not in stats:
        return missing_plot(name, title, "extract", stats_path(processed_dir, "extract"))

    steps = flow_steps(stats)
    figure, axes = new_figure(12, 1.2 + 0.5 * len(steps))
    positions = np.arange(len(steps))[::-1]
    bars = axes.barh(positions, [rows for _, rows, _ in steps], color=[c for *_, c in steps])
    read = max(steps[0][1], 1)
    annotate_bars(axes, bars, [f"{rows:,} ({rows / read:.1%})" for _, rows, _ in steps])
    axes.set_yticks(positions, [text for text, _, _ in steps])
    axes.set_xlabel("rows")
    axes.set_xlim(0, read * 1.25)
    use_thousands_separators(axes.xaxis)
    axes.grid(axis="y", visible=False)
    not_run = [stage for stage in ("merge", "relabel") if stage not in stats]
    axes.set_title(title + (f" ({' and '.join(not_run)} not run yet)" if not_run else ""))

    caption = (
        "Each bar counts rows after a step, or the rows a step dropped (red: invalid rows "
        "and URLs, orange: duplicate URLs). Shares are of the CSV rows read."
    )
    return Plot(name, title, caption, save_figure(figure, out_dir, name))


def rows_before_dedupe(processed_dir: Path) -> dict[str, int] | None:
    """Count the extracted rows per main category (before merge), or None before extract."""
    files = sorted((processed_dir / "extracted").glob("*.arrow"))
    if not files:
        return None
    columns = [read_arrow(path).column("main_category") for path in files]
    chunks = [chunk for column in columns for chunk in column.chunks]
    return count_values(pa.chunked_array(chunks, pa.string()))


def category_labels(relabel: dict[str, Any] | None) -> dict[str, str]:
    """Return the label of each main category from ``stats/relabel.json``."""
    if not relabel:
        return {}
    return {row["main_category"]: row["label"] for row in relabel["rows_per_category_and_label"]}


def plot_categories(processed_dir: Path, out_dir: Path) -> Plot:
    """Draw rows per source main category before and after dedupe, coloured by label.

    A second panel shows the rows per label, and the images stored per label when
    ``stats/fetch.json`` exists.
    """
    name, title = "categories_and_labels", "Main categories and labels"
    merge = read_json(stats_path(processed_dir, "merge"))
    if merge is None:
        return missing_plot(name, title, "merge", stats_path(processed_dir, "merge"))
    relabel = read_json(stats_path(processed_dir, "relabel"))
    fetch = read_json(stats_path(processed_dir, "fetch"))
    after = merge["rows_per_main_category"]
    before = rows_before_dedupe(processed_dir) or {}
    label_of = category_labels(relabel)
    labels = list((relabel or {}).get("rows_per_label", {}))
    colours = label_colours(labels)

    # Categories grouped by label, largest first within each label.
    categories = sorted(
        set(after) | set(before),
        key=lambda c: (
            labels.index(label_of[c]) if c in label_of else len(labels),
            -after.get(c, 0),
        ),
    )
    height = max(4.5, 1.5 + 0.42 * len(categories))
    figure, (left, right) = new_figure(14, height, ncols=2, width_ratios=[3, 2])
    positions = np.arange(len(categories))[::-1]
    colour_of = [colours.get(label_of.get(c), NEUTRAL_COLOUR) for c in categories]
    left.barh(
        positions + 0.2, [before.get(c, 0) for c in categories], 0.4, color=colour_of, alpha=0.35
    )
    bars = left.barh(positions - 0.2, [after.get(c, 0) for c in categories], 0.4, color=colour_of)
    annotate_bars(left, bars, [f"{after.get(c, 0):,}" for c in categories])
    left.set_yticks(positions, categories)
    left.set_xlim(0, max([*after.values(), *before.values(), 1]) * 1.15)
    if colours:
        handles = [Patch(color=colour, label=label) for label, colour in colours.items()]
        left.legend(handles=handles, title="label", loc="lower right")
    left.set_xlabel("rows (pale: before dropping duplicates, solid: after)")
    use_thousands_separators(left.xaxis)
    left.set_title("Rows per source main category")
    left.grid(axis="y", visible=False)

    relabel_note = missing_note("relabel", stats_path(processed_dir, "relabel"))
    _draw_label_panel(right, relabel, fetch, colours, relabel_note)
    caption = (
        "Left: rows per main category of the CSV files, before (pale) and after (solid) "
        "duplicate URLs are dropped, in the colour of the label the mapping gives them. "
        "Right: rows per label and, once fetch has run, the images stored per label."
    )
    if not before:
        caption += " The extracted files are gone, so the pale bars are missing."
    return Plot(name, title, caption, save_figure(figure, out_dir, name))


def _draw_label_panel(
    axes: Any, relabel: Any, fetch: Any, colours: dict[str, Any], relabel_note: str
) -> None:
    if not relabel:
        axes.set_axis_off()
        axes.text(
            0.5, 0.5, relabel_note, ha="center", va="center", wrap=True, transform=axes.transAxes
        )
        return

    per_label = relabel["rows_per_label"]
    labels = list(per_label)
    positions = np.arange(len(labels))[::-1]
    stored = (fetch or {}).get("ok_per_label")
    width = 0.4 if stored is not None else 0.8
    offset = 0.2 if stored is not None else 0.0
    bars = axes.barh(
        positions + offset,
        [per_label[label] for label in labels],
        width,
        color=[colours[label] for label in labels],
        label="rows",
    )
    annotate_bars(axes, bars, [f"{per_label[label]:,}" for label in labels])

    if stored is not None:
        image_bars = axes.barh(
            positions - offset,
            [stored.get(label, 0) for label in labels],
            width,
            color=[colours[label] for label in labels],
            hatch="//",
            alpha=0.6,
            label="images stored",
        )
        annotate_bars(axes, image_bars, [f"{stored.get(label, 0):,}" for label in labels])
        axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncols=2)

    axes.set_yticks(positions, labels)
    axes.set_xlim(0, max([*per_label.values(), 1]) * 1.25)
    use_thousands_separators(axes.xaxis)
    axes.set_xlabel("rows" if stored is None else "rows (solid) and images stored (hatched)")
    axes.set_title("Rows per label")
    axes.grid(axis="y", visible=False)
