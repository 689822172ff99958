"""Tests for bench.make_replica, the generator of a replica of the Kaggle CSV files."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pandas as pd
import pytest

from bench.make_replica import (
    COLUMNS,
    FILES,
    HEADER_BYTES,
    MERGED_FILE_NAME,
    REAL_TOTAL_ROWS,
    allocate_rows,
    csv_field_bytes,
    format_rupees,
    main,
    write_replica,
)

SMALL_ROWS = 3000
HEADER_LINE = (",".join(COLUMNS) + "\r\n").encode("utf-8")
REAL_FILE_BYTES = 185_809_045  # sum of the 139 real per-sub-category files


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        digest.update(path.name.encode("utf-8"))
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _data_rows(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))[1:]


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("replica")
    write_replica(out_dir, total_rows=SMALL_ROWS, seed=0)
    return out_dir


def test_embedded_table_matches_real_totals() -> None:
    assert len(FILES) == 139
    assert sum(spec.real_rows for spec in FILES) == REAL_TOTAL_ROWS
    assert sum(spec.real_bytes for spec in FILES) == REAL_FILE_BYTES
    assert sum(spec.real_rows == 0 for spec in FILES) == 27
    main_categories = {spec.main_category for spec in FILES if spec.real_rows}
    assert len(main_categories) == 20
    assert "home, kitchen, pets" in main_categories


@pytest.mark.parametrize("total", [0, 1, 111, 112, 113, 3000, 12_345, REAL_TOTAL_ROWS])
def test_allocate_rows_sums_exactly(total: int) -> None:
    counts = allocate_rows(total)
    header_only = [spec.real_rows == 0 for spec in FILES]

    assert int(counts.sum()) == total
    assert (counts >= 0).all()
    assert all(count == 0 for count, empty in zip(counts, header_only) if empty)
    if total >= 112:
        assert all(count >= 1 for count, empty in zip(counts, header_only) if not empty)


def test_allocate_rows_full_size_is_real() -> None:
    counts = allocate_rows(REAL_TOTAL_ROWS)

    assert counts.tolist() == [spec.real_rows for spec in FILES]


@pytest.mark.parametrize(
    ("paise", "expected"),
    [
        (-1, ""),
        (99_900, "₹999"),
        (3_299_900, "₹32,999"),
        (12_618_900, "₹1,26,189"),
        (28_405, "₹284.05"),
        (123_456_789_00, "₹12,34,56,789"),
    ],
)
def test_format_rupees(paise: int, expected: str) -> None:
    assert format_rupees(paise) == expected


@pytest.mark.parametrize("value", ["", "plain", "a,b", 'say "hi"', "₹1,299", "Décor"])
def test_csv_field_bytes_matches_writer(value: str, tmp_path: Path) -> None:
    path = tmp_path / "field.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle, lineterminator="\r\n").writerow([value, "x"])

    assert csv_field_bytes(value) == path.stat().st_size - len(",x\r\n")


def test_replica_writes_real_file_names(replica: Path) -> None:
    written = sorted(path.name for path in replica.iterdir())

    assert written == sorted(spec.file_name for spec in FILES)
    assert "Home Dcor.csv" in written
    assert MERGED_FILE_NAME not in written


def test_replica_header_only_files(replica: Path) -> None:
    header_only = [spec.file_name for spec in FILES if spec.real_rows == 0]

    assert len(header_only) == 27
    for name in header_only:
        assert (replica / name).read_bytes() == HEADER_LINE
        assert (replica / name).stat().st_size == HEADER_BYTES


def test_replica_header_and_crlf(replica: Path) -> None:
    for spec in FILES:
        raw = (replica / spec.file_name).read_bytes()
        assert raw.startswith(HEADER_LINE), spec.file_name
        assert raw.endswith(b"\r\n"), spec.file_name
        assert raw.count(b"\n") == raw.count(b"\r\n"), spec.file_name


def test_replica_row_total_exact(replica: Path) -> None:
    counts = allocate_rows(SMALL_ROWS)
    rows = {spec.file_name: len(_data_rows(replica / spec.file_name)) for spec in FILES}

    assert sum(rows.values()) == SMALL_ROWS
    assert list(rows.values()) == counts.tolist()


def test_replica_categories_per_file(replica: Path) -> None:
    for spec in FILES:
        for row in _data_rows(replica / spec.file_name):
            assert row[1:3] == [spec.main_category, spec.sub_category], spec.file_name


def test_replica_pandas_reads_each_file(replica: Path) -> None:
    counts = dict(zip((spec.file_name for spec in FILES), allocate_rows(SMALL_ROWS).tolist()))
    for name, count in counts.items():
        frame = pd.read_csv(replica / name, dtype=str, keep_default_na=False)
        assert list(frame.columns) == list(COLUMNS), name
        assert len(frame) == count, name


def test_replica_values_have_real_shape(replica: Path) -> None:
    rows = [row for spec in FILES for row in _data_rows(replica / spec.file_name)]

    assert all(row[0] for row in rows)
    assert all(len(row[0]) <= 125 for row in rows)
    assert all(row[3].startswith("https://m.media-amazon.com/images/") for row in rows)
    assert all(row[4].startswith("https://www.amazon.in/") for row in rows)
    assert all("/dp/B0" in row[4] for row in rows)
    assert any(row[5] == "" for row in rows)
    assert all(row[8] == "" or row[8].startswith("₹") for row in rows)


def test_replica_bytes_near_real(tmp_path: Path) -> None:
    summary = write_replica(tmp_path, total_rows=SMALL_ROWS, seed=1)

    assert summary.rows == SMALL_ROWS
    assert summary.files == 139
    assert summary.bytes == sum(path.stat().st_size for path in tmp_path.iterdir())
    assert summary.bytes == pytest.approx(summary.target_bytes, rel=0.03)


def test_replica_deterministic_for_seed(replica: Path, tmp_path: Path) -> None:
    same_seed = tmp_path / "same"
    other_seed = tmp_path / "other"
    write_replica(same_seed, total_rows=SMALL_ROWS, seed=0)
    write_replica(other_seed, total_rows=SMALL_ROWS, seed=1)

    assert _digest(same_seed) == _digest(replica)
    assert _digest(other_seed) != _digest(replica)


def test_main_writes_merged_file(tmp_path: Path) -> None:
    exit_code = main(["--out", str(tmp_path), "--rows", "500", "--seed", "3", "--merged"])
    merged = tmp_path / MERGED_FILE_NAME

    assert exit_code == 0
    assert merged.read_bytes().startswith(b"," + HEADER_LINE)
    frame = pd.read_csv(merged, index_col=0, dtype=str, keep_default_na=False)
    assert list(frame.columns) == list(COLUMNS)
    assert frame.index.tolist() == [str(index) for index in range(500)]
    per_file = pd.concat(
        [
            pd.read_csv(tmp_path / spec.file_name, dtype=str, keep_default_na=False)
            for spec in FILES
        ],
        ignore_index=True,
    )
    assert frame.reset_index(drop=True).equals(per_file)
    assert len(list(tmp_path.iterdir())) == 140


@pytest.mark.parametrize("argument", [["--rows", "0"], ["--seed", "-1"]])
def test_main_rejects_invalid_arguments(argument: list[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["--out", str(tmp_path), *argument])

    assert raised.value.code == 2


@pytest.mark.slow
def test_full_size_replica(tmp_path: Path) -> None:
    summary = write_replica(tmp_path)

    assert summary.rows == REAL_TOTAL_ROWS
    assert summary.target_bytes == REAL_FILE_BYTES
    assert summary.bytes == pytest.approx(REAL_FILE_BYTES, rel=0.01)
