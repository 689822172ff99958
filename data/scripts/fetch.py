"""Fetch stage: download, check and store the image of every URL in ``products.parquet``.

Reads ``<processed-dir>/products.parquet`` (columns ``key``, ``image_url``, ``label``)
in chunks and writes, beside it:

* ``images/<label>/<key>.jpg`` for every image that passed the checks in
  ``data.scripts.images`` (written to a temporary file, then renamed);
* ``manifest.parquet`` with one row per URL: status, HTTP status, error, attempts,
  bytes, sizes, SHA-256, elapsed time (see ``data.scripts.manifest``);
* ``stats/fetch.json`` with counts per status and the most frequent errors.

Downloads run on one asyncio event loop (see ``data.scripts.httpclient`` for limits,
retries and the address guard); decoding, resizing and writing run in a thread pool,
where OpenCV releases the GIL. A rerun skips every URL that already has a final
status in the manifest and tries again those that failed for a passing reason
(timeout, connection error, 408, 429, 5xx, blocked host). SIGINT and SIGTERM stop the
run: requests in flight are dropped, finished rows are flushed, and the next run goes
on from there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm
from yarl import URL

from data.scripts import httpclient
from data.scripts.common import (
    DEFAULT_DATA_VERSION,
    atomic_path,
    processed_dir,
    setup_logging,
    write_stats,
)
from data.scripts.httpclient import (
    HostLimiter,
    HttpConfig,
    clean_header,
    fetch_url,
    make_session,
)
from data.scripts.images import RESIZE_MODES, ImageCheckConfig, ImageRejected, process_image
from data.scripts.manifest import (
    DUPLICATE,
    KEY_RE,
    OK,
    ManifestWriter,
    compact,
    image_path,
    read_manifest,
    shard_matches,
)
from data.scripts.merge import url_key
from data.scripts.netguard import AddressGuard
from data.scripts.text import SAFE_NAME_RE
from data.scripts.urls import InvalidURL, normalise_url, redact_credentials

logger = logging.getLogger(__name__)

STAGE = "fetch"
INPUT_COLUMNS = ["key", "image_url", "label"]
TRANSIENT_STATUSES = frozenset(
    {httpclient.TIMEOUT, httpclient.CONNECTION_ERROR, httpclient.BLOCKED}
)
MAX_ERROR_MESSAGES = 20
INTERNAL_ERROR = "internal_error"
LOG_EVERY_SECONDS = 30.0
_LONG_NUMBER_RE = re.compile(r"\d{4,}")


@dataclass(frozen=True)
class FetchOptions:
    """Everything a fetch run needs besides the network and image settings."""

    processed_dir: Path
    input_path: Path
    http: HttpConfig = field(default_factory=HttpConfig)
    image: ImageCheckConfig = field(default_factory=ImageCheckConfig)
    shard: tuple[int, int] | None = None
    chunk_rows: int = 10_000
    limit: int | None = None
    workers: int = max(1, os.cpu_count() or 1)
    manifest_flush_rows: int = 2_000

    @property
    def manifest_path(self) -> Path:
        if self.shard is None:
            return self.processed_dir / "manifest.parquet"
        index, count = self.shard
        return self.processed_dir / f"manifest-shard-{index}-of-{count}.parquet"


def parse_shard(value: str | None) -> tuple[int, int] | None:
    """Parse ``"i/n"`` (0 <= i < n); raise ValueError with the fix otherwise."""
    if value in (None, ""):
        return None
    try:
        index_text, count_text = value.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ValueError(f"SHARD must look like i/n, for example 0/4; received {value!r}")
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"SHARD {value!r} needs 0 <= i < n and n >= 1, for example 0/4")
    return index, count


def is_transient(row: dict[str, Any]) -> bool:
    """Return True for a manifest row that a rerun should try again."""
    if row["status"] in TRANSIENT_STATUSES:
        return True
    return row["status"] == httpclient.HTTP_ERROR and (
        row["http_status"] in httpclient.RETRYABLE_STATUSES
    )


# ---- input ----


def image_settings(config: ImageCheckConfig) -> str:
    """Describe the image settings a stored file was made with, for the manifest."""
    return (
        f"size={config.image_size or 'none'};mode={config.resize_mode};"
        f"quality={config.jpeg_quality};min_side={config.min_side};"
        f"max_aspect={config.max_aspect_ratio};max_pixels={config.max_pixels}"
    )


def done_rows(manifest: pa.Table, settings: str) -> dict[str, str]:
    """Return ``{key: label}`` of the rows a rerun does not fetch again.

    A row is done when its status is final and it was made with the same image settings;
    the caller also compares the label, so a relabelled image is stored again.
    """
    if manifest.num_rows == 0:
        return {}
    transient = pc.is_in(manifest.column("status"), pa.array(sorted(TRANSIENT_STATUSES)))
    retryable_http = pc.and_(
        pc.equal(manifest.column("status"), httpclient.HTTP_ERROR),
        pc.is_in(manifest.column("http_status"), pa.array(sorted(httpclient.RETRYABLE_STATUSES))),
    )
    same_settings = pc.equal(manifest.column("image_settings"), settings)
    keep = pc.and_(
        pc.invert(pc.or_(pc.fill_null(transient, False), pc.fill_null(retryable_http, False))),
        pc.fill_null(same_settings, False),
    )
    done = manifest.filter(keep)
    return dict(zip(done.column("key").to_pylist(), done.column("label").to_pylist()))


def check_input(path: Path) -> pq.ParquetFile:
    """Open the input table; raise FileNotFoundError or ValueError naming the fix."""
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} not found; run 'make prepare' first")
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(
            f"{str(path)!r} is not a Parquet table ({exc}); pass the products.parquet "
            "written by 'make relabel'"
        ) from exc
    missing = [c for c in INPUT_COLUMNS if c not in parquet.schema_arrow.names]
    if missing:
        raise ValueError(
            f"{str(path)!r} lacks column(s) {missing}; it must come from 'make relabel'"
        )
    return parquet


def _needs_fetch(key: Any, label: Any, done: dict[str, str], options: FetchOptions) -> bool:
    """Return False for a row done with this label, or one of another shard.

    Rows with a malformed key return True, so that they get their ``invalid_input`` row.
    """
    if isinstance(key, str) and key in done and done[key] == label:
        return False
    other_shard = (
        isinstance(key, str) and KEY_RE.fullmatch(key) and not shard_matches(key, options.shard)
    )
    return not other_shard


def iter_work(
    parquet: pq.ParquetFile, done: dict[str, str], options: FetchOptions
) -> Iterator[dict[str, Any]]:
    """Yield input rows of this shard that are not done, reading ``chunk_rows`` at a time.

    A key seen twice in the input is fetched once; the repeats are counted and logged.
    """
    produced = 0
    seen: set[str] = set()
    repeated = 0
    for batch in parquet.iter_batches(batch_size=options.chunk_rows, columns=INPUT_COLUMNS):
        for row in batch.to_pylist():
            if not _needs_fetch(row["key"], row["label"], done, options):
                continue
            if row["key"] in seen:
                repeated += 1
                continue
            if options.limit is not None and produced >= options.limit:
                return
            seen.add(row["key"])
            produced += 1
            yield row
    if repeated:
        logger.warning("fetch: skipped %d input rows whose key appeared before", repeated)


def count_work(parquet: pq.ParquetFile, done: dict[str, str], options: FetchOptions) -> int:
    table = parquet.read(columns=["key", "label"])
    total = len(
        {
            key
            for key, label in zip(
                table.column("key").to_pylist(), table.column("label").to_pylist()
            )
            if _needs_fetch(key, label, done, options)
        }
    )
    return total if options.limit is None else min(total, options.limit)


# ---- storing images ----


class ImageStore:
    """Writes checked images under ``images/<label>/`` and remembers stored bodies."""

    def __init__(self, processed: Path, manifest: pa.Table) -> None:
        self.processed = processed
        self.owner_of: dict[str, str] = {}
        stored = manifest.filter(pc.equal(manifest.column("status"), OK))
        for key, sha in zip(stored.column("key").to_pylist(), stored.column("sha256").to_pylist()):
            if sha:
                self.owner_of[sha] = key

    def claim(self, sha256: str, key: str) -> str | None:
        """Reserve ``sha256`` for ``key``; return the key that already has it, if any."""
        owner = self.owner_of.get(sha256)
        if owner is None:
            self.owner_of[sha256] = key
        return owner

    def release(self, sha256: str, key: str) -> None:
        if self.owner_of.get(sha256) == key:
            del self.owner_of[sha256]

    def write(self, label: str, key: str, data: bytes) -> str:
        """Write ``data`` atomically; return its path relative to the processed folder.

        ``label`` and ``key`` were checked by ``_input_problem`` (a safe folder name, 16 hex
        digits), so the path stays inside ``images/``; the check below is a second guard.
        """
        if not (SAFE_NAME_RE.fullmatch(label) and KEY_RE.fullmatch(key)):
            raise ValueError(f"unsafe image path for label {label!r} and key {key!r}")
        relative = image_path(label, key)
        with atomic_path(self.processed / relative) as tmp:
            tmp.write_bytes(data)
        return relative


def _check_body(body: bytes, config: ImageCheckConfig) -> tuple[Any, str]:
    """Run in a worker thread: image checks and the SHA-256 of the downloaded body."""
    sha = hashlib.sha256(body).hexdigest()
    return process_image(body, config), sha


# ---- one URL ----


def _storable(text: str | None, limit: int = 2048) -> str | None:
    """Return ``text`` as valid UTF-8 of at most ``limit`` characters."""
    if text is None:
        return None
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")[:limit]


def _base_row(row: dict[str, Any], settings: str) -> dict[str, Any]:
    """Start a manifest row; values from the input are made safe to store."""
    url = row["image_url"] if isinstance(row["image_url"], str) else None
    return {
        "key": str(row["key"])[:64],
        "url": (
            clean_header(redact_credentials(url))
            if url and len(url) > 2048
            else redact_credentials(url)
        ),
        "label": str(row["label"])[:64],
        "status": None,
        "attempts": 0,
        "image_settings": settings,
        "fetched_at": datetime.now(timezone.utc),
    }


def _input_problem(row: dict[str, Any]) -> str | None:
    """Return why an input row cannot be fetched, or None; the checks are cheap."""
    key, label, url = row["key"], row["label"], row["image_url"]
    if not isinstance(url, str) or not url:
        return "the URL is missing; rebuild the table with 'make merge'"
    try:
        canonical = normalise_url(url)
    except InvalidURL as exc:
        return f"{exc}; rebuild the table with 'make merge'"
    if canonical != url:
        return "the URL is not in canonical form; rebuild the table with 'make merge'"
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        return f"key {key!r} is not 16 hex digits; rebuild the table with 'make merge'"
    if key != url_key(url):
        return f"key {key!r} does not belong to this URL; rebuild the table with 'make merge'"
    if not isinstance(label, str) or not SAFE_NAME_RE.fullmatch(label):
        return f"label {label!r} is not a safe folder name; rebuild with 'make relabel'"
    return None


class Fetcher:
    """Downloads, checks and stores URLs; one instance per run."""

    def __init__(self, options: FetchOptions, store: ImageStore, pool: ThreadPoolExecutor):
        self.options = options
        self.store = store
        self.pool = pool
        self.guard = AddressGuard(
            options.http.allow_private_addresses, options.http.allowed_networks
        )
        self.limiter = HostLimiter(options.http.per_host, options.http.blocked_host_threshold)
        self.bytes_downloaded = 0
        self.settings = image_settings(options.image)

    async def handle(self, session: Any, row: dict[str, Any]) -> dict[str, Any]:
        """Return the manifest row for one input row; never raises for a bad URL or image."""
        record = _base_row(row, self.settings)
        problem = _input_problem(row)
        if problem:
            record.update(status=httpclient.INVALID_INPUT, error=problem)
            return record

        result = await fetch_url(
            session, row["image_url"], self.options.http, self.limiter, self.guard
        )
        record.update(
            status=result.status,
            http_status=result.http_status,
            error=result.error,
            attempts=result.attempts,
            content_type=result.content_type,
            elapsed_ms=round(result.elapsed_ms, 1),
        )
        if result.status != httpclient.OK or result.body is None:
            return record
        body = result.body
        record["bytes"] = len(body)
        self.bytes_downloaded += len(body)

        loop = asyncio.get_running_loop()
        try:
            image, sha = await loop.run_in_executor(
                self.pool, _check_body, body, self.options.image
            )
        except ImageRejected as rejected:
            record.update(status=rejected.status, error=str(rejected))
            return record
        record.update(
            sha256=sha,
            format=image.format,
            original_width=image.original_width,
            original_height=image.original_height,
            width=image.width,
            height=image.height,
            kept_original=image.kept_original,
        )

        owner = self.store.claim(sha, row["key"])
        if owner is not None:
            record.update(status=DUPLICATE, duplicate_of=owner)
            return record
        try:
            record["path"] = await loop.run_in_executor(
                self.pool, self.store.write, row["label"], row["key"], image.data
            )
        except BaseException:
            self.store.release(sha, row["key"])
            raise
        record["status"] = OK
        return record


# ---- the run ----


def error_pattern(message: str) -> str:
    """Group error messages for the stats: long numbers (sizes, ports) become N."""
    return _LONG_NUMBER_RE.sub("N", message)[:200]


async def _handle_safely(fetcher: Fetcher, session: Any, row: dict[str, Any]) -> dict[str, Any]:
    """Run ``Fetcher.handle``; an unexpected error becomes this URL's status, not a crash.

    OSError (a full disk, a folder without write permission) still stops the run,
    because no later URL could be stored either.
    """
    try:
        record = await fetcher.handle(session, row)
        record["fetched_at"] = datetime.now(timezone.utc)  # when the URL was finished
        return record
    except (OSError, asyncio.CancelledError):
        raise
    except Exception as exc:  # noqa: BLE001 - one URL must not end a run of 400,000
        logger.exception("fetch: unexpected error for key %r", row.get("key"))
        record = _base_row(row, fetcher.settings)
        record.update(status=INTERNAL_ERROR, error=f"{type(exc).__name__}: {exc}"[:300])
        return record


class HeldHostScheduler:
    """Puts aside URLs of a host that asked to wait (Retry-After) while other hosts go on.

    Without it every worker that picks such a URL would sleep until the host's delay
    ends, and URLs of other hosts would wait behind them. A URL is put aside at most
    once, and only while the input still has rows to give, so every URL is done before
    the workers stop.
    """

    def __init__(self, limiter: HostLimiter, queue: asyncio.Queue) -> None:
        self.limiter = limiter
        self.queue = queue
        self.held: list[tuple[float, dict[str, Any]]] = []
        self.input_done = False
        self._task: asyncio.Task | None = None

    def defer(self, row: dict[str, Any]) -> bool:
        """Return True when ``row`` was put aside for later."""
        if self.input_done or row.get("_deferred"):
            return False
        host = _host_of(row.get("image_url"))
        if host is None or host not in self.limiter.hosts:
            return False
        ready_at = self.limiter.hosts[host].not_before
        if ready_at <= time.monotonic():
            return False
        row["_deferred"] = True
        self.held.append((ready_at, row))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._release())
        return True

    async def _release(self) -> None:
        while self.held:
            self.held.sort(key=lambda item: item[0])
            wait = self.held[0][0] - time.monotonic()
            if wait > 0:
                await asyncio.sleep(min(wait, 0.5))
                continue
            _, row = self.held.pop(0)
            await self.queue.put(row)

    async def drain(self) -> None:
        """Stop putting rows aside and wait until every held row is back in the queue."""
        self.input_done = True
        while self.held or (self._task is not None and not self._task.done()):
            await asyncio.sleep(0.05)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


def _host_of(url: Any) -> str | None:
    try:
        return URL(url, encoded=True).host if isinstance(url, str) else None
    except ValueError:
        return None


class Progress:
    """A tqdm bar on a terminal; without one, a log line every ``LOG_EVERY_SECONDS``."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.last_log = self.started
        self.bar = tqdm(total=total, desc="fetch", unit="img", disable=None, smoothing=0.05)

    def update(self, ok: int) -> None:
        self.done += 1
        if not self.bar.disable:
            self.bar.update(1)
            if self.done % 50 == 0 or self.done == self.total:
                self.bar.set_postfix(ok=f"{ok / self.done:.0%}", refresh=False)
            return
        now = time.monotonic()
        if now - self.last_log >= LOG_EVERY_SECONDS or self.done == self.total:
            self.last_log = now
            rate = self.done / max(now - self.started, 1e-9)
            remaining = (self.total - self.done) / rate if rate else float("inf")
            logger.info(
                "fetch: %d/%d URLs (%.1f%%), %.1f/s, %.0f%% ok, about %.0f min left",
                self.done,
                self.total,
                100 * self.done / max(self.total, 1),
                rate,
                100 * ok / self.done,
                remaining / 60,
            )

    def close(self) -> None:
        self.bar.close()


@dataclass
class RunCounts:
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    interrupted: bool = False


async def _run_async(
    options: FetchOptions,
    rows: Iterator[dict[str, Any]],
    total: int,
    store: ImageStore,
    writer: ManifestWriter,
    pool: ThreadPoolExecutor,
) -> tuple[RunCounts, Fetcher]:
    counts = RunCounts()
    fetcher = Fetcher(options, store, pool)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(
        maxsize=2 * options.http.concurrency
    )
    progress = Progress(total)
    scheduler = HeldHostScheduler(fetcher.limiter, queue)

    async def produce() -> None:
        for row in rows:
            await queue.put(row)
        await scheduler.drain()
        for _ in range(options.http.concurrency):
            await queue.put(None)

    async def work(session: Any) -> None:
        while (row := await queue.get()) is not None:
            if scheduler.defer(row):
                continue
            record = await _handle_safely(fetcher, session, row)
            writer.add(record)
            counts.statuses[record["status"]] += 1
            if record.get("error"):
                counts.errors[error_pattern(record["error"])] += 1
            progress.update(counts.statuses[OK])

    try:
        async with make_session(options.http, fetcher.guard) as session:
            tasks = [asyncio.create_task(produce())]
            tasks += [asyncio.create_task(work(session)) for _ in range(options.http.concurrency)]
            everything = asyncio.gather(*tasks)
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({everything, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                counts.interrupted = True
                logger.warning("fetch: stopping; requests in flight are dropped")
                for task in tasks:
                    task.cancel()
            else:
                stopper.cancel()
            await asyncio.gather(everything, return_exceptions=counts.interrupted)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        scheduler.close()
        progress.close()
    return counts, fetcher


def run_fetch(options: FetchOptions) -> dict[str, Any]:
    """Fetch every URL of the input that is not done yet; return the stats.

    Raises ValueError for an invalid setting and FileNotFoundError for a missing input,
    both before any request is sent.
    """
    options.http.validate()
    options.image.validate()
    parquet = check_input(options.input_path)

    with run_lock(options.manifest_path):
        return _run_locked(options, parquet)


@contextlib.contextmanager
def run_lock(manifest_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the manifest, so two runs never share an output folder.

    Raises RuntimeError naming the other process when the lock is taken. The lock is
    released when the process ends, even by SIGKILL.
    """
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = manifest_path.with_name(manifest_path.name + ".lock")
    with open(lock_path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            raise RuntimeError(
                f"another fetch (process {owner}) is writing {manifest_path}; wait for it to "
                "finish, or give this run another PROCESSED_DIR or SHARD"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def _run_locked(options: FetchOptions, parquet: pq.ParquetFile) -> dict[str, Any]:
    started = time.monotonic()
    _remove_leftovers(options.manifest_path)
    manifest = read_manifest(options.manifest_path)
    settings = image_settings(options.image)
    done = done_rows(manifest, settings)
    total = count_work(parquet, done, options)
    logger.info(
        "fetch: %d URLs to fetch from %s (%d already done), concurrency %d, %d per host%s",
        total,
        options.input_path,
        len(done),
        options.http.concurrency,
        options.http.per_host,
        f", shard {options.shard[0]}/{options.shard[1]}" if options.shard else "",
    )
    if manifest.num_rows > len(done):
        logger.info(
            "fetch: %d manifest rows are fetched again (passing failure, new label or new "
            "image settings)",
            manifest.num_rows - len(done),
        )

    store = ImageStore(
        options.processed_dir,
        manifest.filter(pc.is_in(manifest.column("key"), pa.array(list(done), pa.string()))),
    )
    writer = ManifestWriter(options.manifest_path, flush_rows=options.manifest_flush_rows)
    with ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="image") as pool:
        try:
            counts, fetcher = asyncio.run(
                _run_async(options, iter_work(parquet, done, options), total, store, writer, pool)
            )
        finally:
            try:
                writer.flush()
            except OSError as exc:
                logger.error("fetch: could not save the last manifest rows: %s", exc)

    seconds = time.monotonic() - started
    if counts.interrupted:
        logger.warning(
            "fetch: interrupted after %d URLs; run the same command again to go on",
            sum(counts.statuses.values()),
        )
        raise KeyboardInterrupt

    final, compaction = compact(options.manifest_path, options.processed_dir, options.shard)
    stats = summarise(final, counts, fetcher, seconds, compaction, options)
    write_stats(
        options.processed_dir, STAGE if options.shard is None else _shard_stage(options), stats
    )
    logger.info(
        "fetch: done in %.1f s: %d URLs this run (%.1f/s), %s; manifest has %d rows, %d ok",
        seconds,
        sum(counts.statuses.values()),
        stats["run"]["urls_per_second"],
        ", ".join(f"{k}={v}" for k, v in sorted(counts.statuses.items())) or "nothing to do",
        final.num_rows,
        stats["status_counts"].get(OK, 0),
    )
    return stats


def _remove_leftovers(manifest_path: Path) -> None:
    """Remove temporary files a killed run left beside the manifest."""
    for leftover in manifest_path.parent.glob(f".{manifest_path.name}.*.tmp"):
        leftover.unlink(missing_ok=True)


def _shard_stage(options: FetchOptions) -> str:
    index, count = options.shard
    return f"{STAGE}-shard-{index}-of-{count}"


def summarise(
    manifest: pa.Table,
    counts: RunCounts,
    fetcher: Fetcher,
    seconds: float,
    compaction: dict[str, Any],
    options: FetchOptions,
) -> dict[str, Any]:
    """Counts for ``stats/fetch.json``: the whole manifest and this run."""
    status_counts = Counter(manifest.column("status").to_pylist())
    ok = manifest.filter(pc.equal(manifest.column("status"), OK))
    per_label = Counter(ok.column("label").to_pylist())
    done = sum(counts.statuses.values())
    return {
        "manifest": str(options.manifest_path),
        "rows": manifest.num_rows,
        "status_counts": dict(sorted(status_counts.items())),
        "ok_per_label": dict(sorted(per_label.items())),
        "run": {
            "urls": done,
            "seconds": round(seconds, 3),
            "urls_per_second": round(done / seconds, 2) if seconds > 0 else 0.0,
            "bytes_downloaded": fetcher.bytes_downloaded,
            "status_counts": dict(sorted(counts.statuses.items())),
            "top_errors": [
                {"error": message, "count": n}
                for message, n in counts.errors.most_common(MAX_ERROR_MESSAGES)
            ],
        },
        "blocked_hosts": fetcher.limiter.blocked_hosts(),
        "orphan_files_removed": compaction["orphan_files_removed"],
        "duplicate_label_conflicts": len(compaction["duplicate_label_conflicts"]),
        "duplicate_label_conflict_examples": compaction["duplicate_label_conflicts"][:20],
        "settings": {
            "image_size": options.image.image_size,
            "resize_mode": options.image.resize_mode,
            "concurrency": options.http.concurrency,
            "per_host": options.http.per_host,
            "shard": list(options.shard) if options.shard else None,
        },
    }


# ---- merging shard manifests ----


def merge_shard_manifests(processed: Path) -> dict[str, Any]:
    """Combine ``manifest-shard-*-of-*.parquet`` into ``manifest.parquet``.

    Run after copying every shard's ``images/`` into this folder. Duplicates across
    shards are settled as within one run: the smallest key keeps the image.
    """
    shard_files = sorted(processed.glob("manifest-shard-*-of-*.parquet"))
    if not shard_files:
        raise FileNotFoundError(
            f"no manifest-shard-*-of-*.parquet in {str(processed)!r}; copy each shard's "
            "manifest and images/ into this folder first"
        )
    counts = {int(p.stem.rsplit("-of-", 1)[1]) for p in shard_files}
    if len(counts) > 1:
        raise ValueError(
            f"{str(processed)!r} has shard manifests of runs split {sorted(counts)} ways: "
            f"{[p.name for p in shard_files]}; remove the ones of the old split and run again"
        )
    missing = sorted(set(range(counts.pop())) - {_shard_index(p) for p in shard_files})
    if missing:
        logger.warning("merging without the manifests of shard(s) %s", missing)
    target = processed / "manifest.parquet"
    tables = [read_manifest(path) for path in shard_files]
    if target.exists():
        tables.insert(0, read_manifest(target))
    with atomic_path(target) as tmp:
        pq.write_table(pa.concat_tables(tables), tmp, compression="zstd")
    final, compaction = compact(target, processed, None)
    status_counts = Counter(final.column("status").to_pylist())
    logger.info(
        "merged %d shard manifests into %s: %d rows, %s",
        len(shard_files),
        target,
        final.num_rows,
        ", ".join(f"{k}={v}" for k, v in sorted(status_counts.items())),
    )
    return {"shards": [p.name for p in shard_files], "rows": final.num_rows, **compaction}


def _shard_index(path: Path) -> int:
    return int(path.stem.removeprefix("manifest-shard-").split("-of-")[0])


# ---- command line ----


def build_parser() -> argparse.ArgumentParser:
    defaults_http = HttpConfig()
    defaults_image = ImageCheckConfig()
    parser = argparse.ArgumentParser(
        prog="python -m data.scripts.fetch",
        description="Download, check and store the image of every URL in products.parquet.",
    )
    paths = parser.add_argument_group("paths")
    paths.add_argument(
        "--processed-dir",
        type=Path,
        default=processed_dir(DEFAULT_DATA_VERSION),
        help="folder with products.parquet; images/ and manifest.parquet go here "
        "(default: data/processed/v1)",
    )
    paths.add_argument(
        "--input",
        type=Path,
        default=None,
        help="input table (default: PROCESSED_DIR/products.parquet)",
    )
    paths.add_argument("--shard", default=None, help="take share i of n, as i/n (default: all)")
    paths.add_argument(
        "--merge-shards",
        action="store_true",
        help="combine the shard manifests in PROCESSED_DIR into manifest.parquet and exit",
    )
    paths.add_argument(
        "--limit", type=int, default=None, help="fetch at most this many URLs (default: all)"
    )

    image = parser.add_argument_group("images")
    image.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="target side in pixels; images are resized by --resize-mode (default: no resize)",
    )
    image.add_argument(
        "--resize-mode",
        choices=RESIZE_MODES,
        default=defaults_image.resize_mode,
        help=f"how to reach --image-size (default: {defaults_image.resize_mode})",
    )
    image.add_argument(
        "--jpeg-quality",
        type=int,
        default=defaults_image.jpeg_quality,
        help=f"JPEG quality of re-encoded images, 1-100 (default: {defaults_image.jpeg_quality})",
    )
    image.add_argument(
        "--min-side",
        type=int,
        default=defaults_image.min_side,
        help="reject images with a side under this many pixels "
        f"(default: {defaults_image.min_side})",
    )
    image.add_argument(
        "--max-aspect-ratio",
        type=float,
        default=defaults_image.max_aspect_ratio,
        help=f"reject longer/shorter side above this (default: {defaults_image.max_aspect_ratio})",
    )
    image.add_argument(
        "--max-pixels",
        type=int,
        default=defaults_image.max_pixels,
        help="reject images with more pixels, read from the header "
        f"(default: {defaults_image.max_pixels})",
    )

    network = parser.add_argument_group("network")
    network.add_argument(
        "--concurrency",
        type=int,
        default=defaults_http.concurrency,
        help=f"requests in flight at once (default: {defaults_http.concurrency})",
    )
    network.add_argument(
        "--per-host",
        type=int,
        default=defaults_http.per_host,
        help=f"requests in flight to one host (default: {defaults_http.per_host})",
    )
    network.add_argument(
        "--connect-timeout",
        type=float,
        default=defaults_http.connect_timeout,
        help=f"seconds to connect (default: {defaults_http.connect_timeout})",
    )
    network.add_argument(
        "--read-timeout",
        type=float,
        default=defaults_http.read_timeout,
        help=f"most seconds between two reads (default: {defaults_http.read_timeout})",
    )
    network.add_argument(
        "--request-timeout",
        type=float,
        default=defaults_http.request_timeout,
        help=f"most seconds for one attempt (default: {defaults_http.request_timeout})",
    )
    network.add_argument(
        "--max-attempts",
        type=int,
        default=defaults_http.max_attempts,
        help=f"attempts per URL for passing failures (default: {defaults_http.max_attempts})",
    )
    network.add_argument(
        "--max-retry-after",
        type=float,
        default=defaults_http.max_retry_after,
        help="give up when Retry-After asks for more seconds than this "
        f"(default: {defaults_http.max_retry_after})",
    )
    network.add_argument(
        "--user-agent",
        default=defaults_http.user_agent,
        help="User-Agent header (default: the project's own)",
    )
    network.add_argument(
        "--max-redirects",
        type=int,
        default=defaults_http.max_redirects,
        help=f"redirects followed per URL (default: {defaults_http.max_redirects})",
    )
    network.add_argument(
        "--max-bytes",
        type=int,
        default=defaults_http.max_bytes,
        help=f"largest response body in bytes (default: {defaults_http.max_bytes})",
    )
    network.add_argument(
        "--blocked-host-threshold",
        type=int,
        default=defaults_http.blocked_host_threshold,
        help="403/429/503 answers in a row, with no success, after which a host is skipped "
        f"(default: {defaults_http.blocked_host_threshold})",
    )
    network.add_argument(
        "--ignore-robots-tag",
        action="store_true",
        help="download even when X-Robots-Tag says noai or noimageai (default: respect it)",
    )
    network.add_argument(
        "--allow-private-addresses",
        action="store_true",
        help="allow loopback, private and link-local addresses (default: refused)",
    )
    network.add_argument(
        "--allow-network",
        action="append",
        default=[],
        metavar="CIDR",
        help="allow one network such as 127.0.0.1/32; repeat for more (default: none)",
    )
    paths.add_argument(
        "--manifest-flush-rows",
        type=int,
        default=2_000,
        help="finished rows kept in memory before they are written (default: 2000)",
    )
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    return parser


def options_from_args(args: argparse.Namespace) -> FetchOptions:
    """Build the run's options; raise ValueError for an invalid value."""
    http = replace(
        HttpConfig(),
        concurrency=args.concurrency,
        per_host=args.per_host,
        connect_timeout=args.connect_timeout,
        read_timeout=args.read_timeout,
        request_timeout=args.request_timeout,
        max_attempts=args.max_attempts,
        max_retry_after=args.max_retry_after,
        user_agent=args.user_agent,
        max_redirects=args.max_redirects,
        max_bytes=args.max_bytes,
        blocked_host_threshold=args.blocked_host_threshold,
        respect_robots_tag=not args.ignore_robots_tag,
        allow_private_addresses=args.allow_private_addresses,
        allowed_networks=tuple(args.allow_network),
    )
    image = ImageCheckConfig(
        image_size=args.image_size,
        resize_mode=args.resize_mode,
        jpeg_quality=args.jpeg_quality,
        min_side=args.min_side,
        max_aspect_ratio=args.max_aspect_ratio,
        max_pixels=args.max_pixels,
    )
    options = FetchOptions(
        processed_dir=args.processed_dir,
        input_path=args.input or args.processed_dir / "products.parquet",
        http=http,
        image=image,
        shard=parse_shard(args.shard),
        limit=args.limit,
        manifest_flush_rows=args.manifest_flush_rows,
    )
    options.http.validate()
    options.image.validate()
    if options.limit is not None and options.limit < 0:
        raise ValueError(f"--limit must be 0 or more, received {options.limit}")
    if options.manifest_flush_rows < 1:
        raise ValueError(
            f"--manifest-flush-rows must be 1 or more, received {options.manifest_flush_rows}"
        )
    return options


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        if args.merge_shards:
            merge_shard_manifests(args.processed_dir)
            return 0
        run_fetch(options_from_args(args))
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        logger.error("%s", exc)
        return 2
    except OSError as exc:
        logger.error(
            "fetch: cannot write %s (%s); check the free space and permissions of "
            "PROCESSED_DIR, then run again: finished URLs are kept",
            exc.filename or args.processed_dir,
            exc.strerror or exc,
        )
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
