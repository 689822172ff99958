"""Report stage: plots of every pipeline stage and one self-contained HTML page.

``python -m visualise.report --processed-dir data/processed/v1 --runs-dir
develop/artifacts/runs --review-dir label/reviews/v1 --out develop/artifacts/report``
(or ``make report``) draws what the stages have written so far and writes to ``--out``:

* one PNG per figure (``preparation_flow.png``, ``download_outcomes.png``, ...);
* ``index.html``, which embeds every PNG as a base64 data URI, so the single file reads
  offline and can be mailed. It has the key counts of each stage in small tables and a
  "not run yet" note, naming the ``make`` target, for each stage without output.

The run shown is ``--run``, or else the most recent run folder with an evaluation, or
else the most recent run. A stage that has not run is not an error: the report is
built after any stage, even on an empty processed folder, and exits with 0.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import logging
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.scripts.common import (
    DEFAULT_DATA_VERSION,
    PROJECT_ROOT,
    atomic_path,
    processed_dir,
    setup_logging,
    stats_path,
)
from train.train import RUNS_DIR
from visualise import collection, corrections, preparation, training
from visualise.style import Plot

logger = logging.getLogger(__name__)

REPORT_FILE = "index.html"
DEFAULT_OUT = PROJECT_ROOT / "develop" / "artifacts" / "report"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURE_NAMES = (
    "preparation_flow",
    "categories_and_labels",
    "download_outcomes",
    "image_sizes",
    "sample_images",
    "training_curves",
    "confusion_matrix",
    "confident_mistakes",
    "label_review",
)
RUN_COLUMNS = (
    ("run", "run"),
    ("model", "model"),
    ("data", "data_version"),
    ("size", "image_size"),
    ("epochs", "epochs"),
    ("val acc", "best_val_accuracy"),
    ("test acc", "accuracy"),
    ("macro F1", "macro_f1"),
    ("top-2", "top2_accuracy"),
)


@dataclass
class Table:
    """A small table of the report: a title, column names and rows of cells."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    highlight: int | None = None  # index of a row to set in bold


@dataclass
class Section:
    """One stage of the pipeline in the report.

    ``not_run`` names the ``make`` target to run when the stage has no output yet, and
    ``failed`` contains the error when its output could not be read.
    """

    title: str
    anchor: str
    targets: str  # the make targets that write its inputs
    not_run: str | None = None
    failed: str | None = None
    tables: list[Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)


@dataclass(frozen=True)
class ReportInputs:
    """The folders the report reads each stage's output from, and its output folder."""

    processed_dir: Path
    runs_dir: Path
    run: Path | None
    review_dir: Path
    applied_dirs: tuple[Path, ...]
    out_dir: Path


# ---- the sections ----


def key_value_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    return Table(title, [], [[name, value] for name, value in rows])


def fill_preparation(section: Section, inputs: ReportInputs) -> None:
    folder = inputs.processed_dir
    if not stats_path(folder, "extract").is_file():
        section.not_run = (
            f"Not run yet: run `make prepare` first ({folder} has no stats/extract.json)."
        )
        return
    section.tables.append(key_value_table("Counts", preparation.summary_rows(folder)))
    section.plots += [
        draw("preparation_flow", preparation.plot_preparation_flow, folder, inputs.out_dir),
        draw("categories_and_labels", preparation.plot_categories, folder, inputs.out_dir),
    ]


def fill_collection(section: Section, inputs: ReportInputs) -> None:
    folder = inputs.processed_dir
    has_images = (folder / "images").is_dir()
    if not has_images and not (folder / collection.MANIFEST_FILE).is_file():
        if not stats_path(folder, "validate").is_file():
            section.not_run = (
                f"Not run yet: run `make fetch` first ({folder} has no manifest.parquet)."
            )
            return
    rows = collection.summary_rows(folder)
    if rows:
        section.tables.append(key_value_table("Counts", rows))
    section.plots += [
        draw("download_outcomes", collection.plot_download_outcomes, folder, inputs.out_dir),
        draw("image_sizes", collection.plot_image_sizes, folder, inputs.out_dir),
        draw("sample_images", collection.plot_contact_sheet, folder, inputs.out_dir),
    ]


def fill_training(section: Section, inputs: ReportInputs) -> None:
    run = inputs.run or training.default_run(inputs.runs_dir)
    if run is None:
        section.not_run = (
            f"Not run yet: run `make train` first ({inputs.runs_dir} has no run folder)."
        )
        return
    records = training.runs_table(inputs.runs_dir)
    if records:
        shown_row = next((i for i, r in enumerate(records) if r["run"] == run.name), None)
        cells = [[record.get(key) for _, key in RUN_COLUMNS] for record in records]
        columns = [title for title, _ in RUN_COLUMNS]
        section.tables.append(
            Table("Every run (best test accuracy first)", columns, cells, shown_row)
        )
    section.tables.append(key_value_table(f"Run shown: {run.name}", training.summary_rows(run)))
    per_class = training.per_class_rows(run)
    if per_class:
        columns = ["class", "precision", "recall", "f1", "support"]
        cells = [[row[c] for c in columns] for row in per_class]
        section.tables.append(Table("Test metrics per class", columns, cells))
    section.plots += [
        draw("training_curves", training.plot_training_curves, run, inputs.out_dir),
        draw("confusion_matrix", training.plot_confusion, run, inputs.out_dir),
        draw(
            "confident_mistakes",
            training.plot_mistakes,
            run,
            inputs.out_dir,
            inputs.processed_dir,
        ),
    ]


def fill_corrections(section: Section, inputs: ReportInputs) -> None:
    candidates = inputs.review_dir / corrections.CANDIDATES_FILE
    rows = corrections.summary_rows(inputs.review_dir, list(inputs.applied_dirs))
    if not rows and not candidates.is_file():
        section.not_run = (
            f"Not run yet: run `make find-label-issues` first ({candidates} not found)."
        )
        return
    section.tables.append(key_value_table("Counts", rows))
    section.plots.append(
        draw("label_review", corrections.plot_review, inputs.review_dir, inputs.out_dir)
    )


# Title, anchor, the make targets that write the stage's output, and the function that
# fills the section in.
SECTIONS = (
    ("Data preparation", "preparation", "make prepare", fill_preparation),
    ("Image collection", "collection", "make validate, make fetch", fill_collection),
    ("Training and evaluation", "training", "make train, make evaluate", fill_training),
    (
        "Label correction",
        "labels",
        "make find-label-issues, make review, make apply-corrections",
        fill_corrections,
    ),
)


def draw(name: str, plot_function: Any, *args: Any) -> Plot:
    """Call one plot function; a damaged input file gives a note instead of stopping the report."""
    try:
        return plot_function(*args)
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("report: figure %s failed: %s: %s", name, type(error).__name__, error)
        title = name.replace("_", " ").capitalize()
        return Plot(name, title, note=f"failed: {type(error).__name__}: {error}")


def build_section(
    title: str, anchor: str, targets: str, fill: Any, inputs: ReportInputs
) -> Section:
    """Build one section; a damaged input file gives a note instead of stopping the report."""
    section = Section(title, anchor, targets)
    try:
        fill(section, inputs)
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("report: section %r failed: %s: %s", title, type(error).__name__, error)
        section.failed = f"Could not read this stage's output: {type(error).__name__}: {error}"
    return section


def build_sections(inputs: ReportInputs) -> list[Section]:
    """Draw every figure that the stages' outputs allow; return the report's sections."""
    inputs.out_dir.mkdir(parents=True, exist_ok=True)
    sections = [build_section(*entry, inputs) for entry in SECTIONS]

    # A figure not drawn this time must not survive from an earlier report.
    drawn = {plot.name for section in sections for plot in section.plots if plot.path}
    for name in FIGURE_NAMES:
        if name not in drawn:
            (inputs.out_dir / f"{name}.png").unlink(missing_ok=True)
    return sections


# ---- the page ----


def format_cell(value: Any) -> str:
    """Format one table cell: thousands separators, three decimals for shares."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) <= 1 else f"{value:,.1f}"
    return str(value)


def render_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    head = f"<thead><tr>{head}</tr></thead>" if head else ""
    body = []
    for index, row in enumerate(table.rows):
        cells = "".join(f"<td>{html.escape(format_cell(v))}</td>" for v in row)
        marker = ' class="shown"' if index == table.highlight else ""
        body.append(f"<tr{marker}>{cells}</tr>")
    return (
        f"<table><caption>{html.escape(table.title)}</caption>{head}"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def with_code(text: str) -> str:
    """Escape ``text`` for HTML and set the parts between backticks as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def embedded_image(path: Path) -> str | None:
    """Return a ``data:image/png;base64,...`` URI of the PNG, or None if it is not one."""
    data = path.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        logger.warning("report: %s is not a PNG file; left out of the page", path)
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def render_plot(plot: Plot) -> str:
    title = html.escape(plot.title)
    uri = embedded_image(plot.path) if plot.path is not None else None
    if uri is None:
        note = with_code(plot.note or "the figure could not be drawn")
        return f'<div class="note"><strong>{title}</strong>: {note}</div>'
    return (
        f'<figure id="{html.escape(plot.name)}"><img src="{uri}" alt="{title}">'
        f"<figcaption><strong>{title}.</strong> {html.escape(plot.caption)}</figcaption></figure>"
    )


def render_section(section: Section) -> str:
    parts = [f'<section id="{section.anchor}"><h2>{html.escape(section.title)}</h2>']
    parts.append(f'<p class="targets">Stages: {html.escape(section.targets)}</p>')
    if section.not_run:
        parts.append(f'<div class="note not-run">{with_code(section.not_run)}</div>')
    if section.failed:
        parts.append(f'<div class="note failed">{with_code(section.failed)}</div>')
    if section.tables:
        parts.append('<div class="tables">')
        parts += [render_table(table) for table in section.tables]
        parts.append("</div>")
    parts += [render_plot(plot) for plot in section.plots]
    parts.append("</section>")
    return "\n".join(parts)


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1400px; padding: 0 24px 48px; color: #212121; line-height: 1.45; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 2px solid #e0e0e0; padding-bottom: 4px;
       margin-top: 40px; }
.meta, .targets { color: #616161; font-size: 14px; margin-top: 0; }
nav ul { display: flex; gap: 12px; flex-wrap: wrap; list-style: none; padding: 0; }
nav li { background: #f5f5f5; border-radius: 6px; padding: 6px 12px; font-size: 14px; }
nav li.done::before { content: "\\2713  "; color: #2e7d32; }
nav li.missing::before { content: "\\2013  "; color: #9e9e9e; }
nav li.failed::before { content: "\\2717  "; color: #c62828; }
.tables { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
table { border-collapse: collapse; font-size: 13px; }
caption { text-align: left; font-weight: 600; padding-bottom: 4px; }
th, td { border-bottom: 1px solid #e0e0e0; padding: 3px 10px; text-align: left; }
td:first-child { white-space: pre; }
td:not(:first-child) { text-align: right; font-variant-numeric: tabular-nums; }
tr.shown { font-weight: 700; background: #e3f2fd; }
figure { margin: 24px 0; } figure img { max-width: 100%; height: auto;
       border: 1px solid #eeeeee; }
figcaption { font-size: 14px; color: #424242; max-width: 1100px; }
.note { background: #fff8e1; border-left: 4px solid #ffb300; padding: 8px 12px;
       margin: 12px 0; font-size: 14px; }
.not-run { background: #f5f5f5; border-left-color: #9e9e9e; }
.failed { background: #ffebee; border-left-color: #c62828; }
code { background: #eceff1; border-radius: 3px; padding: 1px 4px; font-size: 13px; }
"""


def render_link(section: Section) -> str:
    """Return the section's entry in the stage list, marked done, not run or failed."""
    state, suffix = "done", ""
    if section.not_run:
        state, suffix = "missing", " (not run yet)"
    elif section.failed:
        state, suffix = "failed", " (could not be read)"
    title = html.escape(section.title)
    return f'<li class="{state}"><a href="#{section.anchor}">{title}</a>{suffix}</li>'


def render_html(sections: list[Section], inputs: ReportInputs, generated: str) -> str:
    """Return the whole page: a header with the inputs, a stage list and every section."""
    links = "".join(render_link(section) for section in sections)
    meta = (
        f"Generated {html.escape(generated)} from {html.escape(str(inputs.processed_dir))}, "
        f"runs in {html.escape(str(inputs.runs_dir))} and the review in "
        f"{html.escape(str(inputs.review_dir))}."
    )
    body = "\n".join(render_section(section) for section in sections)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Pipeline report</title><style>{CSS}</style></head><body>"
        f'<h1>Product image classifier: pipeline report</h1><p class="meta">{meta}</p>'
        f"<nav><ul>{links}</ul></nav>\n{body}\n</body></html>\n"
    )


def write_report(inputs: ReportInputs) -> dict[str, Any]:
    """Draw every figure, write ``index.html`` atomically and return the counts."""
    started = time.monotonic()
    sections = build_sections(inputs)
    page = render_html(sections, inputs, time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    path = inputs.out_dir / REPORT_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")

    plots = [plot for section in sections for plot in section.plots]
    return {
        "report": path,
        "figures": sum(plot.path is not None for plot in plots),
        "figures_not_drawn": [plot.name for plot in plots if plot.path is None],
        "stages_not_run": [section.title for section in sections if section.not_run],
        "stages_failed": [section.title for section in sections if section.failed],
        "bytes": path.stat().st_size,
        "seconds": round(time.monotonic() - started, 1),
    }


# ---- command line ----


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m visualise.report",
        description="Draw every stage's output and write one self-contained HTML report.",
    )
    parser.add_argument(
        "--processed-dir",
        type=Path,
        default=processed_dir(DEFAULT_DATA_VERSION),
        help="processed data folder of the data stages (default: data/processed/v1)",
    )
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=RUNS_DIR,
        help="folder of training runs (default: develop/artifacts/runs)",
    )
    parser.add_argument(
        "--run",
        type=Path,
        default=None,
        help="run folder to show (default: the most recent evaluated run, else the most recent)",
    )
    parser.add_argument(
        "--review-dir",
        type=Path,
        default=None,
        help="label review folder (default: label/reviews/<name of --processed-dir>)",
    )
    parser.add_argument(
        "--applied-dir",
        type=Path,
        action="append",
        default=[],
        help="data version written by 'make apply-corrections' (repeatable; default: none, "
        "but --processed-dir counts when it is such a version)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output folder (default: develop/artifacts/report)",
    )
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    return parser


def applied_from(applied_dir: Path, processed_dir: Path) -> bool:
    """Return whether apply-corrections made ``applied_dir`` from ``processed_dir``.

    ``make report`` always passes ``data/processed/<NEW_DATA_VERSION>``, which may have been
    made from another data version; its counts do not belong in this report.
    """
    try:
        source = json.loads((applied_dir / "stats" / "apply.json").read_text())["source"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return Path(source).resolve() == processed_dir.resolve()


def resolve_inputs(args: argparse.Namespace) -> ReportInputs:
    """Check the options and fill in the defaults; raise ValueError for an invalid one."""
    if args.run is not None and not (args.run / "config.json").is_file():
        raise ValueError(
            f"--run {args.run} is not a run folder (no config.json); pass a folder that "
            "'make train' printed as RUN=..., or leave RUN empty for the most recent run"
        )
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file; pass a folder for the report")
    review_dir = args.review_dir or PROJECT_ROOT / "label" / "reviews" / args.processed_dir.name
    applied = [path for path in args.applied_dir if applied_from(path, args.processed_dir)]
    applied.append(args.processed_dir)
    return ReportInputs(
        processed_dir=args.processed_dir,
        runs_dir=args.runs_dir,
        run=args.run,
        review_dir=review_dir,
        applied_dirs=tuple(dict.fromkeys(applied)),
        out_dir=args.out,
    )


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        inputs = resolve_inputs(args)
    except ValueError as error:
        logger.error("%s", error)
        return 2

    logger.info(
        "report: drawing %s, runs in %s, review in %s into %s",
        inputs.processed_dir,
        inputs.runs_dir,
        inputs.review_dir,
        inputs.out_dir,
    )
    stats = write_report(inputs)
    if len(stats["stages_not_run"]) == 4:
        logger.warning(
            "report: no stage has written anything yet under %s, %s or %s; "
            "run `make prepare` first. The report lists every stage as not run yet.",
            inputs.processed_dir,
            inputs.runs_dir,
            inputs.review_dir,
        )
    logger.info(
        "report: done in %.1f s: %d figures, %d not drawn, stages not run yet: %s, "
        "stages that could not be read: %s; wrote %s (%.0f KiB)",
        stats["seconds"],
        stats["figures"],
        len(stats["figures_not_drawn"]),
        ", ".join(stats["stages_not_run"]) or "none",
        ", ".join(stats["stages_failed"]) or "none",
        stats["report"],
        stats["bytes"] / 1024,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
