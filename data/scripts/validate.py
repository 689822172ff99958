"""Validate stage: a quick survey of the image URLs before downloading them.

For every URL in ``products.parquet`` (or a random sample with ``--sample``) this sends
a HEAD request and, where a server refuses HEAD (400, 403, 405 or 501), a GET for the
first 1 KiB (``Range: bytes=0-1023``) whose body is not read. It writes:

* ``validation.parquet``: one row per URL with the HTTP status, content type and the
  size the server declares (``Content-Length``, or the total of ``Content-Range``);
* ``stats/validate.json``: the reachable share, counts of status codes and content
  types, the total bytes a full download would take, and the same per host.

The stage uses the fetch stage's client (``data.scripts.httpclient``): the same limits,
retries, address guard and user agent. It is optional; ``make fetch`` does not need it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import replace
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
from data.scripts.httpclient import HostLimiter, HttpConfig, fetch_url, make_session
from data.scripts.netguard import AddressGuard

logger = logging.getLogger(__name__)

STAGE = "validate"
RANGE_HEADERS = {"Range": "bytes=0-1023"}
HEAD_REFUSED = frozenset({400, 403, 405, 501})
_CONTENT_RANGE_TOTAL = re.compile(r"/\s*(\d+)\s*$")
VALIDATION_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("host", pa.string()),
        ("method", pa.string()),
        ("status", pa.string()),
        ("http_status", pa.int32()),
        ("content_type", pa.string()),
        ("bytes_expected", pa.int64()),
        ("error", pa.string()),
        ("elapsed_ms", pa.float64()),
    ]
)


def declared_size(result: httpclient.FetchResult) -> int | None:
    """Return the full size a response declares, from Content-Range or Content-Length."""
    if result.content_range:
        match = _CONTENT_RANGE_TOTAL.search(result.content_range)
        if match:
            return int(match.group(1))
        return None
    return result.content_length


def read_urls(path: Path, sample: int | None, seed: int) -> pa.Table:
    """Read key and URL of every row, or of a seeded random sample of ``sample`` rows."""
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} not found; run 'make prepare' first")
    table = pq.read_table(path, columns=["key", "image_url"])
    if sample is not None and sample < table.num_rows:
        import numpy as np

        rng = np.random.default_rng(seed)
        table = table.take(np.sort(rng.choice(table.num_rows, size=sample, replace=False)))
    return table


async def _survey(rows: list[dict[str, Any]], config: HttpConfig) -> list[dict[str, Any]]:
    guard = AddressGuard(config.allow_private_addresses, config.allowed_networks)
    limiter = HostLimiter(config.per_host, config.blocked_host_threshold)
    results: list[dict[str, Any]] = []
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    for row in rows:
        queue.put_nowait(row)
    for _ in range(config.concurrency):
        queue.put_nowait(None)
    progress = tqdm(total=len(rows), desc="validate", unit="url", disable=None)

    async def check(session: Any, row: dict[str, Any]) -> dict[str, Any]:
        url = row["image_url"]
        result = await fetch_url(
            session, url, config, limiter, guard, method="HEAD", read_body=False
        )
        method = "HEAD"
        if result.status == httpclient.HTTP_ERROR and result.http_status in HEAD_REFUSED:
            result = await fetch_url(
                session, url, config, limiter, guard, headers=RANGE_HEADERS, read_body=False
            )
            method = "GET range"
        return {
            "key": row["key"],
            "url": url,
            "host": URL(url, encoded=True).host,
            "method": method,
            "status": result.status,
            "http_status": result.http_status,
            "content_type": (result.content_type or "").split(";")[0].strip().lower()[:100] or None,
            "bytes_expected": declared_size(result),
            "error": result.error,
            "elapsed_ms": round(result.elapsed_ms, 1),
        }

    async def work(session: Any) -> None:
        while (row := await queue.get()) is not None:
            results.append(await check(session, row))
            progress.update(1)

    try:
        async with make_session(config, guard) as session:
            await asyncio.gather(*(work(session) for _ in range(config.concurrency)))
    finally:
        progress.close()
    return results


def summarise(table: pa.Table) -> dict[str, Any]:
    """Reachable share, status codes, content types and expected bytes, overall and per host."""
    rows = table.to_pylist()
    reachable = [r for r in rows if r["status"] == httpclient.OK]
    per_host: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"urls": 0, "reachable": 0, "bytes_expected": 0, "statuses": Counter()}
    )
    for row in rows:
        host = per_host[row["host"] or "(none)"]
        host["urls"] += 1
        host["reachable"] += row["status"] == httpclient.OK
        host["bytes_expected"] += row["bytes_expected"] or 0
        host["statuses"][str(row["http_status"] or row["status"])] += 1
    hosts = {
        name: {**values, "statuses": dict(values["statuses"])}
        for name, values in sorted(per_host.items(), key=lambda item: -item[1]["urls"])
    }
    image_types = sum(1 for r in reachable if (r["content_type"] or "").startswith("image/"))
    return {
        "urls": len(rows),
        "reachable": len(reachable),
        "reachable_share": round(len(reachable) / len(rows), 4) if rows else 0.0,
        "reachable_with_image_content_type": image_types,
        "bytes_expected": sum(r["bytes_expected"] or 0 for r in reachable),
        "urls_without_declared_size": sum(1 for r in reachable if r["bytes_expected"] is None),
        "statuses": dict(Counter(r["status"] for r in rows).most_common()),
        "http_status_codes": dict(Counter(str(r["http_status"]) for r in rows).most_common()),
        "content_types": dict(Counter(str(r["content_type"]) for r in reachable).most_common(20)),
        "methods": dict(Counter(r["method"] for r in rows).most_common()),
        "hosts": dict(list(hosts.items())[:50]),
    }


def run_validate(
    processed: Path, config: HttpConfig, *, sample: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """Survey the URLs of ``processed/products.parquet``; return the stats."""
    config.validate()
    started = time.monotonic()
    table = read_urls(processed / "products.parquet", sample, seed)
    logger.info("validate: checking %d URLs with HEAD requests", table.num_rows)

    rows = asyncio.run(_survey(table.to_pylist(), config))
    result = pa.Table.from_pylist(rows, schema=VALIDATION_SCHEMA)
    result = result.take(pc.sort_indices(result, [("key", "ascending")]))
    with atomic_path(processed / "validation.parquet") as tmp:
        pq.write_table(result, tmp, compression="zstd")

    stats = {"seconds": round(time.monotonic() - started, 3), **summarise(result)}
    write_stats(processed, STAGE, stats)
    logger.info(
        "validate: done in %.1f s: %d of %d URLs reachable (%.1f%%), %.1f MB expected",
        stats["seconds"],
        stats["reachable"],
        stats["urls"],
        100 * stats["reachable_share"],
        stats["bytes_expected"] / 1e6,
    )
    return stats


def build_parser() -> argparse.ArgumentParser:
    defaults = HttpConfig()
    parser = argparse.ArgumentParser(
        prog="python -m data.scripts.validate",
        description="Check that image URLs are reachable and report types and sizes.",
    )
    parser.add_argument(
        "--processed-dir",
        type=Path,
        default=processed_dir(DEFAULT_DATA_VERSION),
        help="folder with products.parquet (default: data/processed/v1)",
    )
    parser.add_argument(
        "--sample", type=int, default=None, help="check a random sample of N URLs (default: all)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample (default: 0)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=defaults.concurrency,
        help=f"requests in flight (default: {defaults.concurrency})",
    )
    parser.add_argument(
        "--per-host",
        type=int,
        default=defaults.per_host,
        help=f"requests in flight per host (default: {defaults.per_host})",
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=2,
        help="attempts per URL (default: 2; a survey need not insist)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=15.0,
        help="most seconds for one request (default: 15)",
    )
    parser.add_argument(
        "--user-agent", default=defaults.user_agent, help="User-Agent header (default: ours)"
    )
    parser.add_argument(
        "--allow-private-addresses",
        action="store_true",
        help="allow loopback, private and link-local addresses (default: refused)",
    )
    parser.add_argument(
        "--allow-network",
        action="append",
        default=[],
        metavar="CIDR",
        help="allow one network such as 127.0.0.1/32; repeat for more (default: none)",
    )
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    config = replace(
        HttpConfig(),
        concurrency=args.concurrency,
        per_host=args.per_host,
        max_attempts=args.max_attempts,
        request_timeout=args.request_timeout,
        user_agent=args.user_agent,
        allow_private_addresses=args.allow_private_addresses,
        allowed_networks=tuple(args.allow_network),
        respect_robots_tag=False,
    )
    if args.sample is not None and args.sample < 1:
        logger.error("--sample must be 1 or more, received %d", args.sample)
        return 2
    if args.seed < 0:
        logger.error("--seed must be 0 or more, received %d", args.seed)
        return 2
    try:
        run_validate(args.processed_dir, config, sample=args.sample, seed=args.seed)
    except (ValueError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    except OSError as exc:
        logger.error("validate: cannot write to %s: %s", args.processed_dir, exc)
        return 1
    except KeyboardInterrupt:
        logger.error("validate: interrupted; nothing was written")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
