"""Merge stage: one table of unique, normalised image URLs from all extracted files.

Reads ``<processed-dir>/extracted/*.arrow`` (the extract stage's output) and writes
``<processed-dir>/merged.arrow`` (Arrow IPC, which the relabel stage maps into memory):

1. A row without a usable http(s) URL is dropped with its reason (``missing_url``,
   ``relative_url``, ``unsupported_scheme``, ``invalid_url``) and listed in
   ``rejects/merge.csv``. The extract stage has already normalised each URL (see
   ``data.scripts.urls``) and found the reason.
2. Rows that share a URL are reduced to the first one in source order (file name, then
   row, with the dataset's merged ``Amazon-Products.csv`` last). The kept row records
   how many others it stood for (``duplicate_count``) and the other main categories
   they carried (``conflicting_main_categories``): the same photo under two categories
   is a label-noise signal for later stages.
3. ``key`` is a stable id derived from the URL alone (16 hex digits of XXH3-64, see
   ``data.scripts.urls.url_key``), so it does not change when rows are added, removed
   or reordered.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from data.scripts.common import (
    DEFAULT_DATA_VERSION,
    atomic_path,
    count_values,
    processed_dir,
    read_arrow,
    remove_leftover_temporary_files,
    setup_logging,
    stage_lock,
    stats_path,
    write_stats,
)
from data.scripts.extract import OUTPUT_SCHEMA
from data.scripts.relabel import MERGED_FILE, load_mapping
from data.scripts.urls import DROP_REASONS, hex_keys, redact_credentials, url_key

logger = logging.getLogger(__name__)

__all__ = [
    "deduplicate",
    "drop_unusable_urls",
    "plan_deduplication",
    "read_extracted",
    "run_merge",
    "url_key",
]

STAGE = "merge"

MAX_REJECTS_KEPT = 100_000
# The Kaggle dataset ships its per-category files and one file with all of them.
MERGED_SOURCE_NAMES = frozenset({"Amazon-Products.csv"})
# Columns of the extract stage's output that only the merge stage reads.
EXTRACT_ONLY_COLUMNS = ("url_drop_reason", "key_hash")


def read_extracted(extracted_dir: Path) -> pa.Table:
    """Read every extracted file into one table in source order (file name, then row).

    The files are mapped into memory and the table holds one chunk per file, so this
    copies nothing. Raises FileNotFoundError when there are no files and ValueError
    when a file is damaged or was written by another version of the extract stage.
    """
    files = sorted(extracted_dir.glob("*.arrow"))
    if not files:
        raise FileNotFoundError(
            f"no extracted files in {str(extracted_dir)!r}; run 'make extract' first"
        )
    tables = []
    for path in files:
        try:
            tables.append(read_arrow(path))
        except (OSError, pa.ArrowInvalid) as exc:
            raise ValueError(
                f"extracted file {str(path)!r} cannot be read ({exc}); delete it and run "
                "'make extract' again, which rebuilds it"
            ) from exc
    for path, table in zip(files, tables):
        if not table.schema.equals(OUTPUT_SCHEMA):
            raise ValueError(
                f"{str(path)!r} has the columns {', '.join(table.column_names)}, not the ones "
                "this version's extract stage writes; run 'make extract' again, which "
                "rebuilds it"
            )
    # Each file is in row order already, so ordering the files by their source name
    # orders the whole table without a sort over every row. The dataset's merged file
    # repeats the per-category rows; it goes last, so a kept row points at the
    # per-category file it came from.
    sources = [t.column("source_file")[0].as_py() if t.num_rows else "" for t in tables]

    def position(i: int) -> tuple[bool, str]:
        return Path(sources[i]).name in MERGED_SOURCE_NAMES, sources[i]

    order = sorted(range(len(tables)), key=position)
    return pa.concat_tables([tables[i] for i in order])


def drop_unusable_urls(table: pa.Table) -> tuple[np.ndarray, pa.Table, dict[str, int]]:
    """Find the rows whose URL the extract stage could not use.

    Returns ``(usable, rejected, dropped_per_reason)``: a boolean numpy mask of the rows
    to keep, and the other rows with their reason.
    """
    reasons = table.column("url_drop_reason")
    unusable = pc.is_valid(reasons)
    rejected = table.filter(unusable).select(
        ["source_file", "source_row", "source_line", "image_url", "url_drop_reason"]
    )
    rejected = rejected.rename_columns([*rejected.column_names[:-1], "reason"])
    counts = dict.fromkeys(DROP_REASONS, 0)
    for row in pc.value_counts(rejected.column("reason")).to_pylist():
        counts[row["values"]] = row["counts"]
    usable = np.logical_not(_to_numpy(unusable))
    return usable, rejected, counts


def _to_numpy(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    return values.to_numpy(zero_copy_only=False)


@dataclass
class Deduplication:
    """Plan of a deduplication: the rows of a table to keep and their new columns.

    ``keep`` masks the kept rows of the input table; ``key``, ``duplicate_count`` and
    ``conflicting_main_categories`` hold one value per kept row, in order.
    """

    table: pa.Table
    keep: np.ndarray
    key: pa.Array
    duplicate_count: pa.Array
    conflicting_main_categories: pa.Array
    counts: dict[str, int]

    @property
    def kept_rows(self) -> int:
        return len(self.key)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Yield the kept rows with their new columns, one input batch at a time.

        Each batch is filtered on its own, so memory stays flat however large the
        table is, and the large columns are copied once, into the output.
        """
        columns = [name for name in self.table.column_names if name not in EXTRACT_ONLY_COLUMNS]
        start = done = 0
        for batch in self.table.select(columns).to_batches():
            mask = self.keep[start : start + batch.num_rows]
            start += batch.num_rows
            count = int(mask.sum())
            if count == 0:
                continue
            kept = batch.filter(pa.array(mask)) if count < batch.num_rows else batch
            yield pa.RecordBatch.from_arrays(
                [
                    self.key.slice(done, count),
                    *kept.columns,
                    self.duplicate_count.slice(done, count),
                    self.conflicting_main_categories.slice(done, count),
                ],
                schema=self.schema,
            )
            done += count

    @property
    def schema(self) -> pa.Schema:
        fields = [f for f in self.table.schema if f.name not in EXTRACT_ONLY_COLUMNS]
        return pa.schema(
            [
                pa.field("key", pa.string()),
                *fields,
                pa.field("duplicate_count", pa.int64()),
                pa.field("conflicting_main_categories", pa.list_(pa.string())),
            ]
        )

    def to_table(self) -> pa.Table:
        return pa.Table.from_batches(list(self.batches()), schema=self.schema)


def plan_deduplication(table: pa.Table, usable: np.ndarray | None = None) -> Deduplication:
    """Find the first usable row of each URL, its key and what it stands for.

    ``table`` must be in source order and have the extract stage's ``key_hash``; the
    kept row of each URL is its first one. ``usable`` (default: every row) masks the
    rows taken into account. Raises RuntimeError if two different URLs share a key.
    """
    if usable is None:
        usable = np.ones(table.num_rows, dtype=bool)
    rows = np.flatnonzero(usable)
    hashes = _to_numpy(table.column("key_hash"))[rows]
    # Groups are numbered in the order their first row appears, so the kept rows come
    # out in source order and group i is kept row i.
    group_of_row, group_hashes = pd.factorize(hashes, sort=False)
    group_of_row = group_of_row.astype(np.int64, copy=False)
    sizes = np.bincount(group_of_row, minlength=len(group_hashes))
    first = np.ones(len(rows), dtype=bool)
    if len(rows):
        seen = np.maximum.accumulate(group_of_row)
        first[1:] = seen[1:] > seen[:-1]
    # Only rows of URLs seen more than once matter below. A mask over the whole table
    # selects them, because a filter works chunk by chunk and a take over one chunk per
    # file was several times slower.
    repeated = sizes[group_of_row] > 1
    in_groups = np.zeros(table.num_rows, dtype=bool)
    in_groups[rows[repeated]] = True
    _check_no_collisions(table.column("image_url"), in_groups, sizes)

    keep = np.zeros(table.num_rows, dtype=bool)
    keep[rows[first]] = True
    duplicate_count = sizes - 1
    several, conflicting = _conflicting_categories(
        table.column("main_category"), in_groups, group_of_row[repeated], keep
    )
    counts = {
        "duplicate_rows_dropped": len(rows) - len(group_hashes),
        "urls_with_duplicates": int((duplicate_count > 0).sum()),
        "urls_with_conflicting_categories": int(several.sum()),
        "duplicate_rows_in_conflicting_urls": int(duplicate_count[several].sum()),
    }
    return Deduplication(
        table=table,
        keep=keep,
        key=hex_keys(group_hashes),
        duplicate_count=pa.array(duplicate_count, pa.int64()),
        conflicting_main_categories=conflicting,
        counts=counts,
    )


def deduplicate(
    table: pa.Table, usable: np.ndarray | None = None
) -> tuple[pa.Table, dict[str, int]]:
    """Return the kept rows of ``plan_deduplication`` as a table, and its counts."""
    plan = plan_deduplication(table, usable)
    return plan.to_table(), plan.counts


def _check_no_collisions(urls: pa.ChunkedArray, in_groups: np.ndarray, sizes: np.ndarray) -> None:
    """Raise RuntimeError if two different URLs share a key.

    Rows of different keys have different URLs, so the rows of repeated keys hold
    exactly one distinct URL per repeated key unless two URLs share one.
    """
    repeated_keys = int((sizes > 1).sum())
    if repeated_keys == 0:
        return
    distinct = pc.count_distinct(urls.filter(pa.array(in_groups))).as_py()
    if distinct != repeated_keys:
        raise RuntimeError("two different URLs share a key; report this with the input data")


def _conflicting_categories(
    categories: pa.ChunkedArray,
    in_groups: np.ndarray,
    groups_of_repeated: np.ndarray,
    keep: np.ndarray,
) -> tuple[np.ndarray, pa.ListArray]:
    """Return which groups carry several main categories, and per kept row the others.

    ``in_groups`` masks the rows of groups with more than one row, the only ones that
    can carry several; ``groups_of_repeated`` is the group of each of those rows, and
    ``keep`` masks the first row of every group, in group order.
    """
    group_count = int(keep.sum())
    several = np.zeros(group_count, dtype=bool)
    lengths = np.zeros(group_count, dtype=np.int64)
    values: list[str] = []
    if len(groups_of_repeated):
        encoded = pc.dictionary_encode(
            pc.fill_null(categories.filter(pa.array(in_groups)), "")
        ).combine_chunks()
        names = encoded.dictionary.to_pylist()
        width = len(names)
        ids = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        pairs = np.unique(groups_of_repeated * width + ids)
        several = np.bincount(pairs // width, minlength=group_count) > 1
        others_of: dict[int, list[str]] = {}
        for pair in pairs[several[pairs // width]].tolist():
            others_of.setdefault(pair // width, []).append(names[pair % width])
        groups = sorted(others_of)
        own = categories.filter(pa.array(keep)).take(pa.array(groups, pa.int64())).to_pylist()
        for group, category in zip(groups, own):
            others = sorted(set(others_of[group]) - {category or ""})
            lengths[group] = len(others)
            values.extend(others)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return several, pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.string()))


def run_merge(out_dir: Path, mapping_path: Path | None = None) -> dict[str, Any]:
    """Merge ``out_dir/extracted`` into ``out_dir/merged.arrow``; return the stats.

    ``mapping_path``, when given, is only checked, so that a broken mapping file stops
    the pipeline before the merge instead of after it. Raises RuntimeError when another
    run is writing into ``out_dir``.
    """
    if mapping_path is not None:
        load_mapping(mapping_path)
    if not any((out_dir / "extracted").glob("*.arrow")):
        raise FileNotFoundError(
            f"no extracted files in {str(out_dir / 'extracted')!r}; run 'make extract' first"
        )
    with stage_lock(out_dir):
        return _run_merge(out_dir)


def _run_merge(out_dir: Path) -> dict[str, Any]:
    started = time.monotonic()
    remove_leftover_temporary_files(
        [out_dir / MERGED_FILE, stats_path(out_dir, STAGE), _rejects_path(out_dir)]
    )
    table = read_extracted(out_dir / "extracted")
    logger.info("merge: %d rows from %s", table.num_rows, out_dir / "extracted")

    usable, rejected, dropped = drop_unusable_urls(table)
    plan = plan_deduplication(table, usable)
    duplicate_counts = plan.counts

    with atomic_path(out_dir / MERGED_FILE) as tmp:
        with pa.ipc.new_file(tmp, plan.schema) as writer:
            for batch in plan.batches():
                writer.write_batch(batch)
    _write_rejects(out_dir, rejected)
    kept_categories = table.column("main_category").filter(pa.array(plan.keep))

    stats = {
        "seconds": round(time.monotonic() - started, 3),
        "rows_read": table.num_rows,
        "rows_dropped_by_reason": dropped,
        "rows_with_usable_url": int(usable.sum()),
        **duplicate_counts,
        "rows_kept": plan.kept_rows,
        "rows_per_main_category": count_values(kept_categories),
    }
    write_stats(out_dir, STAGE, stats)
    logger.info(
        "merge: done in %.1f s: %d rows read, %d without a usable URL, %d duplicates "
        "dropped (%d URLs under conflicting categories), %d unique URLs kept",
        stats["seconds"],
        table.num_rows,
        sum(dropped.values()),
        duplicate_counts["duplicate_rows_dropped"],
        duplicate_counts["urls_with_conflicting_categories"],
        plan.kept_rows,
    )
    if plan.kept_rows == 0:
        logger.warning(
            "merge: no row has a usable image URL, so later stages have nothing to work on; "
            "see %s for every dropped row and its reason",
            _rejects_path(out_dir),
        )
    return stats


def _rejects_path(out_dir: Path) -> Path:
    return out_dir / "rejects" / f"{STAGE}.csv"


def _write_rejects(out_dir: Path, rejected: pa.Table) -> None:
    path = _rejects_path(out_dir)
    rows = rejected.slice(0, MAX_REJECTS_KEPT).to_pylist()
    for row in rows:
        row["image_url"] = redact_credentials(row["image_url"])
    with atomic_path(path) as tmp:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(
                handle, ["source_file", "source_row", "source_line", "image_url", "reason"]
            )
            writer.writeheader()
            writer.writerows(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data.scripts.merge",
        description="Merge extracted files into one table of unique, normalised image URLs.",
    )
    parser.add_argument(
        "--processed-dir",
        type=Path,
        default=processed_dir(DEFAULT_DATA_VERSION),
        help="folder with extracted/ from the extract stage (default: data/processed/v1)",
    )
    parser.add_argument(
        "--mapping",
        type=Path,
        default=None,
        help="check this category mapping file before merging (default: no check)",
    )
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        run_merge(args.processed_dir, args.mapping)
    except (OSError, RuntimeError, ValueError) as exc:
        logger.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        logger.error("merge: interrupted; nothing was written")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
