"""Figures and counts of training runs: curves, confusion matrix and the worst mistakes.

Inputs, all in a run folder written by ``train.train`` and ``train.evaluate``:
``config.json``, ``class_names.json``, ``summary.json``, ``history.csv`` (or the
per-phase ``history-<phase>.csv`` of a run still in progress) and ``evaluation/``
(``metrics.json``, ``misclassified.csv``). The images of the mistakes are read from the
run's ``dataset_root``, or from the processed folder given when that root is gone
(a run folder copied from another machine).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data.scripts.common import atomic_path
from train.compare import read_runs
from visualise.collection import thumbnail
from visualise.confusion import confusion_matrix_png
from visualise.style import (
    FAILURE_COLOUR,
    Plot,
    missing_plot,
    new_figure,
    read_json,
    save_figure,
)

logger = logging.getLogger(__name__)

PHASE_NAMES = {"head": "head", "fine_tune": "fine-tuning"}
MISTAKES_SHOWN = 12
MISTAKE_COLUMNS = 4


def list_runs(runs_dir: Path) -> list[Path]:
    """Return the run folders (those with a ``config.json``) under ``runs_dir``, by name."""
    if not runs_dir.is_dir():
        return []
    return sorted(p for p in runs_dir.iterdir() if (p / "config.json").is_file())


def _last_change(run: Path, names: tuple[str, ...]) -> float:
    times = [(run / name).stat().st_mtime for name in names if (run / name).exists()]
    return max(times, default=0.0)


def default_run(runs_dir: Path) -> Path | None:
    """Return the most recent run with an evaluation, else the most recent run, else None.

    "Recent" is the modification time of ``evaluation/metrics.json`` for evaluated runs
    and of the newest of ``history.csv``, ``summary.json`` and ``config.json`` otherwise.
    """
    runs = list_runs(runs_dir)
    evaluated = [run for run in runs if (run / "evaluation" / "metrics.json").is_file()]
    if evaluated:
        return max(evaluated, key=lambda run: _last_change(run, ("evaluation/metrics.json",)))
    if runs:
        names = ("history.csv", "summary.json", "config.json")
        return max(runs, key=lambda run: _last_change(run, names))
    return None


def runs_table(runs_dir: Path) -> list[dict[str, Any]]:
    """Return one record per finished run (as ``make compare`` lists them), best first."""
    if not runs_dir.is_dir():
        return []
    return read_runs(runs_dir)


def read_history(run: Path) -> pd.DataFrame | None:
    """Return every epoch of the run with ``phase`` and ``global_epoch``, or None.

    ``history.csv`` joins the phases when a run ends; before that, the per-phase files
    are read and joined the same way.
    """
    joined = run / "history.csv"
    if joined.is_file():
        return pd.read_csv(joined)
    frames = []
    for phase in PHASE_NAMES:
        path = run / f"history-{phase}.csv"
        if path.is_file():
            frames.append(pd.read_csv(path).assign(phase=phase))
    if not frames:
        return None
    history = pd.concat(frames, ignore_index=True)
    history["global_epoch"] = np.arange(1, len(history) + 1)
    return history


def plot_training_curves(run: Path, out_dir: Path) -> Plot:
    """Draw loss and accuracy per epoch, training and validation, across both phases."""
    name, title = "training_curves", f"Training curves of {run.name}"
    history = read_history(run)
    if history is None or history.empty:
        return missing_plot(name, title, "train", run / "history.csv")

    figure, (loss_axes, accuracy_axes) = new_figure(14, 4.8, ncols=2)
    epochs = history["global_epoch"]
    marker = "o" if len(history) <= 30 else None
    for axes, metric, label in (
        (loss_axes, "loss", "loss"),
        (accuracy_axes, "accuracy", "accuracy"),
    ):
        if metric in history:
            axes.plot(epochs, history[metric], marker=marker, label=f"training {label}")
        if f"val_{metric}" in history:
            axes.plot(
                epochs,
                history[f"val_{metric}"],
                marker=marker,
                linestyle="--",
                label=f"validation {label}",
            )
        _mark_phases(axes, history)
        axes.set_xlabel("epoch (both phases)")
        axes.set_ylabel(label)
        axes.set_title(label.capitalize())
        axes.xaxis.get_major_locator().set_params(integer=True)

    if "val_accuracy" in history and history["val_accuracy"].notna().any():
        best = history.loc[history["val_accuracy"].idxmax()]
        accuracy_axes.plot(
            best["global_epoch"],
            best["val_accuracy"],
            "*",
            markersize=16,
            color=FAILURE_COLOUR,
            label=f"best validation {best['val_accuracy']:.3f}",
        )
        accuracy_axes.set_ylim(0, 1.02)
    loss_axes.legend()
    accuracy_axes.legend()
    figure.suptitle(title)
    caption = (
        "Loss and accuracy of each epoch on the training split (solid) and the validation "
        "split (dashed). The shaded part is fine-tuning, when it ran; the star marks the "
        "best validation accuracy, whose weights the run keeps."
    )
    return Plot(name, title, caption, save_figure(figure, out_dir, name))


def _mark_phases(axes: Any, history: pd.DataFrame) -> None:
    fine_tune = history[history["phase"] == "fine_tune"]
    if fine_tune.empty:
        return
    start = fine_tune["global_epoch"].min() - 0.5
    axes.axvspan(start, history["global_epoch"].max() + 0.5, color="#fff3e0", zorder=0)
    axes.text(
        start, 1.0, " fine-tuning", transform=axes.get_xaxis_transform(), va="top", fontsize=10
    )


def read_metrics(run: Path) -> dict[str, Any] | None:
    """Return ``evaluation/metrics.json`` of the run, or None before ``make evaluate``."""
    return read_json(run / "evaluation" / "metrics.json")


def class_names_of(run: Path) -> list[str]:
    """Return the run's class order from ``class_names.json``."""
    return json.loads((run / "class_names.json").read_text(encoding="utf-8"))


def plot_confusion(run: Path, out_dir: Path) -> Plot:
    """Draw the test-split confusion matrix of the run with ``visualise.confusion``."""
    name, title = "confusion_matrix", f"Confusion matrix of {run.name} (test split)"
    metrics = read_metrics(run)
    if metrics is None:
        return missing_plot(name, title, f"evaluate RUN={run}", run / "evaluation" / "metrics.json")

    matrix = np.array(metrics["confusion_matrix"])
    png = confusion_matrix_png(matrix, class_names_of(run), "Test-split confusion matrix")
    path = Path(out_dir) / f"{name}.png"
    with atomic_path(path) as tmp:
        tmp.write_bytes(png)
    caption = (
        f"Rows are true labels, columns predicted ones, on the {metrics['images']:,} test "
        "images. Each cell shows the share of its row (recall on the diagonal) and the count."
    )
    return Plot(name, title, caption, path)


def summary_rows(run: Path) -> list[tuple[str, Any]]:
    """Return the settings and test metrics of one run as (quantity, value) rows."""
    config = read_json(run / "config.json") or {}
    summary = read_json(run / "summary.json") or {}
    rows: list[tuple[str, Any]] = [
        ("run", run.name),
        ("model", config.get("model")),
        ("weights", config.get("weights")),
        ("image size (px)", config.get("image_size")),
        ("data version", config.get("data_version")),
        (
            "epochs (head + fine-tuning)",
            f"{config.get('epochs')} + {config.get('fine_tune_epochs')}",
        ),
    ]
    for split, count in (config.get("images") or {}).items():
        rows.append((f"{split} images", count))
    if summary:
        rows.append(("best validation accuracy", summary.get("best_val_accuracy")))
        rows.append(("training seconds", summary.get("seconds")))
    metrics = read_metrics(run)
    if metrics:
        rows += [
            ("test accuracy", metrics["accuracy"]),
            ("test macro F1", metrics["macro_f1"]),
            ("test top-2 accuracy", metrics["top2_accuracy"]),
        ]
    return rows


def per_class_rows(run: Path) -> list[dict[str, Any]]:
    """Return precision, recall, F1 and support per class of the test split, or []."""
    metrics = read_metrics(run)
    if not metrics:
        return []
    return [{"class": name, **values} for name, values in metrics["per_class"].items()]


def image_root(run: Path, processed_dir: Path | None) -> Path | None:
    """Return the folder the run's image paths are relative to, or None if it is gone."""
    config = read_json(run / "config.json") or {}
    for root in (config.get("dataset_root"), processed_dir):
        if root and Path(root).is_dir():
            return Path(root)
    return None


def plot_mistakes(
    run: Path, out_dir: Path, processed_dir: Path | None = None, count: int = MISTAKES_SHOWN
) -> Plot:
    """Draw the ``count`` most confident test mistakes with true and predicted labels."""
    name, title = "confident_mistakes", f"Most confident mistakes of {run.name}"
    path = run / "evaluation" / "misclassified.csv"
    if not path.is_file():
        return missing_plot(name, title, f"evaluate RUN={run}", path)
    mistakes = pd.read_csv(path, nrows=count)
    if mistakes.empty:
        return Plot(name, title, note="no mistakes: every test image was classified correctly")

    root = image_root(run, processed_dir)
    columns = min(MISTAKE_COLUMNS, len(mistakes))
    rows = -(-len(mistakes) // columns)
    figure, axes = new_figure(
        3.4 * columns, 0.5 + 3.6 * rows, nrows=rows, ncols=columns, squeeze=False
    )
    for axes_of_image, mistake in zip(axes.flat, mistakes.itertuples()):
        image_path = (root / mistake.path) if root else Path(mistake.path)
        axes_of_image.imshow(thumbnail(image_path, side=224))
        axes_of_image.set_title(
            f"true: {mistake.label}\npredicted: {mistake.predicted} ({mistake.confidence:.0%})",
            fontsize=10,
            fontweight="normal",
        )
    for axes_of_image in axes.flat:
        axes_of_image.set_axis_off()
    figure.suptitle(title)
    caption = (
        f"The {len(mistakes)} test images the model got wrong with the highest confidence, "
        "with their label, the predicted label and its probability. A confident mistake may "
        "be a wrong label rather than a model error; `make find-label-issues` ranks those."
    )
    if root is None:
        caption += " The run's images were not found, so grey squares stand in for them."
    return Plot(name, title, caption, save_figure(figure, out_dir, name))
