"""Check, normalise and re-encode one downloaded image body before it is stored.

The download stage calls :func:`process_image` on every HTTP response body. The function
either returns a :class:`ProcessedImage` whose ``data`` is always a JPEG, or raises
:class:`ImageRejected` with a ``status`` from :data:`REJECT_STATUSES`:

* ``not_an_image``: the magic bytes are not those of JPEG, PNG, GIF, WebP, BMP or TIFF.
  Only the bytes count, never a Content-Type header or a file extension.
* ``corrupt``: the header cannot be read, the file is structurally incomplete, or
  OpenCV fails to decode it. Incomplete means a JPEG without its end-of-image marker,
  a PNG cut before ``IEND``, a GIF without its trailer, a WebP whose RIFF size exceeds
  the body or a BMP shorter than its pixel rows. NOTE: libjpeg decodes damaged
  entropy-coded data with only a warning, so a JPEG with flipped bytes inside its scan
  data and an intact structure is accepted.
* ``too_large``: width x height read from the header exceeds ``max_pixels``. This check
  runs before any pixel is decoded, so a decompression bomb allocates nothing.
* ``too_small``: the smaller side is below ``min_side`` or the aspect ratio exceeds
  ``max_aspect_ratio``.

The checks run in that order, and the cheap header checks come before the single
decode. Accepted images are decoded once, to 8-bit BGR with the EXIF orientation
applied. Grayscale and palette images become three channels, transparency is
composited onto white, 16-bit samples are scaled to 8 bits, CMYK JPEGs are converted
to colour and an animated GIF or WebP keeps its first frame. The image is then resized
in ``ImageCheckConfig.resize_mode`` and encoded as JPEG. A 3-channel baseline or
progressive JPEG in upright orientation that needs no resize is stored as the original
bytes, unchanged, after it has passed every check and a full decode.

Facts about OpenCV 5.1 (opencv-python-headless) that this module relies on, each
covered by a test in ``tests/test_images.py`` (the CMYK test needs Pillow to write
its input):

* ``IMREAD_UNCHANGED`` ignores the EXIF orientation of JPEG, PNG and WebP files, so this
  module reads the orientation tag itself and rotates the decoded pixels.
* The TIFF decoder applies the TIFF ``Orientation`` tag itself, whatever the flags.
* GIF decoding is built in. ``IMREAD_UNCHANGED`` returns the first frame as BGRA.
* A CMYK JPEG (including Adobe's inverted CMYK) decodes to correct BGR colours.

Every function here is pure, and OpenCV releases the GIL while it decodes, resizes and
encodes, so a downloader may call :func:`process_image` from several threads.
"""

from __future__ import annotations

import logging
import math
import numbers
import struct
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

logger = logging.getLogger(__name__)

RESIZE_MODES = ("keep-ratio", "centre-crop", "pad", "none")
REJECT_STATUSES = ("not_an_image", "corrupt", "too_small", "too_large")
FORMATS = ("jpeg", "png", "gif", "webp", "bmp", "tiff")

# Bytes accepted after a JPEG's end-of-image marker: NUL and 0xFF fill bytes, which some
# servers and writers append, and line breaks and spaces added by text-mode handling.
JPEG_TRAILING_PADDING = b"\x00\xff\r\n\t "
WHITE_BGR = (255, 255, 255)

# Largest JPEG scale-down factor first. libjpeg-turbo decodes at 1/8, 1/4 or 1/2 size
# in the DCT domain, which is several times faster than a full decode and a resize.
_JPEG_REDUCED_FLAGS = {
    8: cv2.IMREAD_REDUCED_COLOR_8,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    2: cv2.IMREAD_REDUCED_COLOR_2,
}
# Marker codes are from ITU-T T.81 (ISO/IEC 10918-1), Table B.1. The SOF markers of
# Huffman-coded baseline (C0), extended sequential (C1) and progressive (C2) frames are
# kept as is. Arithmetic-coded, lossless and hierarchical JPEGs are re-encoded, because
# decoder support for them is uneven.
_PORTABLE_JPEG_SOF = (0xC0, 0xC1, 0xC2)
# DHT (C4), JPG (C8) and DAC (CC) share the C0-CF range with the SOF markers.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM (01) and the restart markers RST0-RST7.
_JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})
_BMP_DIB_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_TIFF_ORIENTATION_TAG = 0x0112
_TIFF_WIDTH_TAG = 0x0100
_TIFF_HEIGHT_TAG = 0x0101


@dataclass(frozen=True)
class ImageCheckConfig:
    """Limits and output settings for :func:`process_image`.

    Construction runs :meth:`validate`, so an invalid configuration raises
    ``ValueError`` before any image is processed.
    """

    image_size: int | None = None  # target side in pixels, or None to keep the decoded size
    resize_mode: str = "keep-ratio"  # one of RESIZE_MODES
    jpeg_quality: int = 90  # 1..100, passed to cv2.IMWRITE_JPEG_QUALITY
    min_side: int = 32  # pixels, and a smaller width or height is too_small
    max_aspect_ratio: float = 10.0  # max(w, h) / min(w, h) above this is too_small
    max_pixels: int = 40_000_000  # header width * height above this is too_large

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid option, its allowed values and value."""
        if self.image_size is not None and not _is_int_at_least(self.image_size, 1):
            raise ValueError(
                "image_size must be None or an integer number of pixels >= 1. "
                f"Received: image_size={self.image_size!r}"
            )
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(
                f"resize_mode must be one of {RESIZE_MODES}. "
                f"Received: resize_mode={self.resize_mode!r}"
            )
        if not _is_int_at_least(self.jpeg_quality, 1) or self.jpeg_quality > 100:
            raise ValueError(
                "jpeg_quality must be an integer from 1 to 100. "
                f"Received: jpeg_quality={self.jpeg_quality!r}"
            )
        if not _is_int_at_least(self.min_side, 1):
            raise ValueError(
                "min_side must be an integer number of pixels >= 1. "
                f"Received: min_side={self.min_side!r}"
            )
        if (
            isinstance(self.max_aspect_ratio, bool)
            or not isinstance(self.max_aspect_ratio, numbers.Real)
            or not self.max_aspect_ratio >= 1.0
        ):
            raise ValueError(
                "max_aspect_ratio must be a number >= 1.0 (longer side / shorter side). "
                f"Received: max_aspect_ratio={self.max_aspect_ratio!r}"
            )
        if not _is_int_at_least(self.max_pixels, 1):
            raise ValueError(
                "max_pixels must be an integer >= 1 (width * height). "
                f"Received: max_pixels={self.max_pixels!r}"
            )


@dataclass(frozen=True)
class ProcessedImage:
    """The bytes to store for one accepted image, and its sizes in pixels.

    ``original_width`` and ``original_height`` are the upright size, after the EXIF
    orientation, at full resolution. ``width`` and ``height`` are the size of ``data``.
    """

    data: bytes  # always a JPEG
    format: str  # detected source format, one of FORMATS
    original_width: int
    original_height: int
    width: int
    height: int
    kept_original: bool  # True when data is the input body, unchanged


class ImageRejected(Exception):
    """An image body that cannot be stored, with a ``status`` from :data:`REJECT_STATUSES`."""

    def __init__(self, status: str, message: str) -> None:
        if status not in REJECT_STATUSES:
            raise ValueError(f"status must be one of {REJECT_STATUSES}. Received: {status!r}")
        super().__init__(message)
        self.status = status
        self.message = message

    def __reduce__(self) -> tuple[type[ImageRejected], tuple[str, str]]:
        # Rebuild from both fields, so the exception survives pickling between processes.
        return (type(self), (self.status, self.message))

    def __repr__(self) -> str:
        return f"ImageRejected(status={self.status!r}, message={self.message!r})"


@dataclass(frozen=True)
class _Header:
    """Facts read from a file header without decoding pixels."""

    width: int  # as stored, before the EXIF orientation
    height: int
    orientation: int = 1  # EXIF/TIFF orientation 1..8, or 1 when absent or invalid
    largest_frame_pixels: int = 0  # GIF only: the largest frame's width * height
    jpeg_sof: int = 0  # JPEG only: the SOF marker (0xC0..0xCF)
    jpeg_precision: int = 8  # JPEG only: bits per sample
    jpeg_components: int = 3  # JPEG only: 1 gray, 3 YCbCr or RGB, 4 CMYK or YCCK


def _is_int_at_least(value: object, minimum: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def _corrupt(message: str) -> ImageRejected:
    return ImageRejected("corrupt", message)


# ---- recognising the format ----


def sniff_format(body: bytes) -> str | None:
    """Return the image format from the magic bytes at the start of ``body``, or None.

    Returns one of ``"jpeg"``, ``"png"``, ``"gif"``, ``"webp"``, ``"bmp"``, ``"tiff"``.
    Headers and file extensions are never consulted. A BMP needs its two-byte ``BM``
    magic and a known DIB header size, so text that starts with ``BM`` is not a BMP.
    """
    if body.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if body.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if body.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if body.startswith(b"RIFF") and body[8:12] == b"WEBP":
        return "webp"
    if body.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "tiff"
    if body.startswith(b"BM") and len(body) >= 18:
        (dib_header_size,) = struct.unpack_from("<I", body, 14)
        if dib_header_size in _BMP_DIB_HEADER_SIZES:
            return "bmp"
    return None


# ---- reading headers without decoding ----


def _parse_jpeg(body: bytes) -> _Header:
    """Walk the JPEG segments up to the first scan, then check the end-of-image marker."""
    size = len(body)
    position = 2
    orientation = 1
    frame: tuple[int, int, int, int, int] | None = None  # sof, precision, height, width, comps
    while True:
        if position >= size:
            raise _corrupt(f"JPEG ends at byte {size} before its first scan (SOS marker)")
        if body[position] != 0xFF:
            raise _corrupt(f"JPEG has no marker at byte {position}, where a segment must start")
        while position < size and body[position] == 0xFF:  # 0xFF fill bytes before a marker
            position += 1
        marker = body[position]
        position += 1
        if marker in _JPEG_STANDALONE_MARKERS:
            continue
        if marker in (0xD8, 0xD9):
            raise _corrupt(f"JPEG has marker FF{marker:02X} before its first scan")
        (length,) = struct.unpack_from(">H", body, position)
        if length < 2 or position + length > size:
            raise _corrupt(
                f"JPEG segment FF{marker:02X} at byte {position - 2} declares {length} bytes, "
                f"beyond the end of the {size}-byte body"
            )
        if marker == 0xDA:
            break
        if marker in _JPEG_SOF_MARKERS and frame is None:
            precision, height, width, components = struct.unpack_from(">BHHB", body, position + 2)
            frame = (marker, precision, height, width, components)
        elif marker == 0xE1 and body.startswith(b"Exif\x00\x00", position + 2):
            orientation = _read_exif_orientation(body, position + 8, position + length)
        position += length

    if frame is None:
        raise _corrupt("JPEG has no frame header (SOF marker) before its first scan")
    end = size
    while end > position and body[end - 1] in JPEG_TRAILING_PADDING:
        end -= 1
    if body[end - 2 : end] != b"\xff\xd9":
        raise _corrupt(
            f"JPEG of {size} bytes has no end-of-image marker (FFD9), so it is truncated "
            "or has data appended after the image"
        )
    sof, precision, height, width, components = frame
    return _Header(
        width=width,
        height=height,
        orientation=orientation,
        jpeg_sof=sof,
        jpeg_precision=precision,
        jpeg_components=components,
    )


def _parse_png(body: bytes) -> _Header:
    """Walk the PNG chunks from IHDR to IEND. libpng checks the CRCs while decoding."""
    size = len(body)
    position = 8
    width = height = 0
    orientation = 1
    while True:
        if position + 8 > size:
            raise _corrupt(f"PNG of {size} bytes ends before its IEND chunk")
        length, chunk_type = struct.unpack_from(">I4s", body, position)
        data_start = position + 8
        if length > 0x7FFFFFFF or data_start + length + 4 > size:
            raise _corrupt(
                f"PNG chunk {chunk_type!r} at byte {position} declares {length} bytes, beyond "
                f"the end of the {size}-byte body"
            )
        if position == 8:
            if chunk_type != b"IHDR" or length != 13:
                raise _corrupt(f"PNG starts with chunk {chunk_type!r}, not a 13-byte IHDR")
            width, height = struct.unpack_from(">II", body, data_start)
        elif chunk_type == b"eXIf":
            orientation = _read_exif_orientation(body, data_start, data_start + length)
        elif chunk_type == b"IEND":
            return _Header(width=width, height=height, orientation=orientation)
        position = data_start + length + 4


def _parse_gif(body: bytes) -> _Header:
    """Walk the GIF blocks to the trailer (0x3B), recording the largest frame."""
    size = len(body)
    width, height, flags = struct.unpack_from("<HHB", body, 6)
    position = 13
    if flags & 0x80:  # global colour table of 2^(n+1) RGB entries
        position += 3 << ((flags & 0x07) + 1)
    largest_frame_pixels = 0
    while True:
        if position >= size:
            raise _corrupt(f"GIF of {size} bytes ends without its trailer byte (0x3B)")
        block = body[position]
        if block == 0x3B:
            return _Header(width=width, height=height, largest_frame_pixels=largest_frame_pixels)
        if block == 0x21:  # extension: introducer, label, then data sub-blocks
            position = _skip_gif_sub_blocks(body, position + 2)
        elif block == 0x2C:  # image descriptor, optional local colour table, LZW data
            frame_width, frame_height, frame_flags = struct.unpack_from("<HHB", body, position + 5)
            largest_frame_pixels = max(largest_frame_pixels, frame_width * frame_height)
            position += 10
            if frame_flags & 0x80:
                position += 3 << ((frame_flags & 0x07) + 1)
            position = _skip_gif_sub_blocks(body, position + 1)
        else:
            raise _corrupt(f"GIF has unknown block type 0x{block:02X} at byte {position}")


def _skip_gif_sub_blocks(body: bytes, position: int) -> int:
    """Return the position after the zero-length sub-block that ends a GIF data block."""
    size = len(body)
    while position < size:
        length = body[position]
        position += 1 + length
        if length == 0:
            return position
    raise _corrupt(f"GIF of {size} bytes ends inside a data block, before its trailer")


def _parse_webp(body: bytes) -> _Header:
    """Read the canvas size from the first RIFF chunk (VP8, VP8L or VP8X) and any EXIF."""
    size = len(body)
    (riff_size,) = struct.unpack_from("<I", body, 4)
    riff_end = 8 + riff_size
    if riff_end > size:
        raise _corrupt(f"WebP RIFF header declares {riff_end} bytes, but the body has {size}")
    chunks = _webp_chunks(body, riff_end)
    if not chunks:
        raise _corrupt("WebP RIFF container has no chunks")

    first_type, first_start, first_end = chunks[0]
    minimum_lengths = {b"VP8 ": 10, b"VP8L": 5, b"VP8X": 10}
    if first_type not in minimum_lengths:
        raise _corrupt(f"WebP starts with chunk {first_type!r} instead of VP8, VP8L or VP8X")
    if first_end - first_start < minimum_lengths[first_type]:
        raise _corrupt(f"WebP {first_type!r} chunk is too short for an image header")

    if first_type == b"VP8 ":
        if body[first_start + 3 : first_start + 6] != b"\x9d\x01\x2a":
            raise _corrupt("WebP VP8 chunk has no key frame start code (9D 01 2A)")
        width, height = struct.unpack_from("<HH", body, first_start + 6)
        return _Header(width=width & 0x3FFF, height=height & 0x3FFF)
    if first_type == b"VP8L":
        if body[first_start] != 0x2F:
            raise _corrupt("WebP VP8L chunk has no signature byte (0x2F)")
        (bits,) = struct.unpack_from("<I", body, first_start + 1)
        return _Header(width=(bits & 0x3FFF) + 1, height=((bits >> 14) & 0x3FFF) + 1)

    # VP8X: 24-bit canvas width and height minus one, then optional chunks such as EXIF.
    width = 1 + int.from_bytes(body[first_start + 4 : first_start + 7], "little")
    height = 1 + int.from_bytes(body[first_start + 7 : first_start + 10], "little")
    orientation = 1
    for chunk_type, start, end in chunks:
        if chunk_type == b"EXIF":
            # The EXIF data is a TIFF structure, and some writers put "Exif\0\0" before it.
            if body.startswith(b"Exif\x00\x00", start):
                start += 6
            orientation = _read_exif_orientation(body, start, end)
    return _Header(width=width, height=height, orientation=orientation)


def _webp_chunks(body: bytes, riff_end: int) -> list[tuple[bytes, int, int]]:
    """List (fourcc, data start, data end) for each chunk inside the RIFF container."""
    chunks = []
    position = 12
    while position + 8 <= riff_end:
        chunk_type, length = struct.unpack_from("<4sI", body, position)
        start = position + 8
        if start + length > riff_end:
            raise _corrupt(
                f"WebP chunk {chunk_type!r} at byte {position} declares {length} bytes, beyond "
                f"the RIFF size of {riff_end} bytes"
            )
        chunks.append((chunk_type, start, start + length))
        position = start + length + (length & 1)  # chunks are padded to an even length
    return chunks


def _parse_bmp(body: bytes) -> _Header:
    """Read the BMP size and, for uncompressed pixels, check that every row is present."""
    pixel_offset, dib_header_size = struct.unpack_from("<II", body, 10)
    if dib_header_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes, never compressed
        width, height, _, bits_per_pixel = struct.unpack_from("<HHHH", body, 18)
        compression = 0
    else:
        width, height, _, bits_per_pixel = struct.unpack_from("<iiHH", body, 18)
        compression = struct.unpack_from("<I", body, 30)[0] if dib_header_size >= 40 else 0
    height = abs(height)  # a negative height means rows are stored top-down
    if width <= 0 or bits_per_pixel not in (1, 4, 8, 16, 24, 32):
        raise _corrupt(f"BMP header is invalid: width {width}, {bits_per_pixel} bits per pixel")
    if compression in (0, 3, 6):  # BI_RGB, BI_BITFIELDS, BI_ALPHABITFIELDS: no RLE
        row_bytes = (width * bits_per_pixel + 31) // 32 * 4
        expected = pixel_offset + row_bytes * height
        if expected > len(body):
            raise _corrupt(
                f"BMP of {width}x{height} pixels needs {expected} bytes, but the body has "
                f"{len(body)}; the file is truncated"
            )
    return _Header(width=width, height=height)


def _parse_tiff(body: bytes) -> _Header:
    """Read width, height and orientation from the first IFD of a TIFF or BigTIFF file."""
    tags = _read_tiff_tags(body, 0, len(body))
    if _TIFF_WIDTH_TAG not in tags or _TIFF_HEIGHT_TAG not in tags:
        raise _corrupt("TIFF first IFD has no ImageWidth or ImageLength tag")
    orientation = tags.get(_TIFF_ORIENTATION_TAG, 1)
    return _Header(
        width=tags[_TIFF_WIDTH_TAG],
        height=tags[_TIFF_HEIGHT_TAG],
        orientation=orientation if 1 <= orientation <= 8 else 1,
    )


def _read_tiff_tags(body: bytes, start: int, end: int) -> dict[int, int]:
    """Return the single-valued integer tags of the first IFD of the TIFF in body[start:end].

    Offsets inside a TIFF structure are relative to ``start``, which is where the
    ``II``/``MM`` byte-order mark sits. Raises ImageRejected("corrupt") when the IFD
    lies outside ``end``; a read beyond the body raises ``struct.error``.
    """
    byte_order = {b"II": "<", b"MM": ">"}.get(body[start : start + 2])
    if byte_order is None:
        raise _corrupt("TIFF structure has no byte-order mark (II or MM)")
    (version,) = struct.unpack_from(byte_order + "H", body, start + 2)
    if version == 42:
        (ifd_offset,) = struct.unpack_from(byte_order + "I", body, start + 4)
        count_format, entry_format, entry_size = "H", "HHI4s", 12
    elif version == 43:  # BigTIFF: 64-bit offsets and counts
        (ifd_offset,) = struct.unpack_from(byte_order + "Q", body, start + 8)
        count_format, entry_format, entry_size = "Q", "HHQ8s", 20
    else:
        raise _corrupt(f"TIFF structure has version {version} instead of 42 or 43 (BigTIFF)")

    ifd = start + ifd_offset
    (entry_count,) = struct.unpack_from(byte_order + count_format, body, ifd)
    first_entry = ifd + struct.calcsize(count_format)
    if first_entry + entry_count * entry_size > end:
        raise _corrupt(f"TIFF IFD at byte {ifd} with {entry_count} entries overruns the data")
    value_formats = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8
    tags = {}
    for index in range(entry_count):
        entry = first_entry + index * entry_size
        tag, value_type, count, value = struct.unpack_from(byte_order + entry_format, body, entry)
        if count == 1 and value_type in value_formats:
            (tags[tag],) = struct.unpack_from(byte_order + value_formats[value_type], value)
    return tags


def _read_exif_orientation(body: bytes, start: int, end: int) -> int:
    """Return the Orientation tag (1..8) of the EXIF data in body[start:end], or 1.

    Broken EXIF data does not make an image corrupt: decoders then ignore the tag, and
    so does this function.
    """
    try:
        orientation = _read_tiff_tags(body, start, end).get(_TIFF_ORIENTATION_TAG, 1)
    except (ImageRejected, struct.error) as error:
        logger.debug("ignoring unreadable EXIF data at bytes %d-%d: %s", start, end, error)
        return 1
    return orientation if 1 <= orientation <= 8 else 1


_HEADER_PARSERS: dict[str, Callable[[bytes], _Header]] = {
    "jpeg": _parse_jpeg,
    "png": _parse_png,
    "gif": _parse_gif,
    "webp": _parse_webp,
    "bmp": _parse_bmp,
    "tiff": _parse_tiff,
}


def _read_header(body: bytes, fmt: str) -> _Header:
    """Parse the header of a ``fmt`` file, raising ImageRejected("corrupt") if it is unreadable."""
    if fmt not in _HEADER_PARSERS:
        raise ValueError(f"fmt must be one of {FORMATS}. Received: {fmt!r}")
    try:
        header = _HEADER_PARSERS[fmt](body)
    except (struct.error, IndexError) as error:
        raise _corrupt(f"{fmt} header of a {len(body)}-byte body is truncated: {error}") from None
    if header.width <= 0 or header.height <= 0:
        raise _corrupt(f"{fmt} header declares an empty image of {header.width}x{header.height}")
    return header


def read_dimensions(body: bytes, fmt: str) -> tuple[int, int]:
    """Return ``(width, height)`` in pixels from the header of a ``fmt`` image.

    Nothing is decoded. The size is as stored, before any EXIF orientation, and for a
    GIF it is the logical screen size. The header is walked far enough to prove it is
    readable, and for most formats that walk also covers the structural checks of
    :func:`process_image`. Raises ``ValueError`` for an unknown ``fmt`` and
    ``ImageRejected`` with status ``corrupt`` when the header is unreadable.
    """
    header = _read_header(body, fmt)
    return header.width, header.height


# ---- checks on the declared size ----


def _check_size(header: _Header, config: ImageCheckConfig) -> None:
    """Raise ImageRejected for a header size that is too large or too small."""
    width, height = header.width, header.height
    pixels = max(width * height, header.largest_frame_pixels)
    if pixels > config.max_pixels:
        raise ImageRejected(
            "too_large",
            f"image header declares {width}x{height} pixels ({pixels} pixels to decode), "
            f"above max_pixels={config.max_pixels}",
        )

    reasons = []
    if min(width, height) < config.min_side:
        reasons.append(f"the smaller side {min(width, height)} is below min_side={config.min_side}")
    aspect_ratio = max(width, height) / min(width, height)
    if aspect_ratio > config.max_aspect_ratio:
        reasons.append(
            f"the aspect ratio {aspect_ratio:.1f} exceeds max_aspect_ratio="
            f"{config.max_aspect_ratio}"
        )
    if reasons:
        raise ImageRejected(
            "too_small",
            f"image is {width}x{height} pixels, too small because {' and '.join(reasons)}",
        )


# ---- decoding to 8-bit BGR ----


def _jpeg_reduction(header: _Header, config: ImageCheckConfig) -> int:
    """Return the largest JPEG scale-down factor (1, 2, 4 or 8) that still covers the target.

    The decoded side that the resize step scales to ``image_size`` (the longer side for
    keep-ratio and pad, the shorter for centre-crop) must stay at least ``image_size``
    after the libjpeg scale-down, which rounds sizes up.
    """
    if config.image_size is None or config.resize_mode == "none":
        return 1
    if config.resize_mode == "centre-crop":
        side = min(header.width, header.height)
    else:
        side = max(header.width, header.height)
    for factor in _JPEG_REDUCED_FLAGS:
        if math.ceil(side / factor) >= config.image_size:
            return factor
    return 1


def _imdecode_flags(fmt: str, factor: int) -> int:
    if fmt == "jpeg":
        return _JPEG_REDUCED_FLAGS.get(factor, cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION
    if fmt == "bmp":
        # NOTE: 32-bit BMPs usually leave the fourth byte at 0 rather than storing alpha,
        # so BMP alpha is dropped instead of composited (which would give a white image).
        return cv2.IMREAD_COLOR
    # UNCHANGED keeps alpha and 16-bit samples for this module to convert. It also
    # skips the EXIF orientation, which _orient applies afterwards.
    return cv2.IMREAD_UNCHANGED


def _decode(body: bytes, fmt: str, header: _Header, factor: int) -> np.ndarray:
    """Decode ``body`` once, at 1/``factor`` scale, to an upright uint8 BGR (h, w, 3) array."""
    try:
        image = cv2.imdecode(np.frombuffer(body, dtype=np.uint8), _imdecode_flags(fmt, factor))
    except cv2.error as error:
        raise _corrupt(f"OpenCV failed to decode the {fmt} image: {error}") from None
    if image is None or image.size == 0:
        raise _corrupt(f"OpenCV failed to decode the {fmt} image ({len(body)} bytes)")

    expected = (math.ceil(header.height / factor), math.ceil(header.width / factor))
    if fmt == "tiff" and header.orientation >= 5:  # the TIFF decoder has transposed it
        expected = expected[::-1]
    if image.shape[:2] != expected:
        raise _corrupt(
            f"{fmt} header declares {header.width}x{header.height} pixels, but OpenCV "
            f"decoded {image.shape[1]}x{image.shape[0]} at scale 1/{factor}"
        )

    image = _to_bgr8(image, fmt)
    if fmt != "tiff":  # OpenCV 5.1's TIFF decoder applies the orientation tag itself
        image = _orient(image, header.orientation)
    return image


def _to_bgr8(image: np.ndarray, fmt: str) -> np.ndarray:
    """Convert a decoded gray, BGR or BGRA array of 8 or 16 bits to uint8 BGR."""
    if image.dtype == np.uint16:
        image = cv2.convertScaleAbs(image, alpha=255.0 / 65535.0)
    elif image.dtype in (np.float32, np.float64):
        # NOTE: assumes OpenCV's 0.0..1.0 float convention. No float TIFF has been tried.
        image = cv2.convertScaleAbs(np.clip(image, 0.0, 1.0), alpha=255.0)
    elif image.dtype != np.uint8:
        raise _corrupt(f"{fmt} image has unsupported sample type {image.dtype}")

    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if channels == 3:
        return image
    if channels == 4:
        return _composite_on_white(image)
    raise _corrupt(f"{fmt} image decoded to an unsupported {channels} channels")


def _composite_on_white(bgra: np.ndarray) -> np.ndarray:
    """Blend a uint8 BGRA array onto white: out = bgr * a + 255 * (1 - a), a = alpha / 255."""
    alpha = bgra[:, :, 3]
    if alpha.min() == 255:
        return cv2.cvtColor(bgra, cv2.COLOR_BGRA2BGR)
    # 255 - out = (255 - bgr) * a, so blend the inverted colour and invert it back.
    inverted = cv2.bitwise_not(cv2.cvtColor(bgra, cv2.COLOR_BGRA2BGR))
    alpha3 = cv2.cvtColor(alpha, cv2.COLOR_GRAY2BGR)
    return cv2.bitwise_not(cv2.multiply(inverted, alpha3, scale=1.0 / 255.0))


def _orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to a decoded array, as viewers display it."""
    if orientation == 2:
        return cv2.flip(image, 1)
    if orientation == 3:
        return cv2.rotate(image, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(image, 0)
    if orientation == 5:
        return cv2.transpose(image)
    if orientation == 6:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.flip(cv2.transpose(image), -1)
    if orientation == 8:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return image


# ---- resizing and encoding ----


def _resize(image: np.ndarray, config: ImageCheckConfig) -> np.ndarray:
    """Resize an upright BGR array in ``config.resize_mode`` to ``config.image_size``."""
    size = config.image_size
    if size is None or config.resize_mode == "none":
        return image
    if config.resize_mode == "keep-ratio":
        return _fit_within(image, size)
    if config.resize_mode == "pad":
        return _pad_to_square(_fit_within(image, size), size)
    return _centre_crop(image, size)


def _fit_within(image: np.ndarray, size: int) -> np.ndarray:
    """Downscale so the longer side is ``size``, and return an image that already fits as is."""
    height, width = image.shape[:2]
    longest = max(width, height)
    if longest <= size:
        return image
    scale = size / longest
    if width >= height:
        new_size = (size, max(1, round(height * scale)))
    else:
        new_size = (max(1, round(width * scale)), size)
    return cv2.resize(image, new_size, interpolation=cv2.INTER_AREA)


def _pad_to_square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre an image of at most ``size`` x ``size`` on a white square of that size."""
    height, width = image.shape[:2]
    top = (size - height) // 2
    left = (size - width) // 2
    if top == 0 and left == 0 and height == width:
        return image
    return cv2.copyMakeBorder(
        image,
        top,
        size - height - top,
        left,
        size - width - left,
        cv2.BORDER_CONSTANT,
        value=WHITE_BGR,
    )


def _centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Cut the centre square and scale it to ``size`` x ``size``, up or down.

    Cropping first and scaling the square is the same as scaling the shorter side to
    ``size`` and then cropping, but it resizes fewer pixels.
    """
    height, width = image.shape[:2]
    side = min(width, height)
    top = (height - side) // 2
    left = (width - side) // 2
    square = image[top : top + side, left : left + side]
    if side == size:
        return square
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(square, (size, size), interpolation=interpolation)


def _encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    # NOTE: cv2.imdecode does not apply an embedded ICC profile and this encode writes none,
    # so a re-encoded wide-gamut image (Adobe RGB, Display P3) is later read as sRGB.
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode a {image.shape} image as JPEG")
    return encoded.tobytes()


def _can_keep_original(fmt: str, header: _Header, config: ImageCheckConfig) -> bool:
    """Return True when the input JPEG can be stored as is.

    That needs a baseline, extended or progressive JPEG with three 8-bit components, so
    every reader gets 3-channel colour, an upright orientation and a size that the
    resize mode leaves unchanged. Grayscale and CMYK JPEGs are re-encoded.
    """
    if fmt != "jpeg" or header.orientation != 1:
        return False
    if header.jpeg_sof not in _PORTABLE_JPEG_SOF:
        return False
    if header.jpeg_precision != 8 or header.jpeg_components != 3:
        return False
    size = config.image_size
    if size is None or config.resize_mode == "none":
        return True
    if config.resize_mode == "keep-ratio":
        return max(header.width, header.height) <= size
    return header.width == size and header.height == size


# ---- the entry point ----


def process_image(body: bytes, config: ImageCheckConfig) -> ProcessedImage:
    """Check one downloaded body and return the JPEG bytes to store.

    ``body`` is the raw response body. The returned ``data`` is either ``body`` itself
    (``kept_original=True``, see :func:`_can_keep_original`) or a new JPEG at
    ``config.jpeg_quality``, resized in ``config.resize_mode``. Raises
    ImageRejected with status ``not_an_image``, ``corrupt``, ``too_large`` or
    ``too_small``, checked in that order, and raises nothing else for bad input.
    """
    fmt = sniff_format(body)
    if fmt is None:
        raise ImageRejected(
            "not_an_image",
            f"body of {len(body)} bytes is not a JPEG, PNG, GIF, WebP, BMP or TIFF image; "
            f"it starts with {bytes(body[:16])!r}",
        )
    header = _read_header(body, fmt)
    _check_size(header, config)

    factor = _jpeg_reduction(header, config) if fmt == "jpeg" else 1
    image = _decode(body, fmt, header, factor)

    if header.orientation >= 5:
        original_width, original_height = header.height, header.width
    else:
        original_width, original_height = header.width, header.height
    if _can_keep_original(fmt, header, config):
        return ProcessedImage(
            data=body,
            format=fmt,
            original_width=original_width,
            original_height=original_height,
            width=original_width,
            height=original_height,
            kept_original=True,
        )

    image = _resize(image, config)
    return ProcessedImage(
        data=_encode_jpeg(image, config.jpeg_quality),
        format=fmt,
        original_width=original_width,
        original_height=original_height,
        width=image.shape[1],
        height=image.shape[0],
        kept_original=False,
    )
