"""Merge stage: one table of unique, normalised image URLs from all extracted files.

Reads ``<processed-dir>/extracted/*.arrow`` (the extract stage's output) and writes
``<processed-dir>/merged.arrow`` (Arrow IPC, which the relabel stage maps into memory):

1. URLs are normalised (see ``data.scripts.urls``); a row without a usable http(s) URL
   is dropped with its reason (``missing_url``, ``relative_url``, ``unsupported_scheme``,
   ``invalid_url``) and listed in ``rejects/merge.csv``.
2. Rows that share a URL are reduced to the first one in source order (file name, then
   row, with the dataset's merged ``Amazon-Products.csv`` last). The kept row records
   how many others it stood for (``duplicate_count``) and the other main categories
   they carried (``conflicting_main_categories``): the same photo under two categories
   is a label-noise signal for later stages.
3. ``key`` is a stable id derived from the URL alone (16 hex digits of XXH3-64), so it
   does not change when rows are added, removed or reordered.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from data.scripts.common import (
    DEFAULT_DATA_VERSION,
    atomic_path,
    count_values,
    processed_dir,
    read_arrow,
    setup_logging,
    write_arrow,
    write_stats,
)
from data.scripts.relabel import MERGED_FILE, MappingError, load_mapping
from data.scripts.urls import DROP_REASONS, normalise_url_array, redact_credentials

logger = logging.getLogger(__name__)

STAGE = "merge"

MAX_REJECTS_KEPT = 100_000
# The Kaggle dataset ships its per-category files and one file with all of them.
MERGED_SOURCE_NAMES = frozenset({"Amazon-Products.csv"})


def url_key(url: str) -> str:
    """Return the row key of a canonical URL: its XXH3 64-bit hash as 16 hex digits.

    XXH3's output for a given input is fixed by its specification (xxHash 0.8), so keys
    do not change between runs, machines or library versions. With 64 bits, the chance
    that two of a million URLs share a key is about 3e-8; ``deduplicate`` still checks
    and raises if it ever happens.
    """
    return f"{xxhash.xxh3_64_intdigest(url.encode('utf-8')):016x}"


def hex_keys(numbers: np.ndarray) -> pa.Array:
    """Format 64-bit key numbers as 16 lower-case hex digits each, without a Python loop."""
    digits = numbers.astype(">u8").tobytes().hex().encode("ascii")
    fixed = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(16), len(numbers), [None, pa.py_buffer(digits)]
    )
    return fixed.cast(pa.binary()).cast(pa.string())


def _key_numbers(urls: pa.ChunkedArray) -> np.ndarray:
    values = urls.to_pylist()
    return np.fromiter(
        (xxhash.xxh3_64_intdigest(url.encode("utf-8")) for url in values),
        dtype=np.uint64,
        count=len(values),
    )


def read_extracted(extracted_dir: Path) -> pa.Table:
    """Read every extracted file into one table in source order (file name, then row)."""
    files = sorted(extracted_dir.glob("*.arrow"))
    if not files:
        raise FileNotFoundError(
            f"no extracted files in {str(extracted_dir)!r}; run 'make extract' first"
        )
    # Each file is in row order already, so ordering the files by their source name
    # orders the whole table without a sort over every row. The dataset's merged file
    # repeats the per-category rows; it goes last, so a kept row points at the
    # per-category file it came from.
    tables = [read_arrow(path) for path in files]
    sources = [t.column("source_file")[0].as_py() if t.num_rows else "" for t in tables]

    def position(i: int) -> tuple[bool, str]:
        return Path(sources[i]).name in MERGED_SOURCE_NAMES, sources[i]

    order = sorted(range(len(tables)), key=position)
    # One chunk per column makes the filters and takes below several times faster.
    return pa.concat_tables([tables[i] for i in order]).combine_chunks()


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
    """Keep the first row of each URL, add ``key`` and summarise the rows it stands for.

    ``table`` must be in source order; the kept row of each URL is its first one.
    Raises RuntimeError if two different URLs share a key.
    """
    if table.num_rows == 0:
        empty = table.add_column(0, "key", pa.array([], pa.string()))
        empty = empty.append_column("duplicate_count", pa.array([], pa.int64()))
        empty = empty.append_column(
            "conflicting_main_categories", pa.array([], pa.list_(pa.string()))
        )
        counts = dict.fromkeys(
            [
                "duplicate_rows_dropped",
                "urls_with_duplicates",
                "urls_with_conflicting_categories",
                "duplicate_rows_in_conflicting_urls",
            ],
            0,
        )
        return empty, counts
    numbers = _key_numbers(table.column("image_url"))
    _, first_rows, group_of_row, sizes = np.unique(
        numbers, return_index=True, return_inverse=True, return_counts=True
    )
    _check_no_collisions(table.column("image_url"), first_rows, group_of_row, sizes)

    # Groups in the order their first row appears, so the output keeps source order.
    order = np.argsort(first_rows, kind="stable")
    position_of_group = np.empty_like(order)
    position_of_group[order] = np.arange(len(order))
    kept_rows = first_rows[order]
    duplicate_count = sizes[order] - 1
    kept = table.take(pa.array(kept_rows))

    # Distinct (URL, main category) pairs tell which URLs carry several categories.
    categories = table.column("main_category").combine_chunks()
    categories = pc.dictionary_encode(pc.fill_null(categories, ""))
    category_ids = categories.indices.to_numpy(zero_copy_only=False)
    width = int(category_ids.max(initial=0)) + 1
    pairs = np.unique(position_of_group[group_of_row].astype(np.int64) * width + category_ids)
    several = np.bincount(pairs // width, minlength=len(order)) > 1
    conflicting = _conflicting_categories(pairs, width, several, categories, kept)

    kept = kept.add_column(0, "key", hex_keys(numbers[kept_rows]))
    kept = kept.append_column("duplicate_count", pa.array(duplicate_count, pa.int64()))
    kept = kept.append_column("conflicting_main_categories", conflicting)
    counts = {
        "duplicate_rows_dropped": table.num_rows - kept.num_rows,
        "urls_with_duplicates": int((duplicate_count > 0).sum()),
        "urls_with_conflicting_categories": int(several.sum()),
        "duplicate_rows_in_conflicting_urls": int(duplicate_count[several].sum()),
    }
    return kept, counts


def _check_no_collisions(
    urls: pa.ChunkedArray, first_rows: np.ndarray, group_of_row: np.ndarray, sizes: np.ndarray
) -> None:
    """Raise RuntimeError if a row's URL differs from the first URL with the same key."""
    repeated = np.flatnonzero(sizes[group_of_row] > 1)
    if len(repeated) == 0:
        return
    mine = urls.take(pa.array(repeated))
    first = urls.take(pa.array(first_rows[group_of_row[repeated]]))
    if not pc.all(pc.equal(mine, first)).as_py():
        raise RuntimeError("two different URLs share a key; report this with the input data")


def _conflicting_categories(
    pairs: np.ndarray,
    width: int,
    several: np.ndarray,
    categories: pa.DictionaryArray,
    kept: pa.Table,
) -> pa.ListArray:
    """Return, per kept row, the other main categories of its URL (empty for most rows)."""
    names = categories.dictionary.to_pylist()
    own = kept.column("main_category").to_pylist()
    lengths = np.zeros(kept.num_rows, dtype=np.int64)
    values: list[str] = []
    others_of: dict[int, list[str]] = {}
    for pair in pairs[several[pairs // width]].tolist():
        others_of.setdefault(pair // width, []).append(names[pair % width])
    for position in sorted(others_of):
        others = sorted(set(others_of[position]) - {own[position]})
        lengths[position] = len(others)
        values.extend(others)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.string()))


def run_merge(out_dir: Path, mapping_path: Path | None = None) -> dict[str, Any]:
    """Merge ``out_dir/extracted`` into ``out_dir/merged.arrow``; return the stats.

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

    write_arrow(out_dir / MERGED_FILE, merged)
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
    except (OSError, MappingError) as exc:
        logger.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        logger.error("merge: interrupted; nothing was written")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
