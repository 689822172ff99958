"""Run the whole pipeline on a generated catalogue, from CSV files to a served model.

``python -m data.scripts.demo`` (or ``make demo``) needs no credentials and no internet:

1. **Serve.** Start ``data.scripts.demo_server`` on 127.0.0.1:``--port`` first, so a taken
   port stops the demo before any work.
2. **Generate.** Write the catalogue with ``data.scripts.demo_catalogue`` into
   ``data/raw/demo`` (CSV files) and ``data/raw/demo-site`` (images), or reuse it when the
   settings are the same. The port is part of the image URLs, so another port means
   another catalogue; the processed data of the old one is then removed.
3. **Stages.** Call the same Make targets a real run uses, in the order of ``STEPS``
   (extract to report, see ``data.scripts.pipeline``), with the demo's variables:
   ``DATA_VERSION=demo``, ``ALLOW_PRIVATE_ADDRESSES=1``, ResNet50V2 from random weights,
   ``IMAGE_SIZE=64``, ``FOLDS=3``.
4. **Record.** Write ``develop/artifacts/demo/summary.json`` (the seconds of every step, key
   counts, the run folder and the test accuracy) and print where the results are.

A second run reuses what is done: extract, fetch and train resume by themselves, and
``pipeline.run_steps`` skips the steps whose inputs and variables are unchanged. The
server stops in a ``finally`` block: after the last step, on a failing step, and on
Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from data.scripts import pipeline
from data.scripts.common import PROJECT_ROOT, setup_logging, write_json
from data.scripts.demo_catalogue import CatalogueSettings, generate_catalogue
from data.scripts.demo_server import DemoServer, PortInUseError
from data.scripts.pipeline import Step, StepFailed, read_json

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8770
PROCESSED_MARKER = ".demo-catalogue"  # the catalogue digest a processed folder was built from


STEPS: tuple[Step, ...] = (
    Step("extract", "extract"),
    Step("merge", "merge"),
    Step(
        "validate",
        "validate",
        outputs=("{processed_dir}/validation.parquet",),
        inputs=("{processed_dir}/products.parquet",),
    ),
    Step("fetch", "fetch"),
    Step(
        "train",
        "train",
        outputs=("{run}/model.keras",),
        inputs=("{processed_dir}/manifest.parquet",),
        shows=(("run folder", "{run}"),),
    ),
    Step(
        "evaluate",
        "evaluate",
        variables={"RUN": "{run}"},
        outputs=("{run}/evaluation/metrics.json",),
        inputs=("{run}/model.keras", "{run}/splits.csv"),
        shows=(("evaluation", "{run}/evaluation"),),
    ),
    Step(
        "find-label-issues",
        "find-label-issues",
        outputs=("{review_dir}/candidates.csv",),
        inputs=("{processed_dir}/manifest.parquet",),
        shows=(("label issues", "{review_dir}/candidates.csv"),),
    ),
    Step(
        "export",
        "export",
        variables={"RUN": "{run}"},
        outputs=("{run}/export/export.json",),
        inputs=("{run}/model.keras",),
        shows=(("exported model", "{run}/export"),),
    ),
    # Always runs: it is the demo's proof that the exported model answers over HTTP.
    Step(
        "serve",
        "serve-check",
        variables={"RUN": "{run}"},
        shows=(("served answer", "{prediction} (probability {probability})"),),
    ),
    Step(
        "report",
        "report",
        variables={"RUN": "{run}", "REPORT_DIR": "{report_dir}"},
        shows=(("report", "{report_dir}/index.html"),),
    ),
)


@dataclasses.dataclass
class DemoConfig:
    """The demo's settings and where it writes; paths relative to the project root."""

    port: int = DEFAULT_PORT
    seed: int = 0
    per_label: int = 100
    # NOTE: the demo trains from random weights, because ImageNet weights need a download.
    # Random MobileNetV3Small gave pooled features of about 1e-10 on this catalogue (64 px),
    # and mobilenetv3_pool stayed at chance. Random ResNet50V2 reaches about 0.77.
    model: str = "resnet50v2_pool"
    weights: str = "none"
    image_size: int = 64
    epochs: int = 20
    folds: int = 3
    raw_dir: Path = Path("data/raw/demo")
    site_dir: Path = Path("data/raw/demo-site")
    processed_dir: Path = Path("data/processed/demo")
    runs_dir: Path = Path("develop/artifacts/runs")
    review_dir: Path = Path("label/reviews/demo")
    artifacts_dir: Path = Path("develop/artifacts/demo")
    report_dir: Path | None = None  # None: <artifacts_dir>/report
    make: str = "make"

    def validate(self) -> None:
        """Raise ValueError naming the first invalid setting."""
        if not 1 <= self.port <= 65535:
            raise ValueError(
                "the demo needs a fixed port, because the port is part of the image URLs: "
                f"1..65535. Received: port={self.port!r}"
            )
        for name in ("epochs", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be 1 or more. Received: {getattr(self, name)!r}")
        if self.folds < 2:
            raise ValueError(f"folds must be 2 or more. Received: folds={self.folds!r}")

    def path(self, value: Path) -> Path:
        return value if value.is_absolute() else PROJECT_ROOT / value


# ---- settings ----


def make_variables(config: DemoConfig, run_name: str) -> dict[str, str]:
    """Return the Make variables that every step gets."""
    return {
        "DATA_VERSION": config.processed_dir.name,
        "RAW_DIR": str(config.raw_dir),
        "PROCESSED_DIR": str(config.processed_dir),
        "ALLOW_PRIVATE_ADDRESSES": "1",
        "MODEL": config.model,
        "WEIGHTS": config.weights,
        "IMAGE_SIZE": str(config.image_size),
        "EPOCHS": str(config.epochs),
        "FOLDS": str(config.folds),
        "RUNS_DIR": str(config.runs_dir),
        "REVIEW_DIR": str(config.review_dir),
        # The report looks for an applied label correction there; the demo makes none.
        "NEW_DATA_VERSION": f"{config.processed_dir.name}-v2",
        "TRAIN_ARGS": f"--run-name {run_name}",
    }


def run_name_for(config: DemoConfig, catalogue_digest: str) -> str:
    """Name the run after the model, size and a hash of the catalogue and model settings.

    ``make train`` refuses to resume a run folder on another version of the dataset, and
    a new port gives new image URLs, so a new catalogue gets a new run folder.
    """
    identity = [catalogue_digest, config.model, config.weights, config.image_size]
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:8]
    return f"{config.model}-{config.processed_dir.name}-{config.image_size}px-{digest}"


def prepare_processed_dir(config: DemoConfig, catalogue_digest: str) -> bool:
    """Remove the processed folder when it was built from another catalogue; True if removed.

    Raises RuntimeError when the folder contains data that the demo did not write, so a
    mistyped ``--processed-dir`` cannot delete a real data version.
    """
    folder = config.path(config.processed_dir)
    marker = folder / PROCESSED_MARKER
    removed = False
    if marker.exists() and marker.read_text().strip() != catalogue_digest:
        logger.info("demo: the catalogue changed; removing the old processed data in %s", folder)
        shutil.rmtree(folder)
        removed = True
    elif not marker.exists() and folder.exists() and any(folder.iterdir()):
        raise RuntimeError(
            f"{folder} contains data that the demo did not write (no {PROCESSED_MARKER} file); "
            "remove it or pass another --processed-dir"
        )
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(catalogue_digest + "\n")
    return removed


def run_steps(
    config: DemoConfig,
    steps: tuple[Step, ...],
    context: dict[str, str],
    variables: Mapping[str, str],
    record: dict[str, Any],
) -> None:
    """Run ``steps`` with the demo's Make and state file (see ``pipeline.run_steps``)."""
    pipeline.run_steps(
        steps,
        context,
        variables,
        record,
        state_path=config.path(config.artifacts_dir) / "state.json",
        make=config.make,
    )


# ---- results ----


# (stage whose stats/<stage>.json has the count, its key there, its key in the summary)
STAGE_COUNTS = (
    ("extract", "files_found", "csv_files"),
    ("extract", "rows_read", "csv_rows"),
    ("extract", "counters", "extract_counters"),
    ("merge", "rows_dropped_by_reason", "rows_dropped_by_reason"),
    ("merge", "duplicate_rows_dropped", "duplicate_rows_dropped"),
    ("relabel", "rows_per_label", "products_per_label"),
    ("relabel", "urls_with_label_conflict", "urls_with_label_conflict"),
    ("fetch", "status_counts", "fetch_status"),
)


def collect_counts(config: DemoConfig, context: Mapping[str, str]) -> dict[str, Any]:
    """Gather key counts from the stages' output; a count whose file is missing is left out."""
    counts: dict[str, Any] = {}
    stats_dir = config.path(config.processed_dir) / "stats"
    for stage, key, name in STAGE_COUNTS:
        stats = read_json(stats_dir / f"{stage}.json") or {}
        if key in stats:
            counts[name] = stats[key]

    run = context.get("run")
    run_config = read_json(config.path(Path(run)) / "config.json") if run else None
    if run_config:
        counts["images_per_split"] = run_config.get("images")

    review = read_json(config.path(config.review_dir) / "summary.json")
    if review:
        counts["label_issues"] = review.get("reasons", {}).get("label_issue")
        counts["duplicate_conflicts"] = review.get("reasons", {}).get("duplicate_conflict")
        counts["out_of_sample_accuracy"] = review.get("out_of_sample_accuracy")
        counts.update(planted_label_errors_found(config))
    return counts


def planted_label_errors_found(config: DemoConfig) -> dict[str, int]:
    """Count the catalogue's mislabelled images, and those of them that find-label-issues listed."""
    import pyarrow.parquet as pq

    from data.scripts.demo_catalogue import read_stamp

    stamp = read_stamp(config.path(config.raw_dir)) or {}
    planted = {p["image"] for p in stamp.get("planted", []) if p["planted"].startswith("mislab")}
    products = config.path(config.processed_dir) / "products.parquet"
    candidates = config.path(config.review_dir) / "candidates.csv"
    if not planted or not products.exists() or not candidates.exists():
        return {}
    table = pq.read_table(products, columns=["key", "image_url"]).to_pylist()
    planted_keys = {row["key"] for row in table if row["image_url"] in planted}
    with open(candidates, encoding="utf-8") as handle:
        listed = {line.split(",", 1)[0] for line in handle}
    return {
        "planted_label_errors": len(planted_keys),
        "planted_label_errors_listed": len(planted_keys & listed),
    }


def read_test_metrics(config: DemoConfig, context: Mapping[str, str]) -> dict[str, Any]:
    run = context.get("run")
    metrics = read_json(config.path(Path(run)) / "evaluation" / "metrics.json") if run else None
    if not metrics:
        return {}
    return {key: metrics.get(key) for key in ("accuracy", "macro_f1", "top2_accuracy", "images")}


def print_where(
    config: DemoConfig,
    steps: tuple[Step, ...],
    record: dict[str, Any],
    context: Mapping[str, str],
) -> None:
    """Print where the results are and how to look at them."""
    lines = [f"Demo finished in {record['seconds']:.0f} s; summary in {record['summary']}"]
    for step in steps:
        for what, template in step.shows:
            try:
                lines.append(f"  {what + ':':<16}{template.format(**context)}")
            except KeyError:
                continue
    test = record.get("test") or {}
    if test.get("accuracy") is not None:
        lines.append(
            f"  {'test split:':<16}accuracy {test['accuracy']:.3f}, macro F1 "
            f"{test['macro_f1']:.3f} on {test['images']} images"
        )
    lines.append(
        f"  {'review:':<16}make review PROCESSED_DIR={config.processed_dir} "
        f"REVIEW_DIR={config.review_dir}"
    )
    lines.append(
        f"  {'TensorBoard:':<16}make tensorboard RUNS_DIR={config.runs_dir}, "
        "then open http://127.0.0.1:6006"
    )
    print("\n".join(lines), flush=True)


# ---- the demo ----


def run_demo(config: DemoConfig, steps: tuple[Step, ...] = STEPS) -> dict[str, Any]:
    """Serve, generate and run every step; return the summary, also written to disk.

    Raises PortInUseError before any work when the port is taken, StepFailed at the first
    failing step and KeyboardInterrupt on Ctrl-C; the summary is written in every case.
    """
    config.validate()
    started = time.perf_counter()
    summary_path = config.path(config.artifacts_dir) / "summary.json"
    record: dict[str, Any] = {
        "status": "running",
        "port": config.port,
        "settings": {
            name: str(value) if isinstance(value, Path) else value
            for name, value in dataclasses.asdict(config).items()
        },
        "steps": [],
        "summary": str(config.artifacts_dir / "summary.json"),
    }
    context = {
        "raw_dir": str(config.raw_dir),
        "processed_dir": str(config.processed_dir),
        "runs_dir": str(config.runs_dir),
        "review_dir": str(config.review_dir),
        "report_dir": str(config.report_dir or config.artifacts_dir / "report"),
    }
    server = DemoServer(config.path(config.site_dir), config.port).start()
    try:
        record["catalogue"] = generate(config)
        digest = record["catalogue"]["digest"]
        record["processed_data_removed"] = prepare_processed_dir(config, digest)
        variables = make_variables(config, run_name_for(config, digest))
        run_steps(config, steps, context, variables, record)
        record["status"] = "finished"
    except BaseException as exc:
        record["status"] = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        if isinstance(exc, StepFailed):
            record["failed_step"] = exc.step
        raise
    finally:
        server.stop()
        record["seconds"] = round(time.perf_counter() - started, 1)
        record["run"] = context.get("run")
        record["test"] = read_test_metrics(config, context)
        record["counts"] = collect_counts(config, context)
        write_json(summary_path, record)
    print_where(config, steps, record, context)
    return record


def generate(config: DemoConfig) -> dict[str, Any]:
    """Generate or reuse the catalogue; return its stamp without the list of planted rows."""
    settings = CatalogueSettings(
        seed=config.seed, base_url=f"http://127.0.0.1:{config.port}", per_label=config.per_label
    )
    stamp = generate_catalogue(config.path(config.raw_dir), config.path(config.site_dir), settings)
    return {key: value for key, value in stamp.items() if key != "planted"}


# ---- command line ----


def build_parser() -> argparse.ArgumentParser:
    defaults = DemoConfig()
    parser = argparse.ArgumentParser(
        prog="python -m data.scripts.demo", description=__doc__.split("\n")[0]
    )

    # the catalogue and its server
    parser.add_argument(
        "--port",
        type=int,
        default=defaults.port,
        help=f"port of the image server on 127.0.0.1, part of every image URL "
        f"(default: {defaults.port}; DEMO_PORT in make)",
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="catalogue seed (default: 0)"
    )
    parser.add_argument(
        "--per-label",
        type=int,
        default=defaults.per_label,
        help=f"catalogue images per label (default: {defaults.per_label})",
    )

    # the stages' settings
    parser.add_argument(
        "--model", default=defaults.model, help=f"MODEL of train (default: {defaults.model})"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=defaults.image_size,
        help=f"stored image and model input side in pixels (default: {defaults.image_size})",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=defaults.epochs,
        help=f"epochs of the head phase (default: {defaults.epochs})",
    )
    parser.add_argument(
        "--folds",
        type=int,
        default=defaults.folds,
        help=f"cross-validation folds of find-label-issues (default: {defaults.folds})",
    )

    # where everything goes, relative to the project root
    for name, help_text in (
        ("raw-dir", "CSV files of the catalogue"),
        ("site-dir", "images that the demo server serves"),
        ("processed-dir", "processed data; its name is the data version"),
        ("runs-dir", "run folders"),
        ("review-dir", "find-label-issues output"),
        ("artifacts-dir", "summary.json and state.json of the demo"),
    ):
        default = getattr(defaults, name.replace("-", "_"))
        parser.add_argument(
            f"--{name}", type=Path, default=default, help=f"{help_text} (default: {default})"
        )
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    config = DemoConfig(
        port=args.port,
        seed=args.seed,
        per_label=args.per_label,
        model=args.model,
        image_size=args.image_size,
        epochs=args.epochs,
        folds=args.folds,
        raw_dir=args.raw_dir,
        site_dir=args.site_dir,
        processed_dir=args.processed_dir,
        runs_dir=args.runs_dir,
        review_dir=args.review_dir,
        artifacts_dir=args.artifacts_dir,
    )
    try:
        run_demo(config)
    except PortInUseError as exc:
        logger.error(
            "demo: port %d on 127.0.0.1 is already in use (by another program, or a demo that "
            "is still running). Stop that program or pick another port: make demo DEMO_PORT=%d",
            exc.port,
            exc.port + 1,
        )
        return 2
    except StepFailed as exc:
        logger.error("demo: %s; its log is above. Fix it and run make demo again to resume", exc)
        return 1
    except (ValueError, RuntimeError) as exc:
        logger.error("demo: %s", exc)
        return 2
    except KeyboardInterrupt:
        logger.error("demo: interrupted; run make demo again to resume")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
