"""Serve the demo catalogue's images over HTTP on 127.0.0.1, as a stand-in for the web.

``python -m data.scripts.demo_server --site data/raw/demo-site --port 8770`` serves every
file under the site folder at ``http://127.0.0.1:<port>/<path>`` until Ctrl-C; port 0
picks a free port and prints it. From Python::

    with DemoServer("data/raw/demo-site", port=0) as server:
        print(server.base_url)  # http://127.0.0.1:<port>

The server runs its own asyncio event loop in a background thread of the calling process,
so it stops when the ``with`` block ends, whatever ends it, and at the latest when the
process exits. GET and HEAD only. A path that leaves the site folder (``..``, an encoded
``%2e%2e``, a symbolic link that points outside) gets 403; hidden files, folders and
missing files get 404.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import TracebackType

from aiohttp import web

from data.scripts.common import PROJECT_ROOT, setup_logging

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0
# Set explicitly: the mimetypes module of some Python builds lacks image/webp.
CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".json": "application/json",
}


class PortInUseError(OSError):
    """The requested port is already taken on 127.0.0.1; ``port`` names it."""

    def __init__(self, port: int) -> None:
        super().__init__(errno.EADDRINUSE, f"port {port} on {HOST} is already in use")
        self.port = port


def resolve_site_path(root: Path, request_path: str) -> Path | None:
    """Return the file under ``root`` that ``request_path`` names, or None when it is hidden.

    ``request_path`` is the decoded URL path. Raises PermissionError when the path leads
    outside ``root``, by ``..`` segments or by a symbolic link.
    """
    parts = [part for part in request_path.split("/") if part not in ("", ".")]
    if any(part == ".." or "\\" in part or "\0" in part for part in parts):
        raise PermissionError(request_path)
    if any(part.startswith(".") for part in parts):
        return None
    candidate = root.joinpath(*parts).resolve()
    if not candidate.is_relative_to(root):
        raise PermissionError(request_path)
    return candidate


class DemoServer:
    """A static file server for ``root`` on 127.0.0.1:``port`` (0 picks a free port).

    ``start()`` returns once the port is bound and raises PortInUseError when it is
    taken; ``stop()`` is safe to call more than once. Use it as a context manager.
    """

    def __init__(self, root: str | os.PathLike[str], port: int = 0, *, access_log: bool = False):
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535. Received: port={port!r}")
        self.root = Path(root).resolve()
        self.port = port
        self.access_log = access_log
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    # ---- life cycle ----

    def start(self) -> DemoServer:
        """Bind the port and serve in a background thread; raise OSError if that fails."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start_app())
            except BaseException as exc:  # handed to the caller's thread below
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=serve, name="demo-server", daemon=True)
        self._thread.start()
        if not started.wait(START_TIMEOUT_S):
            raise RuntimeError(f"the demo server did not start within {START_TIMEOUT_S:.0f} s")
        if failure:
            self._loop = None
            self._thread.join()
            raise failure[0]
        logger.info("demo_server: serving %s at %s", self.root, self.base_url)
        return self

    def stop(self) -> None:
        """Close the listening socket and every connection, then end the thread."""
        if self._loop is None:
            return
        loop, self._loop = self._loop, None
        if self._runner is not None:
            future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop)
            future.result(START_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(START_TIMEOUT_S)
        logger.info("demo_server: stopped %s", self.base_url)

    def __enter__(self) -> DemoServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def _start_app(self) -> None:
        app = web.Application()
        app.router.add_get("/{path:.*}", self._handle)  # serves HEAD requests too
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=logger if self.access_log else None,
        )
        await runner.setup()
        # SO_REUSEADDR (aiohttp's default) lets a rerun bind while old connections are in
        # TIME_WAIT; Linux still rejects the bind while another socket listens on the port.
        site = web.TCPSite(runner, HOST, self.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(self.port) from exc
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]

    # ---- requests ----

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            path = resolve_site_path(self.root, request.path)
        except PermissionError:
            logger.warning("demo_server: rejected a path outside the site: %r", request.raw_path)
            raise web.HTTPForbidden(text="path outside the site folder\n") from None
        if path is None or not path.is_file():
            raise web.HTTPNotFound()
        content_type = CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
        return web.FileResponse(path, headers={"Content-Type": content_type})


# ---- command line ----


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data.scripts.demo_server", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--site",
        type=Path,
        default=PROJECT_ROOT / "data" / "raw" / "demo-site",
        help="folder to serve (default: data/raw/demo-site)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8770,
        help="port on 127.0.0.1; 0 picks a free one (default: 8770)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if not args.site.is_dir():
        logger.error(
            "demo_server: site folder %s not found; generate it with "
            "'python -m data.scripts.demo_catalogue --site %s'",
            args.site,
            args.site,
        )
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with DemoServer(args.site, args.port, access_log=args.verbose) as server:
            print(f"PORT={server.port}", flush=True)
            print(f"Serving {server.root} at {server.base_url}/ (Ctrl-C stops)", flush=True)
            while not stop.wait(1.0):
                pass
    except PortInUseError as exc:
        logger.error("demo_server: %s; pick another with --port, or 0 for a free one", exc)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
