"""Tests for data.scripts.images on images built in the test and on the real samples.

Every image is made here with cv2.imencode, numpy or hand-built bytes (palette and
gray-alpha PNG, GIF, TIFF, EXIF segments), and decoded by the real OpenCV. Only the
CMYK JPEG needs Pillow, because OpenCV cannot write CMYK; that test is skipped without
it. Tests on files under ../shared/samples skip when that folder is absent.
"""

from __future__ import annotations

import csv
import io
import pickle
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.scripts import images
from data.scripts.images import (
    RESIZE_MODES,
    ImageCheckConfig,
    ImageRejected,
    process_image,
    read_dimensions,
    sniff_format,
)
from tests.helpers import SAMPLES, requires_samples

PRODUCT_IMAGES = SAMPLES / "product-images"
ODD_IMAGES = SAMPLES / "odd-images"

RED = (0, 0, 255)  # BGR, as OpenCV stores pixels
GREEN = (0, 255, 0)
BLUE = (255, 0, 0)
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
# JPEG re-encoding moves a flat colour by a few levels, but a channel-order error by ~255.
COLOUR_TOLERANCE = 40


# ---- building test images ----


def solid(width: int, height: int, bgr: tuple[int, int, int] = RED) -> np.ndarray:
    return np.full((height, width, 3), bgr, dtype=np.uint8)


def encode(image: np.ndarray, ext: str = ".jpg", params: list[int] | None = None) -> bytes:
    ok, encoded = cv2.imencode(ext, image, params or [])
    assert ok, f"cv2.imencode({ext!r}) failed for shape {image.shape}"
    return encoded.tobytes()


def jpeg(width: int, height: int, bgr: tuple[int, int, int] = RED, **kwargs: int) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, 95]
    if kwargs.get("progressive"):
        params += [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
    return encode(solid(width, height, bgr), ".jpg", params)


def marker_image(width: int = 120, height: int = 80) -> np.ndarray:
    """White image with a red block in the top-left corner and a blue one top-right."""
    image = solid(width, height, WHITE)
    image[:20, :20] = RED
    image[:20, -20:] = BLUE
    return image


def png_chunk(chunk_type: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(chunk_type + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + chunk_type + data + struct.pack(">I", crc)


def build_png(
    width: int,
    height: int,
    colour_type: int,
    rows: list[bytes],
    extra_chunks: list[bytes] | None = None,
    bit_depth: int = 8,
) -> bytes:
    """Hand-build a PNG from unfiltered scanlines, adding filter byte 0 to each row."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\x00" + row for row in rows))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + b"".join(extra_chunks or [])
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def exif_tiff(orientation: int, byte_order: str = "MM") -> bytes:
    """A minimal EXIF block (a TIFF structure) holding only the Orientation tag."""
    endian = ">" if byte_order == "MM" else "<"
    return (
        byte_order.encode("ascii")
        + struct.pack(endian + "HI", 42, 8)
        + struct.pack(endian + "H", 1)
        + struct.pack(endian + "HHIH2x", 0x0112, 3, 1, orientation)
        + struct.pack(endian + "I", 0)
    )


def with_exif(jpeg_bytes: bytes, orientation: int, byte_order: str = "MM") -> bytes:
    """Insert an APP1 Exif segment after the JFIF APP0 segment of a JPEG."""
    payload = b"Exif\x00\x00" + exif_tiff(orientation, byte_order)
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    assert jpeg_bytes[2:4] == b"\xff\xe0", "expected cv2's JFIF APP0 segment after SOI"
    insert_at = 4 + struct.unpack(">H", jpeg_bytes[4:6])[0]
    return jpeg_bytes[:insert_at] + segment + jpeg_bytes[insert_at:]


def png_with_exif(image: np.ndarray, orientation: int) -> bytes:
    """Encode a PNG with cv2 and insert an eXIf chunk right after IHDR (byte 33)."""
    body = encode(image, ".png")
    return body[:33] + png_chunk(b"eXIf", exif_tiff(orientation)) + body[33:]


def lzw_literals(indices: list[int], min_code_size: int = 2) -> bytes:
    """LZW-encode palette indices for GIF without compression.

    A clear code before every two literals keeps the decoder's dictionary from
    growing past the first code width, so each code is a plain literal.
    """
    clear = 1 << min_code_size
    end = clear + 1
    width = min_code_size + 1
    codes = []
    for start in range(0, len(indices), 2):
        codes.append(clear)
        codes.extend(indices[start : start + 2])
    codes.append(end)
    bits = 0
    bit_count = 0
    output = bytearray()
    for code in codes:
        bits |= code << bit_count
        bit_count += width
        while bit_count >= 8:
            output.append(bits & 0xFF)
            bits >>= 8
            bit_count -= 8
    if bit_count:
        output.append(bits & 0xFF)
    return bytes(output)


def build_gif(
    width: int,
    height: int,
    palette_rgb: list[tuple[int, int, int]],
    frames: list[int],
    transparent_index: int | None = None,
    frame_size: tuple[int, int] | None = None,
) -> bytes:
    """Hand-build a GIF89a with one solid-colour frame per entry of ``frames``."""
    assert len(palette_rgb) == 4, "the 2-bit colour table holds exactly 4 colours"
    frame_width, frame_height = frame_size or (width, height)
    parts = [b"GIF89a", struct.pack("<HHBBB", width, height, 0x81, 0, 0)]
    parts += [bytes(colour) for colour in palette_rgb]
    for index in frames:
        flags = 0x04 if transparent_index is None else 0x05  # keep the frame; transparency
        parts.append(b"\x21\xf9\x04" + struct.pack("<BHBB", flags, 10, transparent_index or 0, 0))
        parts.append(b"\x2c" + struct.pack("<HHHHB", 0, 0, frame_width, frame_height, 0))
        data = lzw_literals([index] * (frame_width * frame_height))
        parts.append(b"\x02")  # LZW minimum code size
        for start in range(0, len(data), 255):
            block = data[start : start + 255]
            parts.append(bytes([len(block)]) + block)
        parts.append(b"\x00")
    parts.append(b"\x3b")
    return b"".join(parts)


def build_tiff(image_bgr: np.ndarray, orientation: int | None = None) -> bytes:
    """Hand-build an uncompressed little-endian RGB TIFF with an optional Orientation tag."""
    height, width = image_bgr.shape[:2]
    pixels = np.ascontiguousarray(image_bgr[:, :, ::-1]).tobytes()
    tags = [
        (256, 3, 1, width),  # ImageWidth, SHORT
        (257, 3, 1, height),  # ImageLength
        (258, 3, 3, None),  # BitsPerSample 8,8,8 stored out of line
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 2),  # PhotometricInterpretation: RGB
        (273, 4, 1, None),  # StripOffsets, LONG
        (277, 3, 1, 3),  # SamplesPerPixel
        (278, 3, 1, height),  # RowsPerStrip
        (279, 4, 1, len(pixels)),  # StripByteCounts
    ]
    if orientation is not None:
        tags.append((274, 3, 1, orientation))
    tags.sort()

    ifd_size = 2 + 12 * len(tags) + 4
    bits_offset = 8 + ifd_size
    pixels_offset = bits_offset + 6
    entries = []
    for tag, value_type, count, value in tags:
        if tag == 258:
            value = bits_offset
        elif tag == 273:
            value = pixels_offset
        packed = struct.pack("<HHI", tag, value_type, count)
        if value_type == 3 and count == 1:
            packed += struct.pack("<H2x", value)
        else:
            packed += struct.pack("<I", value)
        entries.append(packed)

    ifd = struct.pack("<H", len(tags)) + b"".join(entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<3H", 8, 8, 8) + pixels


def decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "the stored bytes are not decodable"
    return image


def assert_colour(pixel: np.ndarray, expected: tuple[int, int, int]) -> None:
    difference = np.abs(pixel.astype(int) - np.array(expected)).max()
    assert difference <= COLOUR_TOLERANCE, f"pixel {pixel.tolist()} is not BGR {expected}"


def rejection(body: bytes, config: ImageCheckConfig | None = None) -> ImageRejected:
    with pytest.raises(ImageRejected) as caught:
        process_image(body, config or ImageCheckConfig())
    return caught.value


# ---- decoding each format ----


def test_jpeg_baseline_stays_red() -> None:
    result = process_image(jpeg(64, 48), ImageCheckConfig(image_size=32, min_side=16))

    assert result.format == "jpeg"
    assert (result.width, result.height) == (32, 24)
    assert_colour(decode(result.data)[12, 16], RED)


def test_jpeg_progressive_decodes() -> None:
    body = jpeg(64, 48, GREEN, progressive=True)
    assert b"\xff\xc2" in body, "cv2 did not write a progressive (SOF2) JPEG"

    result = process_image(body, ImageCheckConfig())

    assert result.kept_original
    assert (result.original_width, result.original_height) == (64, 48)
    assert_colour(decode(result.data)[10, 10], GREEN)


@pytest.mark.parametrize(
    ("ext", "params", "fmt"),
    [
        (".png", [], "png"),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 95], "webp"),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101], "webp"),  # 101 selects lossless VP8L
        (".bmp", [], "bmp"),
        (".tiff", [], "tiff"),
    ],
)
def test_colour_formats_stay_red(ext: str, params: list[int], fmt: str) -> None:
    body = encode(solid(48, 40), ext, params)

    result = process_image(body, ImageCheckConfig())

    assert result.format == fmt
    assert not result.kept_original
    assert result.data.startswith(b"\xff\xd8\xff")
    assert (result.width, result.height) == (48, 40)
    assert_colour(decode(result.data)[20, 24], RED)


def test_grayscale_png_becomes_three_channels() -> None:
    body = encode(np.full((40, 40), 100, np.uint8), ".png")

    result = process_image(body, ImageCheckConfig())

    stored = cv2.imdecode(np.frombuffer(result.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert stored.shape == (40, 40, 3)
    assert_colour(stored[20, 20], (100, 100, 100))


def test_palette_png_decodes_colours() -> None:
    palette = bytes([255, 0, 0, 0, 0, 255])  # RGB entries: 0 red, 1 blue
    rows = [bytes([0] * 20 + [1] * 20) for _ in range(40)]
    body = build_png(40, 40, 3, rows, [png_chunk(b"PLTE", palette)])

    stored = decode(process_image(body, ImageCheckConfig()).data)

    assert_colour(stored[20, 5], RED)
    assert_colour(stored[20, 35], BLUE)


def test_palette_png_transparency_becomes_white() -> None:
    palette = bytes([255, 0, 0, 0, 255, 0])  # 0 red, 1 green
    rows = [bytes([0] * 20 + [1] * 20) for _ in range(40)]
    chunks = [png_chunk(b"PLTE", palette), png_chunk(b"tRNS", bytes([255, 0]))]
    body = build_png(40, 40, 3, rows, chunks)

    stored = decode(process_image(body, ImageCheckConfig()).data)

    assert_colour(stored[20, 5], RED)
    assert_colour(stored[20, 35], WHITE)


def test_rgba_png_composited_on_white() -> None:
    bgra = np.zeros((40, 40, 4), np.uint8)
    bgra[:, :20] = (0, 0, 255, 255)  # opaque red
    bgra[:, 20:] = (0, 0, 0, 0)  # transparent black
    bgra[:10, 20:] = (255, 0, 0, 128)  # half-transparent blue

    stored = decode(process_image(encode(bgra, ".png"), ImageCheckConfig()).data)

    assert_colour(stored[30, 5], RED)
    assert_colour(stored[30, 35], WHITE)
    assert_colour(stored[5, 35], (255, 127, 127))


def test_gray_alpha_png_composited_on_white() -> None:
    rows = [bytes([50, 255] * 20 + [50, 0] * 20) for _ in range(40)]  # gray 50, alpha
    body = build_png(40, 40, 4, rows)

    stored = decode(process_image(body, ImageCheckConfig()).data)

    assert_colour(stored[20, 5], (50, 50, 50))
    assert_colour(stored[20, 35], WHITE)


def test_rgba_webp_composited_on_white() -> None:
    bgra = np.zeros((40, 40, 4), np.uint8)
    bgra[:, :20] = (0, 0, 255, 255)
    body = encode(bgra, ".webp", [cv2.IMWRITE_WEBP_QUALITY, 101])

    stored = decode(process_image(body, ImageCheckConfig()).data)

    assert_colour(stored[20, 5], RED)
    assert_colour(stored[20, 35], WHITE)


def test_sixteen_bit_png_scaled_to_eight_bits() -> None:
    image = np.zeros((40, 40, 3), np.uint16)
    image[:, :20] = (0, 0, 65535)
    image[:, 20:] = (0x8000, 0x4000, 0x8000)  # low bytes 0, so a truncating cast gives black
    body = encode(image, ".png")

    stored = decode(process_image(body, ImageCheckConfig()).data)

    assert_colour(stored[20, 5], RED)
    assert_colour(stored[20, 35], (128, 64, 128))


def test_sixteen_bit_alpha_on_white() -> None:
    image = np.zeros((40, 40, 4), np.uint16)
    image[:, :20] = (0, 0, 65535, 65535)
    body = encode(image, ".png")

    stored = decode(process_image(body, ImageCheckConfig()).data)

    assert_colour(stored[20, 5], RED)
    assert_colour(stored[20, 35], WHITE)


def test_animated_gif_keeps_first_frame() -> None:
    palette = [(255, 0, 0), (0, 0, 255), (0, 0, 0), (0, 0, 0)]  # RGB: red, blue
    body = build_gif(40, 40, palette, frames=[0, 1])

    result = process_image(body, ImageCheckConfig())

    assert result.format == "gif"
    assert (result.width, result.height) == (40, 40)
    assert_colour(decode(result.data)[20, 20], RED)


def test_animated_gif_first_frame_is_blue() -> None:
    palette = [(255, 0, 0), (0, 0, 255), (0, 0, 0), (0, 0, 0)]
    body = build_gif(40, 40, palette, frames=[1, 0])

    assert_colour(decode(process_image(body, ImageCheckConfig()).data)[20, 20], BLUE)


def test_gif_transparency_becomes_white() -> None:
    palette = [(255, 0, 0), (0, 0, 255), (0, 0, 0), (0, 0, 0)]
    body = build_gif(40, 40, palette, frames=[1], transparent_index=1)

    assert_colour(decode(process_image(body, ImageCheckConfig()).data)[20, 20], WHITE)


def test_cmyk_jpeg_converted_to_rgb() -> None:
    pil_image = pytest.importorskip("PIL.Image", reason="Pillow writes the CMYK JPEG")
    buffer = io.BytesIO()
    pil_image.new("RGB", (48, 40), (255, 0, 0)).convert("CMYK").save(buffer, "JPEG", quality=95)
    body = buffer.getvalue()
    assert body[body.index(b"\xff\xc0") + 9] == 4, "expected a 4-component (CMYK) frame"

    result = process_image(body, ImageCheckConfig())

    assert not result.kept_original
    assert_colour(decode(result.data)[20, 24], RED)


def test_grayscale_jpeg_reencoded_as_colour() -> None:
    body = encode(np.full((40, 40), 90, np.uint8), ".jpg")

    result = process_image(body, ImageCheckConfig())

    stored = cv2.imdecode(np.frombuffer(result.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert not result.kept_original
    assert stored.shape == (40, 40, 3)


# ---- EXIF and TIFF orientation ----


def test_exif_orientation_6_rotates_clockwise() -> None:
    body = with_exif(encode(marker_image(), ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]), 6)

    result = process_image(body, ImageCheckConfig())
    stored = decode(result.data)

    assert not result.kept_original
    assert (result.width, result.height) == (80, 120)
    assert (result.original_width, result.original_height) == (80, 120)
    # Rotated 90 degrees clockwise: top-left goes to top-right, top-right to bottom-right.
    assert_colour(stored[10, 70], RED)
    assert_colour(stored[110, 70], BLUE)
    assert_colour(stored[10, 10], WHITE)


def test_exif_orientation_3_rotates_half_turn() -> None:
    body = with_exif(encode(marker_image(), ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]), 3, "II")

    result = process_image(body, ImageCheckConfig())
    stored = decode(result.data)

    assert (result.width, result.height) == (120, 80)
    assert_colour(stored[70, 110], RED)
    assert_colour(stored[70, 10], BLUE)
    assert_colour(stored[10, 10], WHITE)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_opencv(orientation: int) -> None:
    body = with_exif(encode(marker_image(), ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]), orientation)
    opencv_upright = decode(body)  # IMREAD_COLOR applies EXIF orientation itself

    stored = decode(process_image(body, ImageCheckConfig(image_size=1000)).data)

    assert stored.shape == opencv_upright.shape
    assert np.abs(stored.astype(int) - opencv_upright).mean() < 3


def test_png_exif_orientation_applied() -> None:
    body = png_with_exif(marker_image(), 6)
    undecoded = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
    assert undecoded.shape[:2] == (80, 120), "IMREAD_UNCHANGED now applies EXIF orientation"

    stored = decode(process_image(body, ImageCheckConfig()).data)

    assert stored.shape == (120, 80, 3)
    assert_colour(stored[10, 70], RED)
    assert_colour(stored[110, 70], BLUE)


def test_tiff_orientation_applied_once() -> None:
    body = build_tiff(marker_image(), orientation=6)

    result = process_image(body, ImageCheckConfig())
    stored = decode(result.data)

    assert (result.width, result.height) == (80, 120)
    assert_colour(stored[10, 70], RED)
    assert_colour(stored[110, 70], BLUE)


def test_tiff_without_orientation_decodes() -> None:
    result = process_image(build_tiff(marker_image()), ImageCheckConfig())
    stored = decode(result.data)

    assert (result.width, result.height) == (120, 80)
    assert_colour(stored[10, 10], RED)
    assert_colour(stored[10, 110], BLUE)


# ---- not_an_image ----


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<!DOCTYPE html><html><body>Robot check</body></html>",
        b'{"error": "not found"}',
        b"<html><title>404</title></html>" + b"\xff\xd8\xff\xe0" + b"\x00" * 64,
        b"BM this is text, not a bitmap",
        b"RIFF\x24\x00\x00\x00WAVEfmt ",
        b"\xff\xd8",  # only part of the JPEG magic
        np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    ],
    ids=["empty", "html", "json", "html-then-jpeg", "bm-text", "wave", "short-magic", "random"],
)
def test_non_image_bodies_rejected(body: bytes) -> None:
    error = rejection(body)

    assert error.status == "not_an_image"
    assert f"{len(body)} bytes" in str(error)


def test_html_served_as_jpeg_rejected() -> None:
    # process_image takes no Content-Type, so only the bytes decide the format.
    error = rejection(b"<html><head><title>Image</title></head></html>\n")

    assert error.status == "not_an_image"


# ---- corrupt ----


def corrupt_cases() -> list[tuple[str, bytes]]:
    jpeg_body = encode(marker_image(), ".jpg")
    png_body = encode(marker_image(), ".png")
    idat = png_body.index(b"IDAT")
    (idat_length,) = struct.unpack(">I", png_body[idat - 4 : idat])
    bad_crc = bytearray(png_body)
    bad_crc[idat + 4 + idat_length] ^= 0xFF
    gif_body = build_gif(40, 40, [(255, 0, 0)] * 4, frames=[0, 0])
    webp_body = encode(marker_image(), ".webp")
    bmp_body = encode(marker_image(), ".bmp")
    tiff_body = build_tiff(marker_image())
    random_tail = np.random.default_rng(3).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    return [
        ("jpeg-cut-in-middle", jpeg_body[: len(jpeg_body) // 2]),
        ("jpeg-without-eoi", jpeg_body[:-2]),
        ("jpeg-with-data-appended", jpeg_body + b"<html>tracking pixel</html>"),
        ("jpeg-cut-in-header", jpeg_body[:40]),
        ("jpeg-magic-then-garbage", b"\xff\xd8\xff" + random_tail),
        ("png-cut-before-iend", png_body[:-12]),
        ("png-cut-in-half", png_body[: len(png_body) // 2]),
        ("png-bad-idat-crc", bytes(bad_crc)),
        ("png-signature-only", png_body[:8]),
        ("gif-without-trailer", gif_body[:-1]),
        ("gif-cut-in-frame", gif_body[: len(gif_body) // 2]),
        ("webp-riff-size-beyond-body", webp_body[:-10]),
        ("bmp-cut-in-pixels", bmp_body[:-100]),
        ("tiff-cut-in-pixels", tiff_body[:-100]),
    ]


@pytest.mark.parametrize(("name", "body"), corrupt_cases(), ids=[n for n, _ in corrupt_cases()])
def test_corrupt_bodies_rejected(name: str, body: bytes) -> None:
    assert rejection(body).status == "corrupt"


STRUCTURAL_CASES = {
    "jpeg-cut-in-middle",
    "jpeg-without-eoi",
    "jpeg-with-data-appended",
    "png-cut-before-iend",
    "png-cut-in-half",
    "gif-without-trailer",
    "gif-cut-in-frame",
    "webp-riff-size-beyond-body",
    "bmp-cut-in-pixels",
}


@pytest.mark.parametrize(
    ("name", "body"),
    [case for case in corrupt_cases() if case[0] in STRUCTURAL_CASES],
    ids=[name for name, _ in corrupt_cases() if name in STRUCTURAL_CASES],
)
def test_truncation_found_without_decoding(
    name: str, body: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Decoders tolerate some of these cuts, so the header walk must find them first.
    def fail_decode(*args: object) -> None:
        raise AssertionError("cv2.imdecode was called for a structurally incomplete file")

    monkeypatch.setattr(images.cv2, "imdecode", fail_decode)

    assert rejection(body).status == "corrupt"


def test_jpeg_trailing_padding_accepted() -> None:
    body = jpeg(40, 40) + b"\x00" * 16 + b"\r\n"

    result = process_image(body, ImageCheckConfig())

    assert result.kept_original
    assert result.data == body


def test_jpeg_without_eoi_message_names_marker() -> None:
    message = str(rejection(jpeg(40, 40)[:-2]))

    assert "FFD9" in message


@requires_samples(ODD_IMAGES)
def test_truncated_progressive_sample_rejected() -> None:
    body = (ODD_IMAGES / "truncated_jpeg.jpg").read_bytes()

    assert sniff_format(body) == "jpeg"
    assert rejection(body).status == "corrupt"


# ---- too_large ----


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR is rewritten to claim width x height."""
    body = build_png(1, 1, 2, [b"\x00\x00\x00"])
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return body[:8] + png_chunk(b"IHDR", ihdr) + body[33:]


def webp_claiming(width: int, height: int) -> bytes:
    vp8x = (
        b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    )
    chunk = b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def jpeg_claiming(width: int, height: int) -> bytes:
    body = bytearray(jpeg(40, 40))
    sof = body.index(b"\xff\xc0")
    body[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(body)


@pytest.mark.parametrize(
    "body",
    [
        png_claiming(60_000, 60_000),
        jpeg_claiming(65_000, 65_000),
        webp_claiming(16_000, 16_000),
        build_gif(40, 40, [(0, 0, 0)] * 4, frames=[0], frame_size=(40, 40))[:13]
        + bytes(12)  # colour table
        + b"\x2c"
        + struct.pack("<HHHHB", 0, 0, 65_000, 65_000, 0)
        + b"\x02\x00\x3b",
    ],
    ids=["png", "jpeg", "webp", "gif-frame"],
)
def test_header_bombs_rejected_before_decode(body: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail_decode(*args: object) -> None:
        raise AssertionError("cv2.imdecode was called for an image over max_pixels")

    monkeypatch.setattr(images.cv2, "imdecode", fail_decode)
    started = time.perf_counter()

    error = rejection(body)

    assert time.perf_counter() - started < 0.5
    assert error.status == "too_large"
    assert "max_pixels=40000000" in str(error)


def test_png_bomb_message_names_size() -> None:
    assert "60000x60000" in str(rejection(png_claiming(60_000, 60_000)))


def test_max_pixels_limit_is_inclusive() -> None:
    body = encode(solid(50, 40), ".png")

    assert process_image(body, ImageCheckConfig(max_pixels=2000)).width == 50
    assert rejection(body, ImageCheckConfig(max_pixels=1999)).status == "too_large"


# ---- too_small ----


@pytest.mark.parametrize(
    ("width", "height", "min_side", "expected_text"),
    [
        (1, 1, 32, "smaller side 1 is below min_side=32"),
        (1, 400, 32, "aspect ratio 400.0 exceeds max_aspect_ratio=10.0"),
        (20, 20, 32, "smaller side 20 is below min_side=32"),
        (40, 500, 32, "aspect ratio 12.5 exceeds"),
    ],
)
def test_small_images_rejected(width: int, height: int, min_side: int, expected_text: str) -> None:
    body = encode(solid(width, height), ".png")

    error = rejection(body, ImageCheckConfig(min_side=min_side))

    assert error.status == "too_small"
    assert f"{width}x{height} pixels" in str(error)
    assert expected_text in str(error)


def test_min_side_accepts_equal_size() -> None:
    result = process_image(encode(solid(32, 32), ".png"), ImageCheckConfig(min_side=32))

    assert (result.width, result.height) == (32, 32)


# ---- resize modes ----


@pytest.mark.parametrize(
    ("mode", "source_size", "expected_size"),
    [
        ("keep-ratio", (400, 200), (256, 128)),
        ("keep-ratio", (200, 400), (128, 256)),
        ("keep-ratio", (100, 50), (100, 50)),
        ("centre-crop", (400, 200), (256, 256)),
        ("centre-crop", (200, 400), (256, 256)),
        ("centre-crop", (100, 50), (256, 256)),
        ("pad", (400, 200), (256, 256)),
        ("pad", (200, 400), (256, 256)),
        ("pad", (100, 50), (256, 256)),
        ("none", (400, 200), (400, 200)),
    ],
)
def test_resize_mode_output_size(
    mode: str, source_size: tuple[int, int], expected_size: tuple[int, int]
) -> None:
    body = encode(solid(*source_size, GREEN), ".png")

    result = process_image(body, ImageCheckConfig(image_size=256, resize_mode=mode))

    assert (result.width, result.height) == expected_size
    assert decode(result.data).shape[:2] == expected_size[::-1]
    assert (result.original_width, result.original_height) == source_size


def test_pad_fills_with_white() -> None:
    body = encode(solid(400, 200, BLACK), ".png")

    stored = decode(process_image(body, ImageCheckConfig(image_size=256, resize_mode="pad")).data)

    assert_colour(stored[10, 128], WHITE)  # band above the 256x128 image
    assert_colour(stored[245, 128], WHITE)  # band below it
    assert_colour(stored[128, 128], BLACK)


def test_pad_small_image_centred_unscaled() -> None:
    body = encode(solid(100, 50, BLACK), ".png")

    stored = decode(process_image(body, ImageCheckConfig(image_size=256, resize_mode="pad")).data)

    assert_colour(stored[128, 128], BLACK)
    assert_colour(stored[128, 60], WHITE)  # left of the 100-pixel-wide image at x=78..177
    assert_colour(stored[90, 128], WHITE)  # above the 50-pixel-high image at y=103..152


def test_centre_crop_keeps_centre() -> None:
    image = np.concatenate([solid(100, 100, RED), solid(100, 100, GREEN), solid(100, 100, BLUE)], 1)

    config = ImageCheckConfig(image_size=64, resize_mode="centre-crop")
    stored = decode(process_image(encode(image, ".png"), config).data)

    assert_colour(stored[32, 2], GREEN)
    assert_colour(stored[32, 61], GREEN)


@pytest.mark.parametrize(
    ("mode", "expected_flag"),
    [
        ("keep-ratio", cv2.IMREAD_REDUCED_COLOR_8),  # 2400 / 8 = 300 >= 256
        ("centre-crop", cv2.IMREAD_REDUCED_COLOR_4),  # shorter side 1200 / 4 = 300 >= 256
        ("pad", cv2.IMREAD_REDUCED_COLOR_8),
    ],
)
def test_reduced_jpeg_decode_matches_full_decode(
    mode: str, expected_flag: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    horizontal = np.tile(np.linspace(0, 255, 2400, dtype=np.float32), (1200, 1))
    vertical = np.tile(np.linspace(0, 255, 1200, dtype=np.float32)[:, None], (1, 2400))
    image = np.dstack([horizontal, vertical, 255 - horizontal]).astype(np.uint8)
    image[200:400, 300:900] = RED
    body = encode(image, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95])
    config = ImageCheckConfig(image_size=256, resize_mode=mode)
    flags_used = []
    real_imdecode = cv2.imdecode

    def spy(buffer: np.ndarray, flags: int) -> np.ndarray:
        flags_used.append(flags)
        return real_imdecode(buffer, flags)

    monkeypatch.setattr(images.cv2, "imdecode", spy)
    result = process_image(body, config)
    monkeypatch.undo()
    stored = decode(result.data)
    full = images._resize(decode(body), config)

    assert flags_used == [expected_flag | cv2.IMREAD_IGNORE_ORIENTATION]
    assert stored.shape == full.shape
    assert np.abs(stored.astype(int) - full).mean() < 3


# ---- keeping the original bytes ----


@pytest.mark.parametrize(
    ("config", "size"),
    [
        (ImageCheckConfig(), (100, 80)),
        (ImageCheckConfig(image_size=256), (100, 80)),
        (ImageCheckConfig(image_size=256), (256, 200)),
        (ImageCheckConfig(image_size=16, resize_mode="none", min_side=8), (100, 80)),
        (ImageCheckConfig(image_size=100, resize_mode="centre-crop"), (100, 100)),
        (ImageCheckConfig(image_size=100, resize_mode="pad"), (100, 100)),
    ],
)
def test_jpeg_needing_no_resize_kept(config: ImageCheckConfig, size: tuple[int, int]) -> None:
    body = jpeg(*size)

    result = process_image(body, config)

    assert result.kept_original
    assert result.data == body
    assert (result.width, result.height) == size


@pytest.mark.parametrize(
    ("config", "size"),
    [
        (ImageCheckConfig(image_size=64), (100, 80)),
        (ImageCheckConfig(image_size=256, resize_mode="centre-crop"), (100, 80)),
        (ImageCheckConfig(image_size=100, resize_mode="pad"), (100, 80)),
    ],
)
def test_jpeg_needing_resize_reencoded(config: ImageCheckConfig, size: tuple[int, int]) -> None:
    body = jpeg(*size)

    result = process_image(body, config)

    assert not result.kept_original
    assert result.data != body


def test_png_always_reencoded_as_jpeg() -> None:
    body = encode(solid(100, 80), ".png")

    result = process_image(body, ImageCheckConfig())

    assert not result.kept_original
    assert result.data.startswith(b"\xff\xd8\xff")
    assert result.data.rstrip(b"\x00").endswith(b"\xff\xd9")


def test_rotated_jpeg_not_kept() -> None:
    body = with_exif(jpeg(100, 80), 8)

    result = process_image(body, ImageCheckConfig())

    assert not result.kept_original
    assert (result.width, result.height) == (80, 100)


def test_jpeg_quality_changes_output_size() -> None:
    body = encode(marker_image(400, 300), ".png")

    low = process_image(body, ImageCheckConfig(jpeg_quality=10))
    high = process_image(body, ImageCheckConfig(jpeg_quality=100))

    assert len(low.data) < len(high.data)


# ---- headers and format detection ----


@pytest.mark.parametrize(
    ("body", "fmt"),
    [
        (encode(solid(37, 23), ".jpg"), "jpeg"),
        (jpeg(37, 23, progressive=True), "jpeg"),
        (encode(solid(37, 23), ".png"), "png"),
        (encode(solid(37, 23), ".webp"), "webp"),
        (encode(solid(37, 23), ".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]), "webp"),
        (encode(np.zeros((23, 37, 4), np.uint8), ".webp"), "webp"),
        (encode(solid(37, 23), ".bmp"), "bmp"),
        (encode(solid(37, 23), ".tiff"), "tiff"),
        (build_tiff(solid(37, 23)), "tiff"),
        (build_gif(37, 23, [(0, 0, 0)] * 4, frames=[0]), "gif"),
    ],
    ids=[
        "jpeg",
        "progressive",
        "png",
        "webp",
        "webp-lossless",
        "webp-alpha",
        "bmp",
        "tiff",
        "tiff-hand-built",
        "gif",
    ],
)
def test_header_dimensions_read(body: bytes, fmt: str) -> None:
    assert sniff_format(body) == fmt
    assert read_dimensions(body, fmt) == (37, 23)


def test_read_dimensions_rejects_unknown_format() -> None:
    with pytest.raises(ValueError, match="fmt must be one of"):
        read_dimensions(b"", "avif")


def test_read_dimensions_short_header_corrupt() -> None:
    with pytest.raises(ImageRejected) as caught:
        read_dimensions(b"\x89PNG\r\n\x1a\n\x00\x00", "png")

    assert caught.value.status == "corrupt"


def test_image_rejected_survives_pickle() -> None:
    error = rejection(b"<html></html>")

    copy = pickle.loads(pickle.dumps(error))

    assert copy.status == "not_an_image"
    assert str(copy) == str(error)


def test_image_rejected_rejects_unknown_status() -> None:
    with pytest.raises(ValueError, match="status must be one of"):
        ImageRejected("broken", "message")


# ---- configuration ----


@pytest.mark.parametrize(
    ("options", "expected_text"),
    [
        ({"resize_mode": "stretch"}, "resize_mode must be one of"),
        ({"jpeg_quality": 0}, "jpeg_quality=0"),
        ({"jpeg_quality": 101}, "jpeg_quality=101"),
        ({"jpeg_quality": 90.5}, "jpeg_quality=90.5"),
        ({"image_size": 0}, "image_size=0"),
        ({"image_size": -256}, "image_size=-256"),
        ({"image_size": True}, "image_size=True"),
        ({"min_side": 0}, "min_side=0"),
        ({"max_aspect_ratio": 0.5}, "max_aspect_ratio=0.5"),
        ({"max_aspect_ratio": float("nan")}, "max_aspect_ratio=nan"),
        ({"max_pixels": 0}, "max_pixels=0"),
    ],
)
def test_invalid_config_raises(options: dict[str, object], expected_text: str) -> None:
    with pytest.raises(ValueError, match="must be") as caught:
        ImageCheckConfig(**options)  # type: ignore[arg-type]

    assert expected_text in str(caught.value)


def test_resize_mode_error_lists_allowed_values() -> None:
    with pytest.raises(ValueError) as caught:
        ImageCheckConfig(resize_mode="stretch")

    for mode in RESIZE_MODES:
        assert mode in str(caught.value)
    assert "Received: resize_mode='stretch'" in str(caught.value)


def test_default_config_is_valid() -> None:
    ImageCheckConfig().validate()


# ---- robustness ----


def test_damaged_bodies_raise_only_rejections() -> None:
    # Seeded byte flips, cuts and insertions in every format: each body must either
    # give a decodable JPEG or raise ImageRejected, never another exception.
    rng = np.random.default_rng(2024)
    image = marker_image(60, 40)
    seeds = [
        with_exif(encode(image, ".jpg"), 6),
        encode(image, ".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        png_with_exif(image, 3),
        encode(image, ".webp"),
        encode(image, ".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),
        encode(image, ".bmp"),
        encode(image, ".tiff"),
        build_tiff(image, orientation=6),
        build_gif(60, 40, [(255, 0, 0), (0, 0, 255), (0, 0, 0), (0, 0, 0)], frames=[0, 1]),
    ]
    config = ImageCheckConfig(image_size=32, min_side=8)
    unexpected = []

    for attempt in range(900):
        body = bytearray(seeds[attempt % len(seeds)])
        kind = attempt // len(seeds) % 3
        if kind == 0:  # flip bytes, mostly in the header
            for _ in range(int(rng.integers(1, 8))):
                body[int(rng.integers(0, min(len(body), 200)))] = int(rng.integers(0, 256))
        elif kind == 1:  # cut the body short
            body = body[: int(rng.integers(1, len(body)))]
        else:  # insert random bytes
            at = int(rng.integers(0, len(body)))
            body[at:at] = rng.integers(0, 256, int(rng.integers(1, 50)), dtype=np.uint8).tobytes()
        try:
            result = process_image(bytes(body), config)
        except ImageRejected:
            continue
        except Exception as error:  # collect every other exception type, with its message
            unexpected.append(f"attempt {attempt}: {type(error).__name__}: {error}")
            continue
        if cv2.imdecode(np.frombuffer(result.data, np.uint8), cv2.IMREAD_COLOR) is None:
            unexpected.append(f"attempt {attempt}: stored bytes do not decode")

    assert unexpected == []


# ---- real sample files ----


def product_image_paths() -> list[Path]:
    return sorted(path for path in PRODUCT_IMAGES.glob("*/*") if path.name != "manifest.csv")


@requires_samples(PRODUCT_IMAGES)
def test_every_product_sample_processes() -> None:
    with (PRODUCT_IMAGES / "manifest.csv").open(newline="") as handle:
        manifest = {row["path"]: row for row in csv.DictReader(handle)}
    paths = product_image_paths()
    config = ImageCheckConfig(image_size=256)
    failures = []
    formats = []

    for path in paths:
        relative = path.relative_to(PRODUCT_IMAGES).as_posix()
        try:
            result = process_image(path.read_bytes(), config)
        except ImageRejected as error:
            failures.append(f"{relative}: {error.status}: {error}")
            continue
        formats.append(result.format)
        row = manifest[relative]
        if (result.original_width, result.original_height) != (
            int(row["width"]),
            int(row["height"]),
        ):
            failures.append(f"{relative}: size {result.original_width}x{result.original_height}")
        if max(result.width, result.height) > 256:
            failures.append(f"{relative}: stored {result.width}x{result.height}")

    assert len(paths) == len(manifest)
    assert failures == []
    assert formats.count("png") == 2


@requires_samples(PRODUCT_IMAGES)
def test_rgba_product_samples_keep_colours() -> None:
    # Both RGBA samples are fully opaque, so the stored colours must equal the BGR channels.
    checked = 0
    for path in product_image_paths():
        body = path.read_bytes()
        if sniff_format(body) != "png":
            continue
        decoded = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
        if decoded.ndim != 3 or decoded.shape[2] != 4:
            continue
        stored = decode(process_image(body, ImageCheckConfig()).data)
        difference = np.abs(stored.astype(int) - decoded[:, :, :3]).mean()
        assert difference < 4, f"{path.name}: stored colours differ by {difference:.1f} on average"
        checked += 1

    assert checked == 2


@requires_samples(ODD_IMAGES)
@pytest.mark.parametrize("name", ["transparent.png", "transparent.webp"])
def test_transparent_samples_composited_on_white(name: str) -> None:
    body = (ODD_IMAGES / name).read_bytes()
    decoded = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
    transparent = decoded[:, :, 3] == 0
    opaque = decoded[:, :, 3] == 255

    stored = decode(process_image(body, ImageCheckConfig()).data)

    assert transparent.any()
    assert stored[transparent].mean() > 245
    assert np.abs(stored[opaque].astype(int) - decoded[:, :, :3][opaque]).mean() < 8


@requires_samples(ODD_IMAGES)
@pytest.mark.parametrize(
    ("name", "fmt", "size"),
    [("flower.webp", "webp", (480, 360)), ("copyleft.png", "png", (220, 220))],
)
def test_odd_samples_process(name: str, fmt: str, size: tuple[int, int]) -> None:
    result = process_image((ODD_IMAGES / name).read_bytes(), ImageCheckConfig())

    assert result.format == fmt
    assert (result.width, result.height) == size
    assert decode(result.data).shape == (size[1], size[0], 3)
