"""The model card of an export: a Markdown page that travels with the exported files.

:func:`render_model_card` builds it from three records of the run: ``config.json``
(written by ``make train``), ``evaluation/metrics.json`` (written by ``make evaluate``,
optional) and the export's own ``export.json``. The card states what the model is, the
data and settings it was trained with, how it scored, what it is for, its known limits,
and how to call each exported format.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TRAINING_KEYS = (
    "model",
    "weights",
    "image_size",
    "epochs",
    "fine_tune_epochs",
    "fine_tune_layers",
    "batch_size",
    "learning_rate",
    "fine_tune_learning_rate",
    "dropout",
    "seed",
    "train_size",
    "val_size",
    "test_size",
    "class_weights",
    "cached_features",
    "mixed_precision",
    "strategy",
    "replicas",
    "keras_version",
)
FORMAT_TITLES = {
    "keras": "Keras `model.keras`",
    "saved_model": "SavedModel `saved_model/1`",
    "tflite_float32": "TFLite float32",
    "tflite_dynamic_range": "TFLite dynamic range",
}


def read_evaluation(run: Path) -> dict[str, Any] | None:
    """Return ``evaluation/metrics.json`` of ``run``, or None where it is missing or damaged."""
    path = Path(run) / "evaluation" / "metrics.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("model card: %s is unreadable and is left out (%s)", path, exc)
        return None


def _number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "not measured"
    return f"{value:.{digits}f}"


def _signed(value: Any) -> str:
    if value is None:
        return "not measured"
    return f"{value:+.3f}"


def _overview(config: dict[str, Any], report: dict[str, Any]) -> list[str]:
    classes = report["class_names"]
    return [
        f"# Model card: {report.get('model') or config.get('model')} ({report['run']})",
        "",
        f"A product photo classifier: it puts one image into one of {len(classes)} store "
        f"categories and returns a probability for each. Exported on {report['exported_at']} "
        f"with TensorFlow {report['tensorflow_version']} and Keras {report['keras_version']}"
        + (f", from commit `{report['git_commit']}`" if report.get("git_commit") else "")
        + (" with uncommitted changes" if report.get("git_dirty") else "")
        + ".",
        "",
        "## Model",
        "",
        f"- Architecture: `{config.get('model')}` (see `docs/training.md`), starting weights "
        f"`{config.get('weights')}`.",
        f"- Input side: {report['image_size']} pixels; images are resized to "
        f"{report['image_size']} x {report['image_size']} without keeping the aspect ratio.",
        f"- Classes, in output order: {', '.join(f'`{name}`' for name in classes)}.",
        "",
    ]


def _data(config: dict[str, Any]) -> list[str]:
    images = config.get("images") or {}
    return [
        "## Data",
        "",
        f"- Data version: `{config.get('data_version')}`.",
        f"- Dataset fingerprint: `{config.get('dataset_fingerprint')}`.",
        f"- Dataset folder at training time: `{config.get('dataset_root')}`.",
        f"- Images per split: train {images.get('train')}, validation {images.get('val')}, "
        f"test {images.get('test')}; the split of an image follows from a hash of its key.",
        "",
    ]


def _training(config: dict[str, Any]) -> list[str]:
    lines = ["## Training configuration", "", "| setting | value |", "| --- | --- |"]
    for key in TRAINING_KEYS:
        if key in config:
            lines.append(f"| `{key}` | `{config[key]}` |")
    return [*lines, ""]


def _evaluation(evaluation: dict[str, Any] | None) -> list[str]:
    lines = ["## Metrics", "", "### Test split (`make evaluate`)", ""]
    if evaluation is None:
        return [*lines, "Not available: `make evaluate RUN=...` has not run for this run.", ""]
    lines += [
        f"On {evaluation.get('images')} test images: accuracy "
        f"{_number(evaluation.get('accuracy'))}, macro F1 {_number(evaluation.get('macro_f1'))}, "
        f"top-2 accuracy {_number(evaluation.get('top2_accuracy'))}.",
        "",
        "| class | precision | recall | F1 | test images |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, values in (evaluation.get("per_class") or {}).items():
        lines.append(
            f"| {name} | {_number(values.get('precision'))} | {_number(values.get('recall'))} "
            f"| {_number(values.get('f1'))} | {values.get('support')} |"
        )
    return [*lines, ""]


def _formats(report: dict[str, Any]) -> list[str]:
    test = report["test_split"]
    lines = ["### Exported formats on the test split", ""]
    if test["measured"]:
        lines.append(
            f"Scored on {test['images']} of the {test['images_in_split']} test images, on "
            f"{', '.join(report['devices'])}. Change and agreement compare each format with "
            "the Keras model."
        )
    else:
        lines.append(f"Accuracy not measured: {test['not_measured_reason']}.")
    lines += [
        "",
        "| format | bytes | accuracy | macro F1 | accuracy change | agreement |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, values in report["formats"].items():
        lines.append(
            f"| {FORMAT_TITLES.get(name, name)} | {values['bytes']:,} | "
            f"{_number(values['accuracy'])} | {_number(values['macro_f1'])} | "
            f"{_signed(values['accuracy_change'])} | {_number(values['agreement'])} |"
        )
    return [*lines, ""]


def _use_and_limits(config: dict[str, Any], report: dict[str, Any]) -> list[str]:
    lines = [
        "## Intended use",
        "",
        "Suggest a store category for a product photo in a shop catalogue, for a person or a "
        "later rule to confirm. It is not meant for photos that show no product or several "
        "products, and not for decisions that nobody reviews.",
        "",
        "## Limits",
        "",
        "- Image types: JPEG, PNG, WebP, GIF (first frame only) and BMP. TIFF and other "
        "types are rejected. Transparent pixels are composited on white.",
        "- The EXIF orientation is ignored: a photo stored sideways with an orientation tag "
        "is classified sideways.",
        "- Images are stretched to a square, so very wide or tall photos are distorted.",
        f"- Trained only on data version `{config.get('data_version')}` under "
        f"`{config.get('dataset_root')}`. The pipeline's images come from Amazon India "
        "listings (Amazon Products Dataset 2023), whose categories are set by sellers and "
        "are often wrong. Photos from other shops or cameras may score lower.",
    ]
    if report.get("float32_copy"):
        lines.append(
            "- The model was trained with mixed precision (float16). The exported formats "
            "compute in float32 with the same weights."
        )
    lines += [
        f"- The figures above come from {report['test_split']['images']} test images and "
        f"were measured on {', '.join(report['devices'])}. A small test split makes them "
        "coarse, and speed was not measured.",
        "",
    ]
    return lines


def _usage(report: dict[str, Any]) -> list[str]:
    size = report["image_size"]
    return [
        "## How to call it",
        "",
        "The HTTP server of this project: `make serve RUN=<run folder>` (see "
        "`docs/serving.md`). TensorFlow Serving: `deploy/scripts/tf_serving.sh "
        "<run folder>/export`, then send base64 image bytes:",
        "",
        "```sh",
        'printf \'{"instances": [{"image_bytes": {"b64": "%s"}}]}\' "$(base64 -w0 photo.jpg)" '
        "> request.json",
        "curl -s http://127.0.0.1:8501/v1/models/product_classifier:predict "
        "-H 'Content-Type: application/json' -d @request.json",
        "```",
        "",
        "The SavedModel from Python; it decodes and resizes the image itself:",
        "",
        "```python",
        "import tensorflow as tf",
        'serve = tf.saved_model.load("export/saved_model/1").signatures["serving_default"]',
        'outputs = serve(image_bytes=tf.constant([open("photo.jpg", "rb").read()]))',
        'outputs["probabilities"], outputs["class_names"]  # [1, K] each',
        "```",
        "",
        "The TFLite files take raw RGB float32 pixels `[1, S, S, 3]` (0 to 255), because "
        "TFLite has no image decoding ops. Decode and resize as training does:",
        "",
        "```python",
        "import tensorflow as tf",
        "from train.dataset import decode_image",
        f'image = decode_image(tf.io.read_file("photo.jpg"), {size})',
        'runner = tf.lite.Interpreter(model_path="export/model_float32.tflite")'
        ".get_signature_runner()",
        "pixels = tf.cast(image, tf.float32)[tf.newaxis].numpy()",
        'probabilities = runner(image=pixels)["probabilities"]',
        "```",
        "",
        "`labels.txt` lists the class names in output order, one per line.",
        "",
    ]


def render_model_card(
    config: dict[str, Any], report: dict[str, Any], evaluation: dict[str, Any] | None
) -> str:
    """Return the model card as Markdown.

    Args:
        config: the run's ``config.json``.
        report: the export's ``export.json`` contents (``deploy.export.build_report``).
        evaluation: the run's ``evaluation/metrics.json``, or None where it is missing.
    """
    sections = [
        _overview(config, report),
        _data(config),
        _training(config),
        _evaluation(evaluation),
        _formats(report),
        _use_and_limits(config, report),
        _usage(report),
    ]
    return "\n".join(line for section in sections for line in section).rstrip() + "\n"
