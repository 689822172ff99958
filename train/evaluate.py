"""Evaluate stage: score a run's model on its test split.

``python -m train.evaluate --run develop/artifacts/runs/<run>`` (or ``make evaluate
RUN=...``) loads the run's ``model.keras``, reads the test images listed in the run's
``splits.csv`` in that order, and writes ``<run>/evaluation/``:

* ``metrics.json``: accuracy, macro F1, top-2 accuracy, per-class precision, recall and
  F1, and the confusion matrix;
* ``confusion_matrix.csv`` and ``confusion_matrix.png`` (rows true, columns predicted);
* ``predictions.csv``: every test image with its true and predicted label and the
  probability of each class; ``misclassified.csv``: the wrong ones, most confident first.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from data.scripts.common import atomic_path, setup_logging, write_json

logger = logging.getLogger(__name__)

STAGE = "evaluate"


def read_test_split(run: Path) -> tuple[list[dict[str, str]], list[str], Path, int]:
    """Return the test rows, class names, dataset root and image size of a run folder."""
    config_path = run / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(
            f"{config_path} not found; RUN must be a run folder written by 'make train'"
        )
    try:
        config = json.loads(config_path.read_text())
        class_names = json.loads((run / "class_names.json").read_text())
        with open(run / "splits.csv", newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.DictReader(handle) if row["split"] == "test"]
        root, image_size = Path(config["dataset_root"]), int(config["image_size"])
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(
            f"run folder {run} is incomplete or damaged ({type(exc).__name__}: {exc}); "
            "train it again with --restart"
        ) from exc
    unknown = sorted({row["label"] for row in rows} - set(class_names))
    if unknown:
        raise ValueError(
            f"splits.csv of {run} has labels {unknown} that class_names.json lacks; the run "
            "folder is inconsistent, train it again with --restart"
        )
    missing = [row["path"] for row in rows if not (root / row["path"]).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} test image(s) of {run.name} are gone from {root}, first "
            f"{missing[0]!r}; restore them or train again"
        )
    return rows, class_names, root, image_size


def predict(model: Any, paths: list[Path], image_size: int, batch_size: int) -> np.ndarray:
    """Return the model's probabilities for each image file, in the order given."""
    import tensorflow as tf

    from train.dataset import decode_image

    def load(path: tf.Tensor) -> tf.Tensor:
        return decode_image(tf.io.read_file(path), image_size)

    dataset = (
        tf.data.Dataset.from_tensor_slices([str(p) for p in paths])
        .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    return np.asarray(model.predict(dataset, verbose=0), dtype=np.float64)


def evaluate(run: Path, batch_size: int = 64) -> dict[str, Any]:
    """Evaluate the model of ``run`` on its test split; return the metrics."""
    import keras

    import train.models  # noqa: F401  (registers the custom layers that load_model needs)
    from train.metrics import classification_metrics
    from visualise.confusion import confusion_matrix_png

    started = time.monotonic()
    rows, class_names, root, image_size = read_test_split(run)
    if not rows:
        raise ValueError(
            f"the test split of {run} is empty; train with more images or a larger "
            "--test-size (TRAIN_ARGS with make)"
        )
    index_of = {name: i for i, name in enumerate(class_names)}
    labels = np.array([index_of[row["label"]] for row in rows])
    try:
        model = keras.models.load_model(run / "model.keras")
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(
            f"{run / 'model.keras'} could not be loaded ({type(exc).__name__}: "
            f"{str(exc)[:300]}); train the run again"
        ) from exc
    logger.info("evaluate: %d test images of %s", len(rows), run.name)

    probabilities = predict(model, [root / row["path"] for row in rows], image_size, batch_size)
    metrics = classification_metrics(labels, probabilities, class_names)
    metrics["seconds"] = round(time.monotonic() - started, 2)

    out = run / "evaluation"
    write_json(out / "metrics.json", metrics)
    write_confusion_csv(out / "confusion_matrix.csv", metrics["confusion_matrix"], class_names)
    png = confusion_matrix_png(np.array(metrics["confusion_matrix"]), class_names, title=run.name)
    with atomic_path(out / "confusion_matrix.png") as tmp:
        tmp.write_bytes(png)
    write_predictions(out, rows, labels, probabilities, class_names)
    logger.info(
        "evaluate: accuracy %.3f, macro F1 %.3f, top-2 accuracy %.3f on %d images; see %s",
        metrics["accuracy"],
        metrics["macro_f1"],
        metrics["top2_accuracy"],
        len(rows),
        out,
    )
    return metrics


def write_confusion_csv(path: Path, matrix: list[list[int]], class_names: list[str]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["true \\ predicted", *class_names])
            for name, counts in zip(class_names, matrix):
                writer.writerow([name, *counts])


def write_predictions(
    out: Path,
    rows: list[dict[str, str]],
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: list[str],
) -> None:
    """Write every prediction, and the wrong ones sorted by the model's confidence."""
    predicted = probabilities.argmax(axis=1)
    records = []
    for row, label, guess, probs in zip(rows, labels, predicted, probabilities):
        records.append(
            {
                "key": row["key"],
                "path": row["path"],
                "label": class_names[label],
                "predicted": class_names[guess],
                "confidence": round(float(probs[guess]), 6),
                "probability_of_label": round(float(probs[label]), 6),
                **{f"p_{name}": round(float(p), 6) for name, p in zip(class_names, probs)},
            }
        )
    columns = list(records[0])
    wrong = sorted(
        (r for r in records if r["label"] != r["predicted"]), key=lambda r: -r["confidence"]
    )
    for name, selection in (("predictions.csv", records), ("misclassified.csv", wrong)):
        with atomic_path(out / name) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, columns)
                writer.writeheader()
                writer.writerows(selection)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.evaluate", description="Score a run's model on its test split."
    )
    parser.add_argument("--run", type=Path, required=True, help="run folder from 'make train'")
    parser.add_argument(
        "--batch-size", type=int, default=64, help="images per prediction step (default: 64)"
    )
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.batch_size < 1:
        logger.error("--batch-size must be 1 or more, received %d", args.batch_size)
        return 2
    try:
        evaluate(args.run, args.batch_size)
    except (ValueError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
