"""Tests for the relabel stage and the mapping file."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from data.scripts import extract, merge, relabel
from data.scripts.common import read_arrow, write_arrow
from data.scripts.relabel import DEFAULT_MAPPING, MappingError, load_mapping
from tests.helpers import TRIMMED_SAMPLES, product_row, requires_samples, write_csv

SOURCE_CATEGORIES = [
    "accessories",
    "appliances",
    "bags & luggage",
    "beauty & health",
    "car & motorbike",
    "grocery & gourmet foods",
    "home & kitchen",
    "home, kitchen, pets",
    "industrial supplies",
    "kids' fashion",
    "men's clothing",
    "men's shoes",
    "music",
    "pet supplies",
    "sports & fitness",
    "stores",
    "toys & baby products",
    "tv, audio & cameras",
    "women's clothing",
    "women's shoes",
]


def merged_dir(tmp_path: Path, categories: list[str]) -> Path:
    lines = [
        product_row(main_category=f'"{c}"', image=f"https://example.com/{i}.jpg")
        for i, c in enumerate(categories)
    ]
    write_csv(tmp_path / "raw" / "A.csv", lines)
    out = tmp_path / "out"
    extract.run_extract(tmp_path / "raw", out)
    merge.run_merge(out)
    return out


def write_mapping(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_default_mapping_covers_all_source_categories():
    mapping = load_mapping(DEFAULT_MAPPING)

    assert sorted(mapping.label_of) == SOURCE_CATEGORIES
    assert list(mapping.labels) == [
        "fashion",
        "household_essentials",
        "electronics_and_appliances",
        "other",
        "sports_and_fitness",
        "accessories",
        "stores",
    ]


def test_relabel_adds_label_columns(tmp_path):
    out = merged_dir(tmp_path, ["men's shoes", "Home, Kitchen, Pets", "music"])

    stats = relabel.run_relabel(out, DEFAULT_MAPPING)
    frame = pd.read_parquet(out / "products.parquet")

    assert frame["label"].tolist() == ["fashion", "household_essentials", "other"]
    assert frame["label_name"].tolist() == ["Fashion", "Household Essentials", "Other"]
    for column in ["key", "image_url", "main_category", "sub_category", "source_file"]:
        assert column in frame.columns
    assert stats["rows_per_label"] == {"fashion": 1, "household_essentials": 1, "other": 1}
    labels = json.loads((out / "labels.json").read_text())
    assert [entry["label"] for entry in labels][:2] == ["fashion", "household_essentials"]
    assert labels[0]["rows"] == 1


def test_relabel_unknown_categories_listed_before_output(tmp_path):
    out = merged_dir(tmp_path, ["music", "garden", "Books", "garden"])

    with pytest.raises(MappingError) as caught:
        relabel.run_relabel(out, DEFAULT_MAPPING)

    message = str(caught.value)
    assert "'books': 1 rows" in message
    assert "'garden'" in message
    assert "UNKNOWN_LABEL" in message
    assert not (out / "products.parquet").exists()
    assert not (out / "labels.json").exists()


def test_relabel_routes_unknown_to_named_label(tmp_path):
    out = merged_dir(tmp_path, ["music", "garden"])

    stats = relabel.run_relabel(out, DEFAULT_MAPPING, unknown_label="Other")
    frame = pd.read_parquet(out / "products.parquet")

    assert frame["label"].tolist() == ["other", "other"]
    assert stats["unknown_categories"] == {"garden": 1}


def test_relabel_routes_unknown_to_new_label(tmp_path):
    out = merged_dir(tmp_path, ["music", "garden"])

    relabel.run_relabel(out, DEFAULT_MAPPING, unknown_label="Unmapped Items")
    frame = pd.read_parquet(out / "products.parquet")

    assert frame["label"].tolist() == ["other", "unmapped_items"]
    assert frame["label_name"].tolist() == ["Other", "Unmapped Items"]


@pytest.mark.parametrize("label", ["...", "\u65e5\u672c"])
def test_relabel_unknown_label_without_letters(tmp_path, label):
    out = merged_dir(tmp_path, ["garden"])

    with pytest.raises(MappingError, match="UNKNOWN_LABEL"):
        relabel.run_relabel(out, DEFAULT_MAPPING, unknown_label=label)


def test_relabel_flags_label_conflicts(tmp_path):
    lines = [
        product_row(main_category="music", image="https://example.com/same.jpg"),
        product_row(main_category="toys & baby products", image="https://example.com/same.jpg"),
        product_row(main_category="men's shoes", image="https://example.com/x.jpg"),
        product_row(main_category="appliances", image="https://example.com/x.jpg"),
    ]
    write_csv(tmp_path / "raw" / "A.csv", lines)
    out = tmp_path / "out"
    extract.run_extract(tmp_path / "raw", out)
    merge.run_merge(out)

    stats = relabel.run_relabel(out, DEFAULT_MAPPING)
    frame = pd.read_parquet(out / "products.parquet").set_index("image_url")

    # music and toys both map to Other, so only the shoes/appliances URL conflicts.
    assert not frame.loc["https://example.com/same.jpg", "label_conflict"]
    assert frame.loc["https://example.com/x.jpg", "label_conflict"]
    assert stats["urls_with_label_conflict"] == 1


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[labels\n", "not valid TOML"),
        ("title = 'x'\n", r"needs a \[labels\] table"),
        ("[labels]\n'A' = 'music'\n", "must list main categories as strings"),
        ("[labels]\n'A' = ['music']\n'B' = [' MUSIC ']\n", "under both 'A' and 'B'"),
        ("[labels]\n'Sports & Fitness' = ['a']\n'sports and fitness' = ['b']\n", "both become"),
        ("[labels]\n'...' = ['a']\n", "folder name"),
    ],
)
def test_load_mapping_rejects_bad_files(tmp_path, text, match):
    path = write_mapping(tmp_path / "mapping.toml", text)

    with pytest.raises(MappingError, match=match):
        load_mapping(path)


def test_load_mapping_missing_file_names_fix(tmp_path):
    with pytest.raises(MappingError, match="MAPPING="):
        load_mapping(tmp_path / "nope.toml")


def test_relabel_cli_reports_unknown_and_exits_1(tmp_path, caplog):
    out = merged_dir(tmp_path, ["garden"])

    code = relabel.main(["--processed-dir", str(out)])

    assert code == 1
    assert "'garden'" in caplog.text


@requires_samples(TRIMMED_SAMPLES)
def test_relabel_real_samples_every_label_present(tmp_path):
    out = tmp_path / "out"
    extract.run_extract(TRIMMED_SAMPLES, out)
    merge.run_merge(out)

    stats = relabel.run_relabel(out, DEFAULT_MAPPING)

    assert set(stats["rows_per_label"]) == set(load_mapping(DEFAULT_MAPPING).labels)
    assert sum(stats["rows_per_label"].values()) == stats["rows"]
    assert stats["unknown_categories"] == {}


def test_relabel_names_damaged_merged_file(tmp_path, caplog):
    out = merged_dir(tmp_path, ["music"])
    (out / "merged.arrow").write_bytes(b"not arrow")

    with pytest.raises(ValueError, match="cannot be read.*make merge"):
        relabel.run_relabel(out, DEFAULT_MAPPING)
    assert relabel.main(["--processed-dir", str(out)]) == 1
    assert not (out / "products.parquet").exists()


def test_relabel_rejects_merged_file_of_other_layout(tmp_path):
    out = merged_dir(tmp_path, ["music"])
    table = read_arrow(out / "merged.arrow")
    write_arrow(out / "merged.arrow", table.append_column("ratings", pa.array([4.2])))

    with pytest.raises(ValueError, match="ratings.*make merge"):
        relabel.run_relabel(out, DEFAULT_MAPPING)


def test_relabel_removes_leftovers_and_warns_when_empty(tmp_path, caplog):
    write_csv(tmp_path / "raw" / "A.csv", [product_row(image="")])
    out = tmp_path / "out"
    extract.run_extract(tmp_path / "raw", out)
    merge.run_merge(out)
    leftover = out / ".products.parquet.k1ll3d.tmp"
    leftover.write_bytes(b"partial")

    with caplog.at_level(logging.WARNING):
        stats = relabel.run_relabel(out, DEFAULT_MAPPING)

    assert stats["rows"] == 0
    assert "has no rows" in caplog.text
    assert not leftover.exists()


def test_relabel_unknown_label_is_trimmed(tmp_path):
    out = merged_dir(tmp_path, ["garden"])

    stats = relabel.run_relabel(out, DEFAULT_MAPPING, unknown_label="  Other ")

    assert stats["unknown_label"] == "other"
