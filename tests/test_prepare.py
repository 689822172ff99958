"""Tests for ``make prepare``: the three data stages in one process."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data.scripts import extract, merge, prepare, relabel
from data.scripts.relabel import DEFAULT_MAPPING, MappingError
from tests.helpers import product_row, write_csv

URL = "https://m.media-amazon.com/images/I/{}.jpg"


def write_raw(raw: Path) -> None:
    write_csv(
        raw / "Music.csv",
        [
            product_row(main_category="music", image=URL.format("a")),
            product_row(main_category="music", image=""),
            product_row(main_category="music", image=URL.format("b")),
        ],
    )
    write_csv(
        raw / "Toys.csv",
        [
            product_row(main_category="toys & baby products", image=URL.format("a")),
            product_row(main_category="toys & baby products", image=URL.format("c")),
        ],
    )


def test_prepare_equals_staged_run(tmp_path):
    raw = tmp_path / "raw"
    write_raw(raw)

    stats = prepare.run_prepare(raw, tmp_path / "one")
    extract.run_extract(raw, tmp_path / "three")
    merge.run_merge(tmp_path / "three")
    relabel.run_relabel(tmp_path / "three", DEFAULT_MAPPING)

    one = pq.read_table(tmp_path / "one" / "products.parquet")
    three = pq.read_table(tmp_path / "three" / "products.parquet")
    assert one.equals(three)
    assert one.column("image_url").to_pylist() == [URL.format(x) for x in "abc"]
    assert one.column("duplicate_count").to_pylist() == [1, 0, 0]
    assert stats["merge"]["rows_dropped_by_reason"]["missing_url"] == 1
    assert stats["relabel"]["rows"] == 3
    for stage in ("extract", "merge", "relabel"):
        assert (tmp_path / "one" / "stats" / f"{stage}.json").is_file()


def test_prepare_checks_mapping_first(tmp_path):
    raw = tmp_path / "raw"
    write_raw(raw)
    bad = tmp_path / "mapping.toml"
    bad.write_text("[labels\n", encoding="utf-8")

    with pytest.raises(MappingError, match="not valid TOML"):
        prepare.run_prepare(raw, tmp_path / "out", bad)
    with pytest.raises(MappingError, match="UNKNOWN_LABEL"):
        prepare.run_prepare(raw, tmp_path / "out", unknown_label="!!!")
    assert not (tmp_path / "out").exists()


def test_prepare_unknown_category_stops(tmp_path, caplog):
    raw = tmp_path / "raw"
    write_csv(raw / "Odd.csv", [product_row(main_category="garden tools")])
    out = tmp_path / "out"

    with caplog.at_level(logging.ERROR):
        code = prepare.main(["--raw-dir", str(raw), "--out-dir", str(out)])

    assert code == 1
    assert "'garden tools'" in caplog.text
    assert not (out / "products.parquet").exists()
    code = prepare.main(["--raw-dir", str(raw), "--out-dir", str(out), "--unknown-label", "Other"])
    assert code == 0
    labels = json.loads((out / "labels.json").read_text(encoding="utf-8"))
    assert {entry["label"]: entry["rows"] for entry in labels}["other"] == 1


def test_prepare_cli_missing_raw_folder(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        code = prepare.main(["--raw-dir", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path)])

    assert code == 1
    assert "make download" in caplog.text
