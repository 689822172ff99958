"""Tests for the merge stage: URL clean-up, deduplication, conflicts and keys."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from data.scripts import extract, merge
from data.scripts.common import read_arrow, write_arrow
from data.scripts.relabel import MERGED_COLUMNS, MappingError
from tests.helpers import TRIMMED_SAMPLES, product_row, requires_samples, write_csv

URL_A = "https://m.media-amazon.com/images/I/a.jpg"
URL_B = "https://m.media-amazon.com/images/I/b.jpg"


def prepare(tmp_path: Path, files: dict[str, list[str]]) -> Path:
    raw = tmp_path / "raw"
    for name, lines in files.items():
        write_csv(raw / name, lines)
    out = tmp_path / "out"
    extract.run_extract(raw, out)
    return out


def merged_frame(out: Path) -> pd.DataFrame:
    return read_arrow(out / "merged.arrow").to_pandas()


def test_merge_drops_unusable_urls_with_reason(tmp_path):
    out = prepare(
        tmp_path,
        {
            "A.csv": [
                product_row(image=URL_A),
                product_row(image=""),
                product_row(image="/images/I/relative.jpg"),
                product_row(image="ftp://example.com/x.jpg"),
                product_row(image="http://exa mple.com/x.jpg"),
            ]
        },
    )

    stats = merge.run_merge(out)

    assert stats["rows_dropped_by_reason"] == {
        "missing_url": 1,
        "relative_url": 1,
        "unsupported_scheme": 1,
        "invalid_url": 1,
    }
    assert merged_frame(out)["image_url"].tolist() == [URL_A]
    with open(out / "rejects" / "merge.csv", encoding="utf-8") as handle:
        rejects = list(csv.DictReader(handle))
    assert [r["reason"] for r in rejects] == [
        "missing_url",
        "relative_url",
        "unsupported_scheme",
        "invalid_url",
    ]
    assert [r["source_line"] for r in rejects] == ["3", "4", "5", "6"]


def test_merge_keeps_first_of_duplicate_urls(tmp_path):
    out = prepare(
        tmp_path,
        {
            "A.csv": [product_row(name="first", image=URL_A), product_row(image=URL_B)],
            "B.csv": [product_row(name="second", image=URL_A)],
            "C.csv": [
                product_row(name="third", image=" https://M.MEDIA-AMAZON.COM/images/I/a.jpg")
            ],
        },
    )

    stats = merge.run_merge(out)
    frame = merged_frame(out).set_index("image_url")

    assert stats["duplicate_rows_dropped"] == 2
    assert stats["urls_with_duplicates"] == 1
    assert frame.loc[URL_A, "name"] == "first"
    assert frame.loc[URL_A, "source_file"] == "A.csv"
    assert frame.loc[URL_A, "duplicate_count"] == 2
    assert frame.loc[URL_B, "duplicate_count"] == 0


def test_merge_counts_conflicting_categories(tmp_path):
    out = prepare(
        tmp_path,
        {
            "A.csv": [
                product_row(main_category="music", image="https://example.com/0.jpg"),
                product_row(main_category="music", image="https://example.com/0.jpg"),
                product_row(main_category="appliances", image=URL_A),
            ],
            "B.csv": [product_row(main_category="Home & Kitchen", image=URL_A)],
            "C.csv": [product_row(main_category="appliances", image=URL_B)],
            "D.csv": [product_row(main_category=" APPLIANCES", image=URL_B)],
        },
    )

    stats = merge.run_merge(out)
    frame = merged_frame(out).set_index("image_url")

    assert stats["urls_with_conflicting_categories"] == 1
    assert stats["duplicate_rows_in_conflicting_urls"] == 1
    assert list(frame.loc[URL_A, "conflicting_main_categories"]) == ["home & kitchen"]
    assert list(frame.loc[URL_B, "conflicting_main_categories"]) == []
    assert list(frame.loc["https://example.com/0.jpg", "conflicting_main_categories"]) == []
    assert frame.loc["https://example.com/0.jpg", "duplicate_count"] == 1


def test_merge_key_is_stable_and_url_derived(tmp_path):
    out = prepare(tmp_path, {"A.csv": [product_row(image=URL_A), product_row(image=URL_B)]})
    merge.run_merge(out)
    first = merged_frame(out).set_index("image_url")["key"]

    out2 = prepare(tmp_path / "again", {"Z.csv": [product_row(image=URL_B)]})
    merge.run_merge(out2)
    second = merged_frame(out2).set_index("image_url")["key"]

    assert first[URL_B] == second[URL_B]
    assert first[URL_A] != first[URL_B]
    assert first[URL_A] == merge.url_key(URL_A)
    assert len(first[URL_A]) == 16


def test_merge_normalises_urls_before_dedupe(tmp_path):
    out = prepare(
        tmp_path,
        {
            "A.csv": [
                product_row(image="https://Example.com:443/a b.jpg"),
                product_row(image="https://example.com/a%20b.jpg"),
            ]
        },
    )

    stats = merge.run_merge(out)

    assert merged_frame(out)["image_url"].tolist() == ["https://example.com/a%20b.jpg"]
    extract_stats = json.loads((out / "stats" / "extract.json").read_text(encoding="utf-8"))
    assert extract_stats["counters"]["urls_rewritten"] == 1
    assert stats["duplicate_rows_dropped"] == 1


def test_merge_without_extract_names_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="make extract"):
        merge.run_merge(tmp_path)


def test_merge_checks_mapping_before_work(tmp_path):
    out = prepare(tmp_path, {"A.csv": [product_row()]})
    bad = tmp_path / "mapping.toml"
    bad.write_text("[labels\n")

    with pytest.raises(MappingError, match="not valid TOML"):
        merge.run_merge(out, bad)
    assert not (out / "merged.arrow").exists()


def test_merge_writes_stats(tmp_path):
    out = prepare(tmp_path, {"A.csv": [product_row(image=URL_A)]})
    merge.run_merge(out)

    stats = json.loads((out / "stats" / "merge.json").read_text())
    assert stats["rows_kept"] == 1
    assert stats["rows_per_main_category"] == {"appliances": 1}


@requires_samples(TRIMMED_SAMPLES)
def test_merge_real_samples_shows_merged_file_duplicates(tmp_path):
    out = tmp_path / "out"
    extract.run_extract(TRIMMED_SAMPLES, out)

    stats = merge.run_merge(out)
    frame = merged_frame(out)

    # Amazon-Products.csv in the sample folder repeats every per-category row, so at
    # least its 10,930 rows are duplicates on top of those across category files.
    assert stats["rows_read"] == 21_760
    assert stats["duplicate_rows_dropped"] >= 10_930
    assert stats["rows_kept"] + stats["duplicate_rows_dropped"] == 21_760
    assert frame["image_url"].is_unique
    assert frame["key"].is_unique


def test_merge_with_no_usable_url_writes_empty_table(tmp_path):
    out = prepare(tmp_path, {"A.csv": [product_row(image=""), product_row(image="ftp://x/y")]})

    stats = merge.run_merge(out)

    assert stats["rows_kept"] == 0
    assert merged_frame(out).empty
    assert "key" in merged_frame(out).columns


def test_merge_rejects_file_hides_credentials(tmp_path):
    out = prepare(tmp_path, {"A.csv": [product_row(image="https://alice:Secret123@e.com/x.jpg")]})

    merge.run_merge(out)

    text = (out / "rejects" / "merge.csv").read_text()
    assert "Secret123" not in text
    assert "https://***@e.com/x.jpg" in text


def test_merge_prefers_category_file_over_merged_file(tmp_path):
    out = prepare(
        tmp_path,
        {
            "Amazon-Products.csv": [product_row(image=URL_A)],
            "Washing Machines.csv": [product_row(image=URL_A)],
        },
    )

    merge.run_merge(out)

    assert merged_frame(out)["source_file"].tolist() == ["Washing Machines.csv"]


def test_merge_key_collision_detected():
    urls = pa.chunked_array([pa.array(["https://a/1"]), pa.array(["https://a/2"])])

    with pytest.raises(RuntimeError, match="share a key"):
        merge._check_no_collisions(urls, np.array([True, True]), np.array([2]))


def test_deduplicate_key_collision():
    table = pa.table(
        {
            "source_file": ["A.csv", "A.csv", "A.csv"],
            "main_category": ["music", "music", "music"],
            "image_url": ["https://a/1", "https://a/2", "https://a/1"],
            "key_hash": pa.array([7, 7, 7], pa.uint64()),
        }
    )

    with pytest.raises(RuntimeError, match="share a key"):
        merge.deduplicate(table)
    fixed = table.set_column(3, "key_hash", pa.array([7, 8, 7], pa.uint64()))
    kept, counts = merge.deduplicate(fixed)
    assert kept.column("image_url").to_pylist() == ["https://a/1", "https://a/2"]
    assert kept.column("duplicate_count").to_pylist() == [1, 0]
    assert counts["duplicate_rows_dropped"] == 1


def test_merge_rejects_old_extracted_files(tmp_path):
    out = prepare(tmp_path, {"A.csv": [product_row()]})
    path = next((out / "extracted").glob("*.arrow"))
    old = read_arrow(path).drop_columns(["url_drop_reason", "key_hash"])
    write_arrow(path, old)

    with pytest.raises(ValueError, match="make extract"):
        merge.run_merge(out)
    assert merge.main(["--processed-dir", str(out)]) == 1


def test_merged_columns_match_what_relabel_reads(tmp_path):
    out = prepare(tmp_path, {"A.csv": [product_row()]})

    merge.run_merge(out)

    assert tuple(read_arrow(out / "merged.arrow").column_names) == MERGED_COLUMNS


def test_merge_names_damaged_extracted_file(tmp_path):
    out = prepare(tmp_path, {"A.csv": [product_row()], "B.csv": [product_row()]})
    damaged = sorted((out / "extracted").glob("*.arrow"))[0]
    damaged.write_bytes(b"not arrow")

    with pytest.raises(ValueError, match=f"{damaged.name}.*make extract"):
        merge.run_merge(out)


def test_merge_removes_its_leftover_temporary_files(tmp_path):
    out = prepare(tmp_path, {"A.csv": [product_row()]})
    leftover = out / ".merged.arrow.k1ll3d.tmp"
    leftover.write_bytes(b"partial")
    other = out / ".manifest.parquet.f3tch.tmp"
    other.write_bytes(b"another stage's write in progress")

    merge.run_merge(out)

    assert not leftover.exists()
    assert other.exists()


def test_merge_warns_when_no_url_is_usable(tmp_path, caplog):
    out = prepare(tmp_path, {"A.csv": [product_row(image=""), product_row(image="a.jpg")]})

    with caplog.at_level(logging.WARNING):
        stats = merge.run_merge(out)

    assert stats["rows_kept"] == 0
    assert "no row has a usable image URL" in caplog.text
