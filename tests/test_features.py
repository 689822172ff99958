"""Tests for train.features with real TensorFlow on 32 px images and random weights.

The main test trains one head twice, once inside the full model on images and once alone on
cached features, and checks that both paths end with the same weights.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from train.features import (
    assemble,
    extract_features,
    feature_cache_path,
    train_head,
    weights_id,
)
from train.models import build_model, class_weights, compile_model, split_model

SIZE = 32
CLASSES = 3
LEARNING_RATE = 1e-3


def random_dataset(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8)
    # Unequal counts, so that the class weights differ from 1.
    labels = np.resize(np.array([0, 0, 0, 1, 1, 2], dtype=np.int32), count)
    return images, labels


class ReadOnce:
    """An (image, label) dataset that fails when read a second time, to prove a cache hit."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels, self.reads = images, labels, 0

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self):  # type: ignore[no-untyped-def]
        self.reads += 1
        assert self.reads == 1, "the dataset was read again despite the feature cache"
        return iter(zip(self.images, self.labels, strict=True))


@pytest.fixture(scope="module")
def vgg_pool() -> keras.Model:
    return build_model(
        "vgg19_pool", num_classes=CLASSES, image_size=SIZE, weights="none", augment=False
    )


# ---- head on cached features against the full model ----


def build_twin(name: str) -> keras.Model:
    """Build the same model with the same initial weights and random streams each call."""
    keras.utils.set_random_seed(7)
    return build_model(
        name, num_classes=CLASSES, image_size=SIZE, weights="none", augment=False, seed=7
    )


@pytest.mark.parametrize("name", ["resnet50v2_pool", "vgg19_dense"])
def test_head_on_features_matches_full_model(name: str) -> None:
    images, labels = random_dataset(24)
    weights = class_weights(labels, CLASSES)
    full, fast = build_twin(name), build_twin(name)
    head_full, head_fast = split_model(full).head, split_model(fast).head
    initial = [np.array(weight) for weight in head_full.get_weights()]
    for before, twin in zip(initial, head_fast.get_weights(), strict=True):
        np.testing.assert_array_equal(twin, before)

    # slow path: the full model on images, backbone run every step
    # XLA stays off in both paths to keep the test fast. It would change results by round-off
    # only.
    compile_model(full, LEARNING_RATE, jit_compile=False)
    full.fit(images, labels, batch_size=8, epochs=2, shuffle=False, class_weight=weights, verbose=0)

    # fast path: features once, then the head alone, same order and batch size
    parts = split_model(fast)
    features, feature_labels = extract_features(parts.features, zip(images, labels), 8)
    compile_model(head_fast, LEARNING_RATE, jit_compile=False)
    train_head(
        head_fast,
        features,
        feature_labels,
        epochs=2,
        batch_size=8,
        class_weight=weights,
        shuffle=False,
        verbose=0,
    )
    assembled = assemble(parts, head_fast, name=name)

    # The backbone runs inside the training graph in one path and in the prediction graph in
    # the other. TensorFlow may fuse their operations differently, so float32 round-off may
    # differ, although on the 2-core CPU used to write this test the paths agreed bit for bit.
    # 1e-4 still catches a real difference: shuffling one path changes weights by 0.1 to 1.8
    # relative.
    names = [weight.path for weight in head_full.weights]
    for path, trained_full, trained_fast in zip(
        names, head_full.get_weights(), head_fast.get_weights(), strict=True
    ):
        np.testing.assert_allclose(trained_fast, trained_full, rtol=1e-4, atol=1e-4, err_msg=path)
    changed = [not np.allclose(a, b) for a, b in zip(initial, head_full.get_weights(), strict=True)]
    assert any(changed), "training left the head unchanged, so the comparison proves nothing"
    np.testing.assert_allclose(
        assembled.predict(images, verbose=0), full.predict(images, verbose=0), atol=1e-4
    )


def test_head_batch_norm_same_in_both_paths() -> None:
    images, labels = random_dataset(16)
    full, fast = build_twin("resnet50v2_pool"), build_twin("resnet50v2_pool")

    compile_model(full, LEARNING_RATE, jit_compile=False)
    full.fit(images, labels, batch_size=8, epochs=1, shuffle=False, verbose=0)
    parts = split_model(fast)
    features, _ = extract_features(parts.features, zip(images, labels), 8)
    compile_model(parts.head, LEARNING_RATE, jit_compile=False)
    train_head(parts.head, features, labels, epochs=1, batch_size=8, shuffle=False, verbose=0)

    norm_full = split_model(full).head.get_layer("head_batch_norm")
    norm_fast = parts.head.get_layer("head_batch_norm")
    # Both moved from their start (mean 0): the head's BatchNormalization trains in both paths.
    assert np.abs(norm_full.moving_mean.numpy()).max() > 0
    for full_value, fast_value in [
        (norm_full.moving_mean, norm_fast.moving_mean),
        (norm_full.moving_variance, norm_fast.moving_variance),
        (norm_full.gamma, norm_fast.gamma),
    ]:
        np.testing.assert_allclose(fast_value.numpy(), full_value.numpy(), rtol=1e-4, atol=1e-5)


def test_assembled_model_round_trips_save(vgg_pool: keras.Model, tmp_path: Path) -> None:
    images, _ = random_dataset(4)
    parts = split_model(vgg_pool)
    model = assemble(parts, parts.head, name="vgg19_pool")

    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")

    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), vgg_pool.predict(images, verbose=0), atol=1e-6
    )


def test_assemble_rejects_head_of_other_size(vgg_pool: keras.Model) -> None:
    other = build_model("vgg19_dense", num_classes=CLASSES, image_size=64, weights="none")

    with pytest.raises(ValueError, match="head does not fit"):
        assemble(split_model(vgg_pool), split_model(other).head, name="mixed")


# ---- extraction and its cache ----


def test_extract_features_in_dataset_order(vgg_pool: keras.Model) -> None:
    images, labels = random_dataset(10)
    extractor = split_model(vgg_pool).features

    features, feature_labels = extract_features(extractor, zip(images, labels), batch_size=4)

    assert features.shape == (10, 512)
    assert features.dtype == np.float32
    assert feature_labels.dtype == np.int32
    np.testing.assert_array_equal(feature_labels, labels)
    np.testing.assert_allclose(features, extractor.predict(images, verbose=0), atol=1e-5)


def test_extract_features_accepts_tf_data(vgg_pool: keras.Model) -> None:
    images, labels = random_dataset(6)
    extractor = split_model(vgg_pool).features
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))

    features, feature_labels = extract_features(extractor, dataset, batch_size=4)

    np.testing.assert_array_equal(feature_labels, labels)
    np.testing.assert_allclose(features, extractor.predict(images, verbose=0), atol=1e-5)


def test_extract_features_reuses_cache(vgg_pool: keras.Model, tmp_path: Path) -> None:
    images, labels = random_dataset(6)
    extractor = split_model(vgg_pool).features
    cache = tmp_path / "cache" / "features.npz"
    dataset = ReadOnce(images, labels)

    first = extract_features(extractor, dataset, 4, cache_path=cache)
    second = extract_features(extractor, dataset, 4, cache_path=cache)

    assert dataset.reads == 1
    assert sorted(path.name for path in cache.parent.iterdir()) == ["features.npz"]
    np.testing.assert_array_equal(second[0], first[0])
    np.testing.assert_array_equal(second[1], first[1])


def test_extract_features_rejects_stale_cache(vgg_pool: keras.Model, tmp_path: Path) -> None:
    cache = tmp_path / "features.npz"
    np.savez(cache, features=np.zeros((3, 7), np.float32), labels=np.zeros(3, np.int32))

    with pytest.raises(ValueError, match="does not match the feature extractor"):
        extract_features(split_model(vgg_pool).features, [], 4, cache_path=cache)


@pytest.mark.parametrize(
    ("dataset", "batch_size", "message"),
    [
        ([(np.zeros((16, 16, 3), np.uint8), 0)], 4, r"shape \(32, 32, 3\)"),
        ([], 4, "at least one image"),
        ([(np.zeros((32, 32, 3), np.uint8), 0)], 0, "`batch_size`"),
    ],
)
def test_extract_features_invalid_input(
    vgg_pool: keras.Model, dataset: list, batch_size: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        extract_features(split_model(vgg_pool).features, dataset, batch_size)


def test_feature_cache_path_depends_on_every_key(tmp_path: Path) -> None:
    weights_file = tmp_path / "run.weights.h5"
    weights_file.write_bytes(b"first")
    key = {
        "dataset_fingerprint": "abc",
        "model_name": "vgg19_pool",
        "image_size": 224,
        "weights": "imagenet",
    }
    base = feature_cache_path(tmp_path, **key)
    variants = [
        {**key, "dataset_fingerprint": "abd"},
        {**key, "model_name": "vgg19_dense"},
        {**key, "image_size": 256},
        {**key, "weights": "none"},
        {**key, "weights": weights_file},
    ]

    paths = [feature_cache_path(tmp_path, **variant) for variant in variants]
    before = weights_id(weights_file)
    weights_file.write_bytes(b"second")

    assert feature_cache_path(tmp_path, **key) == base
    assert base.parent == tmp_path
    assert base.name.startswith("vgg19_pool-224px-")
    assert len({base, *paths}) == len(variants) + 1
    assert weights_id(weights_file) != before


# ---- train_head checks ----


def test_train_head_requires_compiled_head() -> None:
    model = build_model("vgg19_pool", num_classes=CLASSES, image_size=SIZE, weights="none")
    head = split_model(model).head

    with pytest.raises(ValueError, match="not compiled"):
        train_head(head, np.zeros((4, 512), np.float32), np.zeros(4), epochs=1, batch_size=2)


@pytest.mark.parametrize(
    ("features", "labels", "message"),
    [
        (np.zeros((4, 100), np.float32), np.zeros(4, np.int32), r"shape \(N, 512\)"),
        (np.zeros((4, 512), np.float32), np.zeros(3, np.int32), "one label per feature"),
    ],
)
def test_train_head_rejects_mismatched_inputs(
    features: np.ndarray, labels: np.ndarray, message: str
) -> None:
    model = build_model("vgg19_pool", num_classes=CLASSES, image_size=SIZE, weights="none")
    head = split_model(model).head
    compile_model(head, LEARNING_RATE)

    with pytest.raises(ValueError, match=message):
        train_head(head, features, labels, epochs=1, batch_size=2)
