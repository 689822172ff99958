"""Benchmark: how many flipped labels ``label.find_issues`` finds, at several noise rates.

Usage::

    .venv/bin/python -m bench.bench_label_noise [--model resnet50v2_pool] [--classes 3]
        [--images-per-class 100] [--rates 0.05 0.1 0.2]
        [--folds 5] [--epochs 10] [--seed 0] [--quick]

The images are generated with labels that are right: each class has its own colour over a
random 8 x 8 brightness pattern, at ``--image-size`` pixels. For each rate, that share of the
labels (rounded, seeded) is moved to another class, then the stage's cross-validation and
cleanlab steps run on the noisy labels: ``out_of_sample_probs`` and ``rank_label_issues``.
The backbone features do not depend on the labels, so they are computed once for all rates.

Precision is the share of flagged images whose label was flipped; recall is the share of
flipped images that were flagged. The weights are random (``weights="none"``) because
ImageNet weights cannot be downloaded on every machine, so the numbers measure detection on
easy, colour-coded classes, not on product photos. The script prints a Markdown table and
the machine. ``--quick`` runs 3 classes of 30 images with 5 epochs, as a smoke test.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time

import cv2
import keras
import numpy as np
import tensorflow as tf

from bench.bench_prepare import machine
from data.scripts.common import setup_logging
from label.find_issues import out_of_sample_probs, rank_label_issues
from train.features import extract_features
from train.models import MODELS, build_model, split_model

logger = logging.getLogger(__name__)

COLOURS = ((200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40))  # RGB per class
QUICK = {"classes": 3, "images_per_class": 30, "epochs": 5}


def colour_coded_images(
    classes: int, per_class: int, image_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return images [N, S, S, 3] uint8 RGB and their right labels [N], N = classes * per_class."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    images = np.empty((len(labels), image_size, image_size, 3), dtype=np.uint8)
    for index, label in enumerate(labels):
        pattern = cv2.resize(
            rng.random((8, 8)).astype(np.float32),
            (image_size, image_size),
            interpolation=cv2.INTER_LINEAR,
        )
        rgb = (0.4 + 0.6 * pattern[..., None]) * np.asarray(COLOURS[label], dtype=np.float32)
        images[index] = np.clip(rgb, 0, 255).astype(np.uint8)
    return images, labels


def flip_labels(
    labels: np.ndarray, rate: float, classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Move round(rate * N) labels to another class; return the noisy labels and their indices."""
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(labels), int(round(rate * len(labels))), replace=False)
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, classes, len(flipped))) % classes
    return noisy, flipped


def measure(args: argparse.Namespace) -> list[dict[str, float]]:
    """Run detection at every rate and return one result row per rate."""
    images, labels = colour_coded_images(
        args.classes, args.images_per_class, args.image_size, args.seed
    )
    class_names = [f"c{k}" for k in range(args.classes)]
    keras.utils.set_random_seed(args.seed)
    model = build_model(
        args.model,
        num_classes=args.classes,
        image_size=args.image_size,
        weights="none",
        dropout=0.3,
        augment=False,
        seed=args.seed,
    )
    parts = split_model(model)
    features, _ = extract_features(parts.features, zip(images, labels), args.batch_size)

    results = []
    for rate in args.rates:
        noisy, flipped = flip_labels(labels, rate, args.classes, args.seed)
        started = time.perf_counter()
        pred_probs, _ = out_of_sample_probs(
            parts.head,
            features,
            noisy,
            folds=args.folds,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=1e-3,
            seed=args.seed,
        )
        issues, _ = rank_label_issues(noisy, pred_probs, class_names)
        found = len(set(issues.tolist()) & set(flipped.tolist()))
        results.append(
            {
                "rate": rate,
                "flipped": len(flipped),
                "flagged": len(issues),
                "precision": found / len(issues) if len(issues) else float("nan"),
                "recall": found / len(flipped) if len(flipped) else float("nan"),
                "accuracy": float(np.mean(np.argmax(pred_probs, axis=1) == noisy)),
                "seconds": time.perf_counter() - started,
            }
        )
    return results


def print_table(args: argparse.Namespace, results: list[dict[str, float]]) -> None:
    total = args.classes * args.images_per_class
    print(
        f"\n{args.model}, weights none, {args.image_size} px, {args.classes} classes x "
        f"{args.images_per_class} images ({total}), {args.folds} folds, {args.epochs} epochs, "
        f"seed {args.seed}\n"
    )
    print("| flipped | flagged | precision | recall | accuracy vs noisy labels | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in results:
        print(
            f"| {row['rate']:.0%} ({row['flipped']}) | {row['flagged']} | "
            f"{row['precision']:.2f} | {row['recall']:.2f} | {row['accuracy']:.2f} | "
            f"{row['seconds']:.1f} |"
        )
    print(
        f"\nMachine: {machine()}; TensorFlow {tf.__version__}, Keras {keras.__version__}, "
        f"{platform.system()} {platform.release()}"
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_label_noise", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--model",
        choices=sorted(MODELS),
        default="resnet50v2_pool",
        help="architecture (default: resnet50v2_pool)",
    )
    parser.add_argument(
        "--classes",
        type=int,
        default=3,
        choices=range(2, len(COLOURS) + 1),
        help="number of colour-coded classes (default: 3)",
    )
    parser.add_argument(
        "--images-per-class", type=int, default=100, help="images per class (default: 100)"
    )
    parser.add_argument(
        "--image-size", type=int, default=32, help="image side in pixels (default: 32)"
    )
    parser.add_argument(
        "--rates",
        type=float,
        nargs="+",
        default=[0.05, 0.1, 0.2],
        help="shares of labels to flip (default: 0.05 0.1 0.2)",
    )
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (default: 5)")
    parser.add_argument("--epochs", type=int, default=10, help="head epochs per fold (default: 10)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step (default: 32)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of images, flips and training (default: 0)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3 classes of 30 images and 5 epochs, as a smoke test (default: off)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    setup_logging()
    print_table(args, measure(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
