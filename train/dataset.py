"""The labelled image dataset for training: index, check, split and decode images.

Notation: N images, K classes, S = ``image_size`` pixels.

:class:`ImageDataSet` reads either the collection stage's folders,
``<root>/<label>/<file>``, or its ``manifest.parquet`` (rows with status ``ok``, paths
relative to the processed folder). It then does four things before any
``tf.data.Dataset`` exists:

1. **Index.** Hidden folders and files (any name that starts with ".") are left out.
   Each file gets a key: the file stem when that is 16 hex digits, as the collection
   stage names files, otherwise the path relative to ``root``.
2. **Check.** Each file is read once. A file that is not an image by its first bytes
   is skipped, whatever its extension. So are unreadable, empty, truncated,
   unsupported (TIFF) and oversized files, found by walking the header with
   ``data.scripts.images.read_dimensions``, so a bad file cannot stop an epoch half-way.
   ``check="decode"`` also decodes every image with the same TensorFlow ops as
   training, which catches damage inside the compressed data (a PNG with a bad CRC,
   for example). Each skipped file is listed in :attr:`ImageDataSet.skipped`, and
   one log line sums them up.
3. **Split.** Each key is hashed (xxh3_64 of its UTF-8 bytes) to a number u in [0, 1),
   and u is compared with the cumulative fractions. The split of an image therefore
   depends on its key and ``split_seed`` alone. It is the same on every machine and
   run, and it does not change when other images are added or removed. The same rule
   applies within every class, so the split is stratified: each class's shares equal
   the fractions in expectation. They are not exact. A share over n images of a class
   has a standard deviation of sqrt(f * (1 - f) / n), about 0.03 for f = 0.8 and
   n = 200.
4. **Decode.** :func:`decode_image` turns JPEG, PNG, GIF (first frame), BMP and WebP
   bytes into uint8 RGB of shape (S, S, 3), with a plain bilinear resize that does not
   keep the aspect ratio. That matches ``keras.utils.image_dataset_from_directory``
   with its defaults, except that the result is rounded to uint8 and transparent
   pixels are composited on white, as the collection stage does.

Class names travel with the splits: :meth:`ImageDataSet.save_splits` writes
``splits.csv`` and ``class_names.json``, and :meth:`ImageDataSet.fingerprint` is the
hash to save with a model as "the data it was trained on".

Typical use::

    data = ImageDataSet("data/processed/v1/images", image_size=224)
    data.save_splits(run_dir)
    train = prepare_for_training(data.dataset("train"), training=True, batch_size=32,
                                 cache="memory")
    val = prepare_for_training(data.dataset("val"), training=False, batch_size=32,
                               cache="memory")
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import numbers
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal, NamedTuple

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import tensorflow as tf
import xxhash
from tqdm import tqdm

from data.scripts.common import atomic_path, write_json
from data.scripts.images import ImageCheckConfig, ImageRejected, read_dimensions, sniff_format
from data.scripts.manifest import KEY_RE, OK

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CHECK_MODES = ("header", "decode")
MANIFEST_COLUMNS = ("key", "label", "status", "path")
# Formats that tf.io.decode_image reads in TensorFlow 2.21. It has no TIFF decoder.
DECODABLE_FORMATS = ("jpeg", "png", "gif", "bmp", "webp")
MAX_PIXELS = ImageCheckConfig().max_pixels  # the collection stage's limit for width * height
DEFAULT_SHUFFLE_BUFFER = 1024  # images, and prepare_for_training states their memory cost
DEFAULT_SEED = 1337
SUM_TOLERANCE = 1e-6
SKIP_EXAMPLES_LOGGED = 5

_JPEG_MAGIC = b"\xff\xd8\xff"
_HASH_RANGE = float(2**64)


@dataclass(frozen=True)
class Sample:
    """One image that passed the checks."""

    key: str
    path: str  # relative to the dataset root, with "/" separators
    label: str
    split: str  # one of SPLITS
    bytes: int  # file size when the dataset was built
    format: str  # from the first bytes: one of DECODABLE_FORMATS


class _FileCheck(NamedTuple):
    bytes: int
    format: str | None
    reason: str | None  # None for a usable image
    message: str


@dataclass(frozen=True)
class SkippedFile:
    """One file or folder left out of the dataset, with a short reason and a message."""

    path: str  # relative to the dataset root, with "/" separators
    reason: str  # hidden, outside_label_folder, unreadable, empty, not_an_image, ...
    message: str


# ---- argument checks ----


def check_fractions(train_size: float, val_size: float, test_size: float) -> None:
    """Raise ValueError unless each fraction is in [0, 1] and they add up to 1 (within 1e-6)."""
    values = {"train_size": train_size, "val_size": val_size, "test_size": test_size}
    numeric = all(
        isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        for value in values.values()
    )
    if numeric:
        total = sum(values.values())
        if all(0.0 <= value <= 1.0 for value in values.values()):
            if abs(total - 1.0) <= SUM_TOLERANCE:
                return
    else:
        total = float("nan")
    received = ", ".join(f"{name}={value!r}" for name, value in values.items())
    raise ValueError(
        "train_size, val_size and test_size must each be a number in [0, 1], and they must "
        f"add up to 1. Received: {received} (sum {total:.6g}). Pass fractions such as "
        "train_size=0.8, val_size=0.1, test_size=0.1."
    )


def _check_image_size(image_size: int) -> None:
    if not isinstance(image_size, numbers.Integral) or isinstance(image_size, bool):
        raise ValueError(
            f"image_size must be an integer number of pixels. Received: {image_size!r}"
        )
    if image_size < 1:
        raise ValueError(f"image_size must be at least 1 pixel. Received: image_size={image_size}")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}. Received: split={split!r}")


def _check_class_names(class_names: Sequence[str]) -> list[str]:
    names = list(class_names)
    if not names or not all(isinstance(name, str) and name for name in names):
        raise ValueError(
            "class_names must be a non-empty list of non-empty strings. "
            f"Received: class_names={class_names!r}"
        )
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise ValueError(
            f"class_names must not repeat a name, but {repeated} appear more than once. "
            f"Received: class_names={names}"
        )
    return names


# ---- splitting ----


def hash_unit(key: str, seed: int = 0) -> float:
    """Map ``key`` to a number in [0, 1) with xxh3_64 of its UTF-8 bytes and ``seed``."""
    return xxhash.xxh3_64_intdigest(key.encode("utf-8"), seed=seed) / _HASH_RANGE


def assign_split(
    key: str, train_size: float, val_size: float, test_size: float, seed: int = 0
) -> str:
    """Return ``"train"``, ``"val"`` or ``"test"`` for ``key`` under the given fractions.

    A split with fraction 0 never receives a key, even when the fractions add up to
    slightly less than 1.
    """
    unit = hash_unit(key, seed)
    train_end = train_size if (val_size or test_size) else math.inf
    val_end = train_size + val_size if test_size else math.inf
    if unit < train_end:
        return "train"
    if unit < val_end:
        return "val"
    return "test"


# ---- finding and checking files ----


def _posix(path: Path | str) -> str:
    return PurePosixPath(*Path(path).parts).as_posix()


def _key_for(relative: str) -> str:
    stem = PurePosixPath(relative).stem
    return stem if KEY_RE.match(stem) else relative


def _walk_folder(root: Path) -> tuple[list[tuple[str, str]], list[SkippedFile]]:
    """List ``(relative path, label)`` of the files under ``root/<label>/``, sorted.

    Hidden entries are recorded once each and not entered. Files directly under
    ``root`` belong to no label and are recorded too.
    """
    candidates: list[tuple[str, str]] = []
    skipped: list[SkippedFile] = []
    for entry in sorted(os.scandir(root), key=lambda entry: entry.name):
        if entry.name.startswith("."):
            skipped.append(SkippedFile(entry.name, "hidden", "hidden name, ignored"))
        elif not entry.is_dir():
            skipped.append(
                SkippedFile(
                    entry.name,
                    "outside_label_folder",
                    "file directly under the root, not inside a label folder",
                )
            )
        else:
            for folder, dirnames, filenames in os.walk(entry.path):
                relative_folder = Path(folder).relative_to(root)
                for name in sorted(dirnames):
                    if name.startswith("."):
                        path = _posix(relative_folder / name)
                        skipped.append(SkippedFile(path, "hidden", "hidden folder, ignored"))
                dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
                for name in sorted(filenames):
                    path = _posix(relative_folder / name)
                    if name.startswith("."):
                        skipped.append(SkippedFile(path, "hidden", "hidden file, ignored"))
                    else:
                        candidates.append((path, entry.name))
    return candidates, skipped


def _read_manifest(manifest: Path) -> tuple[list[tuple[str, str, str]], list[SkippedFile]]:
    """List ``(relative path, label, key)`` of the ``ok`` rows of a collection manifest."""
    try:
        schema = pq.read_schema(manifest)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"manifest not found at {manifest}. Run `make fetch` first, or pass the folder "
            "of images as root without a manifest."
        ) from None
    missing = [name for name in MANIFEST_COLUMNS if name not in schema.names]
    if missing:
        raise ValueError(
            f"manifest {manifest} lacks the columns {missing}; the collection stage writes "
            f"{list(MANIFEST_COLUMNS)} among others. Received columns: {schema.names}"
        )
    table = pq.read_table(manifest, columns=list(MANIFEST_COLUMNS))
    table = table.filter(pc.equal(table.column("status"), OK))

    rows: list[tuple[str, str, str]] = []
    skipped: list[SkippedFile] = []
    seen_paths: set[str] = set()
    for row in table.to_pylist():
        path = row["path"] or ""
        parts = PurePosixPath(path).parts
        if path and PurePosixPath(path).as_posix() in seen_paths:
            # One file under two rows would enter the dataset twice, perhaps with two labels.
            skipped.append(
                SkippedFile(
                    path,
                    "duplicate_path",
                    f"manifest row of key {row['key']!r} points at {path!r}, which an earlier "
                    "row already uses; only the first row is kept",
                )
            )
            continue
        if not path or PurePosixPath(path).is_absolute() or ".." in parts or not row["label"]:
            skipped.append(
                SkippedFile(
                    path or f"<key {row['key']}>",
                    "invalid_row",
                    f"manifest row of key {row['key']!r} has path {row['path']!r} and label "
                    f"{row['label']!r}; a relative path inside the processed folder and a "
                    "label are required",
                )
            )
            continue
        seen_paths.add(PurePosixPath(path).as_posix())
        rows.append((path, row["label"], row["key"] or path))
    return sorted(rows), skipped


def _check_file(path: Path, max_pixels: int) -> _FileCheck:
    """Read one file and check that it is a decodable image of at most ``max_pixels``."""
    try:
        body = path.read_bytes()
    except FileNotFoundError:
        return _FileCheck(0, None, "missing", "file not found")
    except OSError as error:
        return _FileCheck(0, None, "unreadable", f"cannot be read: {error}")
    if not body:
        return _FileCheck(0, None, "empty", "empty file (0 bytes)")

    size = len(body)
    fmt = sniff_format(body[:32])
    if fmt is None:
        message = f"not an image by its bytes; starts with {body[:16]!r}"
        return _FileCheck(size, None, "not_an_image", message)
    if fmt not in DECODABLE_FORMATS:
        message = f"{fmt} image, which tf.io cannot decode; convert it to PNG or JPEG"
        return _FileCheck(size, fmt, "unsupported_format", message)
    try:
        width, height = read_dimensions(body, fmt)
    except ImageRejected as error:
        return _FileCheck(size, fmt, "corrupt", error.message)
    if width * height > max_pixels:
        message = (
            f"{fmt} header declares {width}x{height} pixels, more than max_pixels={max_pixels}"
        )
        return _FileCheck(size, fmt, "too_large", message)
    return _FileCheck(size, fmt, None, "")


def _check_files(
    root: Path, paths: Sequence[str], max_pixels: int, workers: int
) -> list[_FileCheck]:
    """Run _check_file on every path in a thread pool, with a progress bar on a terminal."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda path: _check_file(root / path, max_pixels), paths)
        return list(
            tqdm(results, total=len(paths), desc="checking images", unit="file", disable=None)
        )


def _find_undecodable(files: Sequence[str]) -> dict[int, str]:
    """Decode every file with :func:`decode_rgb` and return ``{index: error}`` for failures.

    The decodes run in parallel inside tf.data, where ``ignore_errors`` drops the
    failures. Only the few failures are decoded again, eagerly, to get their messages.
    """
    indices = tf.data.Dataset.from_tensor_slices(
        (tf.range(len(files), dtype=tf.int64), tf.constant(list(files), dtype=tf.string))
    )
    decoded = indices.map(
        lambda index, path: (index, tf.shape(decode_rgb(tf.io.read_file(path)))[0]),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    ).ignore_errors()
    passed = {int(index) for index, _ in decoded.as_numpy_iterator()}

    failures = {}
    for index in sorted(set(range(len(files))) - passed):
        try:
            decode_rgb(tf.io.read_file(files[index]))
            failures[index] = "TensorFlow failed to decode it in tf.data, but not when retried"
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as error:
            failures[index] = f"TensorFlow failed to decode it: {error.message.splitlines()[0]}"
    return failures


def _log_skipped(root: Path, total: int, skipped: Sequence[SkippedFile]) -> None:
    if not skipped:
        return
    for item in skipped:
        logger.debug("skipped %s (%s): %s", item.path, item.reason, item.message)
    counts = Counter(item.reason for item in skipped)
    by_reason = ", ".join(f"{count} {reason}" for reason, count in sorted(counts.items()))
    problems = [item for item in skipped if item.reason != "hidden"]
    examples = "; ".join(
        f"{item.path} ({item.message})" for item in problems[:SKIP_EXAMPLES_LOGGED]
    )
    more = len(problems) - SKIP_EXAMPLES_LOGGED
    if more > 0:
        examples += f"; {more} more in .skipped"
    level = logging.WARNING if problems else logging.INFO
    message = f"skipped {len(skipped)} of {total} entries under {root}: {by_reason}"
    logger.log(level, message + (f". {examples}" if examples else ""))


# ---- decoding ----


def _composite_on_white(rgb: tf.Tensor, alpha: tf.Tensor) -> tf.Tensor:
    """Blend uint8 RGB (h, w, 3) over white with uint8 alpha (h, w, 1), as uint8."""
    weight = tf.cast(alpha, tf.float32) / 255.0
    blended = tf.cast(rgb, tf.float32) * weight + 255.0 * (1.0 - weight)
    return tf.saturate_cast(tf.round(blended), tf.uint8)


def _decode_non_jpeg(contents: tf.Tensor) -> tf.Tensor:
    is_bmp = tf.equal(tf.strings.substr(contents, 0, 2), b"BM")
    return tf.cond(
        is_bmp, lambda: tf.io.decode_bmp(contents, channels=3), lambda: _decode_any(contents)
    )


def _decode_any(contents: tf.Tensor) -> tf.Tensor:
    image = tf.io.decode_image(contents, channels=0, dtype=tf.uint8, expand_animations=False)
    channels = tf.shape(image)[2]
    return tf.switch_case(
        channels - 1,
        [
            lambda: tf.tile(image[:, :, :1], [1, 1, 3]),
            lambda: _composite_on_white(tf.tile(image[:, :, :1], [1, 1, 3]), image[:, :, 1:2]),
            lambda: image[:, :, :3],
            lambda: _composite_on_white(image[:, :, :3], image[:, :, 3:4]),
        ],
    )


def decode_rgb(contents: tf.Tensor) -> tf.Tensor:
    """Decode JPEG, PNG, GIF, BMP or WebP bytes (a scalar tf.string) to uint8 RGB (h, w, 3).

    Gray becomes three equal channels, and transparency is composited on white, except
    in BMP files, where the fourth channel is dropped because 32-bit BMPs usually leave
    it at 0. A GIF gives its first frame. Raises ``tf.errors.InvalidArgumentError`` for
    bytes that the decoders reject. NOTE: the EXIF orientation is ignored, as in
    ``keras.utils.image_dataset_from_directory``. The collection stage stores upright
    pixels, so this only matters for other folders.
    """
    # JPEG, nearly every file of the collection stage, takes the shortest path: one cond.
    is_jpeg = tf.equal(tf.strings.substr(contents, 0, 3), _JPEG_MAGIC)
    image = tf.cond(
        is_jpeg,
        lambda: tf.io.decode_jpeg(contents, channels=3),
        lambda: _decode_non_jpeg(contents),
    )
    image.set_shape([None, None, 3])
    return image


def decode_image(contents: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decode image bytes with :func:`decode_rgb` and resize to uint8 (image_size, image_size, 3).

    The resize is bilinear without antialiasing and without keeping the aspect ratio,
    as ``tf.image.resize`` does by default and ``image_dataset_from_directory`` uses.
    The float result is rounded to the nearest integer, with halves rounded up.
    """
    return _resize_to_uint8(decode_rgb(contents), image_size)


def _resize_to_uint8(image: tf.Tensor, image_size: int) -> tf.Tensor:
    resized = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=False)
    # Bilinear weights are convex, so values stay in [0, 255] and a plain cast of
    # value + 0.5 rounds without the clipping of tf.saturate_cast.
    return tf.cast(resized + 0.5, tf.uint8)


# ---- the dataset ----


class ImageDataSet:
    """Checked, split and labelled images under one root folder.

    Args:
        root: the folder of label folders, ``<root>/<label>/<image>``. With ``manifest``,
            the processed folder that the manifest's ``path`` column is relative to.
        manifest: a collection-stage ``manifest.parquet``. Its rows with status ``ok``
            give the images, and folders under ``root`` are not walked. Default None.
        class_names: the classes in label-index order. Default None: the sorted labels
            that hold at least one usable image. When given, a label outside the list
            raises ValueError, and so does a class without images.
        image_size: side S of the square images that :meth:`dataset` yields, in pixels.
        train_size, val_size, test_size: split fractions, each in [0, 1], adding up to 1.
        split_seed: seed of the key hash. Changing it draws a different split.
        check: ``"header"`` (default) reads every file and walks its header.
            ``"decode"`` also decodes every image once, at the cost of about one
            uncached epoch.
        max_pixels: images whose header declares more pixels (width * height) are
            skipped, because decoding one would allocate that much memory.
        workers: threads that read and check files. Default: 2 per core, at most 16.

    Attributes:
        root: the absolute root folder.
        class_names: class names in label-index order. Save them with the model.
        samples: every usable image as a :class:`Sample`, sorted by key.
        skipped: every file or folder left out, as a :class:`SkippedFile`, sorted by path.
        fractions: ``{"train": ..., "val": ..., "test": ...}`` as given.

    Raises:
        ValueError: for invalid arguments, for unknown labels or empty classes when
            ``class_names`` is given, and when no usable image is found.
        FileNotFoundError: when ``root`` or ``manifest`` does not exist.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        manifest: str | os.PathLike[str] | None = None,
        class_names: Sequence[str] | None = None,
        image_size: int = 224,
        train_size: float = 0.8,
        val_size: float = 0.1,
        test_size: float = 0.1,
        split_seed: int = 0,
        check: Literal["header", "decode"] = "header",
        max_pixels: int = MAX_PIXELS,
        workers: int | None = None,
    ) -> None:
        check_fractions(train_size, val_size, test_size)
        _check_image_size(image_size)
        if check not in CHECK_MODES:
            raise ValueError(f"check must be one of {CHECK_MODES}. Received: check={check!r}")
        self.root = Path(os.path.abspath(root))
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"root folder not found: {self.root}. Pass the folder that holds one "
                "folder per label (images/ of a processed data version)."
            )
        self.manifest = None if manifest is None else Path(manifest)
        self.image_size = int(image_size)
        self.fractions = {"train": train_size, "val": val_size, "test": test_size}
        self.split_seed = split_seed
        given_names = None if class_names is None else _check_class_names(class_names)
        workers = workers or min(16, 2 * (os.cpu_count() or 1))

        # Sorted by key, the order of every split's dataset.
        self.samples: list[Sample]
        self.skipped: list[SkippedFile]
        self.samples, self.skipped = self._collect(check, max_pixels, workers)
        self.class_names: list[str] = self._settle_class_names(given_names)
        self._index_of = {name: index for index, name in enumerate(self.class_names)}
        self._by_split = {
            split: [sample for sample in self.samples if sample.split == split] for split in SPLITS
        }
        self._warn_empty_splits()
        counts = {split: len(samples) for split, samples in self._by_split.items()}
        logger.info(
            "%d images in %d classes under %s: train %d, val %d, test %d",
            len(self.samples),
            len(self.class_names),
            self.root,
            counts["train"],
            counts["val"],
            counts["test"],
        )

    @classmethod
    def from_manifest(cls, manifest: str | os.PathLike[str], **kwargs: object) -> ImageDataSet:
        """Build the dataset from a ``manifest.parquet`` whose paths are relative to its folder."""
        manifest = Path(manifest)
        return cls(manifest.parent, manifest=manifest, **kwargs)  # type: ignore[arg-type]

    # ---- building ----

    def _collect(
        self, check: str, max_pixels: int, workers: int
    ) -> tuple[list[Sample], list[SkippedFile]]:
        """Index, check and split the files, and return the samples (by key) and the skipped."""
        entries, skipped = self._index()
        total = len(entries) + len(skipped)
        results = _check_files(self.root, [path for path, _, _ in entries], max_pixels, workers)
        samples: list[Sample] = []
        for (path, label, key), result in zip(entries, results):
            if result.reason is not None:
                skipped.append(SkippedFile(path, result.reason, result.message))
                continue
            fractions = self.fractions
            split = assign_split(
                key, fractions["train"], fractions["val"], fractions["test"], self.split_seed
            )
            samples.append(Sample(key, path, label, split, result.bytes, result.format))

        if check == "decode":
            failures = _find_undecodable([str(self.root / sample.path) for sample in samples])
            for index, message in failures.items():
                skipped.append(SkippedFile(samples[index].path, "undecodable", message))
            samples = [sample for index, sample in enumerate(samples) if index not in failures]

        samples = self._drop_duplicate_keys(samples, skipped)
        skipped.sort(key=lambda item: item.path)
        _log_skipped(self.root, total, skipped)
        return sorted(samples, key=lambda sample: sample.key), skipped

    def _index(self) -> tuple[list[tuple[str, str, str]], list[SkippedFile]]:
        """List ``(relative path, label, key)`` candidates and the entries skipped on sight."""
        if self.manifest is not None:
            return _read_manifest(self.manifest)
        candidates, skipped = _walk_folder(self.root)
        return [(path, label, _key_for(path)) for path, label in candidates], skipped

    @staticmethod
    def _drop_duplicate_keys(samples: list[Sample], skipped: list[SkippedFile]) -> list[Sample]:
        """Keep the first path (in path order) of each key and skip the others."""
        first_path: dict[str, str] = {}
        unique_samples = []
        for sample in samples:
            if sample.key in first_path:
                message = f"duplicate key {sample.key!r}, already used by {first_path[sample.key]}"
                skipped.append(SkippedFile(sample.path, "duplicate_key", message))
            else:
                first_path[sample.key] = sample.path
                unique_samples.append(sample)
        return unique_samples

    def _settle_class_names(self, given_names: list[str] | None) -> list[str]:
        counts = Counter(sample.label for sample in self.samples)
        if given_names is None:
            if not counts:
                raise ValueError(
                    f"no usable image found under {self.root}"
                    + (f" in manifest {self.manifest}" if self.manifest else "")
                    + f"; {len(self.skipped)} entries were skipped (see the log). Expected "
                    "<root>/<label>/<image> files in JPEG, PNG, GIF, BMP or WebP format."
                )
            return sorted(counts)

        unknown = sorted(set(counts) - set(given_names))
        if unknown:
            raise ValueError(
                f"labels {unknown} are not in class_names {given_names}. Add them to class_names, "
                "or remove their images from the root folder or manifest."
            )
        empty = [name for name in given_names if counts[name] == 0]
        if empty:
            raise ValueError(
                f"classes {empty} of class_names have no usable image under {self.root}. "
                "Add images for them, or remove them from class_names."
            )
        return given_names

    def _warn_empty_splits(self) -> None:
        """Log one warning that names every (class, split) pair left empty by a tiny class."""
        empty = []
        for name, counts in self.counts().items():
            for split in SPLITS:
                if self.fractions[split] > 0 and counts[split] == 0:
                    empty.append(f"{name!r} in {split} ({sum(counts.values())} images in all)")
        if empty:
            logger.warning(
                "%d class/split pairs get no image although their fraction is above 0: %s. "
                "Metrics of those splits will not cover those classes; add images to them.",
                len(empty),
                ", ".join(empty),
            )

    # ---- reading ----

    @property
    def num_classes(self) -> int:
        """K, the number of classes."""
        return len(self.class_names)

    def split_samples(self, split: str) -> list[Sample]:
        """Return the samples of ``split`` sorted by key, the order of :meth:`dataset`."""
        _check_split(split)
        return list(self._by_split[split])

    def keys(self, split: str) -> list[str]:
        """Return the keys of ``split`` in dataset order."""
        return [sample.key for sample in self.split_samples(split)]

    def paths(self, split: str) -> list[str]:
        """Return the absolute file paths of ``split`` in dataset order."""
        return [str(self.root / sample.path) for sample in self.split_samples(split)]

    def labels(self, split: str) -> np.ndarray:
        """Return the label indices of ``split`` in dataset order, int32 of shape (n,)."""
        indices = [self._index_of[sample.label] for sample in self.split_samples(split)]
        return np.asarray(indices, dtype=np.int32)

    def counts(self) -> dict[str, dict[str, int]]:
        """Return ``{class name: {split: images}}`` for every class and split."""
        table = {name: dict.fromkeys(SPLITS, 0) for name in self.class_names}
        for sample in self.samples:
            table[sample.label][sample.split] += 1
        return table

    def process_path(self, path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Read and decode one file: ``(uint8 (S, S, 3), int32 ())`` from a path and a label."""
        image = decode_image(tf.io.read_file(path), self.image_size)
        return image, tf.cast(label, tf.int32)

    def _process_jpeg_path(self, path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        return _resize_to_uint8(image, self.image_size), tf.cast(label, tf.int32)

    def dataset(self, split: str) -> tf.data.Dataset:
        """Return the ``tf.data.Dataset`` of ``(image, label)`` of ``split``, sorted by key.

        Elements are uint8 images of shape (S, S, 3) and int32 scalar labels. The order
        is the same on every iteration and equals :meth:`labels`. Nothing is cached,
        shuffled or batched: see :func:`prepare_for_training`.
        """
        paths = tf.constant(self.paths(split), dtype=tf.string)
        labels = tf.constant(self.labels(split), dtype=tf.int32)
        pairs = tf.data.Dataset.from_tensor_slices((paths, labels))
        # The check read every file's format. When all are JPEG, as the collection stage
        # stores them, the map skips the per-image format dispatch of process_path.
        all_jpeg = all(sample.format == "jpeg" for sample in self._by_split[split])
        process = self._process_jpeg_path if all_jpeg else self.process_path
        return pairs.map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    # ---- recording ----

    def fingerprint(self) -> str:
        """Return a SHA-256 hex digest of the class names and each (key, label, split, bytes).

        It changes when an image is added, removed, relabelled, moved to another split
        or rewritten with a new size. NOTE: pixel contents are not hashed, so a rewrite
        that keeps the file size is not detected. Modification times are left out on
        purpose, because copying a dataset changes them.
        """
        digest = hashlib.sha256()
        digest.update(("\n".join(self.class_names) + "\n\n").encode("utf-8"))
        for sample in self.samples:
            line = f"{sample.key}\t{sample.label}\t{sample.split}\t{sample.bytes}\n"
            digest.update(line.encode("utf-8"))
        return digest.hexdigest()

    def save_splits(self, folder: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``splits.csv`` and ``class_names.json`` into ``folder``, each atomically.

        ``splits.csv`` has the columns key, path (relative to the root), label and
        split, sorted by key. ``class_names.json`` is the JSON list of class names in
        label-index order. Returns the two paths.
        """
        folder = Path(folder)
        splits_path = folder / "splits.csv"
        with atomic_path(splits_path) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["key", "path", "label", "split"])
                for sample in self.samples:
                    writer.writerow([sample.key, sample.path, sample.label, sample.split])
        names_path = folder / "class_names.json"
        write_json(names_path, self.class_names)
        return splits_path, names_path

    def cache_path(self, folder: str | os.PathLike[str], split: str) -> Path:
        """Return a disk-cache prefix for ``split`` that changes with the data and the size.

        ``tf.data`` reuses a cache file without checking what it holds, so a cache
        named after the fingerprint and S cannot serve stale images.
        """
        _check_split(split)
        return Path(folder) / f"{split}-{self.image_size}px-{self.fingerprint()[:16]}"

    def __repr__(self) -> str:
        sizes = ", ".join(f"{split} {len(self._by_split[split])}" for split in SPLITS)
        return (
            f"ImageDataSet(root={str(self.root)!r}, classes={self.num_classes}, {sizes}, "
            f"skipped {len(self.skipped)}, image_size={self.image_size})"
        )


# ---- the input pipeline ----


def prepare_for_training(
    ds: tf.data.Dataset,
    *,
    training: bool,
    batch_size: int,
    cache: Literal["memory"] | str | os.PathLike[str] | None = None,
    shuffle_buffer: int | None = None,
    seed: int = DEFAULT_SEED,
) -> tf.data.Dataset:
    """Cache, shuffle (only when training), batch and prefetch an ``(image, label)`` dataset.

    Args:
        ds: elements ``(uint8 (S, S, 3), int32 ())``, as :meth:`ImageDataSet.dataset` yields.
        training: shuffle with ``seed``, in a new order each epoch. With False the order
            of ``ds`` is kept, so predictions line up with :meth:`ImageDataSet.labels`.
        batch_size: images per batch. The last batch may be smaller.
        cache: ``"memory"``, a file path prefix for a cache on disk, or None for no
            cache. The cache contains decoded uint8 images (S * S * 3 bytes each) and is
            filled by the first full iteration. Use :meth:`ImageDataSet.cache_path` for
            the disk path, because ``tf.data`` reuses an existing cache file as it is.
            NOTE: an iteration stopped before the end of the first epoch leaves a
            partial cache on disk, which ``tf.data`` then refuses to use.
        shuffle_buffer: images held for shuffling. Default: the whole dataset with
            ``cache="memory"``, where the buffer refers to the cached images instead of
            copying them. Otherwise 1024, which costs 1024 * S * S * 3 bytes (154 MB at
            S = 224). Images are sorted by key, which for collection-stage files is a
            hash, so neighbours already mix labels. For keys that are paths
            (``<label>/<name>``), pass a buffer of the whole dataset or labels arrive in runs.
        seed: shuffle seed.

    Returns:
        Batches ``(uint8 (b, S, S, 3), int32 (b,))``, prefetched with AUTOTUNE.

    Raises:
        ValueError: for a batch size or shuffle buffer below 1, or an unknown cache value.
    """
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1. Received: batch_size={batch_size!r}")
    if shuffle_buffer is not None and shuffle_buffer < 1:
        raise ValueError(
            f"shuffle_buffer must be >= 1 or None for the default. Received: {shuffle_buffer!r}"
        )
    if isinstance(cache, str) and cache in ("", "disk", "none"):
        raise ValueError(
            f'cache must be "memory", a file path prefix or None. Received: cache={cache!r}'
        )

    if cache == "memory":
        ds = ds.cache()
    elif cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        ds = ds.cache(os.fspath(cache))

    if training:
        ds = ds.shuffle(
            _shuffle_buffer(ds, cache, shuffle_buffer), seed=seed, reshuffle_each_iteration=True
        )
    ds = ds.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def _shuffle_buffer(ds: tf.data.Dataset, cache: object, requested: int | None) -> int:
    if requested is not None:
        return requested
    size = int(ds.cardinality())
    if size < 1:  # tf.data.UNKNOWN_CARDINALITY, INFINITE_CARDINALITY or empty
        return DEFAULT_SHUFFLE_BUFFER
    return size if cache == "memory" else min(size, DEFAULT_SHUFFLE_BUFFER)
