"""Tests for the extract stage on real sample files and on small files with known faults."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from data.scripts import extract
from data.scripts.common import PROJECT_ROOT, read_arrow, write_arrow
from data.scripts.urls import url_key
from tests.helpers import (
    ALL_ELECTRONICS,
    HEADER,
    TRIMMED_SAMPLES,
    product_row,
    requires_samples,
    write_csv,
)


def run(raw: Path, out: Path, **kwargs) -> dict:
    return extract.run_extract(raw, out, **kwargs)


def rows_of(out: Path) -> pd.DataFrame:
    files = sorted((out / "extracted").glob("*.arrow"))
    return pd.concat([read_arrow(f).to_pandas() for f in files], ignore_index=True)


def extract_one(tmp_path: Path, lines: list[str], **write_kwargs) -> tuple[pd.DataFrame, dict]:
    raw = tmp_path / "raw"
    write_csv(raw / "Sample.csv", lines, **write_kwargs)
    stats = run(raw, tmp_path / "out")
    return rows_of(tmp_path / "out"), stats


# ---- well-formed input ----


def test_extract_keeps_columns_and_origin(tmp_path):
    frame, stats = extract_one(tmp_path, [product_row(), product_row(name="Second")])

    assert list(frame.columns) == [field.name for field in extract.OUTPUT_SCHEMA]
    assert frame["source_file"].tolist() == ["Sample.csv", "Sample.csv"]
    assert frame["source_row"].tolist() == [0, 1]
    assert frame["source_line"].tolist() == [2, 3]
    assert frame["name"].tolist() == ["Plain product", "Second"]
    assert frame["main_category"].tolist() == ["appliances", "appliances"]
    assert frame["image_url"].iloc[0].endswith("31UISB90sYL._AC_UL320_.jpg")
    assert stats["rows_read"] == 2
    assert stats["rows_written"] == 2
    assert stats["files_read_line_by_line"] == []


def test_extract_ignores_price_junk(tmp_path):
    lines = [
        product_row(ratings="Get", no_of_ratings="FREE Delivery by Amazon"),
        product_row(ratings="", no_of_ratings="", discount_price="₹68.99"),
        product_row(ratings="₹68.99", no_of_ratings="24.0", actual_price='"₹32,999"'),
        product_row(discount_price="", actual_price=""),
    ]
    frame, stats = extract_one(tmp_path, lines)

    # Ratings and prices are not kept; junk in them neither drops nor shifts a row.
    assert not {"ratings", "no_of_ratings", "discount_price", "actual_price"} & set(frame.columns)
    assert stats["rows_written"] == 4
    assert stats["files_read_line_by_line"] == []
    assert frame["source_row"].tolist() == [0, 1, 2, 3]
    assert frame["main_category"].tolist() == ["appliances"] * 4
    assert frame["url_drop_reason"].isna().all()


def test_extract_normalises_and_hashes_urls(tmp_path):
    lines = [
        product_row(image=" https://Example.com:443/a b.jpg "),
        product_row(image="https://example.com/a%20b.jpg"),
        product_row(image="images/relative.jpg"),
        product_row(image=""),
    ]
    frame, stats = extract_one(tmp_path, lines)

    canonical = "https://example.com/a%20b.jpg"
    assert frame["image_url"].tolist() == [canonical, canonical, "images/relative.jpg", ""]
    assert frame["url_drop_reason"].isna().tolist() == [True, True, False, False]
    assert frame["url_drop_reason"].tolist()[2:] == ["relative_url", "missing_url"]
    key = int(url_key(canonical), 16)
    assert frame["key_hash"].tolist() == [key, key, 0, 0]
    assert stats["counters"]["urls_rewritten"] == 1


def test_extract_normalises_category_case_and_spaces(tmp_path):
    lines = [
        product_row(main_category=" Appliances "),
        product_row(main_category="APPLIANCES", sub_category="  Air   Conditioners "),
        product_row(main_category="appliances"),
    ]
    frame, stats = extract_one(tmp_path, lines)

    assert set(frame["main_category"]) == {"appliances"}
    assert frame["sub_category"].iloc[1] == "Air Conditioners"
    assert stats["counters"]["main_category_values_normalised"] == 2
    assert stats["counters"]["sub_category_values_normalised"] == 1


# ---- faults from the issue list ----


def test_extract_utf8_bom_before_header(tmp_path):
    frame, stats = extract_one(tmp_path, [product_row()], bom=True)

    assert len(frame) == 1
    assert frame["name"].iloc[0] == "Plain product"
    assert stats["files_with_bom"] == 1


def test_extract_unquoted_quote_and_commas_in_name(tmp_path):
    lines = [
        product_row(name='Samsung 55" Crystal 4K, Smart LED TV, Black'),
        product_row(name="Next row"),
    ]
    frame, stats = extract_one(tmp_path, lines)

    assert frame["name"].tolist() == ['Samsung 55" Crystal 4K, Smart LED TV, Black', "Next row"]
    assert frame["main_category"].tolist() == ["appliances", "appliances"]
    assert frame["source_row"].tolist() == [0, 1]
    assert stats["counters"]["rows_repaired_unquoted_commas"] == 1
    assert stats["files_read_line_by_line"] == ["Sample.csv"]


def test_extract_lone_quote_does_not_swallow_rows(tmp_path):
    lines = [
        product_row(name='"Lone quote at the start, never closed'),
        product_row(name="Row two"),
        product_row(name="Row three"),
    ]
    frame, stats = extract_one(tmp_path, lines)

    assert frame["name"].tolist() == [
        '"Lone quote at the start, never closed',
        "Row two",
        "Row three",
    ]
    assert frame["source_line"].tolist() == [2, 3, 4]
    assert stats["counters"]["rows_repaired_stray_quote"] == 1
    assert stats["rows_rejected"] == 0


def test_extract_quoted_value_spanning_lines(tmp_path):
    lines = [product_row(name='"First line\r\nsecond line"'), product_row(name="After")]
    frame, stats = extract_one(tmp_path, lines)

    assert frame["name"].tolist() == ["First line second line", "After"]
    assert frame["source_row"].tolist() == [0, 1]
    assert frame["source_line"].tolist() == [2, 4]
    assert stats["counters"]["rows_spanning_lines"] == 1


def test_extract_embedded_carriage_return(tmp_path):
    lines = [
        product_row(name="Broken\rname"),
        product_row(name='"Quoted\rname"'),
        product_row(name="Last"),
    ]
    frame, stats = extract_one(tmp_path, lines)

    assert frame["name"].tolist() == ["Broken name", "Quoted name", "Last"]
    assert frame["source_line"].tolist() == [2, 3, 4]
    assert stats["counters"]["rows_with_carriage_return"] == 2


def test_extract_row_with_too_few_fields_is_recorded(tmp_path):
    lines = [product_row(), "only,three,fields", product_row(name="Kept")]
    frame, stats = extract_one(tmp_path, lines)

    assert frame["name"].tolist() == ["Plain product", "Kept"]
    assert stats["rows_rejected_by_reason"] == {"too_few_fields": 1}
    with open(tmp_path / "out" / "rejects" / "extract.csv", encoding="utf-8") as handle:
        rejects = list(csv.DictReader(handle))
    assert rejects == [
        {
            "source_file": "Sample.csv",
            "source_line": "3",
            "reason": "too_few_fields",
            "text": "only,three,fields",
        }
    ]


def test_extract_header_only_file(tmp_path):
    frame, stats = extract_one(tmp_path, [])

    assert len(frame) == 0
    assert stats["header_only_files"] == ["Sample.csv"]
    assert stats["files_failed"] == []


def test_extract_missing_column_fails_file_not_batch(tmp_path, caplog):
    raw = tmp_path / "raw"
    write_csv(raw / "Good.csv", [product_row()])
    write_csv(raw / "NoImage.csv", ["a,b,c"], header="name,main_category,sub_category")

    stats = run(raw, tmp_path / "out")

    assert stats["rows_written"] == 1
    assert [f["source_file"] for f in stats["files_failed"]] == ["NoImage.csv"]
    assert "NoImage.csv" in caplog.text
    assert "'image'" in caplog.text


def test_extract_missing_column_strict_raises(tmp_path):
    raw = tmp_path / "raw"
    write_csv(raw / "NoImage.csv", ["a,b,c"], header="name,main_category,sub_category")

    with pytest.raises(extract.FileError, match="could not be extracted"):
        run(raw, tmp_path / "out", strict=True)


def test_extract_repairs_mojibake(tmp_path):
    double_encoded = "Home Décor".encode("utf-8").decode("cp1252")
    lines = [
        product_row(sub_category=double_encoded, name="Kidsâ€™ bag"),
        product_row(name="eller santé® charger"),
    ]
    frame, stats = extract_one(tmp_path, lines)

    assert frame["sub_category"].iloc[0] == "Home Décor"
    assert frame["name"].iloc[0] == "Kids’ bag"
    assert frame["name"].iloc[1] == "eller santé® charger"
    assert stats["counters"]["mojibake_repaired"] == 2
    assert stats["counters"]["mojibake_suspect"] == 1


def test_extract_cp1252_file_is_decoded(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    text = (
        HEADER
        + "\r\n"
        + product_row(name="Café table", discount_price="100", actual_price="200")
        + "\r\n"
    )
    (raw / "Legacy.csv").write_bytes(text.encode("cp1252"))

    stats = run(raw, tmp_path / "out")
    frame = rows_of(tmp_path / "out")

    assert frame["name"].tolist() == ["Café table"]
    assert stats["files_not_utf8"] == ["Legacy.csv"]


def test_extract_drops_unnamed_index_column(tmp_path):
    leading = "," + HEADER
    lines = ["0," + product_row(name="A"), "1," + product_row(name="B")]
    frame, stats = extract_one(tmp_path, lines, header=leading)

    assert frame["name"].tolist() == ["A", "B"]
    assert frame["main_category"].tolist() == ["appliances", "appliances"]
    assert stats["unnamed_columns_dropped"] == 1


def test_extract_skips_non_csv_and_hidden_files(tmp_path):
    raw = tmp_path / "raw"
    write_csv(raw / "Good.csv", [product_row()])
    (raw / "notes.txt").write_text("not data")
    (raw / "dataset.zip").write_bytes(b"PK\x03\x04")
    write_csv(raw / ".ipynb_checkpoints" / "Good-checkpoint.csv", [product_row()])

    stats = run(raw, tmp_path / "out")

    assert stats["rows_written"] == 1
    assert sorted(s["source_file"] for s in stats["files_skipped"]) == ["dataset.zip", "notes.txt"]


def test_extract_binary_file_named_csv_fails_alone(tmp_path):
    raw = tmp_path / "raw"
    write_csv(raw / "Good.csv", [product_row()])
    (raw / "Broken.csv").write_bytes(os.urandom(2000).replace(b"\n", b"x"))

    stats = run(raw, tmp_path / "out")

    assert stats["rows_written"] == 1
    assert [f["source_file"] for f in stats["files_failed"]] == ["Broken.csv"]


def test_extract_missing_raw_dir_names_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="make download"):
        run(tmp_path / "nope", tmp_path / "out")


# ---- caching and atomic output ----


def test_extract_rerun_reuses_unchanged_files(tmp_path):
    raw = tmp_path / "raw"
    write_csv(raw / "A.csv", [product_row()])
    write_csv(raw / "B.csv", [product_row(name="B")])
    first = run(raw, tmp_path / "out")
    write_csv(raw / "B.csv", [product_row(name="B"), product_row(name="B2")])
    os.utime(raw / "B.csv", ns=(1, 1))

    second = run(raw, tmp_path / "out")

    assert first["files_extracted"] == 2
    assert second["files_extracted"] == 1
    assert second["files_unchanged"] == 1
    assert second["rows_written"] == 3


def test_extract_removes_output_of_deleted_source(tmp_path):
    raw = tmp_path / "raw"
    write_csv(raw / "A.csv", [product_row()])
    write_csv(raw / "B.csv", [product_row()])
    run(raw, tmp_path / "out")
    (raw / "B.csv").unlink()

    stats = run(raw, tmp_path / "out")

    assert len(stats["outputs_removed"]) == 1
    assert len(list((tmp_path / "out" / "extracted").glob("*.arrow"))) == 1


def test_extract_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    write_csv(raw / "A.csv", [product_row()] * 10)

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(extract, "transform_columns", fail)
    with pytest.raises(KeyboardInterrupt):
        run(raw, tmp_path / "out")

    assert list((tmp_path / "out" / "extracted").iterdir()) == []


def test_extract_output_name_is_safe_and_unique():
    first = extract.output_name("Home Dcor.csv")
    second = extract.output_name("sub/Home Dcor.csv")
    traversal = extract.output_name("../../etc/passwd.csv")

    assert first != second
    assert "/" not in traversal
    assert not traversal.startswith(".")
    assert first.endswith(".arrow")


def test_extract_memory_does_not_hold_whole_file(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    write_csv(raw / "Big.csv", [product_row(name=f"item {i}") for i in range(3000)])
    monkeypatch.setattr(extract, "BLOCK_SIZE", 64 << 10)
    monkeypatch.setattr(extract, "WHOLE_FILE_BYTES", 0)
    batch_sizes = []
    original = extract.transform_columns

    def record(columns, **kwargs):
        batch_sizes.append(len(kwargs["source_rows"]))
        return original(columns, **kwargs)

    monkeypatch.setattr(extract, "transform_columns", record)
    stats = run(raw, tmp_path / "out")

    assert stats["rows_written"] == 3000
    assert len(batch_sizes) > 1
    assert max(batch_sizes) < 3000


# ---- real sample files ----


@requires_samples(TRIMMED_SAMPLES)
def test_extract_real_trimmed_files(tmp_path):
    stats = run(TRIMMED_SAMPLES, tmp_path / "out")

    assert stats["files_found"] == 113
    assert stats["files_failed"] == []
    # 10,830 rows in the 112 per-category files plus 10,930 in the merged file.
    assert stats["rows_read"] == 21_760
    assert stats["rows_written"] == 21_760
    assert stats["unnamed_columns_dropped"] == 1
    frame = rows_of(tmp_path / "out")
    assert frame["main_category"].nunique() == 20
    assert frame["image_url"].str.startswith("https://").all()


@requires_samples(ALL_ELECTRONICS)
def test_extract_real_file_with_junk_ratings(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(ALL_ELECTRONICS, raw / "All Electronics.csv")

    stats = run(raw, tmp_path / "out")
    frame = rows_of(tmp_path / "out")
    source = pd.read_csv(ALL_ELECTRONICS, dtype=str, keep_default_na=False)

    assert stats["rows_written"] == 9_600
    assert frame["image_url"].tolist() == source["image"].str.strip().tolist()
    assert frame["source_row"].tolist() == list(range(9_600))
    junk = source.index[source["ratings"] == "Get"]
    assert len(junk) == 24
    assert frame.loc[junk, "name"].tolist() == source.loc[junk, "name"].tolist()


@requires_samples(TRIMMED_SAMPLES)
def test_extract_real_file_with_injected_faults(tmp_path):
    """A real file with a BOM, a lone quote and an embedded CR keeps every row."""
    source = TRIMMED_SAMPLES / "Air Conditioners.csv"
    lines = source.read_bytes().decode("utf-8").split("\r\n")
    header, data = lines[0], [line for line in lines[1:] if line]
    data[3] = '"' + data[3]  # a quote that never closes
    data[5] = data[5].replace(" ", "\r", 1)  # a carriage return inside an unquoted name
    write_csv(tmp_path / "raw" / "Air Conditioners.csv", data, header=header, bom=True)

    stats = run(tmp_path / "raw", tmp_path / "out")
    frame = rows_of(tmp_path / "out")
    original = pd.read_csv(source, dtype=str, keep_default_na=False)

    assert stats["rows_written"] == len(original) == 100
    assert frame["image_url"].tolist() == original["image"].tolist()
    assert frame["source_row"].tolist() == list(range(100))


def test_extract_stats_file_written(tmp_path):
    extract_one(tmp_path, [product_row()])

    payload = json.loads((tmp_path / "out" / "stats" / "extract.json").read_text())
    assert payload["stage"] == "extract"
    assert payload["rows_written"] == 1


def test_extract_cli_exit_codes(tmp_path):
    raw = tmp_path / "raw"
    write_csv(raw / "A.csv", [product_row()])

    assert extract.main(["--raw-dir", str(raw), "--out-dir", str(tmp_path / "out")]) == 0
    assert extract.main(["--raw-dir", str(tmp_path / "missing")]) == 1
    table = read_arrow(next((tmp_path / "out" / "extracted").glob("*.arrow")))
    assert table.num_rows == 1


# ---- inputs found by trying to break the stage ----


@pytest.mark.timeout(60)
def test_extract_line_with_many_quotes_is_bounded(tmp_path):
    hostile = ',"'.join(["x"] * 20_000)
    frame, stats = extract_one(tmp_path, [hostile, product_row(name="After")])

    assert frame["name"].tolist() == ["After"]
    assert stats["rows_rejected"] == 1


def test_extract_huge_field_rejects_row_only(tmp_path):
    raw = tmp_path / "raw"
    write_csv(
        raw / "A.csv", [product_row(name="Toaster, 2-slice"), product_row(name="Y" * 200_000)]
    )
    write_csv(raw / "B.csv", [product_row(name="ok")])

    stats = run(raw, tmp_path / "out")

    assert stats["files_failed"] == []
    assert stats["rows_written"] == 3
    assert rows_of(tmp_path / "out")["name"].str.len().max() == 200_000


def test_extract_lone_quote_then_row_with_quote_stays_two_rows(tmp_path):
    lines = [
        product_row(name='"Hello Kitty bag', image="https://e.com/a.jpg", no_of_ratings="12"),
        product_row(name='Samsung 24" Monitor', image="https://e.com/e.jpg", no_of_ratings="22"),
    ]
    frame, stats = extract_one(tmp_path, lines)

    assert frame["image_url"].tolist() == ["https://e.com/a.jpg", "https://e.com/e.jpg"]
    assert frame["name"].tolist() == ['"Hello Kitty bag', 'Samsung 24" Monitor']
    assert stats["counters"].get("rows_spanning_lines", 0) == 0


def test_extract_blank_lines_keep_pandas_row_numbers(tmp_path):
    lines = [product_row(name="A"), "", product_row(name="B"), "", ""]
    frame, stats = extract_one(tmp_path, lines)
    expected = pd.read_csv(tmp_path / "raw" / "Sample.csv", dtype=str)

    assert frame["name"].tolist() == expected["name"].tolist() == ["A", "B"]
    assert frame["source_row"].tolist() == expected.index.tolist()
    assert frame["source_line"].tolist() == [2, 4]
    assert stats["counters"]["blank_lines_skipped"] == 3


def test_extract_file_name_not_utf8(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_csv(raw / os.fsdecode(b"caf\xe9.csv"), [product_row()])
    write_csv(raw / os.fsdecode(b"caf\xe8.csv"), [product_row(), product_row()])

    stats = run(raw, tmp_path / "out")

    # The bytes that are not UTF-8 stay visible, so the two names stay apart.
    assert stats["rows_written"] == 3
    assert stats["rows_per_file"] == {"caf\\xe8.csv": 2, "caf\\xe9.csv": 1}
    names = sorted(rows_of(tmp_path / "out")["source_file"])
    assert names == ["caf\\xe8.csv", "caf\\xe8.csv", "caf\\xe9.csv"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ((HEADER + "\r\n").encode("utf-16"), "UTF-16"),
        ((HEADER + "\r" + product_row() + "\r").encode(), "carriage return"),
    ],
)
def test_extract_unsupported_encodings_named(tmp_path, content, match):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "Odd.csv").write_bytes(content)

    stats = run(raw, tmp_path / "out")

    assert len(stats["files_failed"]) == 1
    assert match in stats["files_failed"][0]["reason"]


def test_extract_folder_problems_named(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.csv").write_text(HEADER)

    with pytest.raises(FileNotFoundError, match="no \\*.csv files"):
        run(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="is a file"):
        run(tmp_path / "file.csv", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="RAW_DIR is empty"):
        run(Path(""), tmp_path / "out")


def test_extract_unwritable_out_dir_fails_before_work(tmp_path):
    raw = tmp_path / "raw"
    write_csv(raw / "A.csv", [product_row()])
    (tmp_path / "blocker").write_text("a file where a folder should be")

    with pytest.raises(OSError, match="cannot write to"):
        run(raw, tmp_path / "blocker" / "out")
    assert extract.main(["--raw-dir", str(raw), "--out-dir", str(tmp_path / "blocker")]) == 1


def test_extract_removes_leftover_temporary_files(tmp_path):
    raw = tmp_path / "raw"
    write_csv(raw / "A.csv", [product_row()])
    leftover = tmp_path / "out" / "extracted" / ".A-1234.parquet.abcd.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a file")

    run(raw, tmp_path / "out")

    assert not leftover.exists()


def test_extract_streaming_and_whole_file_agree(tmp_path, monkeypatch):
    lines = [product_row(name=f"item {i}", ratings="Get" if i % 7 else "4.1") for i in range(2000)]
    raw = tmp_path / "raw"
    write_csv(raw / "A.csv", lines)
    whole = run(raw, tmp_path / "whole")
    monkeypatch.setattr(extract, "BLOCK_SIZE", 32 << 10)
    monkeypatch.setattr(extract, "WHOLE_FILE_BYTES", 0)
    streamed = run(raw, tmp_path / "streamed")

    pd.testing.assert_frame_equal(rows_of(tmp_path / "whole"), rows_of(tmp_path / "streamed"))
    assert whole["counters"] == streamed["counters"]


# ---- reruns, damaged caches and interruptions ----


def test_extract_rebuilds_damaged_cached_output(tmp_path):
    raw = tmp_path / "raw"
    write_csv(raw / "A.csv", [product_row(), product_row(name="Second")])
    run(raw, tmp_path / "out")
    output = next((tmp_path / "out" / "extracted").glob("*.arrow"))
    output.write_bytes(output.read_bytes()[:100])

    stats = run(raw, tmp_path / "out")

    assert stats["files_extracted"] == 1
    assert stats["files_unchanged"] == 0
    assert rows_of(tmp_path / "out")["name"].tolist() == ["Plain product", "Second"]


def test_extract_rebuilds_output_of_older_layout(tmp_path):
    raw = tmp_path / "raw"
    write_csv(raw / "A.csv", [product_row()])
    run(raw, tmp_path / "out")
    output = next((tmp_path / "out" / "extracted").glob("*.arrow"))
    write_arrow(output, read_arrow(output).drop_columns(["key_hash"]))

    stats = run(raw, tmp_path / "out")

    assert stats["files_extracted"] == 1
    assert "key_hash" in rows_of(tmp_path / "out").columns


def test_extract_sees_edit_that_restores_mtime(tmp_path):
    raw = tmp_path / "raw"
    path = write_csv(raw / "A.csv", [product_row(main_category="music")])
    run(raw, tmp_path / "out")
    before = path.stat()
    path.write_bytes(path.read_bytes().replace(b"music", b"MUSIC"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))

    stats = run(raw, tmp_path / "out")

    assert stats["files_extracted"] == 1
    assert stats["counters"]["main_category_values_normalised"] == 1


def test_extract_lists_csv_names_that_are_not_files(tmp_path):
    raw = tmp_path / "raw"
    write_csv(raw / "A.csv", [product_row()])
    (raw / "gone.csv").symlink_to(raw / "missing.csv")
    os.mkfifo(raw / "pipe.csv")
    (raw / "folder.csv").mkdir()

    stats = run(raw, tmp_path / "out")

    assert stats["rows_written"] == 1
    assert {"source_file": "gone.csv", "reason": "not a regular file"} in stats["files_skipped"]
    assert {"source_file": "pipe.csv", "reason": "not a regular file"} in stats["files_skipped"]


@pytest.mark.parametrize("layout", ["processed inside raw", "raw inside processed"])
def test_extract_rejects_overlapping_folders(tmp_path, layout):
    raw = tmp_path / "raw"
    write_csv(raw / "A.csv", [product_row()])
    out = raw / "processed" if layout == "processed inside raw" else tmp_path

    with pytest.raises(ValueError, match="overlap"):
        run(raw, out)
    assert not (out / "extracted").exists()
    assert extract.main(["--raw-dir", str(raw), "--out-dir", str(raw)]) == 1


def test_extract_refuses_second_run_on_same_folder(tmp_path):
    raw = tmp_path / "raw"
    write_csv(raw / "A.csv", [product_row()])
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from data.scripts.common import stage_lock\n"
            "with stage_lock(sys.argv[1]):\n"
            "    print('locked', flush=True)\n"
            "    time.sleep(60)\n",
            str(out),
        ],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeError, match=f"another process \\({holder.pid}\\)"):
            run(raw, out)
    finally:
        holder.kill()
        holder.wait()
    assert not any((out / "extracted").glob("*.arrow"))
    assert run(raw, out)["rows_written"] == 1


@pytest.mark.slow
def test_extract_ctrl_c_stops_without_waiting_for_every_file(tmp_path):
    raw = tmp_path / "raw"
    # Every file has a value with a line break, so each one is read line by line.
    lines = [product_row(name=f'"Name {i}\nsecond line"') for i in range(20_000)]
    for number in range(24):
        write_csv(raw / f"File {number:02d}.csv", lines)
    out = tmp_path / "out"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "data.scripts.extract",
            "--raw-dir",
            str(raw),
            "--out-dir",
            str(out),
        ],
        cwd=PROJECT_ROOT,
        env={**os.environ, "TQDM_DISABLE": "1"},
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not any((out / "extracted").glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 130
    assert "interrupted" in stderr
    done = len(list((out / "extracted").glob("*.arrow")))
    assert 1 <= done < 24
    assert not list((out / "extracted").glob(".*.tmp"))
    stats = run(raw, out)
    assert stats["files_unchanged"] == done
    assert stats["rows_written"] == 24 * 20_000


def test_extract_redacts_passwords_in_log_and_rejects(tmp_path, caplog):
    secret_url = "https://admin:s3cret@img.example/a.jpg"
    lines = [product_row(), f"short row,{secret_url}", product_row(image=secret_url)]

    with caplog.at_level(logging.INFO):
        frame, stats = extract_one(tmp_path, lines)

    rejects = (tmp_path / "out" / "rejects" / "extract.csv").read_text(encoding="utf-8")
    assert stats["rows_rejected"] == 1
    assert "https://***@img.example/a.jpg" in rejects
    assert "s3cret" not in rejects
    assert "reading line by line" in caplog.text
    assert "s3cret" not in caplog.text
    assert frame["url_drop_reason"].tolist()[-1] == "invalid_url"
