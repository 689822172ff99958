"""Helpers shared by every stage: paths, logging set-up, atomic writes and stats files.

Every stage module imports from here and nothing here runs at import time, so a
stage configures logging once in its own ``main``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_VERSION = "v1"

logger = logging.getLogger(__name__)


def raw_dir(data_version: str = DEFAULT_DATA_VERSION) -> Path:
    """Return ``data/raw/<data_version>`` under the project root."""
    return PROJECT_ROOT / "data" / "raw" / data_version


def processed_dir(data_version: str = DEFAULT_DATA_VERSION) -> Path:
    """Return ``data/processed/<data_version>`` under the project root."""
    return PROJECT_ROOT / "data" / "processed" / data_version


def setup_logging(verbose: bool = False) -> None:
    """Configure the root logger once, for a stage's command line entry point."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


@functools.lru_cache(maxsize=1)
def _file_mode() -> int:
    """Return the mode ``open()`` gives a new file: 0o666 less the process umask."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    return 0o644


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` and move it onto ``path`` on success.

    The temporary file lives in the same folder, so the final ``os.replace`` is a
    rename on one file system: readers see either the old file or the complete new
    one, never a partial write. On an exception the temporary file is removed and
    ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, _file_mode())  # mkstemp creates 0o600; match what open() would create
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """Write ``payload`` as indented UTF-8 JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def stats_path(out_dir: str | os.PathLike[str], stage: str) -> Path:
    """Return where ``stage`` writes its counts: ``<out_dir>/stats/<stage>.json``."""
    return Path(out_dir) / "stats" / f"{stage}.json"


def write_stats(out_dir: str | os.PathLike[str], stage: str, stats: dict[str, Any]) -> Path:
    """Write a stage's counts to ``<out_dir>/stats/<stage>.json`` with a timestamp."""
    path = stats_path(out_dir, stage)
    write_json(path, {"stage": stage, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **stats})
    return path


def count_values(values: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    """Return ``{value: rows}`` sorted by value, for the stats files."""
    counts = sorted(pc.value_counts(values).to_pylist(), key=lambda row: str(row["values"]))
    return {str(row["values"]): row["counts"] for row in counts}


def write_arrow(path: str | os.PathLike[str], table: pa.Table) -> None:
    """Write ``table`` as an Arrow IPC file, atomically; the format for in-between tables.

    Arrow IPC files need no encoding on write and are mapped into memory on read, so a
    stage hands a table to the next one at the cost of a file copy.
    """
    with atomic_path(path) as tmp:
        with pa.ipc.new_file(tmp, table.schema) as writer:
            writer.write_table(table)


def read_arrow(path: str | os.PathLike[str]) -> pa.Table:
    """Read an Arrow IPC file written by ``write_arrow``, mapped into memory."""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


@contextlib.contextmanager
def exclusive_lock(lock_path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` while the block runs.

    Raises RuntimeError naming the process that holds it. The operating system releases
    the lock when the process ends, even by SIGKILL, so a stale lock file is harmless.
    """
    import fcntl

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            raise RuntimeError(
                f"another process ({owner}) is working on {what}; wait for it to finish"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield


STAGE_LOCK_FILE = ".data-stages.lock"
_held_stage_locks: dict[Path, int] = {}


@contextlib.contextmanager
def stage_lock(processed: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the lock of a processed-data folder while a data stage writes into it.

    Two runs on one folder would delete each other's temporary files and mix their
    outputs, so the second one raises RuntimeError naming the first. The lock is
    re-entrant within a process: ``make prepare`` holds it around the three stages,
    which each take it again.
    """
    path = (Path(processed) / STAGE_LOCK_FILE).resolve()
    if path in _held_stage_locks:
        _held_stage_locks[path] += 1
        try:
            yield
        finally:
            _held_stage_locks[path] -= 1
        return
    with exclusive_lock(path, f"the processed data folder {str(processed)!r}"):
        _held_stage_locks[path] = 1
        try:
            yield
        finally:
            del _held_stage_locks[path]


def remove_leftover_temporary_files(targets: Iterator[Path] | list[Path]) -> list[Path]:
    """Remove the temporary files that a killed ``atomic_path`` write of each target left.

    Only names that ``atomic_path`` gives for these targets are removed, so other
    stages' temporary files in the same folder are left alone. Returns what was removed.
    """
    removed = []
    for target in targets:
        for leftover in Path(target).parent.glob(f".{Path(target).name}.*.tmp"):
            try:
                leftover.unlink()
            except OSError as exc:
                logger.warning("could not remove %s: %s", leftover, exc)
                continue
            removed.append(leftover)
    return removed
