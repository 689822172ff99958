"""End-to-end tests of the prediction server, ``deploy.serve``.

A tiny MobileNetV3 model is fitted on generated images and exported once per module with
``deploy.export.export_saved_model``. Most tests run the server in this process with
aiohttp's test server on 127.0.0.1 and compare its responses with the Keras model's own
predictions on ``train.dataset.decode_image`` of the same bytes. The tests marked
``slow`` run the real command line in a subprocess.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from deploy import serve
from deploy.export import export_saved_model
from deploy.inputs import Limits, clip
from deploy.serve import (
    STATE,
    ServedModel,
    ServeSettings,
    create_app,
    find_version,
    load_model,
)
from deploy.serve import main as serve_main
from tests.helpers import REPO_ROOT, SAMPLES, requires_samples
from train.dataset import decode_image
from train.models import build_model, compile_model

CLASS_NAMES = ["books", "electronics", "toys"]
IMAGE_SIZE = 32
SEED = 7
MODEL = "product_classifier"
PREDICT = f"/v1/models/{MODEL}:predict"
FORMATS = (".jpg", ".png", ".webp", ".gif", ".bmp")
ATOL = 1e-4  # oneDNN kernels for different batch sizes round differently, by up to ~1e-5
# Real photos lie far from the generated images that set the backbone's statistics, so their
# logits are large. The float32 difference between Keras run eagerly and the SavedModel's
# optimised graph grows with the logits, to 6.5e-4 at most on the sample photos.
SAMPLE_ATOL = 2e-3
PRODUCT_IMAGES = SAMPLES / "product-images"
ODD_IMAGES = SAMPLES / "odd-images"


# ---- the model ----


@dataclass(frozen=True)
class Exported:
    run: Path
    keras_model: keras.Model
    served: ServedModel

    def expected(self, image: bytes) -> np.ndarray:
        """Return the Keras model's probabilities for ``image``, decoded as in training."""
        pixels = decode_image(tf.constant(image), IMAGE_SIZE)
        return self.keras_model(pixels[tf.newaxis], training=False).numpy()[0]


def photo(seed: int, fmt: str = ".png", width: int = 48, height: int = 40) -> bytes:
    """Encode a smooth random colour image: a 4 x 4 grid of colours, resized bilinearly."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    image = cv2.resize(grid, (width, height), interpolation=cv2.INTER_LINEAR)
    ok, encoded = cv2.imencode(fmt, image)
    assert ok, f"OpenCV failed to encode {fmt}"
    return encoded.tobytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _recalibrate_batch_norm(model: keras.Model, images: np.ndarray) -> None:
    """Set every backbone BatchNormalization's moving statistics to one batch's statistics.

    MobileNetV3Small built with random weights normalises with mean 0 and variance 1, and
    its features then shrink to about 1e-10, so every image gets the same prediction. One
    pass in training mode with momentum 0 stores each layer's batch statistics instead.
    """
    features = model.get_layer("features").layer
    base = next(layer for layer in features.layers if isinstance(layer, keras.Model))
    norms = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    base.trainable = True
    for layer in norms:
        layer.momentum = 0.0
    base(images.astype("float32"), training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum
    base.trainable = False


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    keras.utils.set_random_seed(SEED)
    model = build_model(
        "mobilenetv3_pool", num_classes=3, image_size=IMAGE_SIZE, weights="none", seed=SEED
    )
    labels = np.arange(48) % 3
    images = np.stack(
        [decode_image(tf.constant(photo(100 + i)), IMAGE_SIZE).numpy() for i in range(48)]
    )
    images[labels == 0, :, :, 0] = 255  # a colour cue per class, so the head learns something
    images[labels == 1, :, :, 1] = 255
    _recalibrate_batch_norm(model, images)
    compile_model(model, learning_rate=1e-2)
    model.fit(images, labels, epochs=2, batch_size=8, verbose=0)

    run = tmp_path_factory.mktemp("run")
    export_saved_model(model, CLASS_NAMES, IMAGE_SIZE, run / "export" / "saved_model" / "1")
    (run / "export" / "labels.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    version, version_dir = find_version(run / "export" / "saved_model")
    return Exported(run=run, keras_model=model, served=load_model(version_dir, version))


def test_fixture_model_predictions_differ(exported):
    # Every comparison below is only meaningful if images get different predictions.
    predictions = np.stack([exported.expected(photo(seed)) for seed in range(8)])

    assert predictions.std(axis=0).max() > 0.01


# ---- running the server in this process ----

Scenario = Callable[[TestClient], Awaitable[Any]]


def run_server(
    exported: Exported,
    scenario: Scenario,
    *,
    settings: ServeSettings | None = None,
    load: Callable[[], ServedModel] | None = None,
    wait_ready: bool = True,
) -> Any:
    """Start the app on 127.0.0.1, wait for /healthz, run ``scenario`` and stop the app."""

    async def main() -> Any:
        app = create_app(
            settings or ServeSettings(),
            exported.served.version,
            load or (lambda: exported.served),
        )
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            if wait_ready:
                await wait_until_ready(client)
            return await scenario(client)

    return asyncio.run(main())


async def wait_until_ready(client: TestClient, seconds: float = 30.0) -> None:
    for _ in range(int(seconds / 0.05)):
        response = await client.get("/healthz")
        if response.status == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"/healthz did not answer 200 within {seconds} s")


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the condition did not become true within {seconds} s")


def held_body(payload: Any, release: asyncio.Event) -> Any:
    """Stream ``payload`` as JSON in two chunks, the second once ``release`` is set."""
    data = json.dumps(payload).encode()

    async def generate():
        yield data[: len(data) // 2]
        await release.wait()
        yield data[len(data) // 2 :]

    return generate()


async def metrics_text(client: TestClient) -> str:
    response = await client.get("/metrics")
    assert response.status == 200
    return await response.text()


def metric(text: str, sample_name: str, **labels: str) -> float:
    """Return one sample's value from Prometheus text, or 0.0 when it is absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == sample_name and all(
                sample.labels.get(key) == value for key, value in labels.items()
            ):
                return sample.value
    return 0.0


# ---- prediction requests ----


@pytest.mark.parametrize("fmt", FORMATS)
def test_row_form_matches_model(exported, fmt):
    images = [photo(seed, fmt) for seed in (1, 2, 3)]
    body = {
        "instances": [
            {"b64": b64(images[0])},
            {"image_bytes": {"b64": b64(images[1])}},
            {"b64": base64.urlsafe_b64encode(images[2]).decode("ascii")},
        ]
    }

    async def scenario(client):
        response = await client.post(PREDICT, json=body)
        return response.status, await response.json()

    status, payload = run_server(exported, scenario)

    assert status == 200
    assert list(payload) == ["predictions"]
    assert len(payload["predictions"]) == 3
    for image, prediction in zip(images, payload["predictions"]):
        assert prediction["class_names"] == CLASS_NAMES
        np.testing.assert_allclose(prediction["probabilities"], exported.expected(image), atol=ATOL)


@pytest.mark.parametrize("wrapped", [False, True], ids=["list", "named_input"])
def test_columnar_form_matches_model(exported, wrapped):
    images = [photo(seed, ".jpg") for seed in (4, 5)]
    column = [{"b64": b64(image)} for image in images]
    body = {"inputs": {"image_bytes": column} if wrapped else column}

    async def scenario(client):
        response = await client.post(f"/v1/models/{MODEL}/versions/1:predict", json=body)
        return response.status, await response.json()

    status, payload = run_server(exported, scenario)

    assert status == 200
    assert list(payload) == ["outputs"]
    assert payload["outputs"]["class_names"] == [CLASS_NAMES, CLASS_NAMES]
    expected = [exported.expected(image) for image in images]
    np.testing.assert_allclose(payload["outputs"]["probabilities"], expected, atol=ATOL)


def test_signature_name_serving_default_accepted(exported):
    body = {"signature_name": "serving_default", "instances": [{"b64": b64(photo(6))}]}

    async def scenario(client):
        response = await client.post(PREDICT, json=body)
        return response.status, await response.json()

    status, payload = run_server(exported, scenario)

    assert status == 200
    np.testing.assert_allclose(
        payload["predictions"][0]["probabilities"], exported.expected(photo(6)), atol=ATOL
    )


def test_request_id_echoed_or_generated(exported, caplog):
    body = {"instances": [{"b64": b64(photo(7))}]}

    async def scenario(client):
        sane = await client.post(PREDICT, json=body, headers={"X-Request-Id": "order-17.a"})
        unsafe = await client.post(PREDICT, json=body, headers={"X-Request-Id": "two words"})
        return sane.headers.get("X-Request-Id"), unsafe.headers.get("X-Request-Id")

    with caplog.at_level("INFO", logger="deploy.serve"):
        echoed, generated = run_server(exported, scenario)

    assert echoed == "order-17.a"
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    lines = [record.getMessage() for record in caplog.records]
    assert f"request order-17.a POST {PREDICT} -> 200, 1 images" in "\n".join(lines)
    assert any(line.startswith(f"request {generated} POST") for line in lines)


def test_status_and_metadata(exported):
    async def scenario(client):
        answers = {}
        for path in (
            f"/v1/models/{MODEL}",
            f"/v1/models/{MODEL}/versions/1",
            f"/v1/models/{MODEL}/metadata",
            f"/v1/models/{MODEL}/versions/1/metadata",
        ):
            response = await client.get(path)
            answers[path] = (response.status, await response.json())
        return answers

    answers = run_server(exported, scenario)

    status_answer = {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    assert answers[f"/v1/models/{MODEL}"] == (200, status_answer)
    assert answers[f"/v1/models/{MODEL}/versions/1"] == (200, status_answer)
    for path in (f"/v1/models/{MODEL}/metadata", f"/v1/models/{MODEL}/versions/1/metadata"):
        status, metadata = answers[path]
        assert status == 200
        assert metadata["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
        signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert signature["method_name"] == "tensorflow/serving/predict"
        image_input = signature["inputs"]["image_bytes"]
        assert image_input["dtype"] == "DT_STRING"
        assert image_input["tensor_shape"] == {
            "dim": [{"size": "-1", "name": ""}],
            "unknown_rank": False,
        }
        assert signature["outputs"]["probabilities"]["dtype"] == "DT_FLOAT"
        assert signature["outputs"]["probabilities"]["tensor_shape"]["dim"] == [
            {"size": "-1", "name": ""},
            {"size": "3", "name": ""},
        ]
        assert signature["outputs"]["class_names"]["dtype"] == "DT_STRING"


# ---- the upload endpoint and the page ----


def _check_upload_answer(exported: Exported, image: bytes, answer: dict[str, Any]) -> None:
    expected = exported.expected(image)
    order = np.argsort(-expected)
    assert answer["model"] == MODEL
    assert answer["version"] == "1"
    assert answer["top_class"] == CLASS_NAMES[order[0]]
    assert answer["probability"] == pytest.approx(expected[order[0]], abs=ATOL)
    assert [entry["class_name"] for entry in answer["classes"]] == [
        CLASS_NAMES[index] for index in order
    ]
    np.testing.assert_allclose(
        [entry["probability"] for entry in answer["classes"]], expected[order], atol=ATOL
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_upload_form_and_raw_body(exported, fmt):
    image = photo(8, fmt, width=64, height=30)

    async def scenario(client):
        form = aiohttp.FormData()
        form.add_field("file", image, filename=f"photo{fmt}", content_type="image/x-test")
        from_form = await client.post("/predict", data=form)
        raw = await client.post(
            "/predict", data=image, headers={"Content-Type": "application/octet-stream"}
        )
        return (from_form.status, await from_form.json()), (raw.status, await raw.json())

    (form_status, form_answer), (raw_status, raw_answer) = run_server(exported, scenario)

    assert form_status == 200
    assert raw_status == 200
    _check_upload_answer(exported, image, form_answer)
    _check_upload_answer(exported, image, raw_answer)


@pytest.mark.skipif(shutil.which("curl") is None, reason="the curl binary is not installed")
def test_upload_with_curl(exported, tmp_path):
    image = photo(9, ".jpg")
    path = tmp_path / "photo.jpg"
    path.write_bytes(image)

    async def scenario(client):
        url = str(client.make_url("/predict"))
        curl = await asyncio.create_subprocess_exec(
            "curl", "-sS", "-F", f"file=@{path}", url, stdout=subprocess.PIPE
        )
        stdout, _ = await curl.communicate()
        return curl.returncode, stdout

    returncode, stdout = run_server(exported, scenario)

    assert returncode == 0
    _check_upload_answer(exported, image, json.loads(stdout))


def test_index_page_has_upload_form(exported):
    async def scenario(client):
        response = await client.get("/")
        return response.status, response.content_type, await response.text()

    status, content_type, page = run_server(exported, scenario)

    assert status == 200
    assert content_type == "text/html"
    assert '<form action="/predict" method="post" enctype="multipart/form-data">' in page
    assert '<input type="file" name="file"' in page
    assert MODEL in page


# ---- bad input ----


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG of a valid IHDR and IEND only, declaring ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _png_with_bad_data() -> bytes:
    """A PNG with an intact structure whose compressed pixel data is damaged."""
    data = bytearray(photo(10, ".png"))
    data[data.index(b"IDAT") + 10] ^= 0xFF
    return bytes(data)


def _form_without_file(multipart: bool = True) -> aiohttp.FormData:
    form = aiohttp.FormData(default_to_multipart=multipart)
    form.add_field("comment", "no file here")
    return form


def _form_with_files(count: int) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for number in range(count):
        form.add_field("file", photo(number), filename=f"photo{number}.png")
    return form


GOOD = {"instances": [{"b64": b64(photo(11))}]}
VERSIONED = f"/v1/models/{MODEL}/versions"
BAD_REQUESTS = {
    # name: (method, path, request keyword arguments, status, message fragment)
    "not_json": ("POST", PREDICT, {"data": b"{not json"}, 400, "not valid JSON"),
    "not_utf8": ("POST", PREDICT, {"data": b"\xff\xfe{}"}, 400, "not UTF-8"),
    "empty_body": ("POST", PREDICT, {"data": b""}, 400, "The request body is empty"),
    "json_array": ("POST", PREDICT, {"json": []}, 400, "must be a JSON object"),
    "json_nested_deeply": (
        "POST",
        PREDICT,
        {"data": b"[" * 100_000 + b"]" * 100_000},
        400,
        "nested too deeply",
    ),
    "no_images_key": (
        "POST",
        PREDICT,
        {"json": {"images": []}},
        400,
        'Missing "instances" or "inputs" key',
    ),
    "both_forms": (
        "POST",
        PREDICT,
        {"json": {**GOOD, "inputs": GOOD["instances"]}},
        400,
        "not both",
    ),
    "empty_instances": ("POST", PREDICT, {"json": {"instances": []}}, 400, '"instances" is empty'),
    "empty_inputs": ("POST", PREDICT, {"json": {"inputs": []}}, 400, '"inputs" is empty'),
    "instances_object": (
        "POST",
        PREDICT,
        {"json": {"instances": GOOD["instances"][0]}},
        400,
        '"instances" must be a list',
    ),
    "instance_plain_string": (
        "POST",
        PREDICT,
        {"json": {"instances": ["aGVsbG8="]}},
        400,
        "instances[0] must be",
    ),
    "instance_wrong_key": (
        "POST",
        PREDICT,
        {"json": {"instances": [{"image": {"b64": "aGVsbG8="}}]}},
        400,
        "instances[0] must be",
    ),
    "b64_number": ("POST", PREDICT, {"json": {"instances": [{"b64": 5}]}}, 400, "must be a string"),
    "bad_base64": (
        "POST",
        PREDICT,
        {"json": {"instances": [{"b64": "abc$"}]}},
        400,
        "instances[0].b64 is not valid base64",
    ),
    "not_an_image": (
        "POST",
        PREDICT,
        {"json": {"instances": [{"b64": b64(photo(12))}, {"b64": b64(b"hello world")}]}},
        400,
        "instances[1]: not an image",
    ),
    "tiff": (
        "POST",
        PREDICT,
        {"json": {"instances": [{"b64": b64(photo(13, ".tiff"))}]}},
        400,
        "TIFF images are not supported",
    ),
    "truncated_png": (
        "POST",
        PREDICT,
        {"json": {"inputs": [{"b64": b64(photo(14)[:-30])}]}},
        400,
        "inputs[0]: invalid PNG file",
    ),
    "zero_width": (
        "POST",
        PREDICT,
        {"json": {"instances": [{"b64": b64(_png_declaring(0, 10))}]}},
        400,
        "declares an empty image of 0x10",
    ),
    "unknown_input_name": (
        "POST",
        PREDICT,
        {"json": {"inputs": {"pixels": GOOD["instances"]}}},
        400,
        "unknown inputs ['pixels']",
    ),
    "inputs_single_object": (
        "POST",
        PREDICT,
        {"json": {"inputs": GOOD["instances"][0]}},
        400,
        "must be a list of images",
    ),
    "unknown_signature": (
        "POST",
        PREDICT,
        {"json": {**GOOD, "signature_name": "classify"}},
        400,
        'Serving signature name: "classify" not found',
    ),
    "unknown_model": (
        "POST",
        "/v1/models/other:predict",
        {"json": GOOD},
        404,
        "Servable not found for request: Latest(other)",
    ),
    "unknown_version": (
        "POST",
        f"{VERSIONED}/9:predict",
        {"json": GOOD},
        404,
        f"Servable not found for request: Specific({MODEL}, 9)",
    ),
    "version_not_a_number": (
        "POST",
        f"{VERSIONED}/latest:predict",
        {"json": GOOD},
        400,
        "Failed to convert version: latest to numeric",
    ),
    "status_unknown_model": ("GET", "/v1/models/other", {}, 404, "Latest(other)"),
    "metadata_unknown_version": (
        "GET",
        f"{VERSIONED}/2/metadata",
        {},
        404,
        f"Specific({MODEL}, 2)",
    ),
    "predict_with_get": ("GET", PREDICT, {}, 405, "Method GET is not allowed"),
    "upload_with_get": ("GET", "/predict", {}, 405, "use POST"),
    "healthz_with_post": ("POST", "/healthz", {}, 405, "Method POST is not allowed"),
    "unknown_path": ("GET", "/v2/anything", {}, 404, "No endpoint at /v2/anything"),
    "upload_not_an_image": (
        "POST",
        "/predict",
        {"data": b"hello"},
        400,
        "the upload: not an image",
    ),
    "upload_empty": ("POST", "/predict", {"data": b""}, 400, "the upload: the image is empty"),
    "upload_form_without_file": (
        "POST",
        "/predict",
        {"data": _form_without_file},
        400,
        "The form has no file field",
    ),
    "upload_url_encoded_form": (
        "POST",
        "/predict",
        {"data": lambda: _form_without_file(multipart=False)},
        400,
        "sent as application/x-www-form-urlencoded, which carries no file",
    ),
    "upload_two_files": (
        "POST",
        "/predict",
        {"data": lambda: _form_with_files(2)},
        400,
        "The form has 2 file fields ['file', 'file']; send one image",
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_request_answered_4xx(exported, caplog, case):
    method, path, arguments, status, fragment = case
    arguments = {key: value() if callable(value) else value for key, value in arguments.items()}

    async def scenario(client):
        response = await client.request(method, path, **arguments)
        return (
            response.status,
            response.content_type,
            response.headers.get("X-Request-Id"),
            await response.json(),
            await metrics_text(client),
        )

    with caplog.at_level("INFO", logger="deploy.serve"):
        answer_status, content_type, request_id, payload, metrics = run_server(exported, scenario)

    assert answer_status == status
    assert content_type == "application/json"
    assert list(payload) == ["error"]
    assert fragment in payload["error"]
    assert request_id
    assert metric(metrics, "serve_batch_size_count") == 0  # rejected before any model work
    log_line = f"request {request_id} {method} "
    logged = [record.getMessage() for record in caplog.records]
    assert any(
        line.startswith(log_line)
        and f"-> {status}, " in line
        and clip(payload["error"], 300) in line
        for line in logged
    ), logged


def _chunks(data: bytes, size: int = 4096) -> Any:
    async def generate():
        for start in range(0, len(data), size):
            yield data[start : start + size]

    return generate()


LIMIT_CASES = {
    # name: (limits, path, request keyword arguments, message fragment)
    "body_bytes": (
        Limits(max_body_bytes=20_000),
        PREDICT,
        {"json": {"instances": [{"b64": b64(bytes(30_000))}]}},
        "the limit is 20000 bytes (--max-body-bytes)",
    ),
    "body_bytes_chunked": (
        Limits(max_body_bytes=20_000),
        PREDICT,
        {"data": lambda: _chunks(b'{"instances": [{"b64": "' + b"A" * 40_000 + b'"}]}')},
        "the limit is 20000 bytes (--max-body-bytes)",
    ),
    "upload_body_bytes": (
        Limits(max_body_bytes=20_000),
        "/predict",
        {"data": bytes(30_000)},
        "has 30000 bytes; the limit is 20000 bytes",
    ),
    "images_per_request": (
        Limits(max_images=2),
        PREDICT,
        {"json": {"instances": [{"b64": b64(photo(seed))} for seed in range(3)]}},
        "3 images, above the limit of 2 images per request (--max-images-per-request)",
    ),
    "image_pixels": (
        Limits(max_image_pixels=1_000_000),
        PREDICT,
        {"json": {"instances": [{"b64": b64(_png_declaring(5000, 5000))}]}},
        "5000x5000 = 25000000 pixels, above the limit of 1000000 pixels per image "
        "(--max-image-pixels)",
    ),
    "upload_image_pixels": (
        Limits(max_image_pixels=1_000_000),
        "/predict",
        {"data": _png_declaring(100_000, 100_000)},
        "the upload: the PNG header declares 100000x100000",
    ),
}


@pytest.mark.parametrize("case", LIMIT_CASES.values(), ids=LIMIT_CASES.keys())
def test_limit_answered_413(exported, case):
    limits, path, arguments, fragment = case
    arguments = {key: value() if callable(value) else value for key, value in arguments.items()}

    async def scenario(client):
        response = await client.post(path, **arguments)
        return response.status, await response.json(), await metrics_text(client)

    status, payload, metrics = run_server(exported, scenario, settings=ServeSettings(limits=limits))

    assert status == 413
    assert fragment in payload["error"]
    assert metric(metrics, "serve_batch_size_count") == 0


def test_full_queue_answered_429(exported):
    # One image per model call, and room for two queued images. The first request's
    # second image is still queued when the next request tries to queue two more.
    settings = ServeSettings(
        limits=Limits(max_images=2), max_batch_size=1, max_queue_images=2, batch_timeout_ms=0
    )
    body = {"instances": [{"b64": b64(photo(15))}, {"b64": b64(photo(16))}]}

    async def scenario(client):
        responses = await asyncio.gather(
            client.post(PREDICT, json=body), client.post(PREDICT, json=body)
        )
        return [(response.status, await response.json()) for response in responses]

    answers = sorted(run_server(exported, scenario, settings=settings), key=lambda a: a[0])

    (accepted_status, accepted), (rejected_status, rejected) = answers
    assert accepted_status == 200
    assert len(accepted["predictions"]) == 2
    assert rejected_status == 429
    assert "above the limit of 2 (--max-queue-images)" in rejected["error"]


def test_undecodable_image_fails_only_its_request(exported, caplog):
    # The damaged PNG passes every header check, so it reaches the graph inside a batch
    # with three good images. The batch is then retried one image at a time.
    # Each body is held back until all four requests are being received, so the batcher
    # sees them arriving and waits for all four.
    settings = ServeSettings(max_batch_size=8, batch_timeout_ms=2000)
    good = [photo(seed, ".jpg") for seed in (17, 18, 19)]
    bad = _png_with_bad_data()

    async def scenario(client):
        release = asyncio.Event()
        requests = [
            asyncio.ensure_future(
                client.post(PREDICT, data=held_body({"instances": [{"b64": b64(image)}]}, release))
            )
            for image in [*good, bad]
        ]
        await until(lambda: client.server.app[STATE].receiving == 4)
        release.set()
        responses = await asyncio.gather(*requests)
        answers = [(response.status, await response.json()) for response in responses]
        mixed = await client.post(
            PREDICT, json={"instances": [{"b64": b64(good[0])}, {"b64": b64(bad)}]}
        )
        upload = await client.post("/predict", data=bad)
        return (
            answers,
            (mixed.status, await mixed.json()),
            (upload.status, await upload.json()),
            await metrics_text(client),
        )

    with caplog.at_level("WARNING", logger="deploy.batching"):
        answers, (mixed_status, mixed), (upload_status, upload), metrics = run_server(
            exported, scenario, settings=settings
        )

    for image, (status, payload) in zip(good, answers[:3]):
        assert status == 200
        np.testing.assert_allclose(
            payload["predictions"][0]["probabilities"], exported.expected(image), atol=ATOL
        )
    bad_status, bad_payload = answers[3]
    assert bad_status == 400
    assert "instances[0]: the image passed the header checks but could not be decoded" in (
        bad_payload["error"]
    )
    assert "Invalid PNG data" in bad_payload["error"]
    assert mixed_status == 400
    assert "instances[1]:" in mixed["error"]
    assert upload_status == 400
    assert upload["error"].startswith("the upload: the image passed the header checks but")
    # One batch of 4 and its 4 retries, the mixed request's batch of 2 and its 2 retries,
    # and the upload's batch of 1.
    assert metric(metrics, "serve_batch_size_count") == 9
    assert metric(metrics, "serve_batch_size_bucket", le="2.0") == 8
    assert metric(metrics, "serve_images_predicted_total") == 3
    assert "retrying one image at a time" in caplog.text


# ---- batching under load ----


def test_burst_of_requests_is_batched(exported):
    # 64 requests from 16 concurrent clients, 4 each, one image per request.
    settings = ServeSettings(max_batch_size=32, batch_timeout_ms=50)
    images = [photo(seed, FORMATS[seed % len(FORMATS)]) for seed in range(20, 28)]
    expected = [exported.expected(image) for image in images]

    async def scenario(client):
        async def one_client(number):
            results = []
            for turn in range(4):
                index = (number + turn) % len(images)
                body = {"instances": [{"b64": b64(images[index])}]}
                response = await client.post(PREDICT, json=body)
                results.append((index, response.status, await response.json()))
            return results

        per_client = await asyncio.gather(*(one_client(number) for number in range(16)))
        return [result for results in per_client for result in results], await metrics_text(client)

    results, metrics = run_server(exported, scenario, settings=settings)

    assert len(results) == 64
    for index, status, payload in results:
        assert status == 200
        np.testing.assert_allclose(
            payload["predictions"][0]["probabilities"], expected[index], atol=ATOL
        )
    batches = metric(metrics, "serve_batch_size_count")
    assert metric(metrics, "serve_batch_size_sum") == 64
    assert metric(metrics, "serve_images_predicted_total") == 64
    assert batches < 64
    assert metric(metrics, "serve_batch_size_bucket", le="1.0") < batches  # some batch > 1


def test_lone_request_skips_batch_timeout(exported):
    # Nothing else is arriving, so the request runs at once instead of waiting 10 s.
    settings = ServeSettings(batch_timeout_ms=10_000)

    async def scenario(client):
        start = time.perf_counter()
        response = await client.post(PREDICT, json=GOOD)
        return response.status, time.perf_counter() - start

    status, seconds = run_server(exported, scenario, settings=settings)

    assert status == 200
    assert seconds < 5.0


def test_batch_size_one_disables_batching(exported):
    settings = ServeSettings(max_batch_size=1)
    body = {"instances": [{"b64": b64(photo(seed))} for seed in (30, 31, 32)]}

    async def scenario(client):
        responses = await asyncio.gather(*(client.post(PREDICT, json=body) for _ in range(4)))
        statuses = [response.status for response in responses]
        return statuses, await metrics_text(client)

    statuses, metrics = run_server(exported, scenario, settings=settings)

    assert statuses == [200] * 4
    assert metric(metrics, "serve_batch_size_count") == 12
    assert metric(metrics, "serve_batch_size_sum") == 12


# ---- health and metrics ----


def test_healthz_waits_for_model(exported):
    release = threading.Event()

    def slow_load():
        release.wait(timeout=30)
        return exported.served

    async def scenario(client):
        loading = await client.get("/healthz")
        predict = await client.post(PREDICT, json=GOOD)
        status = await client.get(f"/v1/models/{MODEL}")
        before = (
            (loading.status, await loading.json()),
            (predict.status, predict.headers.get("Retry-After"), await predict.json()),
            await status.json(),
        )
        release.set()
        await wait_until_ready(client)
        ready = await client.get("/healthz")
        return before, (ready.status, await ready.json())

    before, after = run_server(exported, scenario, load=slow_load, wait_ready=False)

    (loading_status, loading), (predict_status, retry_after, predict), status = before
    assert loading_status == 503
    assert loading["status"] == "loading"
    assert predict_status == 503
    assert retry_after == "1"
    assert "The model is loading" in predict["error"]
    assert status["model_version_status"][0]["state"] == "LOADING"
    assert after == (200, {"status": "ready", "model": MODEL, "version": "1"})


def test_healthz_reports_failed_load(exported):
    def failing_load():
        raise OSError("saved_model.pb is unreadable")

    async def scenario(client):
        for _ in range(100):
            response = await client.get("/healthz")
            payload = await response.json()
            if payload["status"] != "loading":
                return response.status, payload
            await asyncio.sleep(0.05)
        raise AssertionError("the load never failed")

    status, payload = run_server(exported, scenario, load=failing_load, wait_ready=False)

    assert status == 503
    assert payload["status"] == "failed"
    assert "saved_model.pb is unreadable" in payload["error"]


def test_metrics_count_requests_and_images(exported):
    body = {"instances": [{"b64": b64(photo(40))}, {"b64": b64(photo(41))}]}

    async def scenario(client):
        await client.post(PREDICT, json=body)
        await client.post(PREDICT, json=body)
        await client.post(PREDICT, data=b"not json")
        await client.get("/nothing")
        response = await client.get("/metrics")
        return response.status, response.headers["Content-Type"], await response.text()

    status, content_type, text = run_server(exported, scenario)

    endpoint = "/v1/models/{name}:predict"
    assert status == 200
    assert content_type.startswith("text/plain")
    assert metric(text, "serve_requests_total", endpoint=endpoint, status="200") == 2
    assert metric(text, "serve_requests_total", endpoint=endpoint, status="400") == 1
    assert metric(text, "serve_requests_total", endpoint="unmatched", status="404") == 1
    assert metric(text, "serve_request_duration_seconds_count", endpoint=endpoint) == 3
    assert metric(text, "serve_images_predicted_total") == 4
    assert metric(text, "serve_batch_size_sum") == 4
    assert metric(text, "serve_batch_duration_seconds_count") >= 1
    assert metric(text, "serve_queue_images") == 0
    assert "# TYPE serve_batch_size histogram" in text


def test_client_gone_mid_body_not_counted_as_error(exported, caplog):
    async def scenario(client):
        host, port = client.server.host, client.server.port
        for _ in range(3):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                b"Content-Type: application/octet-stream\r\n\r\n" + b"x" * 10
            )
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        await until(lambda: caplog.text.count("-> 499") == 3)
        return await metrics_text(client)

    with caplog.at_level("INFO", logger="deploy.serve"):
        text = run_server(exported, scenario)

    assert metric(text, "serve_requests_total", endpoint="/predict", status="499") == 3
    assert metric(text, "serve_requests_total", endpoint="/predict", status="500") == 0
    assert "Traceback" not in caplog.text


def test_stalled_body_times_out(exported, monkeypatch):
    monkeypatch.setattr(serve, "BODY_TIMEOUT_S", 0.5)
    release = asyncio.Event()

    async def scenario(client):
        response = await client.post(
            PREDICT, data=held_body({"instances": []}, release), chunked=True
        )
        release.set()
        return response.status, await response.json()

    status, answer = run_server(exported, scenario)

    assert status == 408
    assert "did not arrive within 0.5 s" in answer["error"]


# ---- real sample images ----


def _sample_images(folder: Path) -> list[Path]:
    suffixes = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}
    return sorted(path for path in folder.rglob("*") if path.suffix.lower() in suffixes)


@pytest.mark.slow
@requires_samples(PRODUCT_IMAGES)
def test_sample_product_images_match_model(exported):
    paths = [path for path in _sample_images(PRODUCT_IMAGES) if "truncated" not in path.name]
    images = [path.read_bytes() for path in paths]
    settings = ServeSettings(limits=Limits(max_images=16))

    async def scenario(client):
        answers = []
        for start in range(0, len(images), 16):
            chunk = images[start : start + 16]
            body = {"instances": [{"b64": b64(image)} for image in chunk]}
            response = await client.post(PREDICT, json=body)
            assert response.status == 200, await response.text()
            answers += (await response.json())["predictions"]
        return answers

    answers = run_server(exported, scenario, settings=settings)

    assert len(answers) == len(paths)
    for path, image, answer in zip(paths, images, answers):
        np.testing.assert_allclose(
            answer["probabilities"], exported.expected(image), atol=SAMPLE_ATOL, err_msg=str(path)
        )


@requires_samples(ODD_IMAGES)
def test_sample_truncated_jpeg_rejected(exported):
    image = (ODD_IMAGES / "truncated_jpeg.jpg").read_bytes()

    async def scenario(client):
        response = await client.post(PREDICT, json={"instances": [{"b64": b64(image)}]})
        return response.status, await response.json()

    status, payload = run_server(exported, scenario)

    assert status == 400
    assert "instances[0]: invalid JPEG file" in payload["error"]
    assert "no end-of-image marker" in payload["error"]


# ---- the command line ----


def _serve_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "deploy.serve", *arguments]


class _LogReader:
    """Collect a subprocess's stderr lines in a thread, so the test can wait for one."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, pattern: str, seconds: float) -> re.Match[str]:
        regex = re.compile(pattern)
        with self._changed:
            for _ in range(int(seconds * 10)):
                for line in self.lines:
                    if match := regex.search(line):
                        return match
                self._changed.wait(0.1)
        raise AssertionError(f"no log line matched {pattern!r}; log:\n" + "\n".join(self.lines))

    def text(self) -> str:
        self._thread.join(timeout=10)
        return "\n".join(self.lines)


def test_make_serve_needs_run():
    completed = subprocess.run(
        ["make", "--no-print-directory", "serve", "RUN="],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert completed.returncode == 2
    assert "make serve needs RUN=<run folder>" in completed.stdout


def test_make_serve_without_export_says_make_export(tmp_path):
    completed = subprocess.run(
        ["make", "--no-print-directory", "serve", f"RUN={tmp_path}", "PORT=0"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert completed.returncode != 0
    assert f"run 'make export RUN={tmp_path}' first" in completed.stderr


INVALID_SETTINGS = {
    "batch_size_zero": (["--max-batch-size", "0"], "--max-batch-size must be >= 1. Received: 0"),
    "queue_below_batch": (
        ["--max-queue-images", "8"],
        "--max-queue-images must be at least --max-batch-size and --max-images-per-request (64)",
    ),
    "negative_timeout": (["--batch-timeout-ms", "-1"], "--batch-timeout-ms must be from 0"),
    "port_out_of_range": (["--port", "70000"], "--port must be from 0 to 65535"),
    "pixels_zero": (["--max-image-pixels", "0"], "max_image_pixels (--max-image-pixels) must be"),
    "model_name_with_colon": (["--model-name", "a:b"], "--model-name must be non-empty"),
}


@pytest.mark.parametrize("case", INVALID_SETTINGS.values(), ids=INVALID_SETTINGS.keys())
def test_cli_rejects_invalid_setting(exported, caplog, case):
    arguments, message = case

    with caplog.at_level("ERROR"):
        returncode = serve_main(["--run", str(exported.run), *arguments])

    assert returncode == 2
    assert message in caplog.text


@pytest.mark.slow
def test_cli_sigterm_answers_request_in_flight(exported):
    # The request's body is held back until after SIGTERM, so the request is in flight
    # (its handler is reading the body) while the server stops accepting connections.
    process = subprocess.Popen(
        _serve_command("--run", str(exported.run), "--port", "0"),
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = _LogReader(process)
    try:
        url = log.wait_for(r"ready on (http://127\.0\.0\.1:\d+/)", seconds=120).group(1)
        image = photo(50, ".jpg")

        async def scenario():
            release = asyncio.Event()
            async with aiohttp.ClientSession() as session:
                in_flight = asyncio.ensure_future(
                    session.post(
                        url + PREDICT.lstrip("/"),
                        data=held_body({"instances": [{"b64": b64(image)}]}, release),
                        headers={"X-Request-Id": "in-flight-1"},
                    )
                )
                await asyncio.sleep(0.5)
                # A second connection, left idle and open in the session's pool.
                async with session.get(url + "healthz") as before:
                    assert before.status == 200
                process.send_signal(signal.SIGTERM)
                await asyncio.to_thread(log.wait_for, "stopping: no new connections", 30)
                await asyncio.sleep(0.5)  # the listening socket closes right after that line
                async with aiohttp.ClientSession() as fresh:
                    with pytest.raises(aiohttp.ClientConnectionError):
                        await fresh.get(url + "healthz")
                async with session.get(url + "healthz") as stopping:
                    health = stopping.status, await stopping.json()
                release.set()
                response = await in_flight
                return health, response.status, await response.json()

        (health_status, health), status, payload = asyncio.run(scenario())
        returncode = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    text = log.text()
    assert health_status == 503
    assert health["status"] == "stopping"
    assert status == 200
    np.testing.assert_allclose(
        payload["predictions"][0]["probabilities"], exported.expected(image), atol=ATOL
    )
    assert returncode == 0
    assert "stopping: no new connections; waiting up to 20 s for 1 requests in flight" in text
    assert f"request in-flight-1 POST {PREDICT} -> 200, 1 images" in text
    assert any(line.endswith(": stopped") for line in text.splitlines())


@pytest.mark.slow
def test_cli_exits_1_when_model_fails_to_load(tmp_path):
    version_dir = tmp_path / "models" / "3"
    version_dir.mkdir(parents=True)
    (version_dir / "saved_model.pb").write_bytes(b"not a protocol buffer")

    completed = subprocess.run(
        _serve_command("--model-dir", str(tmp_path / "models"), "--port", "0"),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert completed.returncode == 1
    assert "serving model 'product_classifier' version 3" in completed.stderr
    assert "failed to load the model" in completed.stderr
    assert any(line.endswith(": stopped") for line in completed.stderr.splitlines())
