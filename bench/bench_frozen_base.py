"""Benchmark: epoch time of a frozen-backbone classifier, cached features against images.

Usage::

    .venv/bin/python -m bench.bench_frozen_base [--model resnet50v2_pool] [--image-size 224]
        [--images 256] [--batch-size 32] [--epochs 3] [--jit-compile auto] [--quick]

Both paths train the same architecture with a frozen backbone on the same random uint8
images and labels, with the same batch size, in one Python process:

* **full model**: ``fit`` on the images, so the backbone runs on every image in every epoch.
  Augmentation is off, so both paths do the same arithmetic apart from the repeated backbone.
* **cached features**: ``train.features.extract_features`` once, then ``train_head`` on the
  features. Epoch 1 of this path includes the extraction.

The weights are random (``weights="none"``) because ImageNet weights cannot be downloaded on
every machine. Random weights take the same operations, so the same time, as ImageNet ones. Epoch 1
of each path also includes tracing the training step. The script prints the time of each
epoch, the ratio of the mean times of epochs 2 and later, and the machine, as a Markdown table.
``--quick`` runs a 64 px, 32-image, 2-epoch version in well under a minute, as a smoke test.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from bench.bench_prepare import machine
from data.scripts.common import setup_logging
from train.features import extract_features, train_head
from train.models import MODELS, build_model, compile_model, split_model

logger = logging.getLogger(__name__)

NUM_CLASSES = 7
LEARNING_RATE = 1e-3
SEED = 0
QUICK = {"image_size": 64, "images": 32, "batch_size": 16, "epochs": 2}


class EpochTimer(keras.callbacks.Callback):
    """Record the wall time of every epoch, in seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._started)


def random_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    shape = (args.images, args.image_size, args.image_size, 3)
    return rng.integers(0, 256, shape, dtype=np.uint8), rng.integers(0, NUM_CLASSES, args.images)


def new_model(args: argparse.Namespace) -> keras.Model:
    keras.utils.set_random_seed(SEED)
    return build_model(
        args.model,
        num_classes=NUM_CLASSES,
        image_size=args.image_size,
        weights="none",
        augment=False,
        seed=SEED,
    )


def time_full_model(
    args: argparse.Namespace, images: np.ndarray, labels: np.ndarray
) -> tuple[list[float], bool]:
    """Return the seconds of each epoch of ``fit`` on the images, and whether XLA was on."""
    model = new_model(args)
    compile_model(model, LEARNING_RATE, jit_compile=args.jit_compile)
    timer = EpochTimer()
    model.fit(
        images, labels, batch_size=args.batch_size, epochs=args.epochs, callbacks=[timer], verbose=0
    )
    return timer.seconds, bool(model.jit_compile)


def time_cached_features(
    args: argparse.Namespace, images: np.ndarray, labels: np.ndarray
) -> tuple[list[float], float]:
    """Return the seconds of each head epoch, epoch 1 with the extraction, and the extraction."""
    parts = split_model(new_model(args))
    started = time.perf_counter()
    features, feature_labels = extract_features(
        parts.features, zip(images, labels), args.batch_size
    )
    extraction = time.perf_counter() - started

    compile_model(parts.head, LEARNING_RATE, jit_compile=args.jit_compile)
    timer = EpochTimer()
    train_head(
        parts.head,
        features,
        feature_labels,
        epochs=args.epochs,
        batch_size=args.batch_size,
        callbacks=[timer],
        verbose=0,
    )
    return [timer.seconds[0] + extraction, *timer.seconds[1:]], extraction


def print_table(
    args: argparse.Namespace,
    full: list[float],
    cached: list[float],
    extraction: float,
    xla: bool,
    loads: tuple[str, str],
) -> None:
    print(
        f"\nMachine: {machine()}; TensorFlow {tf.__version__}, Keras {keras.__version__}, "
        f"{platform.system()} {platform.release()}"
    )
    print(
        f"Model: {args.model}, {args.image_size} px, weights none (random), {args.images} "
        f"random images, batch {args.batch_size}, jit_compile={args.jit_compile} "
        f"(XLA {'on' if xla else 'off'})"
    )
    print(f"Load average (1, 5, 15 min): before {loads[0]}, after {loads[1]}\n")
    print("| epoch | full model (backbone every epoch) | cached features | speed-up |")
    print("| --- | --- | --- | --- |")
    for epoch, (full_s, cached_s) in enumerate(zip(full, cached, strict=True), start=1):
        note = f" (extraction {extraction:.2f} s)" if epoch == 1 else ""
        print(f"| {epoch} | {full_s:.2f} s | {cached_s:.3f} s{note} | {full_s / cached_s:.1f}x |")
    if len(full) > 2:
        full_mean, cached_mean = statistics.mean(full[1:]), statistics.mean(cached[1:])
        print(
            f"| mean of epochs 2–{len(full)} | {full_mean:.2f} s | {cached_mean:.3f} s "
            f"| {full_mean / cached_mean:.0f}x |"
        )


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def parse_jit_compile(value: str) -> bool | str:
    choices = {"auto": "auto", "on": True, "off": False}
    if value not in choices:
        raise argparse.ArgumentTypeError(f"expected one of {sorted(choices)}, received {value!r}")
    return choices[value]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_frozen_base", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--model", choices=sorted(MODELS), default="resnet50v2_pool", help="default: %(default)s"
    )
    parser.add_argument("--image-size", type=int, default=224, help="pixels (default: 224)")
    parser.add_argument("--images", type=int, default=256, help="random images (default: 256)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step (default: 32)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per path (default: 3)")
    parser.add_argument(
        "--jit-compile",
        type=parse_jit_compile,
        default="auto",
        help="XLA for both paths: auto, on or off (default: auto, as compile_model)",
    )
    parser.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    if args.epochs < 1 or args.images < 1 or args.batch_size < 1:
        raise SystemExit("--epochs, --images and --batch-size must be at least 1")
    setup_logging()

    images, labels = random_data(args)
    before = load_average()
    logger.info("full model: %d epochs on %d images", args.epochs, args.images)
    full, xla = time_full_model(args, images, labels)
    logger.info("cached features: extraction, then %d head epochs", args.epochs)
    cached, extraction = time_cached_features(args, images, labels)
    print_table(args, full, cached, extraction, xla, (before, load_average()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
