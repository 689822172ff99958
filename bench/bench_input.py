"""Benchmark: the input pipeline of ImageDataSet against keras.utils.image_dataset_from_directory.

Usage::

    .venv/bin/python -m bench.bench_input [--images 3000] [--rounds 3] [--image-size 224]
    .venv/bin/python -m bench.bench_input --quick   # 300 images, 1 round: a smoke test

Steps:

1. **Images.** N photo-like JPEGs (a smooth gradient, filled shapes with soft edges,
   sensor-like noise), 300-500 px a side, quality 90, generated from ``--seed`` into
   ``<label>/<key>.jpg`` folders of a temporary folder, with 16-hex-digit keys as the
   collection stage writes them.
2. **Pipelines**, all at the same image size and batch size, training order:

   * *ours*: ``ImageDataSet`` with every image in the train split, then
     ``prepare_for_training(training=True, cache="memory")``: decode, resize, round to
     uint8, cache, shuffle with a buffer of the whole split, batch, prefetch.
   * *keras + .cache()*: ``image_dataset_from_directory`` with its defaults (bilinear
     resize, shuffle), followed by ``.cache().prefetch(AUTOTUNE)``. It caches float32
     batches.
   * *keras*: ``image_dataset_from_directory`` as it is, which decodes every epoch.

3. **Epochs.** Each round builds every pipeline anew and times its first epoch (which
   decodes every file and fills the cache) and ``--cached-epochs`` later epochs. The
   order of the pipelines rotates every round. Reported numbers are medians over
   rounds (within a round, cached epochs are averaged first). An untimed warm-up of a
   few batches of each pipeline comes first.

Setup time is the constructor alone: ours walks the folders and reads and checks every
file header, and Keras lists the folders. CPU time is the process's user + system time
during the epoch. The load average before and after is printed, so that other jobs on
the machine show. With more runnable jobs than cores, wall times vary by 2x or more
between epochs, while CPU time per image varies much less. Ours yields uint8 batches
and Keras yields float32 batches, as each pipeline is meant to be used. The model
converts ours to float.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf
import xxhash

from bench.bench_prepare import machine
from data.scripts.common import setup_logging
from train.dataset import ImageDataSet, prepare_for_training

logger = logging.getLogger(__name__)

LABELS = ("books", "electronics", "kitchen", "shoes", "toys")
MIN_SIDE, MAX_SIDE = 300, 500  # pixels, drawn uniformly per side
JPEG_QUALITY = 90
WARM_UP_BATCHES = 3
GOAL_CACHED = 1.5  # ours / keras + .cache(), cached epochs
GOAL_FIRST = 1.0  # ours / keras + .cache() and ours / keras, first epoch


@dataclass
class EpochTimes:
    """Setup and per-epoch wall and CPU seconds of one pipeline in one round."""

    setup: float
    first: float
    first_cpu: float
    cached: list[float]


# ---- the image set ----


def make_photo(seed: int, index: int) -> bytes:
    """Return one photo-like JPEG, 300-500 px a side, the same for the same ``(seed, index)``."""
    rng = np.random.default_rng([seed, index])
    height, width = (int(side) for side in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))

    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    top, bottom = rng.uniform(40, 220, size=(2, 3)).astype(np.float32)
    image = np.ascontiguousarray(np.broadcast_to(top + (bottom - top) * rows, (height, width, 3)))
    image = image.astype(np.uint8)

    for _ in range(int(rng.integers(3, 8))):
        colour = tuple(int(value) for value in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(20, min(width, height) // 2))
        if rng.random() < 0.5:
            cv2.circle(image, (x, y), size, colour, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(image, (x, y), (x + size, y + size // 2), colour, -1)
    image = cv2.GaussianBlur(image, (0, 0), 1.2)
    noise = rng.normal(0.0, 6.0, size=image.shape).astype(np.float32)
    image = cv2.add(image, noise, dtype=cv2.CV_8U)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes()


def _write_photo(folder: Path, seed: int, index: int) -> int:
    label = LABELS[index % len(LABELS)]
    key = f"{xxhash.xxh3_64_intdigest(f'{seed}-{index}'.encode()):016x}"
    data = make_photo(seed, index)
    (folder / label / f"{key}.jpg").write_bytes(data)
    return len(data)


def make_image_set(folder: Path, count: int, seed: int) -> list[int]:
    """Write ``count`` JPEGs into ``folder/<label>/`` and return their sizes in bytes."""
    for label in LABELS:
        (folder / label).mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        return list(
            pool.map(_write_photo, [folder] * count, [seed] * count, range(count), chunksize=50)
        )


def describe_sizes(sizes: list[int]) -> str:
    kib = sorted(size / 1024 for size in sizes)
    return (
        f"{len(kib)} JPEGs, {MIN_SIDE}-{MAX_SIDE} px a side, {sum(kib) / 1024:.0f} MiB, "
        f"median {statistics.median(kib):.0f} KiB (min {kib[0]:.0f}, max {kib[-1]:.0f})"
    )


# ---- the pipelines ----


def build_ours(folder: Path, args: argparse.Namespace) -> tf.data.Dataset:
    data = ImageDataSet(
        folder, image_size=args.image_size, train_size=1.0, val_size=0.0, test_size=0.0
    )
    return prepare_for_training(
        data.dataset("train"),
        training=True,
        batch_size=args.batch_size,
        cache="memory",
        seed=args.seed,
    )


def _keras_dataset(folder: Path, args: argparse.Namespace) -> tf.data.Dataset:
    import keras  # imported here, because importing Keras is slow and only this path needs it

    return keras.utils.image_dataset_from_directory(
        folder,
        image_size=(args.image_size, args.image_size),
        batch_size=args.batch_size,
        seed=args.seed,
        verbose=False,
    )


def build_keras_cached(folder: Path, args: argparse.Namespace) -> tf.data.Dataset:
    return _keras_dataset(folder, args).cache().prefetch(tf.data.AUTOTUNE)


PIPELINES: dict[str, Callable[[Path, argparse.Namespace], tf.data.Dataset]] = {
    "ours": build_ours,
    "keras + .cache()": build_keras_cached,
    "keras": _keras_dataset,
}


# ---- measuring ----


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def run_epoch(ds: tf.data.Dataset, expected: int) -> tuple[float, float]:
    """Iterate one epoch, check the image count and return ``(wall seconds, CPU seconds)``."""
    started, started_cpu = time.perf_counter(), _cpu_seconds()
    count = 0
    for images, _ in ds:
        count += int(images.shape[0])
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - started_cpu
    if count != expected:
        raise RuntimeError(f"an epoch yielded {count} images instead of {expected}")
    return seconds, cpu


def measure(name: str, folder: Path, args: argparse.Namespace) -> EpochTimes:
    """Build pipeline ``name`` and time its setup, first epoch and cached epochs."""
    started = time.perf_counter()
    ds = PIPELINES[name](folder, args)
    setup = time.perf_counter() - started
    first, first_cpu = run_epoch(ds, args.images)
    cached = [run_epoch(ds, args.images)[0] for _ in range(args.cached_epochs)]
    del ds
    gc.collect()
    return EpochTimes(setup=setup, first=first, first_cpu=first_cpu, cached=cached)


def warm_up(folder: Path, args: argparse.Namespace) -> None:
    """Pull a few batches through every pipeline, untimed, to start TensorFlow's threads."""
    for name, build in PIPELINES.items():
        for _ in build(folder, args).take(WARM_UP_BATCHES):
            pass
        logger.info("warmed up %s", name)
    gc.collect()


def run_rounds(folder: Path, args: argparse.Namespace) -> dict[str, list[EpochTimes]]:
    names = list(PIPELINES)
    results: dict[str, list[EpochTimes]] = {name: [] for name in names}
    for round_number in range(args.rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            times = measure(name, folder, args)
            results[name].append(times)
            cached = ", ".join(f"{seconds:.2f}" for seconds in times.cached)
            logger.info(
                "round %d %s: setup %.2f s, first epoch %.2f s (CPU %.2f s), cached epochs %s s",
                round_number + 1,
                name,
                times.setup,
                times.first,
                times.first_cpu,
                cached,
            )
    return results


# ---- reporting ----


def summarise(runs: list[EpochTimes], images: int) -> dict[str, float]:
    """Return medians over rounds: setup seconds, images/s and CPU ms per image."""
    return {
        "setup": statistics.median(run.setup for run in runs),
        "first": statistics.median(images / run.first for run in runs),
        "first_with_setup": statistics.median(images / (run.setup + run.first) for run in runs),
        "cached": statistics.median(images / statistics.mean(run.cached) for run in runs),
        "first_cpu_ms": statistics.median(1000 * run.first_cpu / images for run in runs),
    }


def print_report(
    args: argparse.Namespace, sizes: list[int], results: dict, load: tuple[str, str]
) -> None:
    summary = {name: summarise(runs, args.images) for name, runs in results.items()}
    pixels = args.images * args.image_size**2 * 3
    cache_bytes = {"ours": pixels, "keras + .cache()": 4 * pixels, "keras": 0}
    print(f"\nMachine: {machine()}, TensorFlow {tf.__version__}")
    print(f"Load average (1, 5, 15 min) before: {load[0]}; after: {load[1]}")
    print(
        f"Images: {describe_sizes(sizes)} in {len(LABELS)} label folders. Image size "
        f"{args.image_size}, batch size {args.batch_size}; median of {args.rounds} round(s), "
        f"{args.cached_epochs} cached epoch(s) per round.\n"
    )
    print(
        "| pipeline | setup (s) | first epoch (images/s) | setup + first epoch (images/s) "
        "| CPU ms per image, first epoch | cached epochs (images/s) | cache size (computed) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, row in summary.items():
        cache = f"{cache_bytes[name] / 2**20:.0f} MiB" if cache_bytes[name] else "none"
        print(
            f"| {name} | {row['setup']:.2f} | {row['first']:.0f} | {row['first_with_setup']:.0f} "
            f"| {row['first_cpu_ms']:.2f} | {row['cached']:.0f} | {cache} |"
        )

    ours = summary["ours"]
    print(
        "\n| ratio | first epoch | setup + first epoch "
        "| CPU per image, first epoch (theirs / ours) | cached epochs |"
    )
    print("| --- | --- | --- | --- | --- |")
    for name in ("keras + .cache()", "keras"):
        first = ours["first"] / summary[name]["first"]
        with_setup = ours["first_with_setup"] / summary[name]["first_with_setup"]
        cpu = summary[name]["first_cpu_ms"] / ours["first_cpu_ms"]
        cached = ours["cached"] / summary[name]["cached"]
        print(f"| ours / {name} | {first:.2f}x | {with_setup:.2f}x | {cpu:.2f}x | {cached:.2f}x |")

    keras_cached = summary["keras + .cache()"]
    cached_ratio = ours["cached"] / keras_cached["cached"]
    first_ratio = min(
        ours["first"] / summary[name]["first"] for name in ("keras", "keras + .cache()")
    )
    print(
        f"\nGoal, cached epochs at least {GOAL_CACHED}x keras + .cache(): "
        f"{'met' if cached_ratio >= GOAL_CACHED else 'not met'} ({cached_ratio:.2f}x). "
        f"First epoch no slower than Keras: {'met' if first_ratio >= GOAL_FIRST else 'not met'} "
        f"({first_ratio:.2f}x)."
    )
    print(
        "Cached epochs of keras + .cache() replay the float32 batches of its first epoch in "
        "the same order. Ours are reshuffled image by image every epoch, which copies each "
        "batch, and the cache stores uint8 images, a quarter of the bytes."
    )


# ---- command line ----


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_input",
        description="Compare ImageDataSet with keras.utils.image_dataset_from_directory.",
    )
    parser.add_argument("--images", type=int, default=3000, help="JPEGs generated (default: 3000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: 3)")
    parser.add_argument(
        "--cached-epochs", type=int, default=2, help="cached epochs per round (default: 2)"
    )
    parser.add_argument(
        "--image-size", type=int, default=224, help="side of the square images, px (default: 224)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    parser.add_argument("--seed", type=int, default=0, help="image and shuffle seed (default: 0)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 300 images and 1 round")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder with the images"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.rounds = 300, 1
    for name in ("images", "rounds", "cached_epochs", "image_size", "batch_size"):
        if getattr(args, name) < 1:
            option = "--" + name.replace("_", "-")
            parser.error(f"{option} must be 1 or more, received {getattr(args, name)}")
    setup_logging()
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])

    work = Path(tempfile.mkdtemp(prefix="bench-input-"))
    folder = work / "images"
    try:
        started = time.perf_counter()
        sizes = make_image_set(folder, args.images, args.seed)
        logger.info("generated in %.1f s: %s", time.perf_counter() - started, describe_sizes(sizes))
        warm_up(folder, args)
        results = run_rounds(folder, args)
    finally:
        if args.keep:
            logger.info("kept %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)

    load_after = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print_report(args, sizes, results, (load_before, load_after))
    return 0


if __name__ == "__main__":
    sys.exit(main())
