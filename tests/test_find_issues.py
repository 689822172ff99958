"""Tests for label.find_issues on generated colour-coded images, 40 px files read at 32 px.

Each class has its own colour (red, green, blue) over a random 8 x 8 brightness pattern, so
the classes separate by colour even with random backbone weights, while the patterns keep the
dHashes of different images far apart. A known set of labels is flipped, and two copies of
images are filed under a wrong class: one with the same bytes, one re-encoded as JPEG.
"""

from __future__ import annotations

import csv
import json
import shutil
from itertools import combinations
from pathlib import Path

import cv2
import numpy as np
import pytest

from label.find_issues import (
    CANDIDATE_COLUMNS,
    FindIssuesConfig,
    check_labels,
    check_pred_probs,
    dhash,
    find_duplicate_conflicts,
    find_issues,
    main,
    near_pairs,
    rank_label_issues,
)

COLOURS = ((200, 40, 40), (40, 200, 40), (40, 40, 200))  # RGB per class
CLASS_NAMES = ["c0", "c1", "c2"]  # red, green, blue
PER_CLASS = 40
FILE_SIZE = 40
IMAGE_SIZE = 32
FLIP_RATE = 0.1


def pattern_image(rng: np.random.Generator, colour: tuple[int, int, int]) -> np.ndarray:
    """Return a BGR uint8 image: the class colour scaled by a random 8 x 8 brightness pattern."""
    pattern = cv2.resize(
        rng.random((8, 8)).astype(np.float32),
        (FILE_SIZE, FILE_SIZE),
        interpolation=cv2.INTER_LINEAR,
    )
    rgb = (0.4 + 0.6 * pattern[..., None]) * np.asarray(colour, dtype=np.float32)
    return np.clip(rgb[..., ::-1], 0, 255).astype(np.uint8)


def write_dataset(
    folder: Path, *, per_class: int = PER_CLASS, flip_rate: float = FLIP_RATE, seed: int = 0
) -> set[str]:
    """Write ``folder/images/<label>/<key>.jpg`` and return the keys whose label is wrong."""
    rng = np.random.default_rng(seed)
    count = per_class * len(COLOURS)
    true_labels = np.repeat(np.arange(len(COLOURS)), per_class)
    given = true_labels.copy()
    flipped = rng.choice(count, int(round(flip_rate * count)), replace=False)
    given[flipped] = (true_labels[flipped] + rng.integers(1, len(COLOURS), len(flipped))) % len(
        COLOURS
    )
    for index in range(count):
        target = folder / "images" / CLASS_NAMES[given[index]] / f"{index:016x}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), pattern_image(rng, COLOURS[true_labels[index]]))
    return {f"{index:016x}" for index in flipped}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run find_issues once on a dataset with flips, an exact and a near duplicate."""
    folder = tmp_path_factory.mktemp("processed") / "v9"
    wrong = write_dataset(folder)
    images = folder / "images"

    # Sources with a right label: a red image copied byte for byte under c1, and a green one
    # re-encoded at JPEG quality 60 under c2. Both copies then carry a wrong label.
    red = next(index for index in range(PER_CLASS) if f"{index:016x}" not in wrong)
    green = next(index for index in range(PER_CLASS, 2 * PER_CLASS) if f"{index:016x}" not in wrong)
    exact_source = images / "c0" / f"{red:016x}.jpg"
    exact_copy = images / "c1" / "e000000000000000.jpg"
    shutil.copyfile(exact_source, exact_copy)
    near_source = images / "c1" / f"{green:016x}.jpg"
    near_copy = images / "c2" / "f000000000000000.jpg"
    cv2.imwrite(str(near_copy), cv2.imread(str(near_source)), [cv2.IMWRITE_JPEG_QUALITY, 60])
    wrong |= {"e000000000000000", "f000000000000000"}

    out = folder / "review" / "candidates.csv"
    config = FindIssuesConfig(
        processed_dir=folder,
        model="resnet50v2_pool",
        weights="none",
        image_size=IMAGE_SIZE,
        folds=5,
        epochs=10,
        batch_size=32,
        out=out,
    )
    summary = find_issues(config)
    with open(out, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        header = reader.fieldnames
    return {
        "summary": summary,
        "rows": rows,
        "header": header,
        "wrong": wrong,
        "out": out,
        "pairs": {
            "exact": (exact_source.stem, exact_copy.stem),
            "near": (near_source.stem, near_copy.stem),
        },
    }


# ---- end to end ----


@pytest.mark.slow
def test_detection_finds_flipped_labels(run: dict) -> None:
    flagged = {row["key"] for row in run["rows"] if row["reason"] == "label_issue"}
    found = flagged & run["wrong"]
    recall = len(found) / len(run["wrong"])
    precision = len(found) / max(1, len(flagged))
    # NOTE: random backbone weights make the features weak and seed-dependent. Measured on
    # this data with seeds 0, 1, 2 (2 CPU cores): recall 0.86, 0.71, 0.86 and precision 0.48,
    # 0.91, 0.71, so the floors sit below the worst of those.
    assert recall >= 0.6, f"found {sorted(found)} of {sorted(run['wrong'])}"
    assert precision >= 0.35, f"flagged {sorted(flagged - run['wrong'])} that are right"


@pytest.mark.slow
def test_candidates_columns_and_order(run: dict) -> None:
    assert run["header"] == [*CANDIDATE_COLUMNS, "p_c0", "p_c1", "p_c2"]
    scores = [float(row["quality_score"]) for row in run["rows"]]
    assert scores == sorted(scores)
    for row in run["rows"]:
        probabilities = [float(row[f"p_{name}"]) for name in CLASS_NAMES]
        assert abs(sum(probabilities) - 1.0) < 1e-4
        assert row["suggested_label"] == CLASS_NAMES[int(np.argmax(probabilities))]
        assert float(row["quality_score"]) == pytest.approx(float(row[f"p_{row['given_label']}"]))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["exact", "near"])
def test_duplicate_with_other_label_flagged(run: dict, kind: str) -> None:
    first, second = run["pairs"][kind]
    reasons = {(row["key"], row["reason"]) for row in run["rows"]}
    assert (first, f"duplicate_conflict:{second}") in reasons
    assert (second, f"duplicate_conflict:{first}") in reasons


@pytest.mark.slow
def test_only_planted_duplicates_flagged(run: dict) -> None:
    flagged = {row["key"] for row in run["rows"] if row["reason"].startswith("duplicate")}
    assert flagged == {*run["pairs"]["exact"], *run["pairs"]["near"]}
    assert run["summary"]["reasons"]["duplicate_conflict_exact"] == 2


@pytest.mark.slow
def test_outputs_align_with_samples(run: dict) -> None:
    folder = run["out"].parent
    pred_probs = np.load(folder / "pred_probs.npy")
    with open(folder / "samples.csv", newline="", encoding="utf-8") as handle:
        samples = list(csv.DictReader(handle))
    summary = json.loads((folder / "summary.json").read_text())
    assert pred_probs.shape == (PER_CLASS * 3 + 2, 3)
    assert len(samples) == len(pred_probs)
    assert {int(sample["fold"]) for sample in samples} == set(range(5))
    assert summary["classes"] == CLASS_NAMES
    assert summary["images"] == len(samples)
    assert sum(item["images"] for item in summary["per_class"].values()) == len(samples)
    assert list(folder.glob("features-resnet50v2_pool-32px-*.npz"))


# ---- checks of labels, probabilities and settings ----


@pytest.mark.parametrize(
    ("pred_probs", "message"),
    [
        (np.full((4, 2), 0.5), r"shape \(N, 3\)"),
        (np.full((4, 4), 0.25), r"shape \(N, 3\)"),
        (np.full((4, 3), 0.5), "sum to 1"),
        (np.array([[1.5, -0.5, 0.0]] * 4), r"in \[0, 1\]"),
        (np.full((4, 3), np.nan), "finite"),
    ],
)
def test_pred_probs_mismatch_rejected(pred_probs: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_pred_probs(pred_probs, CLASS_NAMES)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([0, 1, 3]), r"labels in \[0, 3\).*for example 3"),
        (np.array([0, -1, 2]), r"labels in \[0, 3\).*for example -1"),
        (np.array(["c0", "c1", "c2"]), "Expected integer class indices.*class_names.index"),
        (np.array([0.0, 1.0, 2.0]), "Expected integer class indices"),
        (np.array([], dtype=np.int64), "non-empty"),
    ],
)
def test_invalid_labels_rejected(labels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_labels(labels, CLASS_NAMES)


def test_rank_label_issues_length_mismatch() -> None:
    with pytest.raises(ValueError, match="3 labels and 4 rows"):
        rank_label_issues(np.array([0, 1, 2]), np.full((4, 3), 1 / 3), CLASS_NAMES)


def test_class_below_folds_rejected() -> None:
    labels = np.array([0] * 6 + [1] * 6 + [2] * 2)
    with pytest.raises(ValueError, match=r"'c2' has 2.*--folds 2"):
        check_labels(labels, CLASS_NAMES, folds=5)


def test_small_class_rejected_before_model(tmp_path: Path) -> None:
    write_dataset(tmp_path, per_class=3, flip_rate=0.0)
    config = FindIssuesConfig(processed_dir=tmp_path, weights="none", image_size=IMAGE_SIZE)
    with pytest.raises(ValueError, match="'c0' has 3, 'c1' has 3, 'c2' has 3"):
        find_issues(config)


def test_class_missing_from_data_rejected(tmp_path: Path) -> None:
    write_dataset(tmp_path, per_class=5, flip_rate=0.0)
    config = FindIssuesConfig(
        processed_dir=tmp_path,
        weights="none",
        image_size=IMAGE_SIZE,
        class_names=[*CLASS_NAMES, "c3"],
    )
    with pytest.raises(ValueError, match=r"\['c3'\].*no usable image"):
        find_issues(config)


def test_main_returns_2_on_invalid_setting(tmp_path: Path) -> None:
    write_dataset(tmp_path, per_class=5, flip_rate=0.0)
    code = main(["--processed-dir", str(tmp_path), "--weights", "none", "--folds", "1"])
    assert code == 2


# ---- duplicates ----


def test_dhash_stable_under_reencoding(tmp_path: Path) -> None:
    image = pattern_image(np.random.default_rng(3), COLOURS[0])
    _, low = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 40])
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    reencoded = cv2.imdecode(low, cv2.IMREAD_GRAYSCALE)
    distance = bin(dhash(gray) ^ dhash(reencoded)).count("1")
    assert distance <= 6


@pytest.mark.parametrize("max_distance", [0, 3, 6, 7])
def test_near_pairs_match_brute_force(max_distance: int) -> None:
    rng = np.random.default_rng(max_distance)
    base = rng.integers(0, 2**63, 300, dtype=np.int64).astype(np.uint64)
    # Plant neighbours at 1 to 8 bits from the first 60 hashes.
    planted = []
    for index in range(60):
        bits = rng.choice(64, 1 + index % 8, replace=False)
        planted.append(base[index] ^ np.uint64(sum(1 << int(bit) for bit in bits)))
    hashes = np.unique(np.concatenate([base, np.asarray(planted, dtype=np.uint64)]))

    found = {tuple(pair) for pair in near_pairs(hashes, max_distance).tolist()}
    expected = {
        (i, j)
        for i, j in combinations(range(len(hashes)), 2)
        if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= max_distance
    }
    assert found == expected
    if max_distance >= 3:
        assert len(expected) >= 10  # the planted neighbours make the check meaningful


def test_duplicates_with_same_label_ignored() -> None:
    digests = ["a", "a", "b", "c"]
    hashes = np.array([5, 5, 5 ^ 0b111, 0xFFFF_FFFF_0000_0000], dtype=np.uint64)
    labels = np.array([1, 1, 1, 0])
    assert find_duplicate_conflicts(digests, hashes, labels) == {}


def test_duplicate_conflict_prefers_exact_bytes() -> None:
    digests = ["a", "a", "b"]
    hashes = np.array([5, 5, 5 ^ 0b1], dtype=np.uint64)
    labels = np.array([0, 1, 2])
    conflicts = find_duplicate_conflicts(digests, hashes, labels, max_distance=6)
    assert conflicts[0].other == 1
    assert conflicts[0].exact
    assert conflicts[2].other == 0
    assert conflicts[2].distance == 1
    assert not conflicts[2].exact
