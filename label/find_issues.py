"""Find images whose label is probably wrong, and duplicates that carry different labels.

``python -m label.find_issues --processed-dir data/processed/v1`` proposes; it changes no
label. A person reviews the ranked table, and a separate step writes the corrected version.

Notation (cleanlab's): N images, K classes, F the length of one feature vector.

Steps:

1. **Open** every image of the processed folder with ``train.dataset.ImageDataSet``, all
   splits together, so that every image gets an out-of-sample probability. The class order
   comes from the dataset's ``class_names`` (or ``--class-names``) and nowhere else.
2. **Features** of the frozen backbone, computed once per image and cached in the output
   folder (``features-<model>-<size>px-<hash>.npz``).
3. **Cross-validation**: stratified K-fold over the features. Each fold trains a freshly
   initialised head on the other folds and predicts the held-out fold. The head is a
   ``keras.models.clone_model`` of the model's head, so the backbone is built once. The
   result is ``pred_probs`` [N, K], where no image was seen by the head that scored it.
4. **Label issues**: ``cleanlab.filter.find_label_issues`` ranked by self-confidence, with
   ``cleanlab.rank.get_label_quality_scores``. The suggested label is argmax of pred_probs.
5. **Duplicate conflicts**: images with the same SHA-256 of their bytes, or a dHash (64 bits)
   within ``--max-distance`` bits, whose labels differ.
6. **Output**: ``candidates.csv`` (worst first), ``pred_probs.npy`` with ``samples.csv``
   (its row order), and ``summary.json``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from data.scripts.common import PROJECT_ROOT, atomic_path, processed_dir, setup_logging, write_json

logger = logging.getLogger(__name__)

REVIEWS_DIR = PROJECT_ROOT / "label" / "reviews"
LABEL_ISSUE = "label_issue"
DUPLICATE_CONFLICT = "duplicate_conflict"
DEFAULT_MAX_DISTANCE = 6
DHASH_BITS = 64
BAND_BITS = 16  # multi-index hashing splits a dHash into 4 bands of 16 bits
ROW_SUM_TOLERANCE = 1e-3  # float32 softmax rows sum to 1 within about 1e-6
CANDIDATE_COLUMNS = (
    "key",
    "path",
    "given_label",
    "suggested_label",
    "quality_score",
    "reason",
)


@dataclasses.dataclass
class FindIssuesConfig:
    """The settings of one run; ``summary.json`` stores them as resolved."""

    processed_dir: Path
    model: str = "resnet50v2_pool"
    weights: str = "imagenet"
    image_size: int = 224
    folds: int = 5
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    dropout: float = 0.3
    seed: int = 0
    max_distance: int = DEFAULT_MAX_DISTANCE
    class_names: list[str] | None = None
    out: Path | None = None  # default: label/reviews/<data version>/candidates.csv

    @property
    def out_path(self) -> Path:
        """Return the candidates file, by default under ``label/reviews/<data version>/``."""
        if self.out is not None:
            return Path(self.out)
        return REVIEWS_DIR / Path(self.processed_dir).name / "candidates.csv"


@dataclasses.dataclass(frozen=True)
class DuplicateConflict:
    """The closest differently-labelled duplicate of one image."""

    other: int  # index of the other image
    distance: int  # dHash Hamming distance in bits; 0 for identical bytes
    exact: bool  # the two files have the same SHA-256


# ---- checks ----


def check_labels(
    labels: np.ndarray | Sequence[int], class_names: Sequence[str], *, folds: int | None = None
) -> np.ndarray:
    """Check N labels against K class names and return them as int64 [N].

    Args:
        labels: integer label indices in [0, K).
        class_names: the K class names in label-index order.
        folds: when given, every class must have at least this many images.

    Raises:
        ValueError: string or other non-integer labels, a label outside [0, K), or (with
            ``folds``) a class with fewer images than folds.
    """
    values = np.asarray(labels)
    num_classes = len(class_names)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(
            f"Expected labels as a non-empty 1-D array of N class indices. "
            f"Received: labels of shape {values.shape}"
        )
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(
            f"Expected integer class indices in [0, {num_classes}) as labels, in the order of "
            f"class_names {list(class_names)}. Received: labels of dtype {values.dtype}, "
            f"for example {values[0]!r}. Map names to indices with "
            f"class_names.index(name) first."
        )
    outside = values[(values < 0) | (values >= num_classes)]
    if outside.size:
        raise ValueError(
            f"Expected labels in [0, {num_classes}) for the {num_classes} classes "
            f"{list(class_names)}. Received: {outside.size} labels outside, for example "
            f"{int(outside[0])}. Check that labels and class_names come from the same dataset."
        )
    if folds is not None:
        _check_fold_counts(values, class_names, folds)
    return values.astype(np.int64)


def _check_fold_counts(labels: np.ndarray, class_names: Sequence[str], folds: int) -> None:
    counts = np.bincount(labels, minlength=len(class_names))
    small = {name: int(count) for name, count in zip(class_names, counts) if count < folds}
    if small:
        listed = ", ".join(f"{name!r} has {count}" for name, count in small.items())
        raise ValueError(
            f"Stratified {folds}-fold cross-validation needs at least {folds} images per class, "
            f"but {listed}. Pass fewer folds (--folds {max(2, min(small.values()))}, at "
            f"least 2), add images to those classes, or leave them out with --class-names."
        )


def check_pred_probs(pred_probs: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """Check pred_probs [N, K] against K class names and return it as float64.

    Raises:
        ValueError: not 2-D, not K columns, a value outside [0, 1] or not finite, or a row
            that does not sum to 1 within 1e-3.
    """
    probs = np.asarray(pred_probs, dtype=np.float64)
    num_classes = len(class_names)
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise ValueError(
            f"Expected pred_probs of shape (N, {num_classes}), one column per class of "
            f"{list(class_names)} in that order. Received: shape {probs.shape}. Use the class "
            f"names of the model that produced the probabilities."
        )
    if not np.all(np.isfinite(probs)):
        raise ValueError(
            f"Expected finite pred_probs. Received: {int(np.sum(~np.isfinite(probs)))} NaN or "
            "infinite values. Check the model for a diverged training run."
        )
    if probs.min() < 0.0 or probs.max() > 1.0:
        raise ValueError(
            "Expected pred_probs in [0, 1]. Received: values from "
            f"{probs.min():.4g} to {probs.max():.4g}. Pass softmax outputs, not logits."
        )
    sums = probs.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if abs(sums[worst] - 1.0) > ROW_SUM_TOLERANCE:
        raise ValueError(
            f"Expected each row of pred_probs to sum to 1 within {ROW_SUM_TOLERANCE}. "
            f"Received: row {worst} sums to {sums[worst]:.6g}. Pass softmax outputs, "
            f"not logits."
        )
    return probs


# ---- cross-validated probabilities ----


def out_of_sample_probs(
    head: Any,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    folds: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Predict every image with a head that did not train on it (stratified K-fold).

    Each fold clones ``head`` with ``keras.models.clone_model``, which builds new layers from
    the configuration and so initialises them afresh. Its trained weights, if any, are not
    used, so a head trained on all labels cannot leak into the scores.

    Args:
        head: ``split_model(model).head``, [batch, F] to [batch, K] probabilities.
        features: [N, F] float32 from ``train.features.extract_features``.
        labels: [N] int label indices in [0, K), checked with ``check_labels``.
        folds: number of folds, at least 2 and at most the smallest class count.
        epochs, batch_size, learning_rate: head training per fold.
        seed: seeds the fold assignment (``StratifiedKFold``) and fold f's training (seed + f).

    Returns:
        ``(pred_probs, fold_of)``: [N, K] float32 out-of-sample probabilities and [N] int
        fold index of each image.
    """
    import keras
    from sklearn.model_selection import StratifiedKFold

    from train.features import train_head
    from train.models import class_weights, compile_model

    if folds < 2:
        raise ValueError(f"Expected folds >= 2 for cross-validation. Received: folds={folds}")
    num_classes = int(head.output_shape[-1])
    pred_probs = np.zeros((len(labels), num_classes), dtype=np.float32)
    fold_of = np.full(len(labels), -1, dtype=np.int64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)

    for fold, (train_index, test_index) in enumerate(splitter.split(features, labels)):
        keras.utils.set_random_seed(seed + fold)
        fold_head = keras.models.clone_model(head)
        compile_model(fold_head, learning_rate)
        train_head(
            fold_head,
            features[train_index],
            labels[train_index],
            epochs=epochs,
            batch_size=batch_size,
            class_weight=class_weights(labels[train_index], num_classes),
            seed=seed + fold,
            verbose=0,
        )
        pred_probs[test_index] = _predict_eagerly(fold_head, features[test_index])
        fold_of[test_index] = fold
        logger.info("fold %d of %d: predicted %d held-out images", fold + 1, folds, len(test_index))
    return pred_probs, fold_of


def _predict_eagerly(head: Any, features: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Run the head in inference mode without ``predict``, which traces anew for each fold."""
    outputs = [
        np.asarray(head(features[start : start + chunk], training=False), dtype=np.float32)
        for start in range(0, len(features), chunk)
    ]
    return np.concatenate(outputs)


# ---- label issues ----


def rank_label_issues(
    labels: np.ndarray, pred_probs: np.ndarray, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Find likely label errors with cleanlab, worst first.

    Args:
        labels: [N] int label indices in [0, K).
        pred_probs: [N, K] out-of-sample probabilities, columns in ``class_names`` order.
        class_names: the K class names.

    Returns:
        ``(issue_indices, quality_scores)``: indices of the likely errors ranked by
        self-confidence (lowest first), and [N] label quality scores in [0, 1] (the
        probability of the given label).

    Raises:
        ValueError: from ``check_labels`` and ``check_pred_probs``, or when labels and
            pred_probs have different N.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = check_labels(labels, class_names)
    probs = check_pred_probs(pred_probs, class_names)
    if len(labels) != len(probs):
        raise ValueError(
            f"Expected one row of pred_probs per label. Received: {len(labels)} labels and "
            f"{len(probs)} rows"
        )
    # cleanlab rejects rows that do not sum to 1 within its own tolerance, so float32
    # softmax outputs are renormalised in float64 first.
    probs = probs / probs.sum(axis=1, keepdims=True)
    issues = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence")
    scores = get_label_quality_scores(labels, probs)
    return np.asarray(issues, dtype=np.int64), np.asarray(scores, dtype=np.float64)


# ---- duplicates ----


def dhash(image: np.ndarray) -> int:
    """Return the 64-bit difference hash of a grayscale image [height, width] uint8.

    The image is shrunk to 9 x 8 pixels (``cv2.INTER_AREA``) and bit i is set where a
    pixel is brighter than its right neighbour, row by row. Re-encoding, resizing and mild
    compression change few bits, so a small Hamming distance means a near-duplicate.
    """
    import cv2

    small = cv2.resize(image, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] < small[:, :-1]).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def hash_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """Return ``(SHA-256 hex digest of the bytes, dHash)`` of one image file.

    OpenCV decodes the image; where it cannot (some GIF and WebP files), TensorFlow does,
    as in training.
    """
    import cv2

    body = Path(path).read_bytes()
    sha256 = hashlib.sha256(body).hexdigest()
    gray = cv2.imdecode(np.frombuffer(body, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        import tensorflow as tf

        from train.dataset import decode_rgb

        rgb = decode_rgb(tf.constant(body)).numpy()
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return sha256, dhash(gray)


def hash_files(paths: Sequence[str], workers: int | None = None) -> tuple[list[str], np.ndarray]:
    """Hash N files in a thread pool: N SHA-256 hex digests and dHashes [N] uint64."""
    workers = workers or min(16, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(hash_file, paths))
    digests = [digest for digest, _ in results]
    return digests, np.asarray([value for _, value in results], dtype=np.uint64)


def near_pairs(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """Return pairs (i, j), i < j, of distinct hash values within ``max_distance`` bits.

    Multi-index hashing: each 64-bit hash is cut into 4 bands of 16 bits. By the pigeonhole
    principle, two hashes within d bits differ in at most d // 4 bits on some band. So for
    each band the candidates are the hashes whose band value lies within d // 4 bits of it.
    For d from 4 to 7 that is 17 probes per band, and the cost grows with N times the bucket
    sizes instead of N². The full 64-bit distance then filters the candidates.

    Args:
        hashes: [M] uint64, all different (one per exact-hash bucket).
        max_distance: the largest Hamming distance in bits that counts as near, 0 to 63.

    Returns:
        [P, 2] int64 index pairs into ``hashes``, sorted.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    if len(hashes) < 2 or max_distance < 1:
        return np.zeros((0, 2), dtype=np.int64)
    band_radius = max_distance // (DHASH_BITS // BAND_BITS)
    masks = _masks_within(band_radius, BAND_BITS)
    found: list[np.ndarray] = []
    for band in range(DHASH_BITS // BAND_BITS):
        values = ((hashes >> np.uint64(band * BAND_BITS)) & np.uint64(0xFFFF)).astype(np.int64)
        order = np.argsort(values, kind="stable")
        sorted_values = values[order]
        for mask in masks:
            found.append(_matching_pairs(values ^ mask, sorted_values, order))

    pairs = np.concatenate(found)
    pairs = pairs[pairs[:, 0] < pairs[:, 1]]
    pairs = np.unique(pairs, axis=0)
    distances = _popcount64(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]])
    return pairs[distances <= max_distance]


def _masks_within(radius: int, bits: int) -> list[int]:
    """List every mask of ``bits`` bits with at most ``radius`` bits set, 0 included."""
    from itertools import combinations

    masks = []
    for count in range(radius + 1):
        for positions in combinations(range(bits), count):
            masks.append(sum(1 << position for position in positions))
    return masks


def _matching_pairs(
    queries: np.ndarray, sorted_values: np.ndarray, order: np.ndarray
) -> np.ndarray:
    """Return the pairs (i, j) with queries[i] == values[j]; ``values[order]`` is sorted."""
    starts = np.searchsorted(sorted_values, queries, side="left")
    ends = np.searchsorted(sorted_values, queries, side="right")
    counts = ends - starts
    left = np.repeat(np.arange(len(queries)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    right = order[np.repeat(starts, counts) + offsets]
    return np.stack([left, right], axis=1)


def _popcount64(values: np.ndarray) -> np.ndarray:
    as_bytes = values.astype(">u8").view(np.uint8).reshape(-1, 8)
    return np.unpackbits(as_bytes, axis=1).sum(axis=1)


def find_duplicate_conflicts(
    digests: Sequence[str],
    hashes: np.ndarray,
    labels: np.ndarray,
    *,
    max_distance: int = DEFAULT_MAX_DISTANCE,
) -> dict[int, DuplicateConflict]:
    """Find, for each image, its closest duplicate that carries a different label.

    Images are first grouped by exact dHash value, so a cluster of identical pictures costs
    one group and not its count squared. Pairs of groups then come from ``near_pairs``.

    Args:
        digests: N SHA-256 hex digests of the files' bytes.
        hashes: [N] uint64 dHashes.
        labels: [N] int label indices.
        max_distance: dHash Hamming distance in bits up to which two images are duplicates;
            0 flags only identical dHashes.

    Returns:
        ``{image index: DuplicateConflict}`` for every image with a differently-labelled
        duplicate. Identical bytes win over a smaller distance, then the lower index.
    """
    unique_hashes, group_of = np.unique(np.asarray(hashes, dtype=np.uint64), return_inverse=True)
    members: list[list[int]] = [[] for _ in unique_hashes]
    for index, group in enumerate(group_of):
        members[group].append(index)

    best: dict[int, DuplicateConflict] = {}
    for group_members in members:
        _match_groups(group_members, group_members, 0, digests, labels, best)
    for first, second in near_pairs(unique_hashes, max_distance):
        distance = int(_popcount64(unique_hashes[[first]] ^ unique_hashes[[second]])[0])
        _match_groups(members[first], members[second], distance, digests, labels, best)
        _match_groups(members[second], members[first], distance, digests, labels, best)
    return best


def _match_groups(
    images: list[int],
    others: list[int],
    distance: int,
    digests: Sequence[str],
    labels: np.ndarray,
    best: dict[int, DuplicateConflict],
) -> None:
    """Record for each image in ``images`` a differently-labelled image of ``others``."""
    # Lookups by label and by (digest, label) keep a large group of identical pictures
    # linear in its size: each image checks at most K labels, not every other member.
    first_by_label: dict[int, int] = {}
    by_digest: dict[str, dict[int, int]] = {}
    for other in others:
        label = int(labels[other])
        first_by_label.setdefault(label, other)
        by_digest.setdefault(digests[other], {}).setdefault(label, other)

    for image in images:
        label = int(labels[image])
        same_bytes = by_digest.get(digests[image], {})
        exact = [other for other_label, other in same_bytes.items() if other_label != label]
        if exact:
            candidate = DuplicateConflict(min(exact), 0, True)
        else:
            different = [
                other for other_label, other in first_by_label.items() if other_label != label
            ]
            if not different:
                continue
            candidate = DuplicateConflict(min(different), distance, False)
        current = best.get(image)
        if current is None or _rank(candidate) < _rank(current):
            best[image] = candidate


def _rank(conflict: DuplicateConflict) -> tuple[int, int, int]:
    return (0 if conflict.exact else 1, conflict.distance, conflict.other)


# ---- the table ----


def candidate_rows(
    *,
    keys: Sequence[str],
    paths: Sequence[str],
    labels: np.ndarray,
    pred_probs: np.ndarray,
    class_names: Sequence[str],
    issue_indices: np.ndarray,
    quality_scores: np.ndarray,
    conflicts: dict[int, DuplicateConflict],
) -> list[dict[str, Any]]:
    """Build the rows of ``candidates.csv``, lowest quality score first.

    One row per label issue (reason ``label_issue``) and one per image with a
    differently-labelled duplicate (reason ``duplicate_conflict:<other key>``); an image
    that is both gets two rows. Every row carries ``p_<class>`` for the K classes.
    """
    suggested = np.argmax(pred_probs, axis=1)
    flagged = [(int(index), LABEL_ISSUE) for index in issue_indices]
    flagged += [
        (index, f"{DUPLICATE_CONFLICT}:{keys[conflict.other]}")
        for index, conflict in sorted(conflicts.items())
    ]
    rows = []
    for index, reason in flagged:
        row = {
            "key": keys[index],
            "path": paths[index],
            "given_label": class_names[labels[index]],
            "suggested_label": class_names[suggested[index]],
            "quality_score": round(float(quality_scores[index]), 6),
            "reason": reason,
        }
        for column, name in enumerate(class_names):
            row[f"p_{name}"] = round(float(pred_probs[index, column]), 6)
        rows.append(row)
    # Python's sort is stable, so ties keep cleanlab's ranking, then the key order.
    rows.sort(key=lambda row: row["quality_score"])
    return rows


def write_candidates(
    path: str | os.PathLike[str], rows: list[dict[str, Any]], class_names: Sequence[str]
) -> None:
    """Write the candidate rows as CSV, atomically; the header is written even with no rows."""
    columns = [*CANDIDATE_COLUMNS, *(f"p_{name}" for name in class_names)]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)


def write_samples(
    path: Path,
    keys: Sequence[str],
    paths: Sequence[str],
    labels: np.ndarray,
    fold_of: np.ndarray,
    class_names: Sequence[str],
) -> None:
    """Write ``samples.csv``: key, path, given label and fold of each row of pred_probs.npy."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["key", "path", "given_label", "fold"])
            for key, relative, label, fold in zip(keys, paths, labels, fold_of):
                writer.writerow([key, relative, class_names[label], int(fold)])


def summarise(
    config: FindIssuesConfig,
    *,
    labels: np.ndarray,
    pred_probs: np.ndarray,
    class_names: Sequence[str],
    issue_indices: np.ndarray,
    conflicts: dict[int, DuplicateConflict],
    fingerprint: str,
    seconds: float,
) -> dict[str, Any]:
    """Return the contents of ``summary.json``: counts per reason and per class, and the run."""
    issue_counts = Counter(int(labels[index]) for index in issue_indices)
    conflict_counts = Counter(int(labels[index]) for index in conflicts)
    images = np.bincount(labels, minlength=len(class_names))
    per_class = {
        name: {
            "images": int(images[k]),
            LABEL_ISSUE: issue_counts[k],
            DUPLICATE_CONFLICT: conflict_counts[k],
        }
        for k, name in enumerate(class_names)
    }
    settings = {
        key: str(value) if isinstance(value, Path) else value
        for key, value in dataclasses.asdict(config).items()
    }
    return {
        "images": int(len(labels)),
        "classes": list(class_names),
        "reasons": {
            LABEL_ISSUE: int(len(issue_indices)),
            DUPLICATE_CONFLICT: len(conflicts),
            f"{DUPLICATE_CONFLICT}_exact": sum(conflict.exact for conflict in conflicts.values()),
        },
        "per_class": per_class,
        "out_of_sample_accuracy": round(float(np.mean(np.argmax(pred_probs, axis=1) == labels)), 4),
        "dataset_fingerprint": fingerprint,
        "config": settings,
        "seconds": round(seconds, 1),
    }


# ---- the stage ----


def open_all_images(config: FindIssuesConfig) -> Any:
    """Open every image of the processed folder as one split ("train"), via its manifest if any."""
    from train.dataset import ImageDataSet

    folder = Path(config.processed_dir)
    manifest = folder / "manifest.parquet"
    common: dict[str, Any] = {
        "image_size": config.image_size,
        "class_names": config.class_names,
        # All images in one split: every image gets an out-of-sample probability.
        "train_size": 1.0,
        "val_size": 0.0,
        "test_size": 0.0,
    }
    if manifest.exists():
        return ImageDataSet(folder, manifest=manifest, **common)
    return ImageDataSet(folder / "images", **common)


def compute_features(config: FindIssuesConfig, data: Any) -> tuple[np.ndarray, Any]:
    """Return the backbone features [N, F] of every image (cached) and the model's head."""
    import keras

    from train.features import extract_features, feature_cache_path
    from train.models import build_model, split_model

    keras.utils.set_random_seed(config.seed)
    model = build_model(
        config.model,
        num_classes=data.num_classes,
        image_size=config.image_size,
        weights=config.weights,
        dropout=config.dropout,
        augment=False,
        seed=config.seed,
    )
    parts = split_model(model)
    cache = feature_cache_path(
        config.out_path.parent,
        dataset_fingerprint=f"{data.fingerprint()}:all",
        model_name=config.model,
        image_size=config.image_size,
        weights=config.weights,
    )
    # NOTE: with weights="none" the backbone's random weights come from the global Keras seed,
    # which the cache key does not cover; the seed is set above, so one seed gives one cache.
    cache = cache.with_name(f"features-{cache.name}")
    features, _ = extract_features(
        parts.features,
        data.dataset("train").as_numpy_iterator(),
        config.batch_size,
        cache_path=cache,
    )
    return features, parts.head


def find_issues(config: FindIssuesConfig) -> dict[str, Any]:
    """Run the whole stage and write candidates.csv, pred_probs.npy, samples.csv, summary.json.

    Returns:
        The summary, as written to ``summary.json``.

    Raises:
        ValueError: invalid settings, labels outside the class names, or a class with fewer
            images than folds; all raised before the backbone runs.
        FileNotFoundError: a missing processed folder or weights file.
    """
    started = time.perf_counter()
    validate_config(config)
    out = config.out_path

    # open: one class order for everything below
    data = open_all_images(config)
    class_names = list(data.class_names)
    samples = data.split_samples("train")
    keys = [sample.key for sample in samples]
    paths = [sample.path for sample in samples]
    labels = check_labels(data.labels("train"), class_names, folds=config.folds)
    logger.info(
        "find_issues: %d images in %d classes from %s, %d folds, model %s, weights %s",
        len(labels),
        len(class_names),
        data.root,
        config.folds,
        config.model,
        config.weights,
    )

    # duplicates need no model, so they run first and fail fast on unreadable files
    digests, hashes = hash_files(data.paths("train"))
    conflicts = find_duplicate_conflicts(digests, hashes, labels, max_distance=config.max_distance)

    # out-of-sample probabilities, then cleanlab
    features, head = compute_features(config, data)
    pred_probs, fold_of = out_of_sample_probs(
        head,
        features,
        labels,
        folds=config.folds,
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        seed=config.seed,
    )
    issue_indices, quality_scores = rank_label_issues(labels, pred_probs, class_names)

    # output
    rows = candidate_rows(
        keys=keys,
        paths=paths,
        labels=labels,
        pred_probs=pred_probs,
        class_names=class_names,
        issue_indices=issue_indices,
        quality_scores=quality_scores,
        conflicts=conflicts,
    )
    write_candidates(out, rows, class_names)
    with atomic_path(out.parent / "pred_probs.npy") as tmp:
        with open(tmp, "wb") as handle:  # a file object, because np.save appends ".npy" to a path
            np.save(handle, pred_probs)
    write_samples(out.parent / "samples.csv", keys, paths, labels, fold_of, class_names)
    summary = summarise(
        config,
        labels=labels,
        pred_probs=pred_probs,
        class_names=class_names,
        issue_indices=issue_indices,
        conflicts=conflicts,
        fingerprint=data.fingerprint(),
        seconds=time.perf_counter() - started,
    )
    write_json(out.parent / "summary.json", summary)
    logger.info(
        "find_issues: %d label issues and %d duplicate conflicts among %d images "
        "(out-of-sample accuracy %.3f) in %s",
        summary["reasons"][LABEL_ISSUE],
        summary["reasons"][DUPLICATE_CONFLICT],
        len(labels),
        summary["out_of_sample_accuracy"],
        out,
    )
    return summary


def validate_config(config: FindIssuesConfig) -> None:
    """Raise ValueError naming the first invalid setting, before any image is read."""
    from train.models import MODELS

    if config.model not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}. Received: model={config.model!r}")
    if config.folds < 2:
        raise ValueError(
            f"folds must be at least 2 for cross-validation. Received: folds={config.folds}"
        )
    for name in ("epochs", "batch_size", "image_size"):
        value = getattr(config, name)
        if value < 1:
            raise ValueError(f"{name} must be at least 1. Received: {name}={value}")
    if not config.learning_rate > 0:
        raise ValueError(f"learning_rate must be above 0. Received: {config.learning_rate}")
    if not 0 <= config.max_distance < DHASH_BITS:
        raise ValueError(
            f"max_distance must be a number of bits in [0, {DHASH_BITS}). "
            f"Received: max_distance={config.max_distance}"
        )


# ---- command line ----


def read_class_names(path: str) -> list[str]:
    """Read a JSON list of class names, such as a run's ``class_names.json``."""
    try:
        names = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(
            f"cannot read {path} ({exc}); pass a JSON list of class names, such as a run's "
            "class_names.json"
        ) from exc
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise argparse.ArgumentTypeError(
            f"{path} must contain a JSON list of class names, such as a run's class_names.json"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    defaults = FindIssuesConfig(processed_dir=processed_dir())
    parser = argparse.ArgumentParser(
        prog="python -m label.find_issues", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--processed-dir",
        type=Path,
        default=defaults.processed_dir,
        help="processed data version with images/ and manifest.parquet "
        "(default: data/processed/v1)",
    )
    parser.add_argument(
        "--model", default=defaults.model, help="architecture (default: resnet50v2_pool)"
    )
    parser.add_argument(
        "--weights",
        default=defaults.weights,
        help="imagenet, none, or the path of a weights file; the head is re-initialised per "
        "fold in every case (default: imagenet)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=defaults.image_size,
        help="input side in pixels (default: 224)",
    )
    parser.add_argument(
        "--folds",
        type=int,
        default=defaults.folds,
        help="cross-validation folds, at least 2 (default: 5)",
    )
    parser.add_argument(
        "--epochs", type=int, default=defaults.epochs, help="head epochs per fold (default: 10)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help="images per step (default: 32)"
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=defaults.learning_rate,
        help="head learning rate (default: 0.001)",
    )
    parser.add_argument(
        "--dropout", type=float, default=defaults.dropout, help="dropout of the head (default: 0.3)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="seed of the folds, the backbone and the head (default: 0)",
    )
    parser.add_argument(
        "--max-distance",
        type=int,
        default=defaults.max_distance,
        help="dHash Hamming distance in bits up to which two images are near-duplicates "
        "(default: 6)",
    )
    parser.add_argument(
        "--class-names",
        type=read_class_names,
        default=None,
        help="JSON file with the class order, such as a run's class_names.json "
        "(default: the sorted labels of the data)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="candidates file; pred_probs.npy, samples.csv, summary.json and the feature cache "
        "go beside it (default: label/reviews/<data version>/candidates.csv)",
    )
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    config = FindIssuesConfig(
        processed_dir=args.processed_dir,
        model=args.model,
        weights=args.weights,
        image_size=args.image_size,
        folds=args.folds,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        dropout=args.dropout,
        seed=args.seed,
        max_distance=args.max_distance,
        class_names=args.class_names,
        out=args.out,
    )
    try:
        find_issues(config)
    except (ValueError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
