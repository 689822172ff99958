"""Compare runs: one table of every run folder, side by side.

``python -m train.compare`` (or ``make compare``) reads ``config.json``,
``summary.json`` and, where ``make evaluate`` has run, ``evaluation/metrics.json`` of
each folder under the runs folder, and prints a Markdown table sorted by test accuracy.
Runs not evaluated yet show ``-`` in the test columns.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from data.scripts.common import setup_logging
from train.train import RUNS_DIR

logger = logging.getLogger(__name__)

COLUMNS = (
    ("run", "run"),
    ("model", "model"),
    ("data", "data_version"),
    ("weights", "weights"),
    ("size", "image_size"),
    ("epochs", "epochs"),
    ("val acc", "best_val_accuracy"),
    ("test acc", "accuracy"),
    ("macro F1", "macro_f1"),
    ("top-2", "top2_accuracy"),
    ("train s", "seconds"),
)


def read_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """Return one record per run folder that has a summary, newest metrics merged in."""
    records = []
    for folder in sorted(p for p in runs_dir.glob("*") if (p / "summary.json").exists()):
        try:
            record: dict[str, Any] = dict(json.loads((folder / "summary.json").read_text()))
            metrics_path = folder / "evaluation" / "metrics.json"
            if metrics_path.exists():
                metrics = dict(json.loads(metrics_path.read_text()))
                record.update(
                    {k: metrics.get(k) for k in ("accuracy", "macro_f1", "top2_accuracy")}
                )
        except (OSError, ValueError, TypeError) as exc:
            logger.warning("compare: skipped %s, its files cannot be read: %s", folder, exc)
            continue
        record["run"] = folder.name  # the folder may have been copied or renamed
        records.append(record)
    return sorted(records, key=lambda r: -(r.get("accuracy") or -1))


def format_table(records: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3f}" if value <= 1 else f"{value:.0f}"
        return str(value)

    lines = [
        "| " + " | ".join(title for title, _ in COLUMNS) + " |",
        "|" + " --- |" * len(COLUMNS),
    ]
    for record in records:
        lines.append("| " + " | ".join(cell(record.get(key)) for _, key in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.compare", description=__doc__)
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=RUNS_DIR,
        help="folder of run folders (default: develop/artifacts/runs)",
    )
    args = parser.parse_args(argv)
    setup_logging()
    records = read_runs(args.runs_dir)
    if not records:
        logger.error("no finished runs under %s; run 'make train' first", args.runs_dir)
        return 1
    print(format_table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
