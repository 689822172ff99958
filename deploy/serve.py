"""Prediction server: an exported SavedModel behind TensorFlow Serving's REST API.

``python -m deploy.serve --run RUN`` serves ``RUN/export/saved_model/<version>/`` (the
highest version number) on http://127.0.0.1:8501/ under the model name
``product_classifier``. ``--model-dir`` serves another folder of numbered versions.

Endpoints:

* ``POST /v1/models/<name>[/versions/<v>]:predict``: TensorFlow Serving's predict API, in
  row form (``{"instances": [{"b64": ...}]}``, returning ``{"predictions": [...]}``)
  or columnar form (``{"inputs": ...}``, returning ``{"outputs": {...}}``);
  ``deploy.inputs`` lists the accepted shapes.
* ``GET /v1/models/<name>[/versions/<v>]`` and ``.../metadata``: the model's version status
  and its signature, in TensorFlow Serving's JSON.
* ``POST /predict``: one image as a multipart form file field or as the raw body, answered
  with the top class, its probability and every class sorted by probability.
* ``GET /``: an HTML form that uploads a file to ``/predict``.
* ``GET /healthz``: 200 once the model is loaded and warmed up, 503 before and while
  stopping. ``GET /metrics``: Prometheus text format.

Every error is ``{"error": "<message>"}`` with a 4xx status for bad input, 503 while the
model loads, and 500 only for a failure of the server itself. Every limit of
``deploy.inputs.Limits`` and the queue limit are checked before any model work.

Images of concurrent requests share model calls (``deploy.batching``). The model runs in
one worker thread, so the event loop keeps receiving requests while a batch runs.

The server listens before the model is loaded, so ``/healthz`` tells a load balancer when
it is ready. On SIGTERM or SIGINT it stops accepting connections, waits up to
``--shutdown-timeout`` seconds for the requests in flight and exits with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import html
import logging
import re
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import prometheus_client
from aiohttp import web

from data.scripts.common import setup_logging
from deploy.batching import BadImageError, Batcher, QueueFullError
from deploy.inputs import Limits, RequestError, check_image, clip, parse_predict_body

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501
DEFAULT_MODEL_NAME = "product_classifier"
EXPORT_SUBDIR = Path("export") / "saved_model"
SERVE_TAG = "serve"
REQUEST_ID_HEADER = "X-Request-Id"
# A client's request id is echoed and logged only when it is short and plain, so a header
# cannot inject text into the log.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=-]{0,127}")
_LOGGED_PATH_CHARS = 200
_LOGGED_ERROR_CHARS = 300
CLEANUP_TIMEOUT = 1.0  # seconds aiohttp's own shutdown waits after _drain
BODY_TIMEOUT_S = 60.0  # seconds a request body may take to arrive
WARM_UP_SIDE = 64  # pixels of the grey image that warms the model up
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# ---- the model ----


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """A loaded ``serving_default`` signature and what the server reports about it."""

    path: Path  # the version folder, holding saved_model.pb
    version: int
    signature: Any  # the concrete function from deploy.export.load_serving
    class_names: list[str]  # K names, in the order of the probabilities
    signature_defs: dict[str, Any]  # signature name -> SignatureDef as proto3 JSON

    def predict(self, images: list[bytes]) -> np.ndarray:
        """Return float32 probabilities ``[N, K]`` for N encoded images.

        Raises:
            BadImageError: the graph failed to decode one of the images.
        """
        import tensorflow as tf

        try:
            outputs = self.signature(image_bytes=tf.constant(images, dtype=tf.string))
        except tf.errors.InvalidArgumentError as error:
            raise BadImageError(_error_cause(error.message)) from None
        return outputs["probabilities"].numpy()


def _error_cause(message: str) -> str:
    """Return the line of a TensorFlow graph error that states the cause.

    Such a message reads "Graph execution error:", "Detected at node ...", the cause
    (such as "Invalid PNG data, size 4908") and then the node in brackets.
    """
    noise = ("Graph execution error", "Detected at node", "<stack traces", "[[")
    lines = [line.strip() for line in message.splitlines()]
    causes = [line for line in lines if line and not line.startswith(noise)]
    return causes[-1] if causes else message.strip()


def find_version(model_dir: Path) -> tuple[int, Path]:
    """Return the highest version number under ``model_dir`` and its folder.

    ``model_dir`` is a folder of numbered SavedModel folders (``1/``, ``2/``, ...), as
    TensorFlow Serving's ``--model_base_path`` takes, or one numbered folder itself.

    Raises:
        FileNotFoundError: no numbered folder with a ``saved_model.pb`` is there.
    """
    model_dir = Path(model_dir)
    if (model_dir / "saved_model.pb").is_file() and model_dir.name.isdigit():
        return int(model_dir.name), model_dir
    versions = []
    if model_dir.is_dir():
        versions = [
            int(child.name)
            for child in model_dir.iterdir()
            if child.name.isdigit() and (child / "saved_model.pb").is_file()
        ]
    if not versions:
        raise FileNotFoundError(
            f"No SavedModel version under {model_dir}: expected numbered folders such as "
            f"{model_dir / '1'}/ holding saved_model.pb"
        )
    version = max(versions)
    return version, model_dir / str(version)


def resolve_model_dir(run: Path | None, model_dir: Path | None) -> tuple[int, Path]:
    """Return the version and folder to serve from ``--run`` or ``--model-dir``.

    Raises:
        FileNotFoundError: the folder contains no exported model; the message names the fix.
    """
    if model_dir is not None:
        return find_version(model_dir)
    assert run is not None
    if not Path(run).is_dir():
        raise FileNotFoundError(f"Run folder {run} not found; see 'make compare' for the runs")
    try:
        return find_version(Path(run) / EXPORT_SUBDIR)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Run {run} has no exported model under {Path(run) / EXPORT_SUBDIR}; "
            f"run 'make export RUN={run}' first"
        ) from None


def read_signature_defs(version_dir: Path) -> dict[str, Any]:
    """Return the SignatureDefs of the ``serve`` graph in ``saved_model.pb`` as proto3 JSON.

    Field names and default values are written as TensorFlow Serving's metadata API writes
    them: ``preserving_proto_field_name`` and every field, int64 values as strings.
    """
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    graph = next(g for g in saved_model.meta_graphs if SERVE_TAG in g.meta_info_def.tags)
    return {
        name: json_format.MessageToDict(
            signature_def,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
        for name, signature_def in sorted(graph.signature_def.items())
    }


def load_model(version_dir: Path, version: int) -> ServedModel:
    """Load a SavedModel written by ``deploy.export`` and run it once on a grey image.

    Raises:
        ValueError: the signature does not return ``probabilities`` and ``class_names``.
    """
    from deploy.export import OUTPUTS, load_serving

    signature = load_serving(version_dir)
    missing = sorted(set(OUTPUTS) - set(signature.structured_outputs))
    if missing:
        raise ValueError(
            f"The SavedModel {version_dir} has no outputs {missing}; export it again with "
            "'make export RUN=<run>'"
        )
    model = ServedModel(version_dir, version, signature, [], read_signature_defs(version_dir))
    outputs = signature(image_bytes=_warm_up_images(1))
    names = [name.decode("utf-8") for name in outputs["class_names"].numpy()[0]]
    return dataclasses.replace(model, class_names=names)


def warm_up(model: ServedModel, batch_size: int) -> None:
    """Run the model on one image and on a full batch, so the first requests run at speed."""
    model.predict([_warm_up_png()])
    if batch_size > 1:
        model.predict([_warm_up_png()] * batch_size)


def _warm_up_png() -> bytes:
    grey = np.full((WARM_UP_SIDE, WARM_UP_SIDE, 3), 128, np.uint8)
    return cv2.imencode(".png", grey)[1].tobytes()


def _warm_up_images(count: int) -> Any:
    import tensorflow as tf

    return tf.constant([_warm_up_png()] * count, dtype=tf.string)


# ---- settings, state and metrics ----


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """Server settings other than the address, with the command line's defaults."""

    model_name: str = DEFAULT_MODEL_NAME
    limits: Limits = Limits()
    max_batch_size: int = 32  # images per model call; 1 turns batching off
    batch_timeout_ms: float = 5.0  # wait for a batch to fill, once its first image is queued
    max_queue_images: int = 1024  # images waiting for the model, over all requests
    shutdown_timeout: float = 20.0  # seconds for requests in flight after SIGTERM

    def check(self) -> None:
        """Raise ValueError naming the first invalid setting, its allowed values and value."""
        if not self.model_name or "/" in self.model_name or ":" in self.model_name:
            raise ValueError(
                "--model-name must be non-empty without '/' or ':'. "
                f"Received: {self.model_name!r}"
            )
        if self.max_batch_size < 1:
            raise ValueError(f"--max-batch-size must be >= 1. Received: {self.max_batch_size}")
        if not 0 <= self.batch_timeout_ms <= 60_000:
            raise ValueError(
                f"--batch-timeout-ms must be from 0 to 60000. Received: {self.batch_timeout_ms}"
            )
        needed = max(self.max_batch_size, self.limits.max_images)
        if self.max_queue_images < needed:
            raise ValueError(
                "--max-queue-images must be at least --max-batch-size and "
                f"--max-images-per-request ({needed}). Received: {self.max_queue_images}"
            )
        if self.shutdown_timeout < 0:
            raise ValueError(
                f"--shutdown-timeout must be >= 0 seconds. Received: {self.shutdown_timeout}"
            )


class Metrics:
    """The server's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.requests = prometheus_client.Counter(
            "serve_requests",
            "HTTP requests by endpoint (route pattern) and status code.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = prometheus_client.Histogram(
            "serve_request_duration_seconds",
            "Seconds from the request's arrival to its response, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = prometheus_client.Histogram(
            "serve_batch_size",
            "Images in one model call.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.batch_duration = prometheus_client.Histogram(
            "serve_batch_duration_seconds",
            "Seconds of one model call, decoding included.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.images = prometheus_client.Counter(
            "serve_images_predicted",
            "Images answered with predictions.",
            registry=self.registry,
        )
        self.queued = prometheus_client.Gauge(
            "serve_queue_images",
            "Images waiting for a model call.",
            registry=self.registry,
        )

    def observe_batch(self, size: int, seconds: float) -> None:
        """Record one model call of ``size`` images that took ``seconds``."""
        self.batch_size.observe(size)
        self.batch_duration.observe(seconds)


@dataclasses.dataclass
class ServerState:
    """State shared by the handlers: settings, the model once loaded, and the phase."""

    settings: ServeSettings
    version: int
    load: Callable[[], ServedModel]  # runs in the model thread
    metrics: Metrics = dataclasses.field(default_factory=Metrics)
    phase: str = "loading"  # loading, ready, stopping or failed
    error: str = ""
    url: str = ""
    model: ServedModel | None = None
    batcher: Batcher | None = None
    in_flight: int = 0
    receiving: int = 0  # predict requests not yet past their checks, for the batcher
    failed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


STATE = web.AppKey("state", ServerState)
REQUEST_ID = web.RequestKey("request_id", str)
IMAGES = web.RequestKey("images", int)  # images in the request, for the log line
ERROR = web.RequestKey("error", str)  # the error response's message, for the log line


# ---- request handling ----


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _request_id(header: str) -> str:
    return header if _REQUEST_ID_RE.fullmatch(header) else uuid.uuid4().hex


def _endpoint(request: web.Request) -> str:
    """Return the route pattern as the metrics label, or ``unmatched``: a bounded set."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def _observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give each request an id, turn errors into JSON, then count, time and log it."""
    state = request.app[STATE]
    request[REQUEST_ID] = _request_id(request.headers.get(REQUEST_ID_HEADER, ""))
    request[IMAGES] = 0
    start = time.perf_counter()
    state.in_flight += 1
    status = "cancelled"
    try:
        response = await _respond(request, handler)
        response.headers[REQUEST_ID_HEADER] = request[REQUEST_ID]
        status = str(response.status)
        return response
    finally:
        state.in_flight -= 1
        seconds = time.perf_counter() - start
        endpoint = _endpoint(request)
        state.metrics.requests.labels(endpoint, status).inc()
        state.metrics.latency.labels(endpoint).observe(seconds)
        error = request.get(ERROR)
        logger.info(
            "request %s %s %s -> %s, %d images, %.1f ms%s",
            request[REQUEST_ID],
            request.method,
            request.rel_url.raw_path[:_LOGGED_PATH_CHARS],
            status,
            request[IMAGES],
            seconds * 1000,
            f": {clip(error, _LOGGED_ERROR_CHARS)}" if error else "",
        )


async def _respond(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run ``handler`` and turn every error it raises into a JSON error response."""
    headers = None
    try:
        return await handler(request)
    except RequestError as error:
        status, message = error.status, error.message
    except ModelUnavailable as error:
        status, message, headers = 503, str(error), {"Retry-After": "1"}
    except web.HTTPException as error:
        status, message, headers = _http_error(request, error)
    except ClientGone:
        # nginx's code for "client closed request": not a server error, and no answer
        # reaches the client anyway.
        status, message = 499, "The client closed the connection before sending the whole body"
    except Exception:
        logger.exception("request %s failed inside the server", request[REQUEST_ID])
        status = 500
        message = (
            "Internal server error; the server log has the details under request id "
            f"{request[REQUEST_ID]}"
        )
    request[ERROR] = message
    return _error(status, message, headers)


def _http_error(
    request: web.Request, error: web.HTTPException
) -> tuple[int, str, dict[str, str] | None]:
    """Word aiohttp's own HTTP errors (no route, wrong method, body too large) for JSON."""
    path = request.rel_url.raw_path[:_LOGGED_PATH_CHARS]
    if isinstance(error, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(error.allowed_methods))
        message = f"Method {request.method} is not allowed for {path}; use {allowed}"
        return 405, message, {"Allow": allowed}
    if isinstance(error, web.HTTPNotFound):
        name = request.app[STATE].settings.model_name
        message = (
            f"No endpoint at {path}. Endpoints: POST /v1/models/{name}:predict, "
            f"GET /v1/models/{name}, GET /v1/models/{name}/metadata, POST /predict, GET /, "
            "GET /healthz, GET /metrics"
        )
        return 404, message, None
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        return 413, _too_large_message(request.app[STATE].settings.limits, None), None
    return error.status, error.text or error.reason, None


def _too_large_message(limits: Limits, size: int | None) -> str:
    received = f"has {size} bytes" if size is not None else "is larger than that"
    return (
        f"The request body {received}; the limit is {limits.max_body_bytes} bytes "
        "(--max-body-bytes). Send fewer or smaller images per request"
    )


class ModelUnavailable(Exception):
    """The model is not loaded yet, failed to load, or the server is stopping (503)."""


class ClientGone(Exception):
    """The client closed the connection before its request body arrived (logged as 499)."""


async def _receive(request: web.Request, reading: Awaitable[Any]) -> Any:
    """Await a body read within ``BODY_TIMEOUT_S``; a stalled or dropped client raises.

    Without the bound, a client that sends its body a byte at a time holds a connection
    for as long as it likes.
    """
    try:
        return await asyncio.wait_for(reading, BODY_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise RequestError(
            408,
            f"The request body did not arrive within {BODY_TIMEOUT_S:g} s; send it in one go",
        ) from None
    except ConnectionResetError:
        raise ClientGone() from None


async def _read_body(request: web.Request) -> bytes:
    """Read the body; a declared or actual size over the limit raises before it is stored."""
    limits = request.app[STATE].settings.limits
    length = request.content_length
    if length is not None and length > limits.max_body_bytes:
        raise RequestError(413, _too_large_message(limits, length))
    try:
        return await _receive(request, request.read())
    except web.HTTPRequestEntityTooLarge:
        raise RequestError(413, _too_large_message(limits, None)) from None


def _ready_model(state: ServerState) -> ServedModel:
    if state.model is not None and state.phase in ("ready", "stopping"):
        return state.model
    if state.phase == "failed":
        raise ModelUnavailable(f"The model failed to load: {state.error}")
    raise ModelUnavailable("The model is loading; retry once GET /healthz returns 200")


def _requested_model(request: web.Request) -> ServedModel:
    """Return the model for the path's name and version, as TensorFlow Serving finds it."""
    state = request.app[STATE]
    name = request.match_info["name"]
    version = request.match_info.get("version")
    served = state.settings.model_name
    if name != served:
        name = clip(name)
        spec = f"Specific({name}, {clip(version)})" if version is not None else f"Latest({name})"
        raise RequestError(
            404, f"Servable not found for request: {spec}. This server serves model {served!r}"
        )
    if version is not None and not version.isdigit():
        raise RequestError(400, f"Failed to convert version: {clip(version)} to numeric.")
    if version is not None and int(version) != state.version:
        raise RequestError(
            404,
            f"Servable not found for request: Specific({name}, {version}). "
            f"This server serves version {state.version} of {served!r}",
        )
    return _ready_model(state)


async def _predict(request: web.Request, images: list[bytes], field: str) -> list[np.ndarray]:
    """Run ``images`` through the batcher; bad images and a full queue raise RequestError."""
    state = request.app[STATE]
    assert state.batcher is not None
    try:
        rows = await state.batcher.predict(images)
    except QueueFullError as error:
        raise RequestError(429, str(error)) from None
    except BadImageError as error:
        where = f"{field}[{error.index}]" if field != "the upload" else field
        raise RequestError(
            400,
            f"{where}: the image passed the header checks but could not be decoded: "
            f"{error.message}",
        ) from None
    state.metrics.images.inc(len(rows))
    return rows


def _floats(row: np.ndarray) -> list[float]:
    """Return float32 values as the shortest decimals that read back as the same float32."""
    return [float(str(value)) for value in row.astype(np.float32)]


@contextlib.contextmanager
def _receiving(state: ServerState) -> Iterator[None]:
    """Count a predict request as arriving while its body is read and checked."""
    state.receiving += 1
    try:
        yield
    finally:
        state.receiving -= 1


async def tf_predict(request: web.Request) -> web.Response:
    """``POST /v1/models/<name>[/versions/<v>]:predict`` in row or columnar form."""
    with _receiving(request.app[STATE]):
        model = _requested_model(request)
        body = await _read_body(request)
        parsed = parse_predict_body(body, request.app[STATE].settings.limits)
    request[IMAGES] = len(parsed.images)
    rows = await _predict(request, parsed.images, parsed.field)

    probabilities = [_floats(row) for row in rows]
    if parsed.columnar:
        outputs = {"class_names": [model.class_names] * len(rows), "probabilities": probabilities}
        return web.json_response({"outputs": outputs})
    predictions = [
        {"class_names": model.class_names, "probabilities": values} for values in probabilities
    ]
    return web.json_response({"predictions": predictions})


async def tf_status(request: web.Request) -> web.Response:
    """``GET /v1/models/<name>[/versions/<v>]``: GetModelStatusResponse as JSON."""
    state = request.app[STATE]
    try:
        _requested_model(request)
    except ModelUnavailable:
        pass  # the status reports the phase itself
    states = {"loading": "LOADING", "ready": "AVAILABLE", "stopping": "UNLOADING", "failed": "END"}
    error_code, message = ("UNKNOWN", state.error) if state.phase == "failed" else ("OK", "")
    version_status = {
        "version": str(state.version),
        "state": states[state.phase],
        "status": {"error_code": error_code, "error_message": message},
    }
    return web.json_response({"model_version_status": [version_status]})


async def tf_metadata(request: web.Request) -> web.Response:
    """``GET /v1/models/<name>[/versions/<v>]/metadata``: GetModelMetadataResponse as JSON."""
    model = _requested_model(request)
    name = request.app[STATE].settings.model_name
    return web.json_response(
        {
            "model_spec": {"name": name, "signature_name": "", "version": str(model.version)},
            "metadata": {"signature_def": {"signature_def": model.signature_defs}},
        }
    )


async def upload_predict(request: web.Request) -> web.Response:
    """``POST /predict``: one image as a form file field or as the raw body."""
    state = request.app[STATE]
    with _receiving(state):
        model = _ready_model(state)
        image = await _read_upload(request)
        request[IMAGES] = 1
        check_image(image, "the upload", state.settings.limits)
    (row,) = await _predict(request, [image], "the upload")

    ranked = sorted(zip(model.class_names, _floats(row)), key=lambda pair: -pair[1])
    return web.json_response(
        {
            "model": state.settings.model_name,
            "version": str(model.version),
            "top_class": ranked[0][0],
            "probability": ranked[0][1],
            "classes": [{"class_name": name, "probability": value} for name, value in ranked],
        }
    )


async def _read_upload(request: web.Request) -> bytes:
    """Return the uploaded image: a multipart form's file field, or else the whole body."""
    if request.content_type == "multipart/form-data":
        return await _read_form_file(request)
    if request.content_type == "application/x-www-form-urlencoded":
        raise RequestError(
            400,
            "The form was sent as application/x-www-form-urlencoded, which carries no file; "
            "send it as multipart/form-data (curl -F file=@photo.jpg ...)",
        )
    return await _read_body(request)


async def _read_form_file(request: web.Request) -> bytes:
    """Return the bytes of the form's only file field, whatever its name."""
    limits = request.app[STATE].settings.limits
    length = request.content_length
    if length is not None and length > limits.max_body_bytes:
        raise RequestError(413, _too_large_message(limits, length))
    try:
        form = await _receive(request, request.post())
    except web.HTTPRequestEntityTooLarge:
        raise RequestError(413, _too_large_message(limits, None)) from None
    except ValueError as error:
        raise RequestError(400, f"The multipart form could not be parsed: {error}") from None

    files = [(name, value) for name, value in form.items() if isinstance(value, web.FileField)]
    if not files:
        raise RequestError(
            400,
            "The form has no file field; send the image as a file field named 'file' "
            "(curl -F file=@photo.jpg ...) or as the raw request body",
        )
    if len(files) > 1:
        names = [name for name, _ in files]
        raise RequestError(400, f"The form has {len(files)} file fields {names}; send one image")
    return files[0][1].file.read()


async def index(request: web.Request) -> web.Response:
    """``GET /``: a form that uploads one image to ``/predict``."""
    state = request.app[STATE]
    page = INDEX_PAGE.format(
        name=html.escape(state.settings.model_name), version=state.version, phase=state.phase
    )
    return web.Response(text=page, content_type="text/html")


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: 200 once the model is loaded and warmed up, else 503."""
    state = request.app[STATE]
    body = {
        "status": state.phase,
        "model": state.settings.model_name,
        "version": str(state.version),
    }
    if state.phase == "failed":
        body["error"] = state.error
    return web.json_response(body, status=200 if state.phase == "ready" else 503)


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: every metric in the Prometheus text format."""
    registry = request.app[STATE].metrics.registry
    return web.Response(
        body=prometheus_client.generate_latest(registry),
        headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
    )


INDEX_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{name}</title></head>
<body>
<h1>Product image classifier</h1>
<p>Model <code>{name}</code>, version {version} ({phase}).
Pick a JPEG, PNG, GIF, WebP or BMP photo. The response is JSON with every class and
its probability.</p>
<form action="/predict" method="post" enctype="multipart/form-data">
<input type="file" name="file" accept="image/*" required>
<button type="submit">Classify</button>
</form>
</body>
</html>
"""


# ---- the application ----


def create_app(
    settings: ServeSettings, version: int, load: Callable[[], ServedModel]
) -> web.Application:
    """Build the application; on start-up it loads the model with ``load`` in the model thread.

    ``version`` is the number that the status and predict paths report and accept.
    """
    settings.check()
    app = web.Application(middlewares=[_observe], client_max_size=settings.limits.max_body_bytes)
    app[STATE] = ServerState(settings=settings, version=version, load=load)
    app.cleanup_ctx.append(_model_lifecycle)

    model_path = "/v1/models/{name:[^/:]+}"
    version_path = model_path + "/versions/{version:[^/:]+}"
    for path in (model_path, version_path):
        app.router.add_post(path + ":predict", tf_predict)
        app.router.add_get(path, tf_status)
        app.router.add_get(path + "/metadata", tf_metadata)
    app.router.add_post("/predict", upload_predict)
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


async def _model_lifecycle(app: web.Application) -> Any:
    """Start the batcher and the model load; after the last request, stop both."""
    state = app[STATE]
    settings = state.settings
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
    state.batcher = Batcher(
        lambda images: state.model.predict(images),
        max_batch_size=settings.max_batch_size,
        batch_timeout=settings.batch_timeout_ms / 1000,
        max_queue_images=settings.max_queue_images,
        executor=executor,
        observe=state.metrics.observe_batch,
        arriving=lambda: state.receiving,
    )
    state.metrics.queued.set_function(lambda: state.batcher.queued)
    state.batcher.start()
    loading = asyncio.get_running_loop().create_task(_load(state, executor))

    yield

    loading.cancel()
    await state.batcher.stop()
    # A load still running cannot be interrupted; the process exits once it finishes.
    executor.shutdown(wait=False, cancel_futures=True)


async def _load(state: ServerState, executor: ThreadPoolExecutor) -> None:
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    try:
        model = await loop.run_in_executor(executor, state.load)
        await loop.run_in_executor(executor, warm_up, model, state.settings.max_batch_size)
    except Exception as error:  # any load failure ends the server with a clear log line
        logger.exception(
            "failed to load the model; if the export is damaged, run make export RUN=... again"
        )
        state.phase, state.error = "failed", f"{type(error).__name__}: {error}"
        state.failed.set()
        return
    state.model = model
    if state.phase == "loading":
        state.phase = "ready"
    logger.info(
        "model %r version %d ready%s: %d classes (%s); load and warm-up took %.1f s",
        state.settings.model_name,
        model.version,
        f" on {state.url}" if state.url else "",
        len(model.class_names),
        ", ".join(model.class_names),
        time.perf_counter() - start,
    )


async def serve(app: web.Application, host: str, port: int) -> int:
    """Serve ``app`` until SIGINT or SIGTERM, then stop gracefully; return the exit code.

    Returns 0 after a signal and 1 when the model failed to load.
    """
    # The handlers go in first, so a signal sent once the address is logged stops cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    state = app[STATE]
    # _drain waits for the requests in flight, so cleanup() has only stragglers to cancel.
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=CLEANUP_TIMEOUT
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    state.url = f"http://{bound_host}:{bound_port}/"
    logger.info(
        "serving model %r version %d on %s (max batch %d, batch timeout %g ms); loading it",
        state.settings.model_name,
        state.version,
        state.url,
        state.settings.max_batch_size,
        state.settings.batch_timeout_ms,
    )

    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(state.failed.wait())]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()
    exit_code = 1 if state.failed.is_set() else 0
    if state.phase != "failed":
        state.phase = "stopping"
    # A second signal ends the wait for requests in flight.
    hurry = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, hurry.set)
    await _drain(runner, state, hurry)
    logger.info("stopped")
    return exit_code


async def _drain(runner: web.AppRunner, state: ServerState, hurry: asyncio.Event) -> None:
    """Stop accepting connections, wait for the requests in flight, then clean up.

    ``runner.cleanup()`` alone would also wait, but aiohttp 3.14 drops the bytes that
    arrive on a connection once its shutdown starts, so a request still uploading its
    body could never finish. Connections therefore stay open until the requests in
    flight are done, ``shutdown_timeout`` has passed or ``hurry`` is set.
    """
    timeout = state.settings.shutdown_timeout
    logger.info(
        "stopping: no new connections; waiting up to %g s for %d requests in flight",
        timeout,
        state.in_flight,
    )
    for site in list(runner.sites):
        await site.stop()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while state.in_flight > 0 and loop.time() < deadline and not hurry.is_set():
        await asyncio.sleep(0.05)
    if state.in_flight > 0:
        logger.warning("cancelling %d requests still in flight", state.in_flight)
    await runner.cleanup()


# ---- command line ----


def get_args_parser() -> argparse.ArgumentParser:
    defaults = ServeSettings()
    limits = defaults.limits
    parser = argparse.ArgumentParser(
        prog="python -m deploy.serve",
        description="Serve an exported model with TensorFlow Serving's REST API.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--run", type=Path, help=f"run folder; serves its {EXPORT_SUBDIR}/<highest version>/"
    )
    source.add_argument(
        "--model-dir",
        type=Path,
        help="folder of numbered SavedModel versions (1/, 2/, ...) or one version folder",
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on; 0.0.0.0 for every interface (default: {DEFAULT_HOST})",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"TCP port, 0 for a free one (default: {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--model-name",
        default=defaults.model_name,
        help=f"name in the /v1/models/<name> paths (default: {defaults.model_name})",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=defaults.max_batch_size,
        help=f"images per model call; 1 turns batching off (default: {defaults.max_batch_size})",
    )
    parser.add_argument(
        "--batch-timeout-ms",
        type=float,
        default=defaults.batch_timeout_ms,
        help="milliseconds a batch waits to fill once its first image is queued; no wait "
        f"when a full batch is queued (default: {defaults.batch_timeout_ms:g})",
    )
    parser.add_argument(
        "--max-queue-images",
        type=int,
        default=defaults.max_queue_images,
        help="images waiting for the model at most; a request beyond that gets 429 "
        f"(default: {defaults.max_queue_images})",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=limits.max_body_bytes,
        help=f"request body size limit in bytes; 413 beyond (default: {limits.max_body_bytes})",
    )
    parser.add_argument(
        "--max-images-per-request",
        type=int,
        default=limits.max_images,
        help=f"images in one request at most; 413 beyond (default: {limits.max_images})",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=limits.max_image_pixels,
        help="width x height of one image at most, read from its header; 413 beyond "
        f"(default: {limits.max_image_pixels})",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=defaults.shutdown_timeout,
        help="seconds that requests in flight get to finish after SIGTERM or SIGINT "
        f"(default: {defaults.shutdown_timeout:g})",
    )
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging(args.verbose)
    if not 0 <= args.port <= 65535:
        logger.error("--port must be from 0 to 65535. Received: %d", args.port)
        return 2
    try:
        limits = Limits(
            max_body_bytes=args.max_body_bytes,
            max_images=args.max_images_per_request,
            max_image_pixels=args.max_image_pixels,
        )
        settings = ServeSettings(
            model_name=args.model_name,
            limits=limits,
            max_batch_size=args.max_batch_size,
            batch_timeout_ms=args.batch_timeout_ms,
            max_queue_images=args.max_queue_images,
            shutdown_timeout=args.shutdown_timeout,
        )
        settings.check()
        version, version_dir = resolve_model_dir(args.run, args.model_dir)
    except (ValueError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2

    # One *_created sample per labelled series doubles /metrics for no use here.
    prometheus_client.disable_created_metrics()
    app = create_app(settings, version, lambda: load_model(version_dir, version))
    try:
        return asyncio.run(serve(app, args.host, args.port))
    except OSError as error:
        logger.error("cannot listen on %s:%d: %s; pick another --port", args.host, args.port, error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
