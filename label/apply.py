"""Write a new data version from an old one and the reviewer's decisions.

``python -m label.apply --processed-dir data/processed/v1 --decisions
label/reviews/v1/decisions.jsonl --out data/processed/v2`` reads the v1
``manifest.parquet`` and the latest decision per key from ``decisions.jsonl`` (written by
``label.review``) and writes v2:

- ``images/<label>/<key>.jpg`` for every ``ok`` row that was not removed, hard-linked to
  the v1 file where the file system allows it and copied otherwise;
- ``manifest.parquet`` with every v1 row and column plus ``original_label`` (the v1
  label) and ``label_source``: ``original``, ``corrected`` (the label changed) or
  ``removed``. Removed rows stay, with status ``removed_by_review`` and no path, so the
  manifest keeps one row per URL and training (which reads ``ok`` rows) skips them;
- ``labels.json`` from v1 in the same order, with an ``images`` count per label;
- ``stats/apply.json`` with the counts.

v1 is only read. v2 is built in a hidden temporary folder beside it and renamed into
place at the end, so a failed or killed run leaves no partial v2.

NOTE: hard-linked images share their bytes with v1. A later stage must replace an image
(write a new file and rename it, as ``data.scripts.common.atomic_path`` does) and never
edit it in place, or v1 changes too.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from data.scripts.common import atomic_path, setup_logging, write_json, write_stats
from data.scripts.manifest import OK, image_path
from label.review import DECISIONS, LABELS_FILE, ReviewInputError, read_decisions

logger = logging.getLogger(__name__)

STAGE = "apply"
MANIFEST_FILE = "manifest.parquet"
REMOVED = "removed_by_review"
SOURCE_ORIGINAL = "original"
SOURCE_CORRECTED = "corrected"
SOURCE_REMOVED = "removed"


class ApplyError(ValueError):
    """Raised, before any output is written, when the inputs cannot make a new version."""


def known_labels(processed_dir: Path, table: pa.Table) -> list[str]:
    """Return the labels of ``labels.json``, the label folders and the manifest, in order."""
    labels: list[str] = []
    labels_path = processed_dir / LABELS_FILE
    if labels_path.is_file():
        for entry in json.loads(labels_path.read_text(encoding="utf-8")):
            labels.append(entry["label"] if isinstance(entry, dict) else str(entry))
    images_dir = processed_dir / "images"
    if images_dir.is_dir():
        labels.extend(sorted(child.name for child in images_dir.iterdir() if child.is_dir()))
    labels.extend(sorted({label for label in table.column("label").to_pylist() if label}))
    return list(dict.fromkeys(labels))


def validate_decisions(decisions: dict[str, dict[str, Any]], labels: list[str]) -> None:
    """Raise ApplyError naming the first decision with an unknown decision or label."""
    for key, record in decisions.items():
        decision = record.get("decision")
        if decision not in DECISIONS:
            raise ApplyError(
                f"decision for key {key!r} must be one of {list(DECISIONS)}, received "
                f"{decision!r}; fix or remove that line of the decisions file"
            )
        if decision != "remove" and record.get("new_label") not in labels:
            raise ApplyError(
                f"new_label for key {key!r} must be one of {labels}, received "
                f"{record.get('new_label')!r}; add the label to labels.json or fix the decision"
            )


def link_or_copy(source: Path, target: Path) -> str:
    """Hard-link ``source`` to ``target``, or copy it where links fail; return which."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
        return "linked"
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
    shutil.copy2(source, target)
    return "copied"


def _decide_row(row: dict[str, Any], record: dict[str, Any] | None) -> dict[str, Any]:
    """Return the v2 row for a v1 ``ok`` row and its decision (None: no decision)."""
    row["original_label"] = row["label"]
    row["label_source"] = SOURCE_ORIGINAL
    if record is None or record["decision"] == "keep":
        return row
    if record["decision"] == "remove":
        row.update(status=REMOVED, path=None, label_source=SOURCE_REMOVED)
        return row
    if record["new_label"] != row["label"]:
        row.update(label=record["new_label"], label_source=SOURCE_CORRECTED)
    return row


def build_version(
    processed_dir: Path, table: pa.Table, decisions: dict[str, dict[str, Any]], out_dir: Path
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Write the images of the new version into ``out_dir``; return its rows and counts."""
    counts: Counter[str] = Counter()
    rows = []
    for row in table.to_pylist():
        record = decisions.get(row["key"])
        if row["status"] != OK or not row["path"]:
            if record is not None:
                counts["decisions_for_rows_without_image"] += 1
                logger.warning(
                    "%s: ignoring the decision %r because the row has status %r and no image",
                    row["key"],
                    record["decision"],
                    row["status"],
                )
            row.update(original_label=row["label"], label_source=SOURCE_ORIGINAL)
            rows.append(row)
            continue

        source = processed_dir / row["path"]
        if not source.is_file():
            raise FileNotFoundError(
                f"image {str(source)!r} of key {row['key']!r} not found although its manifest "
                f"row is 'ok'; rerun 'make fetch' on {str(processed_dir)!r} to repair it"
            )
        row = _decide_row(row, record)
        counts[row["label_source"]] += 1
        if row["status"] == OK:
            row["path"] = image_path(row["label"], row["key"])
            counts[link_or_copy(source, out_dir / row["path"])] += 1
        rows.append(row)
    return rows, counts


def write_labels(processed_dir: Path, out_dir: Path, labels: list[str], rows: list[dict]) -> None:
    """Write ``labels.json``: the v1 entries in order, each with its v2 image count."""
    images = Counter(row["label"] for row in rows if row["status"] == OK)
    entries: list[dict[str, Any]] = []
    labels_path = processed_dir / LABELS_FILE
    if labels_path.is_file():
        for entry in json.loads(labels_path.read_text(encoding="utf-8")):
            entries.append(dict(entry) if isinstance(entry, dict) else {"label": str(entry)})
    listed = {entry["label"] for entry in entries}
    entries.extend({"label": label} for label in labels if label not in listed)
    for entry in entries:
        entry["images"] = images.get(entry["label"], 0)
    write_json(out_dir / LABELS_FILE, entries)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest_schema(table: pa.Table) -> pa.Schema:
    schema = table.schema
    for name in ("original_label", "label_source"):
        if name not in schema.names:
            schema = schema.append(pa.field(name, pa.string()))
    return schema


def _move_into_place(tmp_dir: Path, out_dir: Path) -> None:
    """Rename ``tmp_dir`` to ``out_dir``; an existing ``out_dir`` (``--force``) goes last."""
    if not out_dir.exists():
        os.rename(tmp_dir, out_dir)
        return
    # NOTE: two renames, so a process killed between them leaves no out_dir: the old
    # version stays complete under the hidden name below and the new one in tmp_dir.
    old_dir = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    os.rename(out_dir, old_dir)
    try:
        os.rename(tmp_dir, out_dir)
    except OSError:
        os.rename(old_dir, out_dir)
        raise
    shutil.rmtree(old_dir)


def remove_stale_temporary_dirs(out_dir: Path) -> None:
    """Remove the temporary folders that runs killed by SIGKILL left beside ``out_dir``."""
    for path in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        pid = path.name.rsplit("-", 1)[1]
        if not pid.isdigit() or _process_exists(int(pid)):
            continue
        logger.warning("removing %s, left by process %s that no longer runs", path, pid)
        shutil.rmtree(path)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_apply(
    processed_dir: Path, decisions_path: Path, out_dir: Path, force: bool = False
) -> dict[str, Any]:
    """Write ``out_dir`` from ``processed_dir`` and the decisions; return the stats.

    Raises ApplyError (or ReviewInputError for an unreadable decisions file) before any
    output is written when ``out_dir`` exists without ``force``, is ``processed_dir``
    itself, the v1 manifest is missing or not compacted, or a decision names an unknown
    decision or label.
    """
    started = time.monotonic()
    manifest_path = processed_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ApplyError(f"{str(manifest_path)!r} not found; run 'make fetch' first")
    parts_dir = manifest_path.with_name(manifest_path.stem + ".parts")
    if parts_dir.is_dir() and any(parts_dir.iterdir()):
        raise ApplyError(
            f"{str(parts_dir)!r} contains rows not yet compacted into {MANIFEST_FILE}; rerun "
            f"'make fetch' on {str(processed_dir)!r} until it finishes, then apply"
        )
    if not decisions_path.is_file():
        raise ApplyError(f"decisions file {str(decisions_path)!r} not found; run label.review")
    source, target = processed_dir.resolve(), out_dir.resolve()
    if target == source or target.is_relative_to(source) or source.is_relative_to(target):
        raise ApplyError(
            f"--out {str(out_dir)!r} must be a folder beside --processed-dir "
            f"{str(processed_dir)!r}, not the same folder, inside it or above it; "
            "for example data/processed/v2"
        )
    if out_dir.exists() and not force:
        raise ApplyError(f"{str(out_dir)!r} already exists; pass --force to replace it")

    table = pq.read_table(manifest_path)
    labels = known_labels(processed_dir, table)
    decisions = read_decisions(decisions_path)
    validate_decisions(decisions, labels)
    manifest_keys = set(table.column("key").to_pylist())
    unknown_keys = sorted(key for key in decisions if key not in manifest_keys)
    if unknown_keys:
        logger.warning(
            "%d decisions name keys that are not in %s and are ignored, e.g. %s",
            len(unknown_keys),
            manifest_path,
            ", ".join(unknown_keys[:5]),
        )
    logger.info(
        "apply: %d rows, %d decisions from %s", table.num_rows, len(decisions), decisions_path
    )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporary_dirs(out_dir)
    tmp_dir = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    try:
        rows, counts = build_version(processed_dir, table, decisions, tmp_dir)
        v2_table = pa.Table.from_pylist(rows, schema=_manifest_schema(table))
        with atomic_path(tmp_dir / MANIFEST_FILE) as tmp:
            pq.write_table(v2_table, tmp, compression="zstd")
        write_labels(processed_dir, tmp_dir, labels, rows)
        stats = {
            "seconds": round(time.monotonic() - started, 3),
            "source": str(processed_dir),
            "source_manifest_sha256": _sha256(manifest_path),
            "decisions_file": str(decisions_path),
            "decisions_sha256": _sha256(decisions_path),
            "rows": len(rows),
            "images": counts["linked"] + counts["copied"],
            "images_linked": counts["linked"],
            "images_copied": counts["copied"],
            "label_source": {
                name: counts[name] for name in (SOURCE_ORIGINAL, SOURCE_CORRECTED, SOURCE_REMOVED)
            },
            "decisions": dict(sorted(Counter(r["decision"] for r in decisions.values()).items())),
            "decisions_for_unknown_keys": len(unknown_keys),
            "decisions_for_rows_without_image": counts["decisions_for_rows_without_image"],
            "images_per_label": dict(
                sorted(Counter(row["label"] for row in rows if row["status"] == OK).items())
            ),
        }
        write_stats(tmp_dir, STAGE, stats)
        _move_into_place(tmp_dir, out_dir)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
    logger.info(
        "apply: wrote %s in %.1f s: %d images (%d linked, %d copied), %d corrected, %d removed",
        out_dir,
        stats["seconds"],
        stats["images"],
        counts["linked"],
        counts["copied"],
        counts[SOURCE_CORRECTED],
        counts[SOURCE_REMOVED],
    )
    return stats


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write a new data version from a processed folder and review decisions.",
    )
    parser.add_argument(
        "--processed-dir", type=Path, required=True, help="data version to read (never modified)"
    )
    parser.add_argument(
        "--decisions", type=Path, required=True, help="decisions.jsonl written by label.review"
    )
    parser.add_argument("--out", type=Path, required=True, help="new data version folder to write")
    parser.add_argument("--force", action="store_true", help="replace --out when it exists")
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        run_apply(args.processed_dir, args.decisions, args.out, force=args.force)
    except (ApplyError, ReviewInputError) as error:
        logger.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
