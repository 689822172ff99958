"""Parse and check prediction requests before any model work.

The prediction server (``deploy.serve``) calls :func:`parse_predict_body` on the body of a
TensorFlow Serving ``:predict`` request and :func:`check_image` on every image, whichever
endpoint it came from. Both raise :class:`RequestError`, which carries the HTTP status
(always 4xx) and a message that names the offending value and, for a limit, the limit and
the command-line option that sets it.

Accepted request bodies, with one named input ``image_bytes`` (``tf.string [batch]``):

* row form: ``{"instances": [{"b64": "..."}, ...]}`` or
  ``{"instances": [{"image_bytes": {"b64": "..."}}, ...]}``;
* columnar form: ``{"inputs": [{"b64": "..."}, ...]}`` or
  ``{"inputs": {"image_bytes": [{"b64": "..."}, ...]}}``;
* either with an optional ``"signature_name"`` of ``"serving_default"`` (or ``""``).

Base64 may be standard or URL-safe (``-`` and ``_``), and must be padded. Each image must be
a JPEG, PNG, GIF, WebP or BMP whose header is readable and declares at most
``Limits.max_image_pixels`` pixels. The header is walked without decoding any pixel, so
an oversized image costs nothing but its upload.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from data.scripts.images import ImageRejected, read_dimensions, sniff_format
from deploy.export import INPUT_NAME, SIGNATURE
from train.dataset import DECODABLE_FORMATS

FORMAT_NAMES = "JPEG, PNG, GIF, WebP or BMP"
ROW_SHAPE = '{"instances": [{"b64": "<base64 image>"}, ...]}'
COLUMN_SHAPE = '{"inputs": {"image_bytes": [{"b64": "<base64 image>"}, ...]}}'
_URL_SAFE_TO_STANDARD = str.maketrans("-_", "+/")


class RequestError(Exception):
    """A request that the server rejects, with its 4xx HTTP status and a message."""

    def __init__(self, status: int, message: str) -> None:
        if not 400 <= status < 500:
            raise ValueError(f"status must be a 4xx HTTP status. Received: {status!r}")
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """Request limits, each enforced before any model work.

    With the defaults, one request can carry 64 photos of about 750 KB each, since base64
    adds a third. A decoded image costs 3 bytes per pixel, and the float32 copy that the
    resize makes costs 12, so an image at the pixel limit of 16 million needs about 240 MB
    while it is decoded.
    """

    max_body_bytes: int = 64 * 2**20  # request body, in bytes
    max_images: int = 64  # images in one request
    max_image_pixels: int = 16_000_000  # width * height from the image header

    def __post_init__(self) -> None:
        for name, option in LIMIT_OPTIONS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"{name} ({option}) must be an integer >= 1. Received: {name}={value!r}"
                )


# The command-line option of deploy.serve that sets each limit, named in every message.
LIMIT_OPTIONS = {
    "max_body_bytes": "--max-body-bytes",
    "max_images": "--max-images-per-request",
    "max_image_pixels": "--max-image-pixels",
}


@dataclass(frozen=True)
class PredictRequest:
    """The images of one ``:predict`` request, in request order."""

    images: list[bytes]
    columnar: bool  # True for the "inputs" form, whose response has "outputs"
    field: str  # "instances" or "inputs", for messages about one image


def parse_predict_body(body: bytes, limits: Limits) -> PredictRequest:
    """Parse a TensorFlow Serving ``:predict`` body and check every image in it.

    Raises:
        RequestError: 400 for a body that is not a JSON object of one of the accepted
            shapes, for invalid base64 and for an image that :func:`check_image` rejects;
            413 for more than ``limits.max_images`` images or an image over the pixel limit.
    """
    payload = _load_json(body)
    if not isinstance(payload, dict):
        raise RequestError(
            400,
            f"The request body must be a JSON object such as {ROW_SHAPE}. "
            f"Received: a JSON {_json_type(payload)}",
        )
    signature = payload.get("signature_name", "")
    if signature not in ("", SIGNATURE):
        raise RequestError(
            400,
            f'Serving signature name: "{clip(signature)}" not found in signature def. '
            f'This model has one signature, "{SIGNATURE}"',
        )

    if "instances" in payload and "inputs" in payload:
        raise RequestError(
            400, 'The request has both "instances" and "inputs"; send one of them, not both'
        )
    if "instances" in payload:
        values = _row_values(payload["instances"])
        request = PredictRequest([], columnar=False, field="instances")
    elif "inputs" in payload:
        values = _column_values(payload["inputs"])
        request = PredictRequest([], columnar=True, field="inputs")
    else:
        raise RequestError(
            400,
            f'Missing "instances" or "inputs" key. Send {ROW_SHAPE} or {COLUMN_SHAPE}. '
            f"Received: {_describe(payload)}",
        )

    _check_count(len(values), request.field, limits)
    for index, value in enumerate(values):
        where = f"{request.field}[{index}]"
        image = decode_b64(value, where)
        check_image(image, where, limits)
        request.images.append(image)
    return request


def check_image(image: bytes, where: str, limits: Limits) -> str:
    """Check one image's bytes from its header alone and return its format.

    ``where`` names the image in messages, such as ``instances[2]`` or ``the upload``.

    Raises:
        RequestError: 400 for empty bytes, bytes that are not an image, a TIFF or other format
            that the model cannot decode, an unreadable or truncated header and a zero width
            or height; 413 for more than ``limits.max_image_pixels`` pixels.
    """
    if not image:
        raise RequestError(400, f"{where}: the image is empty (0 bytes)")
    fmt = sniff_format(image[:32])
    if fmt is None:
        raise RequestError(
            400,
            f"{where}: not an image. The {len(image)} bytes are not a {FORMAT_NAMES} file; "
            f"they start with {image[:12]!r}",
        )
    if fmt not in DECODABLE_FORMATS:
        raise RequestError(
            400, f"{where}: {fmt.upper()} images are not supported; send a {FORMAT_NAMES} file"
        )
    try:
        width, height = read_dimensions(image, fmt)
    except ImageRejected as error:
        raise RequestError(400, f"{where}: invalid {fmt.upper()} file: {error.message}") from None
    if width < 1 or height < 1:
        raise RequestError(
            400, f"{where}: the {fmt.upper()} header declares {width}x{height} pixels"
        )
    pixels = width * height
    if pixels > limits.max_image_pixels:
        raise RequestError(
            413,
            f"{where}: the {fmt.upper()} header declares {width}x{height} = {pixels} pixels, "
            f"above the limit of {limits.max_image_pixels} pixels per image "
            "(--max-image-pixels); downscale the image before sending it",
        )
    return fmt


def decode_b64(value: Any, where: str) -> bytes:
    """Return the bytes of a ``{"b64": "..."}`` object, standard or URL-safe base64.

    Raises:
        RequestError: 400 when ``value`` is not such an object or the text is not base64.
    """
    if not isinstance(value, dict) or set(value) != {"b64"}:
        raise RequestError(
            400,
            f'{where} must be an object {{"b64": "<base64 image>"}}. '
            f"Received: {_describe(value)}",
        )
    text = value["b64"]
    if not isinstance(text, str):
        raise RequestError(
            400, f"{where}.b64 must be a string of base64. Received: a JSON {_json_type(text)}"
        )
    try:
        return base64.b64decode(text.translate(_URL_SAFE_TO_STANDARD), validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(
            400, f"{where}.b64 is not valid base64 ({error}); {len(text)} characters received"
        ) from None


def _load_json(body: bytes) -> Any:
    if not body:
        raise RequestError(
            400, f"The request body is empty. Send a JSON object such as {ROW_SHAPE}"
        )
    try:
        # JSON between systems is UTF-8 (RFC 8259), so other encodings are not guessed.
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestError(
            400, f"The request body is not UTF-8 text, so not JSON: {error}"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RequestError(400, f"The request body is not valid JSON: {error}") from None
    except RecursionError:
        raise RequestError(400, "The request body is JSON nested too deeply to parse") from None


def _row_values(instances: Any) -> list[Any]:
    """Return the ``{"b64": ...}`` objects of a row-form ``instances`` list."""
    if not isinstance(instances, list):
        raise RequestError(
            400,
            f'"instances" must be a list of images such as {ROW_SHAPE}. '
            f"Received: a JSON {_json_type(instances)}",
        )
    values = []
    for index, instance in enumerate(instances):
        if isinstance(instance, dict) and set(instance) == {INPUT_NAME}:
            values.append(instance[INPUT_NAME])
        elif isinstance(instance, dict) and set(instance) == {"b64"}:
            values.append(instance)
        else:
            raise RequestError(
                400,
                f'instances[{index}] must be {{"b64": "<base64 image>"}} or '
                f'{{"{INPUT_NAME}": {{"b64": "<base64 image>"}}}}. '
                f"Received: {_describe(instance)}",
            )
    return values


def _column_values(inputs: Any) -> list[Any]:
    """Return the ``{"b64": ...}`` objects of a columnar ``inputs`` value."""
    if isinstance(inputs, dict) and set(inputs) != {"b64"}:
        unknown = sorted(set(inputs) - {INPUT_NAME})
        if unknown:
            raise RequestError(
                400,
                f'"inputs" names unknown inputs {_keys(unknown)}; this model has one input, '
                f'"{INPUT_NAME}". Send {COLUMN_SHAPE}',
            )
        if INPUT_NAME not in inputs:
            raise RequestError(400, f'"inputs" is an empty object. Send {COLUMN_SHAPE}')
        inputs = inputs[INPUT_NAME]
        name = f'"inputs"["{INPUT_NAME}"]'
    else:
        name = '"inputs"'
    if not isinstance(inputs, list):
        raise RequestError(
            400,
            f"{name} must be a list of images, because the input takes a batch of shape "
            f"[-1]. Send {COLUMN_SHAPE}. Received: {_describe(inputs)}",
        )
    return inputs


def _check_count(count: int, field: str, limits: Limits) -> None:
    if count == 0:
        raise RequestError(400, f'"{field}" is empty; send at least one image')
    if count > limits.max_images:
        raise RequestError(
            413,
            f"The request has {count} images, above the limit of {limits.max_images} images "
            "per request (--max-images-per-request); split it into several requests",
        )


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _describe(value: Any) -> str:
    """Name a JSON value's type, and an object's keys, without echoing its content."""
    if isinstance(value, dict):
        return f"an object with keys {_keys(sorted(value))}"
    return f"a JSON {_json_type(value)}"


def _keys(keys: list[str]) -> str:
    """List at most 5 client-sent keys, each clipped, so a message stays short."""
    shown = "[" + ", ".join(repr(clip(key)) for key in keys[:5]) + "]"
    return shown + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def clip(text: Any, length: int = 60) -> str:
    """Return ``str(text)``, cut to ``length`` characters with "..." where it was longer."""
    text = str(text)
    return text if len(text) <= length else text[: length - 3] + "..."
