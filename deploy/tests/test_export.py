"""Tests of the export stage on a tiny run trained on generated images."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers import REPO_ROOT, SAMPLES, requires_samples

COLOURS = {"blue": (255, 0, 0), "green": (0, 255, 0), "red": (0, 0, 255)}  # BGR, for OpenCV
CLASS_NAMES = sorted(COLOURS)
IMAGE_SIZE = 32
ENV = {**os.environ, "WANDB_MODE": "disabled", "TF_CPP_MIN_LOG_LEVEL": "2"}
PRODUCT_IMAGES = SAMPLES / "product-images"
ODD_IMAGES = SAMPLES / "odd-images"
RUN_COPY_IGNORE = shutil.ignore_patterns("backup", "checkpoints", "tensorboard", "features")


# ---- fixtures: one run, trained, evaluated and exported once per module ----


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> Path:
    """A processed folder with images/<label>/ of three colour-coded classes, 40 each."""
    folder = tmp_path_factory.mktemp("processed") / "v1"
    rng = np.random.default_rng(0)
    for label, colour in COLOURS.items():
        (folder / "images" / label).mkdir(parents=True)
        for i in range(40):
            image = rng.integers(0, 60, (40, 40, 3), dtype=np.uint8)
            x, y = (int(v) for v in rng.integers(0, 16, 2))
            cv2.rectangle(image, (x, y), (x + 22, y + 22), colour, -1)
            cv2.imwrite(str(folder / "images" / label / f"{label}-{i:03d}.jpg"), image)
    return folder


def calibrated_weights(processed: Path, path: Path) -> Path:
    """Write full-model weights of ``mobilenetv3_pool`` whose outputs depend on the image.

    With random weights, activations shrink by orders of magnitude in every block of
    MobileNetV3Small, because batch normalisation at initialisation is the identity. Every
    image then gets the same probabilities, and a comparison of two formats could not
    fail. Setting each BatchNormalization layer's moving mean and variance to those of its
    input on training images keeps activations near unit scale.
    """
    import keras
    import tensorflow as tf

    from train.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model(
        "mobilenetv3_pool", num_classes=len(COLOURS), image_size=IMAGE_SIZE, weights="none"
    )
    files = sorted((processed / "images").rglob("*.jpg"))[::4]
    images = np.stack(
        [cv2.resize(cv2.imread(str(file))[:, :, ::-1], (IMAGE_SIZE, IMAGE_SIZE)) for file in files]
    ).astype(np.float32)

    features = model.get_layer("features").layer
    base = next(layer for layer in features.layers if isinstance(layer, keras.Model))
    norms = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    probe = keras.Model(base.input, [layer.input for layer in norms])
    preprocessed = features.get_layer("preprocess")(images)
    # In layer order, so each layer's input already reflects the layers calibrated before it.
    for index, norm in enumerate(norms):
        mean, variance = tf.nn.moments(probe(preprocessed)[index], axes=[0, 1, 2])
        norm.moving_mean.assign(mean)
        norm.moving_variance.assign(variance)
    model.save_weights(path)
    return path


def run_module(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO_ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def trained_run(processed, tmp_path_factory) -> Path:
    """A run of mobilenetv3_pool, one epoch at 32 px, with ``make evaluate`` done."""
    runs = tmp_path_factory.mktemp("runs")
    weights = tmp_path_factory.mktemp("weights") / "calibrated.weights.h5"
    calibrated_weights(processed, weights)

    # NOTE: --no-cached-features, because the cached-features path stops with StopIteration
    # for mobilenetv3_pool: train.models.split_model looks for a backbone layer named after
    # its BACKBONES key, and Keras names this backbone MobileNetV3Small.
    trained = run_module(
        "train.train",
        "--processed-dir",
        str(processed),
        "--runs-dir",
        str(runs),
        "--model",
        "mobilenetv3_pool",
        "--weights",
        str(weights),
        "--image-size",
        str(IMAGE_SIZE),
        "--batch-size",
        "16",
        "--epochs",
        "1",
        "--no-cached-features",
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    line = next(line for line in trained.stdout.splitlines() if line.startswith("RUN="))
    run = Path(line.removeprefix("RUN="))

    evaluated = run_module("train.evaluate", "--run", str(run))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def exported(trained_run) -> subprocess.CompletedProcess:
    """The output of ``python -m deploy.export`` on the trained run."""
    result = run_module("deploy.export", "--run", str(trained_run))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def export_folder(trained_run, exported) -> Path:
    return trained_run / "export"


@pytest.fixture(scope="module")
def report(export_folder) -> dict:
    return json.loads((export_folder / "export.json").read_text())


@pytest.fixture(scope="module")
def keras_model(trained_run):
    import keras

    import train.models  # noqa: F401  (registers the custom layers)

    return keras.models.load_model(trained_run / "model.keras")


@pytest.fixture(scope="module")
def serve(export_folder):
    from deploy.export import load_serving

    return load_serving(export_folder / "saved_model" / "1")


# ---- helpers ----


def read_test_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "splits.csv", newline="", encoding="utf-8") as handle:
        return [row for row in csv.DictReader(handle) if row["split"] == "test"]


def read_test_files(run: Path) -> tuple[list[Path], np.ndarray]:
    """Return the test images' paths and class ids, in splits.csv order."""
    root = Path(json.loads((run / "config.json").read_text())["dataset_root"])
    rows = read_test_rows(run)
    labels = np.array([CLASS_NAMES.index(row["label"]) for row in rows])
    return [root / row["path"] for row in rows], labels


def decode(contents: bytes) -> np.ndarray:
    """Decode and resize as training does: uint8 (S, S, 3)."""
    import tensorflow as tf

    from train.dataset import decode_image

    return decode_image(tf.constant(contents), IMAGE_SIZE).numpy()


def keras_probabilities(model, contents: list[bytes]) -> np.ndarray:
    images = np.stack([decode(item) for item in contents])
    return np.asarray(model.predict(images, verbose=0))


def serve_probabilities(serve, contents: list[bytes]) -> np.ndarray:
    import tensorflow as tf

    return serve(image_bytes=tf.constant(contents, dtype=tf.string))["probabilities"].numpy()


def picture(width: int = 48, height: int = 36) -> np.ndarray:
    """An RGB picture with a gradient and two coloured rectangles, uint8 (height, width, 3)."""
    x = np.linspace(0, 255, width, dtype=np.float32)
    y = np.linspace(0, 255, height, dtype=np.float32)
    image = np.stack(
        [np.add.outer(y, x) / 2, np.tile(x, (height, 1)), np.tile(y[:, None], (1, width))], axis=-1
    ).astype(np.uint8)
    image[4:20, 6:30] = (220, 30, 30)
    image[18:32, 26:44] = (20, 40, 200)
    return image


def encode(image: np.ndarray, fmt: str, mode: str = "RGB") -> bytes:
    """Encode ``image`` with Pillow as ``fmt`` (JPEG, PNG, WEBP, GIF or BMP)."""
    from PIL import Image

    pil_image = Image.fromarray(image)
    if mode == "RGBA":
        alpha = np.full(image.shape[:2], 255, dtype=np.uint8)
        alpha[:, : image.shape[1] // 3] = 90
        pil_image.putalpha(Image.fromarray(alpha))
    elif mode == "L":
        pil_image = pil_image.convert("L")
    buffer = io.BytesIO()
    pil_image.save(buffer, format=fmt)
    return buffer.getvalue()


ENCODINGS = {
    "jpeg": ("JPEG", "RGB"),
    "png": ("PNG", "RGB"),
    "png_with_alpha": ("PNG", "RGBA"),
    "png_gray": ("PNG", "L"),
    "webp": ("WEBP", "RGB"),
    "gif": ("GIF", "RGB"),
    "bmp": ("BMP", "RGB"),
}


def copy_run(run: Path, destination: Path) -> Path:
    """Copy a run folder with its export, leaving out the training state."""
    return Path(shutil.copytree(run, destination / run.name, ignore=RUN_COPY_IGNORE))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Return ``{relative path: contents}`` of every file under ``folder``."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def fake_run(folder: Path, class_names: list[str] = CLASS_NAMES) -> Path:
    """A run folder with config.json, class_names.json, an empty model.keras and splits.csv."""
    folder.mkdir(parents=True)
    config = {"image_size": IMAGE_SIZE, "class_names": class_names, "dataset_root": str(folder)}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "class_names.json").write_text(json.dumps(class_names))
    (folder / "model.keras").write_bytes(b"")
    (folder / "splits.csv").write_text("key,path,label,split\n")
    return folder


# ---- the export's files ----


@pytest.mark.slow
def test_export_writes_every_file(export_folder):
    names = {path.name for path in export_folder.iterdir()}

    assert names == {
        "saved_model",
        "model_float32.tflite",
        "model_dynamic_range.tflite",
        "labels.txt",
        "export.json",
        "model_card.md",
    }
    assert (export_folder / "saved_model" / "1" / "saved_model.pb").is_file()
    assert list((export_folder / "saved_model" / "1" / "variables").iterdir())
    assert not list(export_folder.parent.glob(".export.*.tmp"))
    assert not (export_folder.parent / ".export.old").exists()


@pytest.mark.slow
def test_export_logs_start_and_end(exported, trained_run):
    tested = len(read_test_rows(trained_run))

    assert f"scoring on {tested} of {tested} test images" in exported.stderr
    assert "export: wrote 4 formats into" in exported.stderr


@pytest.mark.slow
def test_labels_txt_lists_classes_in_order(export_folder, trained_run):
    class_names = json.loads((trained_run / "class_names.json").read_text())

    assert (export_folder / "labels.txt").read_text().splitlines() == class_names
    assert class_names == CLASS_NAMES


# ---- the SavedModel returns the Keras model's probabilities ----


@pytest.mark.slow
def test_model_outputs_depend_on_image(keras_model):
    contents = [encode(picture(), "PNG")] + [
        encode(np.full((36, 48, 3), colour[::-1], np.uint8), "PNG") for colour in COLOURS.values()
    ]

    probabilities = keras_probabilities(keras_model, contents)

    # Otherwise the format comparisons below would pass for any decoding.
    assert np.ptp(probabilities, axis=0).max() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_saved_model_matches_keras(keras_model, serve, encoding):
    fmt, mode = ENCODINGS[encoding]
    contents = [encode(picture(), fmt, mode), encode(picture(61, 23)[:, ::-1].copy(), fmt, mode)]

    served = serve_probabilities(serve, contents)
    expected = keras_probabilities(keras_model, contents)

    assert served.dtype == np.float32
    assert served.shape == (2, len(CLASS_NAMES))
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)


@pytest.mark.slow
@requires_samples(PRODUCT_IMAGES)
def test_saved_model_matches_keras_on_real_photos(keras_model, serve):
    files = [
        *sorted((PRODUCT_IMAGES / "beauty").glob("*.jpg"))[:2],
        *sorted((PRODUCT_IMAGES / "home-living").glob("*.jpg"))[:2],
        PRODUCT_IMAGES / "electronics" / "Picture10.png",
        *[ODD_IMAGES / name for name in ("flower.webp", "transparent.png")],
    ]
    contents = [file.read_bytes() for file in files if file.is_file()]

    served = serve_probabilities(serve, contents)
    expected = keras_probabilities(keras_model, contents)

    assert len(contents) >= 5
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_saved_model_returns_class_names_rows(serve):
    import tensorflow as tf

    contents = [encode(picture(), "JPEG")] * 3

    outputs = serve(image_bytes=tf.constant(contents))
    rows = outputs["class_names"].numpy()

    assert rows.shape == (3, len(CLASS_NAMES))
    for row in rows:
        assert [name.decode() for name in row] == CLASS_NAMES


# ---- TFLite ----


@pytest.mark.slow
def test_tflite_float32_matches_keras(export_folder, keras_model, trained_run):
    from deploy.export import TFLiteClassifier

    paths, _ = read_test_files(trained_run)
    images = np.stack([decode(path.read_bytes()) for path in paths])
    tflite = TFLiteClassifier(export_folder / "model_float32.tflite")
    details = tflite.interpreter.get_input_details()[0]

    probabilities = tflite.predict(images)
    expected = np.asarray(keras_model.predict(images, verbose=0))

    assert list(details["shape"]) == [1, IMAGE_SIZE, IMAGE_SIZE, 3]
    assert details["dtype"] == np.float32
    assert tflite.image_size == IMAGE_SIZE
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_tflite_dynamic_range_smaller(export_folder, keras_model):
    from deploy.export import TFLiteClassifier

    float32 = export_folder / "model_float32.tflite"
    quantised = export_folder / "model_dynamic_range.tflite"
    image = decode(encode(picture(), "PNG"))[np.newaxis]

    probabilities = TFLiteClassifier(quantised).predict(image)
    expected = np.asarray(keras_model.predict(image, verbose=0))

    # int8 weights take a quarter of the space of float32 ones. They moved probabilities by
    # up to 0.08 on the test images of a run like this one.
    assert quantised.stat().st_size < 0.5 * float32.stat().st_size
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=0.25)


@pytest.mark.slow
def test_saved_model_stores_weights_once(export_folder):
    variables = export_folder / "saved_model" / "1" / "variables"
    stored = sum(path.stat().st_size for path in variables.iterdir())
    float32 = (export_folder / "model_float32.tflite").stat().st_size

    # The float32 TFLite file contains every weight once, plus a small graph.
    assert stored < 1.2 * float32


# ---- export.json and the model card ----


@pytest.mark.slow
def test_export_json_matches_recomputation(report, export_folder, trained_run, keras_model, serve):
    import keras
    import tensorflow as tf

    from deploy.export import TFLiteClassifier
    from train.evaluate import predict
    from train.metrics import classification_metrics

    paths, labels = read_test_files(trained_run)
    reference = predict(keras_model, paths, IMAGE_SIZE, 64)
    served = serve_probabilities(serve, [path.read_bytes() for path in paths])
    images = np.stack([decode(path.read_bytes()) for path in paths])
    quantised = TFLiteClassifier(export_folder / "model_dynamic_range.tflite").predict(images)
    keras_metrics = classification_metrics(labels, reference, CLASS_NAMES)
    formats = report["formats"]

    assert report["image_size"] == IMAGE_SIZE
    assert report["class_names"] == CLASS_NAMES
    assert report["tensorflow_version"] == tf.__version__
    assert report["keras_version"] == keras.__version__
    assert report["float32_copy"] is False
    assert report["test_split"] == {
        "images": len(paths),
        "images_in_split": len(paths),
        "measured": True,
        "not_measured_reason": None,
    }
    assert formats["keras"]["accuracy"] == pytest.approx(keras_metrics["accuracy"], abs=1e-6)
    assert formats["keras"]["macro_f1"] == pytest.approx(keras_metrics["macro_f1"], abs=1e-6)
    assert formats["saved_model"]["accuracy"] == pytest.approx(
        float((served.argmax(axis=1) == labels).mean()), abs=1e-6
    )
    dynamic = formats["tflite_dynamic_range"]
    assert dynamic["accuracy"] == pytest.approx(
        float((quantised.argmax(axis=1) == labels).mean()), abs=1e-6
    )
    assert dynamic["agreement"] == pytest.approx(
        float((quantised.argmax(axis=1) == reference.argmax(axis=1)).mean()), abs=1e-6
    )
    assert dynamic["accuracy_change"] == pytest.approx(
        dynamic["accuracy"] - formats["keras"]["accuracy"], abs=1e-6
    )
    assert dynamic["max_abs_difference"] == pytest.approx(
        float(np.abs(quantised - reference).max()), abs=1e-6
    )


@pytest.mark.slow
def test_export_json_sizes_and_commit(report, export_folder, trained_run):
    formats = report["formats"]
    saved_model_files = (export_folder / "saved_model" / "1").rglob("*")
    head = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    )

    assert formats["keras"]["bytes"] == (trained_run / "model.keras").stat().st_size
    assert formats["saved_model"]["bytes"] == sum(
        path.stat().st_size for path in saved_model_files if path.is_file()
    )
    for name, filename in (
        ("tflite_float32", "model_float32.tflite"),
        ("tflite_dynamic_range", "model_dynamic_range.tflite"),
    ):
        assert formats[name]["bytes"] == (export_folder / filename).stat().st_size
        assert formats[name]["path"] == filename
    if head.returncode == 0:
        assert report["git_commit"] == head.stdout.strip()


@pytest.mark.slow
def test_model_card_mentions_data_and_metrics(export_folder, trained_run, report):
    card = (export_folder / "model_card.md").read_text()
    config = json.loads((trained_run / "config.json").read_text())
    evaluation = json.loads((trained_run / "evaluation" / "metrics.json").read_text())

    assert "Data version: `v1`" in card
    assert config["dataset_fingerprint"] in card
    assert f"accuracy {evaluation['accuracy']:.3f}, macro F1 {evaluation['macro_f1']:.3f}" in card
    for name, values in report["formats"].items():
        assert f"{values['bytes']:,} | {values['accuracy']:.3f}" in card, name
    for name in CLASS_NAMES:
        assert f"`{name}`" in card
    assert "EXIF orientation is ignored" in card
    assert "model_float32.tflite" in card


# ---- runs trained with mixed precision ----


def with_dtype_policy(value, name: str):
    """Return a model config with every dtype policy set to ``name``."""
    if isinstance(value, list):
        return [with_dtype_policy(item, name) for item in value]
    if not isinstance(value, dict):
        return value
    if value.get("class_name") == "DTypePolicy":
        return {**value, "config": {**value["config"], "name": name}}
    return {key: with_dtype_policy(item, name) for key, item in value.items()}


@pytest.mark.slow
def test_float32_model_keeps_float32_model(keras_model):
    from deploy.export import float32_model

    assert float32_model(keras_model) is keras_model


@pytest.mark.slow
def test_mixed_precision_run_exports_float32(trained_run, keras_model, tmp_path):
    from deploy.export import TFLiteClassifier, export_run

    run = copy_run(trained_run, tmp_path)
    shutil.rmtree(run / "export", ignore_errors=True)
    config = with_dtype_policy(keras_model.get_config(), "mixed_float16")
    mixed = keras_model.__class__.from_config(config)
    mixed.set_weights(keras_model.get_weights())
    mixed.save(run / "model.keras")
    paths, _ = read_test_files(trained_run)
    images = np.stack([decode(path.read_bytes()) for path in paths])

    report = export_run(run)
    tflite = TFLiteClassifier(run / "export" / "model_float32.tflite").predict(images)

    assert "mixed_float16" in {layer.dtype_policy.name for layer in mixed._flatten_layers()}
    assert report["test_split"]["measured"] is True
    assert report["float32_copy"] is True
    # The float32 copy has the same weights, so it gives the float32 model's probabilities.
    np.testing.assert_allclose(tflite, keras_model.predict(images, verbose=0), atol=1e-4)
    assert report["formats"]["tflite_float32"]["agreement"] >= 0.8


# ---- re-export is atomic ----


@pytest.mark.slow
def test_failed_reexport_keeps_old_export(trained_run, exported, tmp_path, monkeypatch):
    import deploy.export
    from data.scripts.common import exclusive_lock

    run = copy_run(trained_run, tmp_path)
    before = snapshot(run / "export")

    def broken_tflite(model, image_size, out_dir):
        (out_dir / "model_float32.tflite").write_bytes(b"half a model")
        raise OSError("no space left on device (simulated)")

    monkeypatch.setattr(deploy.export, "export_tflite", broken_tflite)
    with pytest.raises(OSError, match="simulated"):
        deploy.export.export_run(run)

    assert snapshot(run / "export") == before
    assert not list(run.glob(".export.*.tmp"))
    assert not (run / ".export.old").exists()
    with exclusive_lock(run / ".export.lock", "the test"):
        pass


@pytest.mark.slow
def test_killed_export_keeps_old_export(trained_run, exported, tmp_path):
    from deploy.export import remove_stale_folders

    run = copy_run(trained_run, tmp_path)
    before = snapshot(run / "export")
    process = subprocess.Popen(
        [sys.executable, "-m", "deploy.export", "--run", str(run)],
        cwd=REPO_ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    midway = []
    while time.monotonic() < deadline and process.poll() is None and not midway:
        midway = list(run.glob(".export.*.tmp/saved_model/1/saved_model.pb"))
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(30)

    assert midway, "the export ended before it had written its SavedModel"
    assert snapshot(run / "export") == before
    stale = list(run.glob(".export.*.tmp"))
    assert len(stale) == 1
    assert remove_stale_folders(run) == stale
    assert not stale[0].exists()


def test_atomic_folder_restores_interrupted_replace(tmp_path):
    from deploy.export import atomic_folder

    target = tmp_path / "export"
    old = tmp_path / ".export.old"
    old.mkdir()
    (old / "export.json").write_text("previous")

    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_folder(target) as tmp:
            (tmp / "export.json").write_text("new")
            raise RuntimeError("writer failed")

    assert (target / "export.json").read_text() == "previous"
    assert not old.exists()
    assert [path.name for path in tmp_path.iterdir()] == ["export"]


def test_atomic_folder_replaces_and_honours_umask(tmp_path):
    from deploy.export import atomic_folder

    target = tmp_path / "export"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    previous = os.umask(0o022)
    try:
        with atomic_folder(target) as tmp:
            (tmp / "export.json").write_text("new")
    finally:
        os.umask(previous)

    assert [path.name for path in target.iterdir()] == ["export.json"]
    assert target.stat().st_mode & 0o777 == 0o755
    assert [path.name for path in tmp_path.iterdir()] == ["export"]


# ---- runs that cannot be exported, or only partly ----


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "is not a folder"),
        ("file", "is not a folder"),
        ("empty", "is not a run folder: config.json not found"),
        ("no_model", "model.keras not found"),
        ("reordered_names", "class_names.json of .* lists .* but config.json recorded"),
        ("damaged_config", "incomplete or damaged"),
    ],
)
def test_export_rejects_bad_run(tmp_path, caplog, case, message):
    from deploy.export import main

    run = tmp_path / "run"
    if case == "file":
        run.write_text("not a folder")
    elif case == "empty":
        run.mkdir()
    elif case != "missing":
        fake_run(run)
    if case == "no_model":
        (run / "model.keras").unlink()
    elif case == "reordered_names":
        (run / "class_names.json").write_text(json.dumps(CLASS_NAMES[::-1]))
    elif case == "damaged_config":
        (run / "config.json").write_text("{not json")

    with caplog.at_level(logging.ERROR):
        code = main(["--run", str(run)])

    assert code == 2
    assert any(re.search(message, record.getMessage()) for record in caplog.records), caplog.text
    assert not (run / "export").exists()


@pytest.mark.slow
def test_export_rejects_model_with_other_class_count(trained_run, tmp_path):
    from deploy.export import load_run_model, read_run

    run = copy_run(trained_run, tmp_path)
    four = [*CLASS_NAMES, "yellow"]
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "class_names": four}))
    (run / "class_names.json").write_text(json.dumps(four))

    with pytest.raises(ValueError, match="returns 3 probabilities but class_names.json lists 4"):
        load_run_model(read_run(run))


def test_read_test_images_without_dataset(tmp_path):
    from deploy.export import read_run, read_test_images

    run = fake_run(tmp_path / "run")
    (run / "splits.csv").write_text("key,path,label,split\nk1,red/gone.jpg,red,test\n")

    test = read_test_images(read_run(run))

    assert test.paths == []
    assert test.not_measured_reason.startswith("test images not found")


@pytest.mark.slow
def test_export_without_test_images_still_exports(trained_run, tmp_path):
    from deploy.export import export_run

    run = copy_run(trained_run, tmp_path)
    shutil.rmtree(run / "export", ignore_errors=True)
    with open(run / "splits.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    with open(run / "splits.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(
            {**row, "split": "val" if row["split"] == "test" else row["split"]} for row in rows
        )

    report = export_run(run)

    assert report["test_split"]["measured"] is False
    assert "has no images" in report["test_split"]["not_measured_reason"]
    for values in report["formats"].values():
        assert values["accuracy"] is None
        assert values["agreement"] is None
        assert values["bytes"] > 0
    assert (run / "export" / "model_dynamic_range.tflite").is_file()
    assert "Accuracy not measured" in (run / "export" / "model_card.md").read_text()


def test_make_export_needs_run():
    # -o install: the check under test runs without installing anything first.
    result = subprocess.run(
        ["make", "--no-print-directory", "-o", "install", "export", "RUN="],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "make export needs RUN=<run folder>" in result.stdout


# ---- the smoke test of a served export (make serve-check) ----


@pytest.mark.slow
def test_smoke_check_serves_export(trained_run, export_folder):
    result = run_module("deploy.smoke", "--run", str(trained_run))

    assert result.returncode == 0, result.stderr[-3000:]
    printed = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    class_names = (export_folder / "labels.txt").read_text().split()
    assert printed["PREDICTION"] in class_names
    assert 0.0 < float(printed["PROBABILITY"]) <= 1.0
    assert "clean stop" in result.stderr


@pytest.mark.slow
def test_smoke_check_without_export_fails(trained_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "class_names.json", "splits.csv"):
        shutil.copy(trained_run / name, run / name)

    result = run_module("deploy.smoke", "--run", str(run), timeout=300)

    assert result.returncode == 1
    assert "exited with status" in result.stderr
    assert "make export" in result.stderr
