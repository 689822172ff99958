"""The fetch manifest: one row per URL, written in parts and compacted at the end.

While a fetch runs, finished rows are buffered and flushed every ``flush_rows`` rows
(or ``flush_seconds``) to a new Parquet file in ``<manifest>.parts/``, each written
atomically. A run killed at any point therefore loses at most the rows still in the
buffer, and those images are fetched again by the next run. When a run ends, the parts
and the previous manifest are compacted into one file, sorted by key, with the newest
row of each key winning.

Compaction also settles duplicates so that an interrupted and an uninterrupted run end
alike: among rows whose bodies have the same SHA-256, the smallest key keeps the image
(status ``ok``) and the others become ``duplicate`` with ``duplicate_of`` set, whatever
order they finished in. Image files that no ``ok`` row points to (left by a killed run)
are removed.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data.scripts.common import atomic_path

logger = logging.getLogger(__name__)

OK = "ok"
DUPLICATE = "duplicate"
KEY_RE = re.compile(r"^[0-9a-f]{16}$")
TEMP_FILE_RE = re.compile(r"^\..*\.tmp$")

MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("label", pa.string()),
        ("status", pa.string()),
        ("http_status", pa.int32()),
        ("error", pa.string()),
        ("attempts", pa.int32()),
        ("bytes", pa.int64()),
        ("content_type", pa.string()),
        ("format", pa.string()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("kept_original", pa.bool_()),
        ("sha256", pa.string()),
        ("path", pa.string()),
        ("duplicate_of", pa.string()),
        ("elapsed_ms", pa.float64()),
        ("image_settings", pa.string()),
        ("fetched_at", pa.timestamp("ms", tz="UTC")),
    ]
)
COLUMNS = MANIFEST_SCHEMA.names


def image_path(label: str, key: str) -> str:
    """Return where the image of ``key`` is stored, relative to the processed folder."""
    return f"images/{label}/{key}.jpg"


def shard_matches(key: str, shard: tuple[int, int] | None) -> bool:
    """Return True when ``key`` belongs to shard ``(index, count)``; None means all keys."""
    if shard is None:
        return True
    index, count = shard
    return int(key, 16) % count == index


class ManifestWriter:
    """Buffers finished rows and flushes them to atomic part files."""

    def __init__(
        self, manifest_path: Path, flush_rows: int = 2_000, flush_seconds: float = 30.0
    ) -> None:
        self.path = manifest_path
        self.parts_dir = manifest_path.with_name(manifest_path.stem + ".parts")
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self._rows: list[dict[str, Any]] = []
        self._last_flush = time.monotonic()
        self._sequence = 0

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        if (
            len(self._rows) >= self.flush_rows
            or time.monotonic() - self._last_flush >= self.flush_seconds
        ):
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows to a new part file (atomically) and clear the buffer."""
        self._last_flush = time.monotonic()
        if not self._rows:
            return
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self._sequence += 1
        name = f"part-{time.time_ns()}-{os.getpid()}-{self._sequence:06d}.parquet"
        table = pa.Table.from_pylist(self._rows, schema=MANIFEST_SCHEMA)
        with atomic_path(self.parts_dir / name) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        self._rows.clear()


def read_manifest(manifest_path: Path) -> pa.Table:
    """Read the compacted manifest and any part files, newest row per key, sorted by key."""
    parts_dir = manifest_path.with_name(manifest_path.stem + ".parts")
    tables = []
    if manifest_path.exists():
        tables.append(_conform(pq.read_table(manifest_path)))
    if parts_dir.is_dir():
        for part in sorted(parts_dir.glob("part-*.parquet")):
            tables.append(_conform(pq.read_table(part)))
    if not tables:
        return MANIFEST_SCHEMA.empty_table()
    return _newest_per_key(pa.concat_tables(tables))


def _conform(table: pa.Table) -> pa.Table:
    """Give a manifest written by an older version the current columns (missing as null)."""
    for field in MANIFEST_SCHEMA:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(COLUMNS).cast(MANIFEST_SCHEMA)


def _newest_per_key(table: pa.Table) -> pa.Table:
    """Keep the last row of each key (later files win), sorted by key."""
    order = pa.array(range(table.num_rows), pa.int64())
    last = (
        table.select(["key"])
        .append_column("order", order)
        .group_by("key", use_threads=False)
        .aggregate([("order", "max")])
    )
    table = table.take(last.column("order_max"))
    return table.take(pc.sort_indices(table, [("key", "ascending")]))


def settle_duplicates(table: pa.Table, processed_dir: Path) -> tuple[pa.Table, list[dict]]:
    """Give each set of identical bodies to its smallest key; move files to match.

    Returns the updated table and the groups whose identical images carry more than one
    label (reported, since the same photo under two labels is label noise). Only rows
    whose body occurs more than once become Python objects, so memory stays small.
    """
    stored = pc.is_in(table.column("status"), pa.array([OK, DUPLICATE]))
    candidates = pc.and_(stored, pc.is_valid(table.column("sha256")))
    hashes = pc.if_else(candidates, table.column("sha256"), pa.scalar(None, pa.string()))
    counts = pc.value_counts(hashes.drop_null() if hasattr(hashes, "drop_null") else hashes)
    repeated = [row["values"] for row in counts.to_pylist() if row["counts"] > 1]
    if not repeated:
        return table, []
    positions = pc.indices_nonzero(
        pc.fill_null(pc.is_in(hashes, pa.array(repeated, pa.string())), False)
    ).to_pylist()
    rows = table.take(pa.array(positions, pa.int64())).to_pylist()

    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["sha256"], []).append(row)
    label_conflicts = []
    for sha, members in groups.items():
        members.sort(key=lambda row: row["key"])
        owners = [row for row in members if row["status"] == OK and row["path"]]
        labels = sorted({row["label"] for row in members})
        if len(labels) > 1:
            keys = [row["key"] for row in members]
            label_conflicts.append({"sha256": sha, "keys": keys, "labels": labels})
        if not owners:
            continue
        canonical = members[0]
        owner = next((row for row in owners if row is canonical), owners[0])
        if owner is not canonical:
            _move_image(processed_dir, owner, canonical)
        for row in members[1:]:
            if any(row is other for other in owners) and row is not owner:
                _remove_image(processed_dir, row)  # a second copy, e.g. from another shard
            row.update(status=DUPLICATE, duplicate_of=canonical["key"], path=None)

    updated = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    keep = pc.invert(pc.is_in(pa.array(range(table.num_rows), pa.int64()), pa.array(positions)))
    merged = pa.concat_tables([table.filter(keep), updated])
    return merged.take(pc.sort_indices(merged, [("key", "ascending")])), label_conflicts


def _move_image(processed_dir: Path, owner: dict, canonical: dict) -> None:
    """Move the stored file of ``owner`` to the path of ``canonical`` and swap the rows."""
    source = processed_dir / owner["path"]
    target_rel = image_path(canonical["label"], canonical["key"])
    target = processed_dir / target_rel
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.exists():
        os.replace(source, target)
    for name in ("format", "original_width", "original_height", "width", "height"):
        canonical[name] = owner[name]
    canonical.update(kept_original=owner["kept_original"], status=OK, path=target_rel)
    canonical["duplicate_of"] = None
    owner["path"] = None


def _remove_image(processed_dir: Path, row: dict) -> None:
    path = processed_dir / image_path(row["label"], row["key"])
    path.unlink(missing_ok=True)


def remove_orphans(table: pa.Table, processed_dir: Path, shard: tuple[int, int] | None) -> int:
    """Delete files under ``images/`` that no ``ok`` row points to; return how many.

    Only keys of ``shard`` are considered, so shards writing into one shared folder
    never delete each other's images. Temporary files left by a killed run go too.
    """
    images = processed_dir / "images"
    if not images.is_dir():
        return 0
    wanted = set(pc.filter(table.column("path"), pc.equal(table.column("status"), OK)).to_pylist())
    removed = 0
    for path in images.rglob("*"):
        if not path.is_file():
            continue
        if TEMP_FILE_RE.match(path.name):
            path.unlink(missing_ok=True)
            removed += 1
            continue
        key = path.stem
        relative = path.relative_to(processed_dir).as_posix()
        if KEY_RE.match(key) and shard_matches(key, shard) and relative not in wanted:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def compact(
    manifest_path: Path, processed_dir: Path, shard: tuple[int, int] | None
) -> tuple[pa.Table, dict[str, Any]]:
    """Compact parts into the manifest, settle duplicates, remove orphan files."""
    table = read_manifest(manifest_path)
    table, label_conflicts = settle_duplicates(table, processed_dir)
    orphans = remove_orphans(table, processed_dir, shard)
    with atomic_path(manifest_path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    parts_dir = manifest_path.with_name(manifest_path.stem + ".parts")
    if parts_dir.is_dir():
        for part in parts_dir.glob("*"):
            part.unlink()
        parts_dir.rmdir()
    return table, {"orphan_files_removed": orphans, "duplicate_label_conflicts": label_conflicts}
