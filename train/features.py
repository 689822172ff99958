"""Train a classifier's head on cached backbone features while the backbone is frozen.

While the backbone is frozen, its output for a given image is the same in every epoch, so
running it every epoch repeats the most expensive part of training. At 224 px the ResNet50V2
backbone takes roughly 4 billion multiply-adds per image (the estimate usually given for
ResNet-50), and the ``*_pool`` head takes 2048 per class. This module computes the features
once per image (``extract_features``), trains the head alone on them (``train_head``) and
joins the trained head to the backbone again (``assemble``). With the same initial weights,
batches and seeds, the result equals training the full model with a frozen backbone and
augmentation off (``tests/test_features.py`` checks this).

Notation: N images, S the image size in pixels, F the length of one feature vector, K classes.

Trade-offs:

* Augmentation does not apply: each image's features are computed once, from the image as
  it is, so the head trains on the same vectors every epoch. This is the "fast feature
  extraction without data augmentation" of F. Chollet's Deep Learning with Python. Where
  augmentation matters more than speed, train the full model on images instead, or fine-tune
  it after the head has converged.
* The features are held in memory as float32, N × F × 4 bytes: F is 2048 for
  ``resnet50v2_pool`` and 512 for ``vgg19_pool`` at any S. For the ``*_dense`` models and S a
  multiple of 32, F is (S / 32)² × 2048 (ResNet50V2) or (S / 32)² × 512 (VGG19), which is
  about 400 KB and 100 KB per image at 224 px.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from tqdm import tqdm

from data.scripts.common import atomic_path
from train.models import ModelParts, assemble_model, weights_source

logger = logging.getLogger(__name__)

# Part of every cache key: bump it when the cached arrays or their meaning change.
CACHE_FORMAT = 1
HASH_CHUNK_BYTES = 1 << 20


def weights_id(weights: str | os.PathLike[str]) -> str:
    """Return an identifier of a ``build_model`` weights option for cache keys.

    ``"imagenet"`` and ``"none"`` are their own identifiers. A file is identified by the
    SHA-256 of its bytes, so a new file at the same path (a later run's checkpoint) gets a new
    key.

    Raises:
        ValueError, FileNotFoundError: as ``train.models.weights_source``.
    """
    if weights_source(weights) in ("imagenet", "none"):
        return str(weights)
    digest = hashlib.sha256()
    with open(weights, "rb") as file:
        while chunk := file.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def feature_cache_path(
    cache_dir: str | os.PathLike[str],
    *,
    dataset_fingerprint: str,
    model_name: str,
    image_size: int,
    weights: str | os.PathLike[str],
) -> Path:
    """Return the cache file for one dataset and one feature extractor.

    The key covers everything the features depend on: the dataset's images and their order
    (``dataset_fingerprint``), the architecture, the image size and the starting weights. Two
    runs that agree on all four share the file. For one split of an ``ImageDataSet``, pass its
    ``fingerprint()`` joined with the split name, so that each split gets its own file.

    Returns:
        ``<cache_dir>/<model_name>-<image_size>px-<first 16 hex digits of the key's SHA-256>.npz``.
    """
    key = {
        "format": CACHE_FORMAT,
        "dataset": dataset_fingerprint,
        "model": model_name,
        "image_size": image_size,
        "weights": weights_id(weights),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{model_name}-{image_size}px-{digest}.npz"


def extract_features(
    feature_extractor: keras.Model,
    dataset: Iterable[tuple[np.ndarray, int]],
    batch_size: int,
    *,
    cache_path: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run the feature extractor once over a dataset, in dataset order, optionally cached.

    Args:
        feature_extractor: ``split_model(model).features``: ``[batch, S, S, 3]`` raw RGB to
            ``[batch, F]`` float32. It runs in inference mode, so no augmentation applies.
        dataset: (image, label) pairs, image ``[S, S, 3]`` uint8 (or any real dtype, 0–255)
            and label an int, such as the unbatched ``tf.data.Dataset`` from
            ``ImageDataSet.dataset(split)``. Read once, in order.
        batch_size: images per forward pass; only speed and memory depend on it.
        cache_path: an ``.npz`` file, usually from ``feature_cache_path``. If it exists, the
            features are read from it and ``dataset`` is not read. Otherwise they are computed
            and written there atomically, so an interrupted run leaves no partial file.

    Returns:
        ``(features, labels)``: ``[N, F]`` float32 and ``[N]`` int32, row i from the i-th
        pair of ``dataset``.

    Raises:
        ValueError: ``batch_size`` < 1, an empty dataset, an image of the wrong shape, or a
            cache file that does not match the extractor.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"Invalid value for argument `batch_size`. Expected an integer >= 1. "
            f"Received: batch_size={batch_size!r}"
        )
    feature_shape = tuple(feature_extractor.output_shape[1:])
    if cache_path is not None and Path(cache_path).exists():
        return _read_cache(Path(cache_path), feature_shape)

    started = time.perf_counter()
    features, labels = _run_extractor(feature_extractor, dataset, batch_size)
    logger.info(
        "extracted features %s for %d images in %.1f s",
        features.shape[1:],
        len(labels),
        time.perf_counter() - started,
    )

    if cache_path is not None:
        with atomic_path(cache_path) as tmp:
            # A file object, because np.savez appends ".npz" to a path that lacks it.
            with open(tmp, "wb") as file:
                np.savez(file, features=features, labels=labels)
        logger.info("wrote the feature cache %s (%.1f MiB)", cache_path, features.nbytes / 2**20)
    return features, labels


def train_head(
    head: keras.Model,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    class_weight: dict[int, float] | None = None,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    shuffle: bool = True,
    seed: int | None = None,
    verbose: str | int = "auto",
) -> keras.callbacks.History:
    """Train a compiled head on cached features with ``fit``; the head's weights change in place.

    No augmentation applies, because each image's features were computed once, unaugmented.
    The head is the one inside the full model (``split_model(model).head``), so the full
    model contains the trained weights as soon as this returns. Callbacks see the head, not the
    full model: a checkpoint callback saves the head alone, so save the model from
    ``assemble`` after training.

    Args:
        head: ``[batch, F]`` to ``[batch, K]``, compiled (``train.models.compile_model``).
        features: ``[N, F]`` float32 from ``extract_features``.
        labels: ``[N]`` integer labels in [0, K).
        epochs: passes over the features.
        batch_size: features per step; the same as the image batch size to reproduce training
            on images step for step.
        validation: ``(features, labels)`` of the validation set, extracted the same way.
        class_weight: per-class loss weights, e.g. ``train.models.class_weights``.
        callbacks: Keras callbacks, for example TensorBoard or early stopping.
        shuffle: whether ``fit`` shuffles the features before each epoch.
        seed: if set, calls ``keras.utils.set_random_seed(seed)`` first, which fixes the
            shuffling order; this seeds Python, NumPy and TensorFlow globally.
        verbose: passed to ``fit``.

    Returns:
        The ``History`` from ``fit``.

    Raises:
        ValueError: an uncompiled head, or features or labels that do not fit the head or
            each other.
    """
    _check_head_inputs(head, features, labels)
    if validation is not None:
        _check_head_inputs(head, *validation)
    if seed is not None:
        keras.utils.set_random_seed(seed)

    return head.fit(
        features,
        labels,
        batch_size=batch_size,
        epochs=epochs,
        validation_data=validation,
        class_weight=class_weight,
        callbacks=list(callbacks or []),
        shuffle=shuffle,
        verbose=verbose,
    )


def assemble(parts: ModelParts, head: keras.Model, *, name: str) -> keras.Model:
    """Put a head trained on cached features back on its backbone, for ``save`` or fine-tuning.

    Returns:
        A model from raw RGB ``[batch, S, S, 3]`` to ``[batch, K]`` probabilities with
        ``parts``' augmentation, preprocessing and backbone and the given head, sharing their
        layers. It is not compiled: ``model.save`` works as it is, and ``compile_model``
        prepares it for ``fit`` or ``evaluate``.

    Raises:
        ValueError: the head does not take features of ``parts``' length.
    """
    return assemble_model(dataclasses.replace(parts, head=head), name=name)


def _run_extractor(
    feature_extractor: keras.Model, dataset: Iterable[tuple[np.ndarray, int]], batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    image_shape = tuple(feature_extractor.input_shape[1:])
    try:
        total = len(dataset)  # type: ignore[arg-type]
    except TypeError:  # a generator, or a tf.data.Dataset of unknown cardinality
        total = None
    batches: list[np.ndarray] = []
    labels: list[int] = []
    pending: list[np.ndarray] = []

    with tqdm(total=total, unit="image", desc="features", leave=False) as progress:
        for index, (image, label) in enumerate(dataset):
            image = np.asarray(image)
            if image.shape != image_shape:
                raise ValueError(
                    f"Expected images of shape {image_shape} for this feature extractor. "
                    f"Received: image {index} of shape {image.shape}. Resize the dataset to "
                    f"the model's image size."
                )
            pending.append(image)
            labels.append(int(label))
            if len(pending) == batch_size:
                batches.append(_predict(feature_extractor, pending))
                progress.update(len(pending))
                pending = []
        if pending:
            batches.append(_predict(feature_extractor, pending))
            progress.update(len(pending))

    if not labels:
        raise ValueError("Expected at least one image to extract features from. Received: 0")
    return np.concatenate(batches), np.asarray(labels, dtype=np.int32)


def _predict(feature_extractor: keras.Model, images: list[np.ndarray]) -> np.ndarray:
    return np.asarray(feature_extractor.predict_on_batch(np.stack(images)), dtype=np.float32)


def _read_cache(path: Path, feature_shape: tuple[Any, ...]) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as cached:
        features, labels = cached["features"], cached["labels"]
    if features.shape[1:] != feature_shape or len(features) != len(labels):
        raise ValueError(
            f"The feature cache {path} does not match the feature extractor: expected "
            f"features of shape (N, {', '.join(map(str, feature_shape))}) and N labels. "
            f"Received: features {features.shape} and {len(labels)} labels. Delete the file "
            f"to compute the features again."
        )
    logger.info("read %d cached feature vectors from %s", len(labels), path)
    return features, labels


def _check_head_inputs(head: keras.Model, features: np.ndarray, labels: np.ndarray) -> None:
    if not head.compiled:
        raise ValueError(
            f"The head {head.name!r} is not compiled. Call train.models.compile_model(head, "
            f"learning_rate) before train_head."
        )
    expected = tuple(head.input_shape[1:])
    if tuple(features.shape[1:]) != expected:
        raise ValueError(
            f"Expected features of shape (N, {', '.join(map(str, expected))}) for this head. "
            f"Received: features of shape {features.shape}. Extract them with the feature "
            f"extractor of the same model."
        )
    if len(features) != len(labels):
        raise ValueError(
            f"Expected one label per feature vector. Received: {len(features)} feature vectors "
            f"and {len(labels)} labels"
        )
