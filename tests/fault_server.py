"""A real aiohttp server on 127.0.0.1 with routes that misbehave the way web servers do.

The server runs its own event loop in a background thread, so code under test can use
``asyncio.run`` in the test's thread. Every request's raw path and headers are logged
in ``FaultServer.requests`` for tests that check exactly what was sent.

Routes (``{name}`` is an image registered with ``add_image``):

* ``/img/{name}``: the image with its content type.
* ``/slow/{ms}/{name}``: the image after ``ms`` milliseconds.
* ``/drop/{every}/{name}``: closes the connection on every ``every``-th request.
* ``/retry-after/{mode}/{times}/{name}``: 429 for the first ``times`` requests, with
  ``Retry-After`` as ``seconds:<n>``, ``past-date`` or ``none``; then the image.
* ``/html``: an HTML page; ``/fake-jpeg``: an HTML body claiming ``image/jpeg``.
* ``/redirect-loop/{n}``: redirects between two URLs forever.
* ``/redirect-chain/{hops}/{name}``: ``hops`` redirects, then the image.
* ``/redirect-to?target=URL``: one redirect to any URL.
* ``/echo/{tail}``: 200 with the raw request path as text.
* ``/browser-only/{name}``: 503 unless the User-Agent contains ``Mozilla``.
* ``/trickle/{seconds}/{name}``: the image one byte every ``seconds`` seconds.
* ``/big/{size}`` and ``/big-chunked/{size}``: a body of ``size`` bytes, with and
  without ``Content-Length``.
* ``/robots/{value}/{name}``: the image with ``X-Robots-Tag: value``.
* ``/status/{code}``: an empty response with that status.
* folders added with ``add_static`` before ``start``, under their prefix.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from email.utils import formatdate
from typing import Any

from aiohttp import web

HTML = b"<!doctype html><html><head><title>Not found</title></head><body>oops</body></html>"


class FaultServer:
    """Start with ``start()``; ``url(path)`` gives an address; ``stop()`` ends it."""

    def __init__(self) -> None:
        self.images: dict[str, tuple[bytes, str]] = {}
        self.requests: list[dict[str, Any]] = []
        self.counters: Counter[str] = Counter()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._static: list[tuple[str, str]] = []

    # ---- set-up ----

    def add_image(self, name: str, data: bytes, content_type: str = "image/jpeg") -> str:
        self.images[name] = (data, content_type)
        return name

    def add_static(self, prefix: str, folder: str) -> None:
        """Serve the files under ``folder`` at ``prefix``; call before ``start``."""
        self._static.append((prefix, folder))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> FaultServer:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start_app())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="fault-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fault server did not start within 10 s")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        future.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = None

    async def _start_app(self) -> None:
        app = web.Application(middlewares=[self._log_request])
        app.add_routes(
            [
                web.get("/img/{name}", self.image),
                web.get("/slow/{ms}/{name}", self.slow),
                web.get("/drop/{every}/{name}", self.drop),
                web.get("/retry-after/{mode}/{times}/{name}", self.retry_after),
                web.get("/html", self.html),
                web.get("/fake-jpeg", self.fake_jpeg),
                web.get("/redirect-loop/{n}", self.redirect_loop),
                web.get("/redirect-chain/{hops}/{name}", self.redirect_chain),
                web.get("/redirect-to", self.redirect_to),
                web.get("/echo/{tail:.*}", self.echo),
                web.get("/browser-only/{name}", self.browser_only),
                web.get("/trickle/{seconds}/{name}", self.trickle),
                web.get("/big/{size}", self.big),
                web.get("/big-chunked/{size}", self.big_chunked),
                web.get("/robots/{value}/{name}", self.robots),
                web.route("*", "/status/{code}", self.status),
            ]
        )
        for prefix, folder in self._static:
            app.router.add_static(prefix, folder)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    @web.middleware
    async def _log_request(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(
            {
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": dict(request.headers),
            }
        )
        return await handler(request)

    # ---- routes ----

    def _image(self, request: web.Request, **headers: str) -> web.Response:
        data, content_type = self.images[request.match_info["name"]]
        return web.Response(body=data, content_type=content_type, headers=headers)

    async def image(self, request: web.Request) -> web.Response:
        return self._image(request)

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(int(request.match_info["ms"]) / 1000)
        return self._image(request)

    async def drop(self, request: web.Request) -> web.StreamResponse:
        route = f"drop:{request.match_info['name']}"
        self.counters[route] += 1
        if self.counters[route] % int(request.match_info["every"]) == 0:
            request.transport.abort()
            raise asyncio.CancelledError
        return self._image(request)

    async def retry_after(self, request: web.Request) -> web.Response:
        route = f"retry:{request.path}"
        self.counters[route] += 1
        if self.counters[route] > int(request.match_info["times"]):
            return self._image(request)
        mode = request.match_info["mode"]
        headers = {}
        if mode.startswith("seconds:"):
            headers["Retry-After"] = mode.split(":", 1)[1]
        elif mode == "past-date":
            headers["Retry-After"] = formatdate(0, usegmt=True)
        return web.Response(status=429, headers=headers)

    async def html(self, request: web.Request) -> web.Response:
        return web.Response(body=HTML, content_type="text/html")

    async def fake_jpeg(self, request: web.Request) -> web.Response:
        return web.Response(body=HTML, content_type="image/jpeg")

    async def redirect_loop(self, request: web.Request) -> web.Response:
        following = 1 - int(request.match_info["n"])
        raise web.HTTPFound(f"/redirect-loop/{following}")

    async def redirect_chain(self, request: web.Request) -> web.Response:
        hops = int(request.match_info["hops"])
        name = request.match_info["name"]
        if hops == 0:
            return self._image(request)
        raise web.HTTPMovedPermanently(f"/redirect-chain/{hops - 1}/{name}")

    async def redirect_to(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["target"])

    async def echo(self, request: web.Request) -> web.Response:
        return web.Response(text=request.raw_path)

    async def browser_only(self, request: web.Request) -> web.Response:
        if "Mozilla" not in request.headers.get("User-Agent", ""):
            return web.Response(status=503)
        return self._image(request)

    async def trickle(self, request: web.Request) -> web.StreamResponse:
        data, content_type = self.images[request.match_info["name"]]
        response = web.StreamResponse(headers={"Content-Type": content_type})
        response.content_length = len(data)
        await response.prepare(request)
        for i in range(len(data)):
            await response.write(data[i : i + 1])
            await asyncio.sleep(float(request.match_info["seconds"]))
        return response

    async def big(self, request: web.Request) -> web.Response:
        return web.Response(body=b"\xff\xd8\xff" + b"\0" * int(request.match_info["size"]))

    async def big_chunked(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        remaining = int(request.match_info["size"])
        while remaining > 0:
            size = min(remaining, 64 << 10)
            await response.write(b"\0" * size)
            remaining -= size
        return response

    async def robots(self, request: web.Request) -> web.Response:
        return self._image(request, **{"X-Robots-Tag": request.match_info["value"]})

    async def status(self, request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]))
