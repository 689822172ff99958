"""Relabel stage: map the source main categories onto the labels the model learns.

Reads ``<processed-dir>/merged.arrow`` and the mapping file (TOML, edited by users,
default ``data/category_mapping.toml``) and writes ``<processed-dir>/products.parquet``
with two more columns: ``label`` (a safe folder name such as ``household_essentials``)
and ``label_name`` (the display name from the mapping file), plus ``label_conflict``
(True where the same URL also appeared under a main category that maps to another
label). ``labels.json`` beside it lists the labels in mapping-file order with counts.

A main category that the mapping does not list stops the stage before anything is
written, with every unknown value in the message, unless ``--unknown-label`` names the
label that such rows go to.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data.scripts.common import (
    DEFAULT_DATA_VERSION,
    PROJECT_ROOT,
    atomic_path,
    count_values,
    processed_dir,
    read_arrow,
    remove_leftover_temporary_files,
    setup_logging,
    stage_lock,
    stats_path,
    write_json,
    write_stats,
)
from data.scripts.text import normalise_category, safe_name

logger = logging.getLogger(__name__)

STAGE = "relabel"
MERGED_FILE = "merged.arrow"
# The columns of MERGED_FILE, in order, as the merge stage writes them.
MERGED_COLUMNS = (
    "key",
    "source_file",
    "source_row",
    "source_line",
    "name",
    "main_category",
    "sub_category",
    "image_url",
    "duplicate_count",
    "conflicting_main_categories",
)
PRODUCTS_FILE = "products.parquet"
LABELS_FILE = "labels.json"
DEFAULT_MAPPING = PROJECT_ROOT / "data" / "category_mapping.toml"
EMPTY_CATEGORY = "(empty)"


class MappingError(ValueError):
    """The mapping file is invalid, or the data has categories it does not list."""


@dataclass(frozen=True)
class CategoryMapping:
    """Labels in file order and the label of each normalised main category.

    ``labels`` maps folder name to display name; ``label_of`` maps a normalised main
    category to a folder name.
    """

    labels: dict[str, str]
    label_of: dict[str, str]
    source: str

    def with_unknown_label(self, label: str) -> tuple[CategoryMapping, str]:
        """Return a mapping that also has ``label`` (display or folder name) and its folder."""
        label = label.strip()
        for folder, display in self.labels.items():
            if label in (folder, display):
                return self, folder
        try:
            folder = safe_name(label)
        except ValueError as exc:
            raise MappingError(f"--unknown-label (UNKNOWN_LABEL): {exc}") from exc
        if folder in self.labels:
            raise MappingError(
                f"--unknown-label {label!r} becomes folder {folder!r}, which is already the "
                f"folder of label {self.labels[folder]!r}; use that label's name instead"
            )
        return CategoryMapping({**self.labels, folder: label}, self.label_of, self.source), folder


def load_mapping(path: Path) -> CategoryMapping:
    """Read and check a mapping file; raise MappingError naming the problem and the fix."""
    if not path.is_file():
        raise MappingError(
            f"mapping file {str(path)!r} not found; pass MAPPING=<file> or restore "
            "data/category_mapping.toml from git"
        )
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MappingError(f"mapping file {str(path)!r} is not valid TOML: {exc}") from exc
    entries = document.get("labels")
    if not isinstance(entries, dict) or not entries:
        raise MappingError(
            f"mapping file {str(path)!r} needs a [labels] table with at least one label, "
            'for example: [labels]\n"Fashion" = ["men\'s clothing"]'
        )

    labels: dict[str, str] = {}
    label_of: dict[str, str] = {}
    for display, categories in entries.items():
        display = display.strip()
        try:
            folder = safe_name(display)
        except ValueError as exc:
            raise MappingError(f"mapping file {str(path)!r}: {exc}") from exc
        if folder in labels:
            raise MappingError(
                f"mapping file {str(path)!r}: labels {labels[folder]!r} and {display!r} both "
                f"become folder {folder!r}; rename one of them"
            )
        if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
            raise MappingError(
                f"mapping file {str(path)!r}: label {display!r} must list main categories as "
                f"strings, got {categories!r}"
            )
        labels[folder] = display
        for category in categories:
            key = normalise_category(category)
            if key in label_of and label_of[key] != folder:
                raise MappingError(
                    f"mapping file {str(path)!r}: main category {category!r} is listed under "
                    f"both {labels[label_of[key]]!r} and {display!r}; keep it under one label"
                )
            label_of[key] = folder
    return CategoryMapping(labels=labels, label_of=label_of, source=str(path))


def find_unknown_categories(
    categories: pa.ChunkedArray, mapping: CategoryMapping
) -> dict[str, int]:
    """Return ``{category: rows}`` for the categories the mapping does not list."""
    counts = pc.value_counts(pc.fill_null(categories, ""))
    unknown = {}
    for row in counts.to_pylist():
        value = row["values"]
        if normalise_category(value) not in mapping.label_of:
            unknown[value or EMPTY_CATEGORY] = row["counts"]
    return dict(sorted(unknown.items()))


def unknown_category_message(unknown: dict[str, int], mapping: CategoryMapping) -> str:
    listed = "\n".join(f"  {value!r}: {rows} rows" for value, rows in unknown.items())
    return (
        f"{len(unknown)} main category value(s) are not in the mapping file "
        f"{mapping.source!r}:\n{listed}\n"
        "Add each one to a label in the mapping file, or send them all to one label with "
        'UNKNOWN_LABEL="<label>" (python -m data.scripts.relabel --unknown-label <label>).'
    )


def apply_mapping(
    table: pa.Table, mapping: CategoryMapping, unknown_folder: str | None
) -> tuple[pa.Table, int]:
    """Add ``label``, ``label_name`` and ``label_conflict``; return the table and conflicts."""

    def label_of(category: str | None) -> str | None:
        return mapping.label_of.get(normalise_category(category or ""), unknown_folder)

    # Map each distinct category once, then spread the result over the rows.
    labels, names = _map_labels(table.column("main_category"), mapping, label_of)

    # A URL conflicts when one of its other categories maps onto another label (or onto
    # none, when the category is unknown).
    others = table.column("conflicting_main_categories").combine_chunks()
    other_labels, _ = _map_labels(pc.list_flatten(others), mapping, label_of)
    parents = pc.list_parent_indices(others)
    differs = pc.fill_null(pc.not_equal(other_labels, pc.take(labels, parents)), True)
    conflict_rows = pc.filter(parents, differs).to_numpy(zero_copy_only=False)
    conflicts = np.zeros(table.num_rows, dtype=bool)
    conflicts[conflict_rows] = True

    table = table.append_column("label", labels)
    table = table.append_column("label_name", names)
    table = table.append_column("label_conflict", pa.array(conflicts, pa.bool_()))
    return table, int(conflicts.sum())


def _map_labels(
    categories: pa.Array | pa.ChunkedArray, mapping: CategoryMapping, label_of: Any
) -> tuple[pa.Array, pa.Array]:
    """Return the label folder and display name of each category, mapping each value once."""
    if isinstance(categories, pa.ChunkedArray):
        categories = categories.combine_chunks()
    encoded = pc.dictionary_encode(categories)
    folders = [label_of(category) for category in encoded.dictionary.to_pylist()]
    names = [mapping.labels.get(folder) if folder is not None else None for folder in folders]
    return (
        pc.take(pa.array(folders, pa.string()), encoded.indices),
        pc.take(pa.array(names, pa.string()), encoded.indices),
    )


# Columns with few distinct values, which Parquet stores as a dictionary and indices.
DICTIONARY_COLUMNS = (
    "source_file",
    "main_category",
    "sub_category",
    "conflicting_main_categories",
    "label",
    "label_name",
)
# Product names are nearly all distinct and make up about 40% of the table's bytes. On a
# full-size replica, compressing them took about 40% of this stage's time and saved
# 20 MB, so they are stored uncompressed.
UNCOMPRESSED_COLUMNS = ("name",)


def parquet_options(column_names: list[str]) -> dict[str, Any]:
    """Return the Parquet writer options for a products table with these columns."""
    return {
        "compression": {
            name: "none" if name in UNCOMPRESSED_COLUMNS else "zstd" for name in column_names
        },
        "use_dictionary": [name for name in DICTIONARY_COLUMNS if name in column_names],
    }


def write_products(products: pa.Table, path: Path) -> None:
    """Write ``products`` as Parquet: zstd, except for ``UNCOMPRESSED_COLUMNS``."""
    pq.write_table(products, path, **parquet_options(products.column_names))


def run_relabel(
    out_dir: Path, mapping_path: Path, unknown_label: str | None = None
) -> dict[str, Any]:
    """Write ``products.parquet`` and ``labels.json`` from ``merged.arrow``.

    Raises MappingError, before writing anything, when the mapping file is invalid or
    the data has main categories that it does not list and ``unknown_label`` is None;
    ValueError when ``merged.arrow`` is damaged or of another layout, and RuntimeError
    when another run is writing into ``out_dir``.
    """
    mapping = load_mapping(mapping_path)
    unknown_folder = None
    if unknown_label is not None:
        mapping, unknown_folder = mapping.with_unknown_label(unknown_label)
    merged_path = out_dir / MERGED_FILE
    if not merged_path.is_file():
        raise FileNotFoundError(f"{str(merged_path)!r} not found; run 'make merge' first")
    with stage_lock(out_dir):
        return _run_relabel(out_dir, mapping, mapping_path, unknown_folder)


def _run_relabel(
    out_dir: Path, mapping: CategoryMapping, mapping_path: Path, unknown_folder: str | None
) -> dict[str, Any]:
    started = time.monotonic()
    remove_leftover_temporary_files(
        [out_dir / PRODUCTS_FILE, out_dir / LABELS_FILE, stats_path(out_dir, STAGE)]
    )
    merged_path = out_dir / MERGED_FILE
    try:
        table = read_arrow(merged_path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ValueError(
            f"{str(merged_path)!r} cannot be read ({exc}); run 'make merge' again"
        ) from exc
    if tuple(table.column_names) != MERGED_COLUMNS:
        raise ValueError(
            f"{str(merged_path)!r} has the columns {', '.join(table.column_names)}, not the "
            f"ones this version writes ({', '.join(MERGED_COLUMNS)}); run 'make merge' again"
        )
    logger.info("relabel: %d rows from %s with %s", table.num_rows, merged_path, mapping_path)

    unknown = find_unknown_categories(table.column("main_category"), mapping)
    if unknown and unknown_folder is None:
        raise MappingError(unknown_category_message(unknown, mapping))
    if unknown:
        logger.warning(
            "relabel: %d rows in %d unknown main categories go to label %r: %s",
            sum(unknown.values()),
            len(unknown),
            unknown_folder,
            ", ".join(map(repr, unknown)),
        )
    products, conflicts = apply_mapping(table, mapping, unknown_folder)

    per_label = count_values(products.column("label"))
    labels_payload = [
        {"label": folder, "name": display, "rows": per_label.get(folder, 0)}
        for folder, display in mapping.labels.items()
    ]
    with atomic_path(out_dir / PRODUCTS_FILE) as tmp:
        write_products(products, tmp)
    write_json(out_dir / LABELS_FILE, labels_payload)

    stats = {
        "seconds": round(time.monotonic() - started, 3),
        "mapping": str(mapping_path),
        "rows": products.num_rows,
        "rows_per_label": per_label,
        "labels_without_rows": [e["label"] for e in labels_payload if e["rows"] == 0],
        "unknown_categories": unknown,
        "unknown_label": unknown_folder,
        "urls_with_label_conflict": conflicts,
        "rows_per_category_and_label": _category_label_counts(products),
    }
    write_stats(out_dir, STAGE, stats)
    logger.info(
        "relabel: done in %.1f s: %d rows in %d labels (%s); %d URLs seen under "
        "categories of different labels",
        stats["seconds"],
        products.num_rows,
        len(per_label),
        ", ".join(f"{k}={v}" for k, v in per_label.items()),
        conflicts,
    )
    if products.num_rows == 0:
        logger.warning(
            "relabel: %s has no rows, so there are no images to fetch; see %s for what "
            "the earlier stages dropped",
            out_dir / PRODUCTS_FILE,
            out_dir / "stats",
        )
    return stats


def _category_label_counts(products: pa.Table) -> list[dict[str, Any]]:
    grouped = products.group_by(["main_category", "label"]).aggregate([("key", "count")])
    rows = grouped.to_pylist()
    return sorted(
        (
            {"main_category": r["main_category"], "label": r["label"], "rows": r["key_count"]}
            for r in rows
        ),
        key=lambda r: (r["label"], r["main_category"] or ""),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data.scripts.relabel",
        description="Map main categories onto labels and write products.parquet.",
    )
    parser.add_argument(
        "--processed-dir",
        type=Path,
        default=processed_dir(DEFAULT_DATA_VERSION),
        help="folder with merged.arrow (default: data/processed/v1)",
    )
    parser.add_argument(
        "--mapping",
        type=Path,
        default=DEFAULT_MAPPING,
        help="TOML file mapping main categories onto labels (default: data/category_mapping.toml)",
    )
    parser.add_argument(
        "--unknown-label",
        default=None,
        help="label (display or folder name) for main categories the mapping does not list; "
        "a new name adds a label (default: unknown categories are an error)",
    )
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        run_relabel(args.processed_dir, args.mapping, args.unknown_label)
    except (OSError, RuntimeError, ValueError) as exc:
        logger.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        logger.error("relabel: interrupted; nothing was written")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
