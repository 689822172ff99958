"""A local web page for reviewing label-issue candidates, one decision per image.

``python -m label.review --candidates label/reviews/v1/candidates.csv --processed-dir
data/processed/v1`` serves ``candidates.csv`` (from ``label.find_issues``; columns
``key``, ``path``, ``given_label``, ``suggested_label``, ``quality_score``, ``reason``,
worst first) on ``http://127.0.0.1:8765/``. For each image the reviewer picks one
decision:

- ``accept``: take ``suggested_label``;
- ``keep``: keep ``given_label``;
- ``relabel``: take another label from the class list;
- ``remove``: leave the image out of the next data version.

Every decision is appended to ``decisions.jsonl`` beside the candidates file as soon as
it is posted, one JSON object per line (``key``, ``decision``, ``new_label``,
``given_label``, ``time``). The line is flushed and fsynced before the request returns,
so a killed server loses no decision. The latest line per key wins. ``label.apply`` turns the file
into a new data version.

The server binds 127.0.0.1 only and answers only requests whose ``Host`` header names
the loopback address, so a web page in the reviewer's browser cannot reach it through
DNS rebinding.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiohttp import web

from data.scripts.common import setup_logging

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DECISIONS = ("accept", "keep", "relabel", "remove")
CANDIDATE_COLUMNS = ("key", "path", "given_label", "suggested_label", "quality_score", "reason")
DECISIONS_FILE = "decisions.jsonl"
LABELS_FILE = "labels.json"
PAGE_PATH = Path(__file__).resolve().parent / "static" / "review.html"
ALLOWED_HOST_NAMES = ("127.0.0.1", "localhost")


class ReviewInputError(ValueError):
    """Raised when the candidates file, the label list or a decision is invalid."""


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One row of ``candidates.csv``; ``path`` is relative to the processed folder."""

    key: str
    path: str
    given_label: str
    suggested_label: str
    quality_score: float | None
    reason: str


def load_candidates(path: Path) -> list[Candidate]:
    """Read ``candidates.csv`` in file order (worst first).

    Raises ReviewInputError when a column is missing, a key is empty or repeated, or a
    ``quality_score`` is not a number; FileNotFoundError when the file is missing.
    """
    if not path.is_file():
        raise FileNotFoundError(f"candidates file {str(path)!r} not found; run label.find_issues")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [
            column for column in CANDIDATE_COLUMNS if column not in (reader.fieldnames or [])
        ]
        if missing:
            raise ReviewInputError(
                f"candidates file {str(path)!r} lacks the columns {missing}; expected "
                f"{list(CANDIDATE_COLUMNS)}, received {reader.fieldnames}"
            )
        candidates = [_parse_candidate(row, line) for line, row in enumerate(reader, start=2)]

    # An image can be both a label issue and a conflicting duplicate: find_issues writes
    # a row for each reason. It is one card, at the place of its worst row, with both
    # reasons; rows of one key that disagree on the labels are an error.
    merged: dict[str, Candidate] = {}
    for candidate in candidates:
        first = merged.get(candidate.key)
        if first is None:
            merged[candidate.key] = candidate
            continue
        if (first.path, first.given_label) != (candidate.path, candidate.given_label):
            raise ReviewInputError(
                f"key {candidate.key!r} occurs twice in {str(path)!r} with different paths or "
                "labels; regenerate the file with 'make find-label-issues'"
            )
        if candidate.reason not in first.reason.split("; "):
            merged[candidate.key] = dataclasses.replace(
                first, reason=f"{first.reason}; {candidate.reason}"
            )
    return list(merged.values())


def _parse_candidate(row: dict[str, str], line: int) -> Candidate:
    key = (row["key"] or "").strip()
    if not key:
        raise ReviewInputError(f"line {line} of the candidates file has an empty key")
    score_text = (row["quality_score"] or "").strip()
    try:
        score = float(score_text) if score_text else None
    except ValueError:
        raise ReviewInputError(
            f"line {line}: quality_score must be a number, received {score_text!r}"
        ) from None
    return Candidate(
        key=key,
        path=(row["path"] or "").strip(),
        given_label=(row["given_label"] or "").strip(),
        suggested_label=(row["suggested_label"] or "").strip(),
        quality_score=score,
        reason=row["reason"] or "",
    )


def load_labels(candidates: list[Candidate], processed_dir: Path) -> list[str]:
    """Return the class list: ``labels.json`` order, then label folders, then CSV labels.

    ``labels.json`` is the list written by ``data.scripts.relabel`` (objects with a
    ``label`` field); a plain list of strings is accepted too. The order is stable, so
    the page's number shortcuts (1 to 9) keep their meaning between runs.
    """
    labels: list[str] = []
    labels_path = processed_dir / LABELS_FILE
    if labels_path.is_file():
        for entry in json.loads(labels_path.read_text(encoding="utf-8")):
            labels.append(entry["label"] if isinstance(entry, dict) else str(entry))
    images_dir = processed_dir / "images"
    if images_dir.is_dir():
        labels.extend(sorted(child.name for child in images_dir.iterdir() if child.is_dir()))
    for candidate in candidates:
        labels.extend([candidate.given_label, candidate.suggested_label])
    return list(dict.fromkeys(label for label in labels if label))


def read_decisions(path: Path) -> dict[str, dict[str, Any]]:
    """Read ``decisions.jsonl`` and return the latest record per key, in file order.

    A last line without its newline is what a server killed during a write leaves; it
    is skipped with a warning. Any other line that is not a JSON object raises
    ReviewInputError naming the line.
    """
    latest: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return latest
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):  # no newline after it: an interrupted write
                logger.warning("%s: skipping the incomplete last line %d", path, number)
                continue
            raise ReviewInputError(f"{path}: line {number} is not valid JSON: {error}") from None
        if not isinstance(record, dict) or not isinstance(record.get("key"), str):
            raise ReviewInputError(f"{path}: line {number} is not an object with a 'key' string")
        latest.pop(record["key"], None)  # re-insert so the order follows the latest decision
        latest[record["key"]] = record
    return latest


class DecisionLog:
    """Appends decisions to a JSON Lines file, flushed and fsynced one line at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.latest = read_decisions(path)
        self._cut_torn_tail()

    def _cut_torn_tail(self) -> None:
        """Drop a last line without its line break, left by a server killed mid-write.

        ``read_decisions`` has skipped it already; without the cut, the next decision
        would be appended to it and both would be lost.
        """
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        data = self.path.read_bytes()
        if data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        with self.path.open("r+b") as handle:
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
        logger.warning("removed an incomplete last line from %s", self.path)

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, sort_keys=False) + "\n"
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        self.latest.pop(record["key"], None)
        self.latest[record["key"]] = record


def make_decision(
    candidate: Candidate, decision: Any, new_label: Any, labels: list[str]
) -> dict[str, Any]:
    """Validate one posted decision and return the record to append.

    ``new_label`` is required for ``relabel`` and ignored otherwise: ``accept`` takes
    the suggested label, ``keep`` the given one and ``remove`` has none. Raises
    ReviewInputError with the allowed values.
    """
    if decision not in DECISIONS:
        raise ReviewInputError(f"decision must be one of {list(DECISIONS)}, received {decision!r}")
    if decision == "relabel":
        if new_label not in labels:
            raise ReviewInputError(
                f"new_label for 'relabel' must be one of {labels}, received {new_label!r}"
            )
        label = new_label
    else:
        label = {
            "accept": candidate.suggested_label,
            "keep": candidate.given_label,
            "remove": None,
        }[decision]
    return {
        "key": candidate.key,
        "decision": decision,
        "new_label": label,
        "given_label": candidate.given_label,
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
    }


def resolve_image(processed_dir: Path, candidate: Candidate) -> Path | None:
    """Return the image file of ``candidate`` when it lies inside ``processed_dir``.

    The path is resolved first, so neither ``..`` parts nor symbolic links lead out of
    the folder. Returns None for paths outside it.
    """
    root = processed_dir.resolve()
    target = (root / candidate.path).resolve()
    if not target.is_relative_to(root) or target == root:
        return None
    return target


# the web application

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _loopback_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Reject requests addressed to another host name (DNS rebinding) or origin."""
    host = (request.host or "").rsplit(":", 1)[0].strip("[]")
    if host not in ALLOWED_HOST_NAMES:
        logger.warning("rejected a request for host %r: %s %s", host, request.method, request.path)
        raise web.HTTPForbidden(text=f"host {host!r} rejected; open http://{HOST}:<port>/\n")
    origin = request.headers.get("Origin")
    if (
        request.method != "GET"
        and origin is not None
        and origin != f"{request.scheme}://{request.host}"
    ):
        logger.warning("rejected a %s from origin %r", request.method, origin)
        raise web.HTTPForbidden(text=f"origin {origin!r} rejected\n")
    return await handler(request)


def _candidate_payload(candidate: Candidate, log: DecisionLog) -> dict[str, Any]:
    payload = dataclasses.asdict(candidate)
    payload["image_url"] = f"/images/{candidate.key}"
    payload["decision"] = log.latest.get(candidate.key)
    return payload


def _left(candidates: dict[str, Candidate], log: DecisionLog) -> int:
    return sum(1 for key in candidates if key not in log.latest)


def create_app(
    candidates: list[Candidate], labels: list[str], processed_dir: Path, log: DecisionLog
) -> web.Application:
    """Build the review application; see the module docstring for the routes' contract."""
    by_key = {candidate.key: candidate for candidate in candidates}

    async def page(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(PAGE_PATH, headers={"Cache-Control": "no-store"})

    async def list_candidates(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "labels": labels,
                "total": len(by_key),
                "left": _left(by_key, log),
                "candidates": [_candidate_payload(c, log) for c in candidates],
            }
        )

    async def post_decision(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise web.HTTPBadRequest(text="the body must be a JSON object\n") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="the body must be a JSON object\n")
        key = body.get("key")
        if not isinstance(key, str):
            raise web.HTTPBadRequest(text="key must be a string from the candidates file\n")
        if key not in by_key:
            logger.warning("rejected a decision for unknown key %r", key)
            raise web.HTTPBadRequest(text=f"key {key!r} is not in the candidates file\n")
        try:
            record = make_decision(by_key[key], body.get("decision"), body.get("new_label"), labels)
        except ReviewInputError as error:
            logger.warning("rejected a decision for key %r: %s", key, error)
            raise web.HTTPBadRequest(text=f"{error}\n") from None
        log.append(record)
        logger.info("%s: %s -> %s", key, record["decision"], record["new_label"])
        return web.json_response({"decision": record, "left": _left(by_key, log)})

    async def image(request: web.Request) -> web.StreamResponse:
        candidate = by_key.get(request.match_info["key"])
        if candidate is None:
            raise web.HTTPNotFound(text="no candidate has this key\n")
        target = resolve_image(processed_dir, candidate)
        if target is None:
            logger.warning(
                "%s: image path %r is outside %s", candidate.key, candidate.path, processed_dir
            )
            raise web.HTTPForbidden(text="the image path is outside the processed folder\n")
        if not target.is_file():
            raise web.HTTPNotFound(text=f"image {candidate.path!r} not found\n")
        return web.FileResponse(target)

    app = web.Application(middlewares=[_loopback_only], client_max_size=64 * 1024)
    app.router.add_get("/", page)
    app.router.add_get("/api/candidates", list_candidates)
    app.router.add_post("/api/decisions", post_decision)
    app.router.add_get("/images/{key}", image)
    return app


async def serve(app: web.Application, port: int) -> None:
    """Serve ``app`` on 127.0.0.1:``port`` until SIGINT or SIGTERM, then shut down."""
    # The handlers go in first, so a signal sent once the address is logged stops cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, port)
    await site.start()
    bound_port = runner.addresses[0][1]
    logger.info("review page on http://%s:%d/ (Ctrl-C stops it)", HOST, bound_port)

    try:
        await stop.wait()
    finally:
        logger.info("stopping the review server")
        await runner.cleanup()


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Serve a review page for label-issue candidates on 127.0.0.1.",
    )
    parser.add_argument(
        "--candidates", type=Path, required=True, help="candidates.csv from label.find_issues"
    )
    parser.add_argument(
        "--processed-dir",
        type=Path,
        required=True,
        help="processed data folder the candidate paths are relative to",
    )
    parser.add_argument(
        "--decisions",
        type=Path,
        default=None,
        help=f"decision log to append to (default: {DECISIONS_FILE} beside --candidates)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"TCP port on 127.0.0.1, 0 for a free one (default: {DEFAULT_PORT})",
    )
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging(args.verbose)
    if not 0 <= args.port <= 65535:
        logger.error("--port must be between 0 and 65535, received %d", args.port)
        return 2
    if not args.processed_dir.is_dir():
        logger.error("--processed-dir %r is not a folder", str(args.processed_dir))
        return 2

    try:
        candidates = load_candidates(args.candidates)
        labels = load_labels(candidates, args.processed_dir)
        log = DecisionLog(args.decisions or args.candidates.parent / DECISIONS_FILE)
    except (ReviewInputError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2
    logger.info(
        "%d candidates, %d decided, %d labels; decisions go to %s",
        len(candidates),
        sum(1 for c in candidates if c.key in log.latest),
        len(labels),
        log.path,
    )

    app = create_app(candidates, labels, args.processed_dir, log)
    try:
        asyncio.run(serve(app, args.port))
    except OSError as error:
        logger.error("cannot listen on %s:%d: %s; pick another --port", HOST, args.port, error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
