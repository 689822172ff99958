"""Tests for train.models with real TensorFlow on 32 px images and random weights.

No test downloads anything: every model uses weights="none" or a file written here, and the
ImageNet test runs in a child process whose only proxy is a closed port on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.helpers import REPO_ROOT
from train import models
from train.models import (
    BACKBONES,
    MODELS,
    InferenceMode,
    build_model,
    class_weights,
    compile_model,
    split_model,
    unfreeze_top,
)

SIZE = 32
CLASSES = 3


def random_images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8)


def colour_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return noisy red, green or blue 32 px images and their labels 0, 1, 2."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, count).astype(np.int32)
    images = rng.integers(0, 60, (count, SIZE, SIZE, 3))
    images[np.arange(count), :, :, labels] += 180
    return images.astype(np.uint8), labels


@pytest.fixture(scope="module")
def resnet_pool() -> keras.Model:
    return build_model("resnet50v2_pool", num_classes=CLASSES, image_size=SIZE, weights="none")


# ---- building ----


@pytest.mark.parametrize("name", sorted(MODELS))
def test_build_model_predicts_probabilities(name: str) -> None:
    model = build_model(name, num_classes=CLASSES, image_size=SIZE, weights="none", seed=1)

    probabilities = model.predict(random_images(2), verbose=0)

    assert model.name == name
    assert probabilities.shape == (2, CLASSES)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_split_model_finds_backbone(name: str) -> None:
    model = build_model(name, num_classes=CLASSES, image_size=SIZE, weights="none", seed=1)

    parts = split_model(model)

    assert parts.base.name.lower() == MODELS[name].backbone
    assert parts.head is model.get_layer("head")


def test_build_model_unknown_name_lists_names() -> None:
    with pytest.raises(ValueError, match="Unknown model name") as raised:
        build_model("resnet50", num_classes=CLASSES, image_size=SIZE, weights="none")

    for name in MODELS:
        assert name in str(raised.value)
    assert "'resnet50'" in str(raised.value)


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("num_classes", 1),
        ("num_classes", 2.5),
        ("image_size", 16),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("weights", "imagenet21k"),
        ("weights", "weights.keras"),
    ],
)
def test_build_model_invalid_argument(argument: str, value: object) -> None:
    arguments = {"num_classes": CLASSES, "image_size": SIZE, "weights": "none", argument: value}

    with pytest.raises(ValueError, match=f"`{argument}`"):
        build_model("vgg19_pool", **arguments)


def test_model_takes_raw_uint8_rgb() -> None:
    model = build_model("vgg19_pool", num_classes=CLASSES, image_size=SIZE, weights="none")
    images = random_images(4)

    from_uint8 = model.predict(images, verbose=0)
    from_float = model.predict(images.astype(np.float32), verbose=0)
    again = model.predict(images, verbose=0)

    np.testing.assert_allclose(from_uint8, from_float, rtol=1e-6)
    # Augmentation is random, so equal repeated predictions show it is off outside training.
    np.testing.assert_array_equal(from_uint8, again)


def test_preprocess_layer_matches_keras_function() -> None:
    images = random_images(2).astype(np.float32)

    for backbone, spec in BACKBONES.items():
        layer = models.BackbonePreprocess(backbone)
        expected = spec.preprocess_input(images.copy())
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(images)), expected, rtol=1e-6)


# ---- saving and weights files ----


def test_save_load_round_trip_predicts_same(resnet_pool: keras.Model, tmp_path: Path) -> None:
    images = random_images(4)
    path = tmp_path / "model.keras"

    resnet_pool.save(path)
    loaded = keras.models.load_model(path)

    assert [layer.name for layer in loaded.layers] == [layer.name for layer in resnet_pool.layers]
    assert isinstance(loaded.get_layer("features"), InferenceMode)
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), resnet_pool.predict(images, verbose=0), atol=1e-6
    )


def test_weights_file_loads_into_same_architecture(tmp_path: Path) -> None:
    saved = build_model("vgg19_dense", num_classes=CLASSES, image_size=SIZE, weights="none", seed=1)
    path = tmp_path / "run.weights.h5"
    saved.save_weights(path)
    images = random_images(4)

    loaded = build_model("vgg19_dense", num_classes=CLASSES, image_size=SIZE, weights=path, seed=2)

    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), saved.predict(images, verbose=0), atol=1e-6
    )


def test_weights_file_other_architecture_rejected(tmp_path: Path) -> None:
    saved = build_model("vgg19_dense", num_classes=CLASSES, image_size=SIZE, weights="none")
    path = tmp_path / "run.weights.h5"
    saved.save_weights(path)

    with pytest.raises(ValueError, match="Could not load the weights file") as raised:
        build_model("vgg19_dense", num_classes=CLASSES + 1, image_size=SIZE, weights=path)

    assert str(path) in str(raised.value)


def test_backbone_h5_file_loads_into_base(tmp_path: Path) -> None:
    # Written in the legacy HDF5 format, as the keras.applications "notop" files are.
    source = keras.applications.VGG19(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    path = tmp_path / "vgg19_notop.h5"
    source.save(path)

    model = build_model("vgg19_pool", num_classes=CLASSES, image_size=SIZE, weights=path)

    base = split_model(model).base
    for expected, loaded in zip(source.get_weights(), base.get_weights(), strict=True):
        np.testing.assert_array_equal(loaded, expected)


@pytest.mark.parametrize("file_name", ["missing.weights.h5", "missing_notop.h5"])
def test_weights_path_missing_names_path(tmp_path: Path, file_name: str) -> None:
    path = tmp_path / file_name

    with pytest.raises(FileNotFoundError, match="Weights file not found") as raised:
        build_model("vgg19_pool", num_classes=CLASSES, image_size=SIZE, weights=path)

    assert str(path) in str(raised.value)


IMAGENET_CHILD = """
import json
from train.models import build_model
try:
    build_model("vgg19_pool", num_classes=3, image_size=32, weights="imagenet")
except FileNotFoundError as exc:
    print(json.dumps({"message": str(exc)}))
"""


def closed_local_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_imagenet_unavailable_names_file_folder_and_option(tmp_path: Path) -> None:
    # Keras reads KERAS_HOME once, at import, so the test needs a fresh interpreter. The real
    # download runs and fails at once: urllib sends it to the proxy, a closed local port.
    keras_home = tmp_path / "keras_home"
    keras_home.mkdir()
    proxy = f"http://127.0.0.1:{closed_local_port()}"
    env = {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in ("no_proxy", "all_proxy")
    }
    env.update(
        KERAS_HOME=str(keras_home),
        PYTHONPATH=str(REPO_ROOT),
        HTTPS_PROXY=proxy,
        https_proxy=proxy,
        HTTP_PROXY=proxy,
        http_proxy=proxy,
    )

    completed = subprocess.run(
        [sys.executable, "-c", IMAGENET_CHILD],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert completed.returncode == 0, completed.stderr[-2000:]
    message = json.loads(completed.stdout.strip().splitlines()[-1])["message"]
    assert BACKBONES["vgg19"].notop_file in message
    assert str(keras_home / "models") in message
    assert "WEIGHTS=none" in message
    assert "weights='none'" in message


# ---- fine-tuning ----


def base_layers(model: keras.Model) -> list[keras.layers.Layer]:
    base = split_model(model).base
    return [layer for layer in base.layers if not isinstance(layer, keras.layers.InputLayer)]


def is_batch_norm(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)


def test_build_model_freezes_base(resnet_pool: keras.Model) -> None:
    unfreeze_top(resnet_pool, 0)
    parts = split_model(resnet_pool)

    assert parts.base.trainable_weights == []
    assert len(resnet_pool.trainable_weights) == len(parts.head.trainable_weights)


@pytest.mark.parametrize("layers", [10, 0.25, 1.0])
def test_unfreeze_top_thaws_top_layers_only(resnet_pool: keras.Model, layers: int | float) -> None:
    candidates = base_layers(resnet_pool)
    count = layers if isinstance(layers, int) else int(np.ceil(layers * len(candidates)))
    top = candidates[len(candidates) - count :]

    unfrozen = unfreeze_top(resnet_pool, layers)

    expected = [layer for layer in top if not is_batch_norm(layer)]
    assert unfrozen == len(expected)
    assert [layer for layer in candidates if layer.trainable] == expected
    assert all(not layer.trainable for layer in candidates if is_batch_norm(layer))
    assert split_model(resnet_pool).head.trainable
    assert any(is_batch_norm(layer) for layer in top)


def test_unfreeze_top_zero_freezes_again(resnet_pool: keras.Model) -> None:
    unfreeze_top(resnet_pool, 1.0)

    unfrozen = unfreeze_top(resnet_pool, 0)

    assert unfrozen == 0
    assert split_model(resnet_pool).base.trainable_weights == []


@pytest.mark.parametrize("layers", [-1, 10_000, 1.5, True, "10"])
def test_unfreeze_top_invalid_count(resnet_pool: keras.Model, layers: object) -> None:
    with pytest.raises(ValueError, match="`layers`"):
        unfreeze_top(resnet_pool, layers)  # type: ignore[arg-type]


def test_inference_mode_keeps_batch_norm_statistics() -> None:
    inputs = keras.Input((4,))
    wrapped = keras.Sequential([keras.layers.BatchNormalization()], name="wrapped")
    plain = keras.layers.BatchNormalization(name="plain")
    outputs = keras.layers.Concatenate()([InferenceMode(wrapped)(inputs), plain(inputs)])
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).normal(5.0, 2.0, (32, 4)).astype(np.float32)

    model.fit(x, np.zeros((32, 8)), epochs=1, batch_size=8, verbose=0)

    np.testing.assert_array_equal(wrapped.layers[0].moving_mean.numpy(), np.zeros(4))
    assert np.all(plain.moving_mean.numpy() > 0.1)  # 4 steps at momentum 0.99 from mean 5


# ---- class weights and compile ----


def test_class_weights_balanced_formula() -> None:
    weights = class_weights([0, 0, 0, 1, 2, 2], num_classes=3)

    assert weights == pytest.approx({0: 6 / 9, 1: 2.0, 2: 1.0})


def test_class_weights_equal_counts_are_one() -> None:
    assert class_weights(np.array([2, 1, 0, 1, 2, 0]), 3) == pytest.approx({0: 1, 1: 1, 2: 1})


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([0, 0, 2], r"Classes \[1\] have no samples"),
        ([0, 1, 3], r"Expected labels in \[0, 3\)"),
        ([], "at least one label"),
        ([0.0, 1.0, 2.0], "integer labels"),
    ],
)
def test_class_weights_invalid_labels(labels: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        class_weights(labels, num_classes=3)


def test_compile_model_rejects_zero_rate(resnet_pool: keras.Model) -> None:
    with pytest.raises(ValueError, match="`learning_rate`"):
        compile_model(resnet_pool, 0.0)


@pytest.mark.slow
def test_model_learns_colour_classes() -> None:
    # The dense head, because the pool head's BatchNormalization needs a few hundred steps
    # before its moving statistics fit the features (see models._build_head), and this test
    # runs 30.
    keras.utils.set_random_seed(0)
    model = build_model(
        "vgg19_dense", num_classes=CLASSES, image_size=SIZE, weights="none", augment=False, seed=0
    )
    compile_model(model, 1e-2, jit_compile=False)
    train_images, train_labels = colour_images(96, seed=1)
    test_images, test_labels = colour_images(48, seed=2)

    model.fit(train_images, train_labels, batch_size=16, epochs=5, verbose=0)
    metrics = model.evaluate(test_images, test_labels, verbose=0, return_dict=True)

    assert set(metrics) >= {"loss", "accuracy", "top2_accuracy"}
    # Chance is 1/3. The backbone is random and frozen, so only the head learns.
    assert metrics["accuracy"] >= 0.8
