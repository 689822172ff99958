"""Merge stage: one table of unique, normalised image URLs from all extracted files.

Reads ``<processed-dir>/extracted/*.parquet`` (the extract stage's output) and writes
``<processed-dir>/merged.parquet``:

1. URLs are normalised (see ``data.scripts.urls``); a row without a usable http(s) URL
   is dropped with its reason (``missing_url``, ``relative_url``, ``unsupported_scheme``,
   ``invalid_url``) and listed in ``rejects/merge.csv``.
2. Rows that share a URL are reduced to the first one in source order (file name, then
   row). The kept row records how many others it stood for (``duplicate_count``) and
   the other main categories they carried (``conflicting_main_categories``): the same
   photo under two categories is a label-noise signal for later stages.
3. ``key`` is a stable id derived from the URL alone (16 hex digits of BLAKE2b), so it
   does not change when rows are added, removed or reordered.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data.scripts.common import (
    DEFAULT_DATA_VERSION,
    atomic_path,
    count_values,
    processed_dir,
    setup_logging,
    write_stats,
)
from data.scripts.relabel import MERGED_FILE, MappingError, load_mapping
from data.scripts.urls import DROP_REASONS, normalise_url_array

logger = logging.getLogger(__name__)

STAGE = "merge"
KEY_HEX_DIGITS = 16

MAX_REJECTS_KEPT = 100_000


def url_key(url: str) -> str:
    """Return the row key of a canonical URL: 16 hex digits of its BLAKE2b hash.

    With 64 bits, the chance that two of a million URLs share a key is about 3e-8;
    ``merge`` still checks and raises if it ever happens.
    """
    return hashlib.blake2b(url.encode("utf-8"), digest_size=KEY_HEX_DIGITS // 2).hexdigest()


def read_extracted(extracted_dir: Path) -> pa.Table:
    """Read every extracted file into one table sorted by source file and row."""
    files = sorted(extracted_dir.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(
            f"no extracted files in {str(extracted_dir)!r}; run 'make extract' first"
        )
    table = pa.concat_tables(pq.read_table(path) for path in files)
    order = pc.sort_indices(
        table, sort_keys=[("source_file", "ascending"), ("source_row", "ascending")]
    )
    return table.take(order)


def drop_unusable_urls(table: pa.Table) -> tuple[pa.Table, pa.Table, dict[str, int], int]:
    """Normalise ``image_url``; split off rows whose URL cannot be used.

    Returns ``(kept, rejected, dropped_per_reason, urls_rewritten)``.
    """
    raw_urls = table.column("image_url").combine_chunks()
    urls, reasons, rewritten = normalise_url_array(raw_urls)
    usable = pc.is_valid(urls)
    kept = table.set_column(table.schema.get_field_index("image_url"), "image_url", urls)
    kept = kept.filter(usable)

    rejected = table.select(["source_file", "source_row", "source_line", "image_url"])
    rejected = rejected.append_column("reason", reasons).filter(pc.invert(usable))
    counts = {reason: 0 for reason in DROP_REASONS}
    for row in pc.value_counts(rejected.column("reason")).to_pylist():
        counts[row["values"]] = row["counts"]
    return kept, rejected, counts, rewritten


def deduplicate(table: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    """Keep the first row of each URL and summarise the rows it stands for.

    ``table`` must be in source order; the kept row of each URL is its first one.
    """
    order = pa.array(range(table.num_rows), pa.int64())
    groups = (
        table.select(["image_url", "main_category"])
        .append_column("order", order)
        .group_by("image_url", use_threads=False)
        .aggregate([("order", "min"), ("order", "count"), ("main_category", "distinct")])
    )
    groups = groups.take(pc.sort_indices(groups.column("order_min")))
    kept = table.take(groups.column("order_min"))
    duplicate_count = pc.subtract(groups.column("order_count"), 1)

    # Other main categories under the same URL; only a few URLs have any, so the
    # per-row Python work is limited to those.
    distinct = groups.column("main_category_distinct")
    several = pc.greater(pc.list_value_length(distinct), 1).to_pylist()
    own = kept.column("main_category").to_pylist()
    distinct_values = distinct.to_pylist()
    conflicting = [
        sorted(c for c in categories if c != mine) if many else []
        for many, categories, mine in zip(several, distinct_values, own)
    ]
    kept = kept.append_column("duplicate_count", duplicate_count)
    kept = kept.append_column(
        "conflicting_main_categories", pa.array(conflicting, pa.list_(pa.string()))
    )

    conflicted = pa.array(several)
    counts = {
        "duplicate_rows_dropped": table.num_rows - kept.num_rows,
        "urls_with_duplicates": pc.sum(pc.greater(duplicate_count, 0)).as_py() or 0,
        "urls_with_conflicting_categories": sum(several),
        "duplicate_rows_in_conflicting_urls": pc.sum(pc.filter(duplicate_count, conflicted)).as_py()
        or 0,
    }
    return kept, counts


def add_keys(table: pa.Table) -> pa.Table:
    """Insert the ``key`` column first; raise RuntimeError on a key shared by two URLs."""
    keys = pa.array([url_key(url) for url in table.column("image_url").to_pylist()], pa.string())
    if pc.count_distinct(keys).as_py() != len(keys):
        raise RuntimeError("two different URLs share a key; report this with the input data")
    return table.add_column(0, "key", keys)


def run_merge(out_dir: Path, mapping_path: Path | None = None) -> dict[str, Any]:
    """Merge ``out_dir/extracted`` into ``out_dir/merged.parquet``; return the stats.

    ``mapping_path``, when given, is only checked, so that a broken mapping file stops
    the pipeline before the merge instead of after it.
    """
    started = time.monotonic()
    if mapping_path is not None:
        load_mapping(mapping_path)
    table = read_extracted(out_dir / "extracted")
    logger.info("merge: %d rows from %s", table.num_rows, out_dir / "extracted")

    kept, rejected, dropped, rewritten = drop_unusable_urls(table)
    merged, duplicate_counts = deduplicate(kept)
    merged = add_keys(merged)

    with atomic_path(out_dir / MERGED_FILE) as tmp:
        pq.write_table(merged, tmp, compression="zstd")
    _write_rejects(out_dir, rejected)

    stats = {
        "seconds": round(time.monotonic() - started, 3),
        "rows_read": table.num_rows,
        "rows_dropped_by_reason": dropped,
        "rows_with_usable_url": kept.num_rows,
        "urls_rewritten": rewritten,
        **duplicate_counts,
        "rows_kept": merged.num_rows,
        "rows_per_main_category": count_values(merged.column("main_category")),
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
        merged.num_rows,
    )
    return stats


def _write_rejects(out_dir: Path, rejected: pa.Table) -> None:
    path = out_dir / "rejects" / f"{STAGE}.csv"
    rows = rejected.slice(0, MAX_REJECTS_KEPT).to_pylist()
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
    except (FileNotFoundError, MappingError) as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
