"""Tests for train.dataset on small images generated here and decoded by real TensorFlow.

Classes differ in colour and shape: red circles, green squares and blue
triangles on a dark, noisy background, 32 to 64 pixels a side, written with
cv2.imencode. Tests on files under ../shared/samples skip when that folder is absent.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
import xxhash

from data.scripts.manifest import MANIFEST_SCHEMA
from tests.helpers import SAMPLES, requires_samples
from train.dataset import (
    SPLITS,
    ImageDataSet,
    assign_split,
    check_fractions,
    decode_image,
    prepare_for_training,
)

PRODUCT_IMAGES = SAMPLES / "product-images"
ODD_IMAGES = SAMPLES / "odd-images"

COLOURS_BGR = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0)}
RGB_CHANNEL = {"red": 0, "green": 1, "blue": 2}
SIZE = 32  # image_size of most tests, in pixels


# ---- building test images ----


def key_for(label: str, index: int) -> str:
    """Return a 16-hex-digit key, as the collection stage names its files."""
    return f"{xxhash.xxh3_64_intdigest(f'{label}-{index}'.encode()):016x}"


def draw(label: str, index: int, side: int = 40) -> np.ndarray:
    """Return a BGR image of ``label``'s shape and colour on a dark, noisy background."""
    rng = np.random.default_rng([index, len(label)])
    image = rng.integers(0, 40, size=(side, side, 3), dtype=np.uint8)
    colour = COLOURS_BGR[label]
    centre, radius = side // 2, side // 3
    if label == "red":
        cv2.circle(image, (centre, centre), radius, colour, -1)
    elif label == "green":
        cv2.rectangle(image, (centre - radius, centre - radius), (centre + radius,) * 2, colour, -1)
    else:
        corners = np.array([[centre, 2], [2, side - 3], [side - 3, side - 3]], dtype=np.int32)
        cv2.fillPoly(image, [corners], colour)
    return image


def encode(image: np.ndarray, ext: str = ".jpg") -> bytes:
    ok, encoded = cv2.imencode(ext, image)
    assert ok, f"cv2.imencode({ext!r}) failed for shape {image.shape}"
    return encoded.tobytes()


def write_images(
    root: Path, per_class: dict[str, int], *, start: int = 0, ext: str = ".jpg"
) -> list[Path]:
    """Write ``per_class[label]`` images per label as ``root/<label>/<key><ext>``."""
    paths = []
    for label, count in per_class.items():
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(start, start + count):
            side = 32 + (index * 7) % 33  # 32 to 64 pixels
            path = folder / f"{key_for(label, index)}{ext}"
            path.write_bytes(encode(draw(label, index, side), ext))
            paths.append(path)
    return paths


def collect(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Return all images and labels of a batched dataset as two arrays."""
    images, labels = [], []
    for image_batch, label_batch in ds:
        images.append(image_batch.numpy())
        labels.append(label_batch.numpy())
    return np.concatenate(images), np.concatenate(labels)


def predict_by_colour(images: np.ndarray, class_names: list[str]) -> np.ndarray:
    """Return the class index whose colour dominates each uint8 RGB image."""
    channel = images.reshape(len(images), -1, 3).mean(axis=1).argmax(axis=1)
    name_of_channel = {value: name for name, value in RGB_CHANNEL.items()}
    return np.array([class_names.index(name_of_channel[c]) for c in channel], dtype=np.int32)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Twenty images of each of the three classes under tmp_path/images."""
    root = tmp_path / "images"
    write_images(root, {"red": 20, "green": 20, "blue": 20})
    return root


# ---- split fractions ----


@pytest.mark.parametrize(
    "fractions",
    [(0.5, 0.5, 0.5), (0.8, 0.1, 0.05), (1.2, -0.1, -0.1), (-0.1, 0.6, 0.5), (float("nan"), 0, 1)],
)
def test_fractions_invalid(fractions, folder):
    train_size, val_size, test_size = fractions
    with pytest.raises(ValueError, match="add up to 1") as error:
        ImageDataSet(folder, train_size=train_size, val_size=val_size, test_size=test_size)
    message = str(error.value)
    assert f"train_size={train_size!r}" in message
    assert f"val_size={val_size!r}" in message
    assert f"test_size={test_size!r}" in message
    assert "sum" in message


def test_fractions_within_tolerance():
    check_fractions(0.7, 0.2, 0.1 - 5e-7)
    check_fractions(1, 0, 0)


def test_zero_fraction_split_stays_empty():
    keys = [key_for("red", index) for index in range(2000)]
    assert {assign_split(key, 1.0 - 1e-7, 0.0, 0.0) for key in keys} == {"train"}
    assert {assign_split(key, 0.5, 0.5 - 1e-7, 0.0) for key in keys} == {"train", "val"}


# ---- splitting ----


def test_splits_disjoint_and_covering(folder):
    data = ImageDataSet(folder, image_size=SIZE)
    keys = {split: set(data.keys(split)) for split in SPLITS}

    assert keys["train"].isdisjoint(keys["val"])
    assert keys["train"].isdisjoint(keys["test"])
    assert keys["val"].isdisjoint(keys["test"])
    assert set().union(*keys.values()) == {path.stem for path in folder.rglob("*.jpg")}
    assert len(data.samples) == 60


def test_split_stable_when_images_added(folder):
    before = ImageDataSet(folder, image_size=SIZE)
    write_images(folder, {"red": 30, "green": 30, "blue": 30}, start=1000)
    after = ImageDataSet(folder, image_size=SIZE)

    old_split = {sample.key: sample.split for sample in before.samples}
    new_split = {sample.key: sample.split for sample in after.samples}
    assert len(after.samples) == len(before.samples) + 90
    assert {key: new_split[key] for key in old_split} == old_split


def test_split_same_on_rebuild_and_seed_changes_it(folder):
    first = ImageDataSet(folder, image_size=SIZE)
    again = ImageDataSet(folder, image_size=SIZE)
    reseeded = ImageDataSet(folder, image_size=SIZE, split_seed=7)

    assert [s.split for s in first.samples] == [s.split for s in again.samples]
    assert first.fingerprint() == again.fingerprint()
    assert [s.split for s in first.samples] != [s.split for s in reseeded.samples]
    assert first.fingerprint() != reseeded.fingerprint()


def test_class_shares_near_fractions(tmp_path):
    root = tmp_path / "images"
    write_images(root, {"red": 200, "green": 200, "blue": 200})
    data = ImageDataSet(root, image_size=SIZE, train_size=0.7, val_size=0.2, test_size=0.1)

    # One share over 200 images has a standard deviation of at most 0.035.
    for name, counts in data.counts().items():
        total = sum(counts.values())
        assert total == 200
        for split in SPLITS:
            share = counts[split] / total
            assert abs(share - data.fractions[split]) < 0.08, (name, split, share)


def test_tiny_class_warns(tmp_path, caplog):
    root = tmp_path / "images"
    write_images(root, {"red": 30, "green": 1})
    with caplog.at_level(logging.WARNING, logger="train.dataset"):
        data = ImageDataSet(root, image_size=SIZE)

    assert sum(data.counts()["green"].values()) == 1
    warnings = [r.getMessage() for r in caplog.records if "get no image" in r.getMessage()]
    assert len(warnings) == 1
    assert "'green'" in warnings[0]


# ---- skipping ----


def test_skips_hidden_and_bad_files(folder, caplog):
    good = encode(draw("red", 999))
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / ".ipynb_checkpoints" / "copy.jpg").write_bytes(good)
    (folder / "red" / ".ipynb_checkpoints").mkdir()
    (folder / "red" / ".ipynb_checkpoints" / "copy.jpg").write_bytes(good)
    (folder / "red" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "red" / ".hidden.jpg").write_bytes(good)
    (folder / "red" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "red" / "notes.jpg").write_text("not an image, only text\n")
    (folder / "green" / "empty.jpg").write_bytes(b"")
    (folder / "blue" / "page.jpg").write_text("<!DOCTYPE html><html><body>404</body></html>")
    (folder / "README.txt").write_text("a file outside the label folders")

    with caplog.at_level(logging.INFO, logger="train.dataset"):
        data = ImageDataSet(folder, image_size=SIZE)

    reasons = {item.path: item.reason for item in data.skipped}
    assert reasons == {
        ".ipynb_checkpoints": "hidden",
        "README.txt": "outside_label_folder",
        "blue/page.jpg": "not_an_image",
        "green/empty.jpg": "empty",
        "red/.DS_Store": "hidden",
        "red/.hidden.jpg": "hidden",
        "red/.ipynb_checkpoints": "hidden",
        "red/notes.jpg": "not_an_image",
        "red/truncated.jpg": "corrupt",
    }
    assert len(data.samples) == 60
    summary = [r.getMessage() for r in caplog.records if "skipped 9 of" in r.getMessage()]
    assert len(summary) == 1
    for path in ("red/truncated.jpg", "red/notes.jpg", "green/empty.jpg", "blue/page.jpg"):
        assert path in summary[0]


def test_epoch_runs_after_skipping(folder):
    (folder / "red" / "truncated.jpg").write_bytes(encode(draw("red", 5))[:300])
    (folder / "green" / "page.png").write_text("<html></html>")
    data = ImageDataSet(folder, image_size=SIZE, train_size=1.0, val_size=0.0, test_size=0.0)
    ds = prepare_for_training(data.dataset("train"), training=True, batch_size=16)

    images, labels = collect(ds)
    assert images.shape == (60, SIZE, SIZE, 3)
    assert images.dtype == np.uint8
    assert sorted(labels.tolist()) == sorted(data.labels("train").tolist())


def test_duplicate_key_skipped(folder):
    key = next((folder / "red").glob("*.jpg")).stem
    shutil.copy(folder / "red" / f"{key}.jpg", folder / "green" / f"{key}.png")
    data = ImageDataSet(folder, image_size=SIZE)

    assert [(item.path, item.reason) for item in data.skipped] == [
        (f"red/{key}.jpg", "duplicate_key")
    ]
    assert [s.label for s in data.samples if s.key == key] == ["green"]


def test_tiff_skipped_as_unsupported(folder):
    (folder / "red" / "scan.tif").write_bytes(encode(draw("red", 1), ".tiff"))
    data = ImageDataSet(folder, image_size=SIZE)
    assert [(item.path, item.reason) for item in data.skipped] == [
        ("red/scan.tif", "unsupported_format")
    ]


def test_check_decode_catches_bad_crc(folder):
    body = bytearray(encode(draw("blue", 3), ".png"))
    body[body.find(b"IDAT") + 12] ^= 0xFF  # damage the compressed data, keep the structure
    (folder / "blue" / "damaged.png").write_bytes(bytes(body))

    header_only = ImageDataSet(folder, image_size=SIZE)
    decoded = ImageDataSet(folder, image_size=SIZE, check="decode")

    assert "blue/damaged.png" in [sample.path for sample in header_only.samples]
    assert [(item.path, item.reason) for item in decoded.skipped] == [
        ("blue/damaged.png", "undecodable")
    ]
    assert len(decoded.samples) == 60


def test_no_usable_image_raises(tmp_path):
    (tmp_path / "red").mkdir()
    (tmp_path / "red" / "a.jpg").write_text("text")
    with pytest.raises(ValueError, match="no usable image"):
        ImageDataSet(tmp_path)


# ---- order and alignment ----


def test_test_split_labels_align(folder):
    data = ImageDataSet(folder, image_size=SIZE, train_size=0.5, val_size=0.0, test_size=0.5)
    ds = prepare_for_training(data.dataset("test"), training=False, batch_size=7, cache="memory")

    images, labels = collect(ds)
    expected = data.labels("test")
    assert labels.dtype == np.int32
    assert labels.tolist() == expected.tolist()
    assert predict_by_colour(images, data.class_names).tolist() == expected.tolist()
    assert data.keys("test") == sorted(data.keys("test"))


def test_shuffle_only_when_training(tmp_path):
    root = tmp_path / "images"
    write_images(root, {"red": 40, "green": 40})
    data = ImageDataSet(root, image_size=SIZE, train_size=0.5, val_size=0.5, test_size=0.0)
    val = prepare_for_training(data.dataset("val"), training=False, batch_size=8, cache="memory")
    train = prepare_for_training(data.dataset("train"), training=True, batch_size=8)

    first, second = collect(val)[1], collect(val)[1]
    assert first.tolist() == second.tolist() == data.labels("val").tolist()
    epoch_one, epoch_two = collect(train)[0], collect(train)[0]
    assert not np.array_equal(epoch_one, epoch_two)
    assert np.array_equal(np.sort(epoch_one, axis=None), np.sort(epoch_two, axis=None))


def test_cache_memory_and_disk_agree(folder, tmp_path):
    data = ImageDataSet(folder, image_size=SIZE, train_size=0.5, val_size=0.5, test_size=0.0)
    disk = data.cache_path(tmp_path / "cache", "val")
    runs = {}
    for cache in (None, "memory", disk):
        ds = prepare_for_training(data.dataset("val"), training=False, batch_size=8, cache=cache)
        runs[str(cache)] = [collect(ds), collect(ds)]  # the second pass reads the cache

    reference_images, reference_labels = runs["None"][0]
    for name, passes in runs.items():
        for images, labels in passes:
            assert np.array_equal(images, reference_images), name
            assert np.array_equal(labels, reference_labels), name
    assert list(disk.parent.glob(disk.name + "*.index"))


@pytest.mark.parametrize("cache", ["", "disk"])
def test_prepare_invalid_cache(cache, folder):
    data = ImageDataSet(folder, image_size=SIZE)
    with pytest.raises(ValueError, match="cache must be"):
        prepare_for_training(data.dataset("val"), training=False, batch_size=4, cache=cache)


def test_dataset_unknown_split(folder):
    data = ImageDataSet(folder, image_size=SIZE)
    with pytest.raises(ValueError, match="split must be one of"):
        data.dataset("validation")


# ---- class names ----


def test_class_names_given_order(folder):
    data = ImageDataSet(folder, image_size=SIZE, class_names=["red", "green", "blue"])
    labels = data.labels("train")
    names = [data.class_names[index] for index in labels]
    assert names == [sample.label for sample in data.split_samples("train")]
    assert data.class_names == ["red", "green", "blue"]


def test_class_names_unknown_label(folder):
    with pytest.raises(ValueError, match=r"labels \['blue', 'green'\] are not in class_names"):
        ImageDataSet(folder, class_names=["red"])


def test_class_names_empty_class(folder):
    (folder / "yellow").mkdir()
    with pytest.raises(ValueError, match=r"classes \['yellow'\] of class_names have no usable"):
        ImageDataSet(folder, class_names=["blue", "green", "red", "yellow"])


def test_save_splits_and_fingerprint(folder, tmp_path):
    data = ImageDataSet(folder, image_size=SIZE)
    splits_path, names_path = data.save_splits(tmp_path / "run")

    table = pacsv.read_csv(splits_path).to_pylist()
    assert [row["key"] for row in table] == [sample.key for sample in data.samples]
    assert {row["split"] for row in table} <= set(SPLITS)
    assert all((folder / row["path"]).is_file() for row in table)
    assert json.loads(names_path.read_text()) == ["blue", "green", "red"]

    before = data.fingerprint()
    path = folder / data.samples[0].path
    path.write_bytes(path.read_bytes() + b"\x00")  # same key and label, another size
    assert ImageDataSet(folder, image_size=SIZE).fingerprint() != before


# ---- manifest input ----


def test_manifest_input(tmp_path):
    processed = tmp_path / "v1"
    paths = write_images(processed / "images", {"red": 6, "green": 6})
    rows = [
        {
            "key": path.stem,
            "url": f"https://example.com/{path.stem}.jpg",
            "label": path.parent.name,
            "status": "ok",
            "path": path.relative_to(processed).as_posix(),
        }
        for path in paths
    ]
    rows.append({"key": "00000000000000aa", "label": "red", "status": "http_error", "path": None})
    rows.append({"key": "00000000000000bb", "label": "blue", "status": "duplicate", "path": None})
    (processed / "images" / "red" / "stray.jpg").write_bytes(encode(draw("red", 77)))
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    pq.write_table(table, processed / "manifest.parquet")

    data = ImageDataSet.from_manifest(processed / "manifest.parquet", image_size=SIZE)

    assert sorted(s.key for s in data.samples) == sorted(path.stem for path in paths)
    assert data.class_names == ["green", "red"]
    assert data.skipped == []
    images, labels = collect(
        prepare_for_training(data.dataset("train"), training=False, batch_size=4)
    )
    assert predict_by_colour(images, data.class_names).tolist() == labels.tolist()


def test_manifest_same_path_twice_kept_once(tmp_path):
    processed = tmp_path / "v1"
    paths = write_images(processed / "images", {"red": 4, "green": 4})
    rows = [
        {
            "key": path.stem,
            "url": f"https://example.com/{path.stem}.jpg",
            "label": path.parent.name,
            "status": "ok",
            "path": path.relative_to(processed).as_posix(),
        }
        for path in paths
    ]
    twin = dict(rows[0], key="00000000000000cc", label="green")
    table = pa.Table.from_pylist(rows + [twin], schema=MANIFEST_SCHEMA)
    pq.write_table(table, processed / "manifest.parquet")

    data = ImageDataSet.from_manifest(processed / "manifest.parquet", image_size=SIZE)

    assert len(data.samples) == len(paths)
    assert [item.reason for item in data.skipped] == ["duplicate_path"]


def test_manifest_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        ImageDataSet.from_manifest(tmp_path / "manifest.parquet")


def test_manifest_missing_column(tmp_path):
    pq.write_table(pa.table({"key": ["a"], "label": ["red"]}), tmp_path / "manifest.parquet")
    with pytest.raises(ValueError, match=r"lacks the columns \['status', 'path'\]"):
        ImageDataSet.from_manifest(tmp_path / "manifest.parquet")


# ---- decoding ----


def test_decode_png_alpha_and_gray(tmp_path):
    side_h, side_w = 40, 56
    bgra = np.zeros((side_h, side_w, 4), dtype=np.uint8)
    bgra[:, : side_w // 2] = (255, 0, 0, 255)  # left half opaque blue
    gray = np.full((side_h, side_w), 90, dtype=np.uint8)
    bodies = {"rgba": encode(bgra, ".png"), "gray": encode(gray, ".png")}

    decoded = {name: decode_image(tf.constant(body), 24).numpy() for name, body in bodies.items()}

    for image in decoded.values():
        assert image.shape == (24, 24, 3)
        assert image.dtype == np.uint8
    assert decoded["rgba"][12, 2].tolist() == [0, 0, 255]  # RGB order
    assert decoded["rgba"][12, 21].tolist() == [255, 255, 255]  # transparent on white
    assert np.all(decoded["gray"] == 90)


def test_process_path_formats(tmp_path):
    data_root = tmp_path / "images"
    write_images(data_root, {"red": 2})
    image = draw("green", 1, side=48)
    for ext in (".png", ".bmp", ".webp", ".jpg"):
        (data_root / "red" / f"green{ext}").write_bytes(encode(image, ext))
    data = ImageDataSet(data_root, image_size=SIZE, train_size=1, val_size=0, test_size=0)

    for path in data.paths("train"):
        decoded, label = data.process_path(tf.constant(path), tf.constant(0))
        assert decoded.shape == (SIZE, SIZE, 3), path
        assert decoded.dtype == tf.uint8
        assert label.dtype == tf.int32
        if "green" in Path(path).name:
            assert predict_by_colour(decoded.numpy()[None], ["red", "green", "blue"]) == [1]
    images, _ = collect(data.dataset("train").batch(8))
    assert images.shape == (6, SIZE, SIZE, 3)


def test_jpeg_fast_path_same_pixels(folder):
    data = ImageDataSet(folder, image_size=SIZE)
    fast = [image.numpy() for image, _ in data.dataset("val")]
    general = [
        data.process_path(tf.constant(path), tf.constant(0))[0].numpy()
        for path in data.paths("val")
    ]
    assert len(fast) == len(general) > 0
    for fast_image, general_image in zip(fast, general):
        assert np.array_equal(fast_image, general_image)


# ---- real sample files ----


@requires_samples(PRODUCT_IMAGES)
def test_sample_product_images_epoch(tmp_path):
    data = ImageDataSet(PRODUCT_IMAGES, image_size=64, train_size=1, val_size=0, test_size=0)
    assert data.class_names == sorted(p.name for p in PRODUCT_IMAGES.iterdir() if p.is_dir())
    ds = prepare_for_training(data.dataset("train"), training=True, batch_size=32, cache="memory")

    images, labels = collect(ds)
    assert images.shape == (len(data.samples), 64, 64, 3)
    assert sorted(labels.tolist()) == sorted(data.labels("train").tolist())


@requires_samples(ODD_IMAGES)
def test_sample_odd_images(tmp_path):
    root = tmp_path / "images"
    shutil.copytree(ODD_IMAGES, root / "odd")
    data = ImageDataSet(root, image_size=SIZE, train_size=1, val_size=0, test_size=0)

    assert [(item.path, item.reason) for item in data.skipped] == [
        ("odd/truncated_jpeg.jpg", "corrupt")
    ]
    images, _ = collect(prepare_for_training(data.dataset("train"), training=False, batch_size=8))
    assert images.shape == (4, SIZE, SIZE, 3)
