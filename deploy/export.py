"""Export stage: turn a run's ``model.keras`` into files that serve it.

``python -m deploy.export --run develop/artifacts/runs/<run>`` (or ``make export RUN=...``)
writes ``<run>/export/``, replacing an earlier export only once the new one is complete:

* ``saved_model/1/``: a SavedModel that takes encoded images (described below).
  TensorFlow Serving expects numbered version folders under the model's base path, so
  ``saved_model/`` is the base path and ``1`` the version.
* ``model_float32.tflite`` and ``model_dynamic_range.tflite``: TFLite files. The second
  stores weights as int8 (dynamic-range quantisation, ``tf.lite.Optimize.DEFAULT``
  without a representative dataset). TFLite has no image decoding ops, so both take raw
  RGB pixels: input ``image``, float32 ``[1, S, S, 3]`` with values 0 to 255, output
  ``probabilities``, float32 ``[1, K]``. The caller decodes and resizes each image as
  ``train.dataset.decode_image`` does (bilinear resize to S x S without keeping the
  aspect ratio, rounded to uint8) and casts it to float32.
* ``labels.txt``: the K class names, one per line, in output order.
* ``export.json``: per format (keras, saved_model, tflite_float32, tflite_dynamic_range)
  the size in bytes, accuracy and macro F1 on the run's test split, and the accuracy
  change and prediction agreement against the Keras model. It also records the image
  size, class names, TensorFlow and Keras versions and the git commit.
* ``model_card.md``: what the model is, what it was trained on, how it scores, its
  limits and how to call it (``deploy.model_card``).

The SavedModel written by :func:`export_saved_model` has one signature, ``serving_default``:

* input ``image_bytes``: ``tf.string`` of shape ``[batch]``, each element the bytes of one
  JPEG, PNG, WebP, GIF (first frame) or BMP file;
* outputs ``probabilities`` (``float32 [batch, K]``, in class order) and ``class_names``
  (``string [batch, K]``, the same K names on every row).

Decoding and resizing happen inside the graph with the training pipeline's own ops
(``train.dataset.decode_image``), so a served image goes through exactly what a training
image went through. TensorFlow Serving loads this folder as it is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from data.scripts.common import (
    PROJECT_ROOT,
    atomic_path,
    exclusive_lock,
    setup_logging,
    write_json,
)

logger = logging.getLogger(__name__)

STAGE = "export"
SIGNATURE = "serving_default"
INPUT_NAME = "image_bytes"
OUTPUTS = ("probabilities", "class_names")

EXPORT_DIR = "export"
SAVED_MODEL_DIR = "saved_model"
SAVED_MODEL_VERSION = "1"
TFLITE_INPUT_NAME = "image"
TFLITE_OUTPUT_NAME = "probabilities"
TFLITE_FILES = {
    "tflite_float32": "model_float32.tflite",
    "tflite_dynamic_range": "model_dynamic_range.tflite",
}
FORMATS = ("keras", "saved_model", "tflite_float32", "tflite_dynamic_range")
FORMAT_INPUTS = {
    "keras": "raw RGB [batch, S, S, 3], values 0 to 255, any real dtype",
    "saved_model": "encoded JPEG, PNG, WebP, GIF or BMP bytes, tf.string [batch]",
    "tflite_float32": "raw RGB float32 [1, S, S, 3], values 0 to 255",
    "tflite_dynamic_range": "raw RGB float32 [1, S, S, 3], values 0 to 255",
}
GIT_TIMEOUT_S = 10
SCORE_DIGITS = 6  # decimals of the shares written to export.json


# ---- writing folders and models ----


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; on success it replaces ``path``.

    An existing ``path`` is renamed to ``.<name>.old`` first and removed only after the new
    folder is in place. A crash between those two renames leaves the previous folder only
    under ``.<name>.old``, and the next call moves it back before it starts. So ``path``
    contains the old folder or the new one, never a half-written one. The temporary folder
    is named ``.<name>.<pid>.<random>.tmp``, and a killed process leaves it behind. Two
    writers of one ``path`` at once would collide, so callers hold a lock, as
    ``export_run`` does.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.with_name(f".{path.name}.old")
    if old.exists() and not path.exists():
        os.replace(old, path)
        logger.warning("restored %s from %s, left by an interrupted replace", path, old.name)
    # os.mkdir applies the umask as for any new folder, where tempfile.mkdtemp would
    # create it 0o700 and so hide the export from a server that runs as another user.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    os.mkdir(tmp)
    try:
        yield tmp
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def serving_function(model: Any, class_names: list[str], image_size: int) -> Any:
    """Return a ``tf.function`` from encoded image bytes ``[batch]`` to the two outputs."""
    # Python strings rather than a captured tf.constant: ExportArchive refuses to save a
    # function that captures an eager tensor it does not track.
    names = list(class_names)

    from train.dataset import decode_image

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_NAME)])
    def serve(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.map_fn(
            lambda contents: decode_image(contents, image_size),
            image_bytes,
            fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8),
        )
        probabilities = tf.cast(model(images, training=False), tf.float32)
        batch = tf.shape(image_bytes)[0]
        rows = tf.tile(tf.constant(names, tf.string)[tf.newaxis, :], [batch, 1])
        return {"probabilities": probabilities, "class_names": rows}

    return serve


def export_saved_model(model: Any, class_names: list[str], image_size: int, out_dir: Path) -> Path:
    """Write a SavedModel that takes encoded images to ``out_dir`` (replaced atomically).

    Args:
        model: a Keras model from raw RGB ``[batch, S, S, 3]`` to probabilities ``[batch, K]``.
        class_names: the K class names in the model's output order.
        image_size: S, the side the model takes.
        out_dir: the SavedModel folder to write; an existing one is replaced only once the
            new one is complete.

    Returns:
        ``out_dir``.
    """
    import keras

    if len(class_names) != int(model.output_shape[-1]):
        raise ValueError(
            f"The model returns {model.output_shape[-1]} probabilities but {len(class_names)} "
            "class names were given; export the run folder's own class_names.json"
        )
    # No archive.track(model): the archive then saves each variable that the endpoint uses
    # once. Tracking the model saves every one a second time as a Keras variable (Keras
    # 3.15), which doubles the size of the folder.
    archive = keras.export.ExportArchive()
    archive.add_endpoint(SIGNATURE, serving_function(model, class_names, image_size))
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(out_dir) as tmp:
        archive.write_out(str(tmp), verbose=False)
    logger.info("wrote SavedModel %s (%d classes, %d px)", out_dir, len(class_names), image_size)
    return out_dir


def load_serving(path: Path) -> Any:
    """Load the ``serving_default`` signature of an exported SavedModel."""
    loaded = tf.saved_model.load(str(path))
    return loaded.signatures[SIGNATURE]


def export_tflite(model: Any, image_size: int, out_dir: Path) -> dict[str, Path]:
    """Write the float32 and the dynamic-range TFLite files of ``model`` into ``out_dir``.

    Both files have one signature, ``serving_default``, from input ``image`` (raw RGB
    float32 ``[1, S, S, 3]``, values 0 to 255) to output ``probabilities`` (float32
    ``[1, K]``). The converter may use TFLite builtin ops only, so the files run on any
    TFLite runtime without the Flex delegate. It raises for a model that needs other ops.

    Returns:
        ``{"tflite_float32": path, "tflite_dynamic_range": path}``.
    """
    import keras

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = tf.TensorSpec([1, image_size, image_size, 3], tf.float32, name=TFLITE_INPUT_NAME)

    def classify(image: tf.Tensor) -> dict[str, tf.Tensor]:
        return {TFLITE_OUTPUT_NAME: tf.cast(model(image, training=False), tf.float32)}

    # The converter reads a SavedModel with a fixed input shape: Keras 3 models have no
    # direct path into TFLiteConverter, and one SavedModel serves both conversions.
    paths = {}
    with tempfile.TemporaryDirectory(prefix=".tflite-source-", dir=out_dir) as source:
        archive = keras.export.ExportArchive()  # untracked, as in export_saved_model
        archive.add_endpoint(SIGNATURE, classify, input_signature=[spec])
        archive.write_out(source, verbose=False)

        for name, filename in TFLITE_FILES.items():
            converter = tf.lite.TFLiteConverter.from_saved_model(source)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            if name == "tflite_dynamic_range":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            content = converter.convert()
            with atomic_path(out_dir / filename) as tmp:
                tmp.write_bytes(content)
            paths[name] = out_dir / filename
            logger.info("wrote %s (%d bytes)", out_dir / filename, len(content))
    return paths


# ---- reading TFLite files ----


class TFLiteClassifier:
    """A TFLite file written by :func:`export_tflite`, run one image at a time.

    Attributes:
        image_size: S, the input side in pixels.
    """

    def __init__(self, path: Path) -> None:
        # NOTE: tf.lite.Interpreter warns that it moves to the ai_edge_litert package; it
        # still works in TensorFlow 2.21, and LiteRT's Interpreter takes the same calls.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"\s*Warning: tf.lite.Interpreter is deprecated")
            self.interpreter = tf.lite.Interpreter(model_path=str(path))
        self._runner = self.interpreter.get_signature_runner(SIGNATURE)
        shape = self._runner.get_input_details()[TFLITE_INPUT_NAME]["shape"]
        self.image_size = int(shape[1])

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Return float32 probabilities ``[n, K]`` for raw RGB ``images`` ``[n, S, S, 3]``."""
        rows = [
            self._runner(**{TFLITE_INPUT_NAME: image[np.newaxis].astype(np.float32)})[
                TFLITE_OUTPUT_NAME
            ][0]
            for image in images
        ]
        return np.stack(rows).astype(np.float32)


# ---- the run folder ----


@dataclass(frozen=True)
class RunInfo:
    """Settings and class names of a run folder, read before the model is loaded."""

    path: Path
    config: dict[str, Any]
    class_names: list[str]
    image_size: int


def read_run(run: Path) -> RunInfo:
    """Read and check ``config.json``, ``class_names.json`` and ``model.keras`` of ``run``.

    Raises:
        FileNotFoundError: ``run`` is not a folder, or lacks ``config.json`` or
            ``model.keras``.
        ValueError: a damaged file, or class names that differ between ``config.json`` and
            ``class_names.json``.
    """
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(
            f"RUN={run} is not a folder; pass a run folder printed by 'make train' "
            "(RUN=develop/artifacts/runs/<run name>), see 'make compare'"
        )
    if not (run / "config.json").is_file():
        raise FileNotFoundError(
            f"RUN={run} is not a run folder: config.json not found in it; pass a folder "
            "written by 'make train', see 'make compare'"
        )
    if not (run / "model.keras").is_file():
        raise FileNotFoundError(
            f"model.keras not found in {run}: the run has not finished its first phase; run "
            "the same 'make train' command again to finish it"
        )
    try:
        config = json.loads((run / "config.json").read_text(encoding="utf-8"))
        class_names = json.loads((run / "class_names.json").read_text(encoding="utf-8"))
        image_size = int(config["image_size"])
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(
            f"run folder {run} is incomplete or damaged ({type(exc).__name__}: {exc}); "
            "train it again with TRAIN_ARGS=--restart"
        ) from exc
    _check_class_names(run, config, class_names)
    return RunInfo(run, config, class_names, image_size)


def _check_class_names(run: Path, config: dict[str, Any], class_names: Any) -> None:
    if not (
        isinstance(class_names, list)
        and class_names
        and all(isinstance(name, str) and name for name in class_names)
    ):
        raise ValueError(
            f"class_names.json of {run} must be a list of non-empty strings. "
            f"Received: {class_names!r}"
        )
    if any("\n" in name or "\r" in name for name in class_names):
        raise ValueError(
            f"class names must not contain line breaks, because labels.txt has one name a "
            f"line. Received: {class_names!r}"
        )
    recorded = config.get("class_names")
    if recorded is not None and recorded != class_names:
        raise ValueError(
            f"class_names.json of {run} lists {class_names} but config.json recorded "
            f"{recorded} at training time; the run folder was changed by hand. Restore "
            "class_names.json, or train the run again with TRAIN_ARGS=--restart"
        )


def load_run_model(info: RunInfo) -> Any:
    """Load ``model.keras`` of the run and check it against the class names and image size."""
    import keras

    import train.models  # noqa: F401  (registers the custom layers that load_model needs)

    path = info.path / "model.keras"
    try:
        model = keras.models.load_model(path)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(
            f"{path} could not be loaded ({type(exc).__name__}: {str(exc)[:300]}); train "
            "the run again"
        ) from exc
    outputs = int(model.output_shape[-1])
    if outputs != len(info.class_names):
        raise ValueError(
            f"the model of {info.path} returns {outputs} probabilities but class_names.json "
            f"lists {len(info.class_names)} classes ({info.class_names}); the run folder is "
            "inconsistent, train it again with TRAIN_ARGS=--restart"
        )
    side = model.input_shape[1]
    if side is not None and int(side) != info.image_size:
        raise ValueError(
            f"the model of {info.path} expects {side} px images but config.json says "
            f"image_size={info.image_size}; train the run again with TRAIN_ARGS=--restart"
        )
    return model


def float32_model(model: Any) -> Any:
    """Return ``model`` when every layer computes in float32, else a float32 copy of it.

    Runs trained on GPUs use mixed precision (``mixed_float16``) by default. TFLite builtin
    ops have no float16 kernels, and float16 on a CPU is slower than float32, so every
    exported format is built from a copy whose layers compute in float32. The copy has the
    same weights, and its probabilities differ from the original's by float16 rounding.
    """
    config = model.get_config()
    converted = _float32_config(config)
    if converted == config:
        return model
    copy = model.__class__.from_config(converted)
    copy.set_weights(model.get_weights())
    logger.info(
        "export: %s computes in mixed precision; exporting a float32 copy of it", model.name
    )
    return copy


def _float32_config(value: Any) -> Any:
    """Return a layer or model config with every mixed-precision dtype policy set to float32."""
    if isinstance(value, list):
        return [_float32_config(item) for item in value]
    if not isinstance(value, dict):
        return value
    policy = value.get("config") if value.get("class_name") == "DTypePolicy" else None
    if isinstance(policy, dict) and str(policy.get("name", "")).startswith("mixed_"):
        return {**value, "config": {**policy, "name": "float32"}}
    return {key: _float32_config(item) for key, item in value.items()}


@dataclass(frozen=True)
class TestImages:
    """The test images that the export scores every format on."""

    paths: list[Path]
    labels: np.ndarray  # class ids, int64 of shape (n,)
    images_in_split: int
    not_measured_reason: str | None  # None when the formats are scored


def read_test_images(info: RunInfo, max_images: int | None = None) -> TestImages:
    """Return the run's test images in ``splits.csv`` order, at most ``max_images`` of them.

    A test split without images, or whose images are gone from the dataset folder, gives
    no paths and a reason: the export still runs and records accuracy as not measured.
    """
    from train.evaluate import read_test_split

    empty = np.zeros(0, dtype=np.int64)
    try:
        rows, _, root, _ = read_test_split(info.path)
    except FileNotFoundError as exc:
        logger.warning("export: accuracy will not be measured: %s", exc)
        return TestImages([], empty, 0, f"test images not found: {exc}")
    if not rows:
        reason = f"the test split of {info.path.name} has no images (splits.csv)"
        logger.warning("export: accuracy will not be measured: %s", reason)
        return TestImages([], empty, 0, reason)

    selected = rows[:max_images] if max_images else rows
    index_of = {name: index for index, name in enumerate(info.class_names)}
    labels = np.array([index_of[row["label"]] for row in selected], dtype=np.int64)
    return TestImages([root / row["path"] for row in selected], labels, len(rows), None)


# ---- scoring every format ----


def predict_saved_model(serve: Any, paths: Sequence[Path], batch_size: int) -> np.ndarray:
    """Return the SavedModel's probabilities ``[n, K]`` for the encoded files at ``paths``."""
    batches = []
    with tqdm(total=len(paths), desc="SavedModel", unit="image", disable=None) as progress:
        for start in range(0, len(paths), batch_size):
            contents = [Path(path).read_bytes() for path in paths[start : start + batch_size]]
            outputs = serve(**{INPUT_NAME: tf.constant(contents, dtype=tf.string)})
            batches.append(outputs["probabilities"].numpy())
            progress.update(len(contents))
    return np.concatenate(batches).astype(np.float64)


def predict_tflite(
    models: dict[str, TFLiteClassifier], paths: Sequence[Path], image_size: int
) -> dict[str, np.ndarray]:
    """Decode each file as training does and run every TFLite model on it, one at a time."""
    from train.dataset import decode_image

    dataset = (
        tf.data.Dataset.from_tensor_slices([str(path) for path in paths])
        .map(
            lambda path: decode_image(tf.io.read_file(path), image_size),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .prefetch(tf.data.AUTOTUNE)
    )
    rows: dict[str, list[np.ndarray]] = {name: [] for name in models}
    images = tqdm(
        dataset.as_numpy_iterator(), total=len(paths), desc="TFLite", unit="image", disable=None
    )
    for image in images:
        for name, model in models.items():
            rows[name].append(model.predict(image[np.newaxis])[0])
    return {name: np.stack(values).astype(np.float64) for name, values in rows.items()}


def score_formats(
    probabilities: dict[str, np.ndarray], labels: np.ndarray, class_names: list[str]
) -> dict[str, dict[str, float]]:
    """Return accuracy, macro F1 and the comparison with ``"keras"`` for every format.

    ``accuracy_change`` is the format's accuracy minus the Keras model's, ``agreement`` the
    share of images where both predict the same class, and ``max_abs_difference`` the
    largest difference of any probability. Shares are rounded to ``SCORE_DIGITS`` decimals.
    """
    from train.metrics import classification_metrics

    reference = probabilities["keras"]
    reference_accuracy = float((reference.argmax(axis=1) == labels).mean())
    scores = {}
    for name, values in probabilities.items():
        metrics = classification_metrics(labels, values, class_names)
        agreement = (values.argmax(axis=1) == reference.argmax(axis=1)).mean()
        scores[name] = {
            "accuracy": round(metrics["accuracy"], SCORE_DIGITS),
            "macro_f1": round(metrics["macro_f1"], SCORE_DIGITS),
            "accuracy_change": round(metrics["accuracy"] - reference_accuracy, SCORE_DIGITS),
            "agreement": round(float(agreement), SCORE_DIGITS),
            "max_abs_difference": float(np.abs(values - reference).max()),
        }
    return scores


def measure_formats(
    model: Any,
    saved_model: Path,
    tflite_paths: dict[str, Path],
    test: TestImages,
    info: RunInfo,
    batch_size: int,
) -> dict[str, dict[str, float]] | None:
    """Score the four formats on the test images; None when there are none."""
    from train.evaluate import predict

    if test.not_measured_reason is not None:
        return None
    probabilities = {"keras": predict(model, test.paths, info.image_size, batch_size)}
    probabilities["saved_model"] = predict_saved_model(
        load_serving(saved_model), test.paths, batch_size
    )
    tflite_models = {name: TFLiteClassifier(path) for name, path in tflite_paths.items()}
    probabilities.update(predict_tflite(tflite_models, test.paths, info.image_size))
    return score_formats(probabilities, test.labels, info.class_names)


# ---- the export report ----


def git_commit(root: Path = PROJECT_ROOT) -> tuple[str | None, bool | None]:
    """Return the commit checked out at ``root`` and whether tracked files differ from it.

    Returns ``(None, None)`` where git is missing or ``root`` is not a git checkout.
    """
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
        )
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError):
        return None, None
    if head.returncode != 0 or status.returncode != 0:
        return None, None
    return head.stdout.strip(), bool(status.stdout.strip())


def folder_bytes(path: Path) -> int:
    """Return the total size of the files under ``path``, in bytes."""
    return sum(item.stat().st_size for item in Path(path).rglob("*") if item.is_file())


def build_report(
    info: RunInfo,
    out: Path,
    test: TestImages,
    scores: dict[str, dict[str, float]] | None,
    seconds: float,
) -> dict[str, Any]:
    """Return the contents of ``export.json`` for an export written into ``out``."""
    import keras

    relative_paths = {
        "keras": "../model.keras",
        "saved_model": f"{SAVED_MODEL_DIR}/{SAVED_MODEL_VERSION}",
        **TFLITE_FILES,
    }
    sizes = {
        "keras": (info.path / "model.keras").stat().st_size,
        "saved_model": folder_bytes(out / SAVED_MODEL_DIR / SAVED_MODEL_VERSION),
        **{name: (out / filename).stat().st_size for name, filename in TFLITE_FILES.items()},
    }
    not_measured = dict.fromkeys(
        ("accuracy", "macro_f1", "accuracy_change", "agreement", "max_abs_difference")
    )
    formats = {
        name: {
            "path": relative_paths[name],
            "bytes": sizes[name],
            "input": FORMAT_INPUTS[name],
            **(scores[name] if scores else not_measured),
        }
        for name in FORMATS
    }
    commit, dirty = git_commit()
    return {
        "run": info.path.name,
        "model": info.config.get("model"),
        "data_version": info.config.get("data_version"),
        "dataset_fingerprint": info.config.get("dataset_fingerprint"),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "image_size": info.image_size,
        "class_names": info.class_names,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "devices": sorted({device.device_type for device in tf.config.list_physical_devices()}),
        "test_split": {
            "images": len(test.paths),
            "images_in_split": test.images_in_split,
            "measured": scores is not None,
            "not_measured_reason": test.not_measured_reason,
        },
        "formats": formats,
        "seconds": round(seconds, 1),
    }


def write_labels(path: Path, class_names: list[str]) -> None:
    """Write the class names, one per line in output order, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{name}\n" for name in class_names), encoding="utf-8")


def write_model_card(path: Path, text: str) -> None:
    """Write the model card's Markdown text, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# ---- the stage ----


def export_dir(run: Path) -> Path:
    """Return the folder that ``export_run`` writes: ``<run>/export``."""
    return Path(run) / EXPORT_DIR


def saved_model_base(run: Path) -> Path:
    """Return the SavedModel base path to give TensorFlow Serving: ``<run>/export/saved_model``."""
    return export_dir(run) / SAVED_MODEL_DIR


def remove_stale_folders(run: Path) -> list[Path]:
    """Remove the temporary export folders that killed exports left in ``run``.

    Call it only while holding the run's export lock, because a running export's own
    temporary folder has the same form of name.
    """
    stale = sorted(Path(run).glob(f".{EXPORT_DIR}.*.tmp"))
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
        logger.info("export: removed %s, left by an interrupted export", folder.name)
    return stale


def export_run(
    run: Path, *, batch_size: int = 64, max_test_images: int | None = None
) -> dict[str, Any]:
    """Export the model of ``run`` into ``<run>/export/`` and return ``export.json``'s contents.

    Args:
        run: a run folder written by ``make train``.
        batch_size: images per prediction step of the Keras model and the SavedModel.
        max_test_images: score the formats on the first this many test images only;
            None scores all of them.

    Raises:
        FileNotFoundError: ``run`` is not a run folder or lacks ``model.keras``.
        ValueError: a damaged run folder, or class names that do not match the model.
        RuntimeError: another process is exporting the same run.
    """
    info = read_run(run)
    with exclusive_lock(info.path / f".{EXPORT_DIR}.lock", f"the export of {info.path}"):
        remove_stale_folders(info.path)
        return _export_locked(info, batch_size, max_test_images)


def _export_locked(info: RunInfo, batch_size: int, max_test_images: int | None) -> dict[str, Any]:
    from deploy.model_card import read_evaluation, render_model_card

    started = time.monotonic()
    model = load_run_model(info)
    test = read_test_images(info, max_test_images)
    logger.info(
        "export: %s (%d classes, %d px), scoring on %d of %d test images",
        info.path.name,
        len(info.class_names),
        info.image_size,
        len(test.paths),
        test.images_in_split,
    )

    # The formats come from a float32 copy, and the Keras figures from model.keras as saved.
    portable = float32_model(model)
    destination = export_dir(info.path)
    with atomic_folder(destination) as out:
        saved_model = export_saved_model(
            portable,
            info.class_names,
            info.image_size,
            out / SAVED_MODEL_DIR / SAVED_MODEL_VERSION,
        )
        tflite_paths = export_tflite(portable, info.image_size, out)
        write_labels(out / "labels.txt", info.class_names)
        scores = measure_formats(model, saved_model, tflite_paths, test, info, batch_size)
        report = build_report(info, out, test, scores, time.monotonic() - started)
        report["float32_copy"] = portable is not model
        write_json(out / "export.json", report)
        card = render_model_card(info.config, report, read_evaluation(info.path))
        write_model_card(out / "model_card.md", card)

    _log_done(destination, report)
    return report


def _log_done(destination: Path, report: dict[str, Any]) -> None:
    formats = report["formats"]
    if report["test_split"]["measured"]:
        summary = ", ".join(
            f"{name} accuracy {values['accuracy']:.3f} (agreement {values['agreement']:.3f})"
            for name, values in formats.items()
        )
    else:
        summary = f"accuracy not measured: {report['test_split']['not_measured_reason']}"
    logger.info(
        "export: wrote %d formats into %s in %.0f s; %s",
        len(formats),
        destination,
        report["seconds"],
        summary,
    )


# ---- command line ----


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.export",
        description=(
            "Export a run's model as a SavedModel and TFLite files with labels.txt, "
            "export.json and model_card.md, into <run>/export/."
        ),
    )
    parser.add_argument("--run", type=Path, required=True, help="run folder from 'make train'")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="images per prediction step while scoring (default: 64)",
    )
    parser.add_argument(
        "--max-test-images",
        type=int,
        default=None,
        help="score the formats on the first N test images only (default: all)",
    )
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    # TensorFlow logs "Assets written to" at INFO for every SavedModel, and twice, because
    # its logger has its own handler. The export logs what it wrote itself.
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    if args.batch_size < 1:
        logger.error("--batch-size must be 1 or more. Received: %d", args.batch_size)
        return 2
    if args.max_test_images is not None and args.max_test_images < 1:
        logger.error("--max-test-images must be 1 or more. Received: %d", args.max_test_images)
        return 2
    try:
        export_run(args.run, batch_size=args.batch_size, max_test_images=args.max_test_images)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        logger.error("export: %s", exc)
        return 2
    except KeyboardInterrupt:
        logger.error("export: interrupted; the previous export/ is unchanged. Run it again")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
