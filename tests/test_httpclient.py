"""Tests for the HTTP client against a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from urllib.parse import quote

import pytest

from data.scripts import httpclient
from data.scripts.httpclient import (
    HostLimiter,
    HttpConfig,
    fetch_url,
    make_session,
    parse_retry_after,
    robots_forbids,
)
from data.scripts.netguard import AddressGuard
from tests.fault_server import FaultServer

pytestmark = pytest.mark.network_local

BODY = b"\xff\xd8\xff\xe0" + b"x" * 2000 + b"\xff\xd9"
LOCAL = ("127.0.0.1/32",)
FAST = HttpConfig(
    concurrency=8,
    per_host=4,
    connect_timeout=2,
    read_timeout=2,
    request_timeout=5,
    max_attempts=3,
    backoff_base=0.01,
    backoff_max=0.05,
    allowed_networks=LOCAL,
)


@pytest.fixture(scope="module")
def server():
    instance = FaultServer().start()
    instance.add_image("a.jpg", BODY)
    yield instance
    instance.stop()


def fetch(url: str, config: HttpConfig = FAST, **kwargs) -> httpclient.FetchResult:
    return fetch_many([url], config, **kwargs)[0]


def fetch_many(urls: list[str], config: HttpConfig = FAST, **kwargs) -> list:
    async def run() -> list:
        guard = AddressGuard(config.allow_private_addresses, config.allowed_networks)
        limiter = HostLimiter(config.per_host, config.blocked_host_threshold)
        async with make_session(config, guard) as session:
            return await asyncio.gather(
                *(fetch_url(session, url, config, limiter, guard, **kwargs) for url in urls)
            )

    return asyncio.run(run())


def test_fetch_ok(server):
    result = fetch(server.url("/img/a.jpg"))

    assert result.status == httpclient.OK
    assert result.body == BODY
    assert result.http_status == 200
    assert result.attempts == 1
    assert result.content_type == "image/jpeg"


def test_fetch_404_is_final(server):
    result = fetch(server.url("/status/404"))

    assert result.status == httpclient.HTTP_ERROR
    assert result.http_status == 404
    assert result.attempts == 1
    assert result.body is None


@pytest.mark.parametrize("code", [500, 502, 503, 408])
def test_fetch_retries_server_errors(server, code):
    result = fetch(server.url(f"/status/{code}"))

    assert result.status == httpclient.HTTP_ERROR
    assert result.http_status == code
    assert result.attempts == FAST.max_attempts


@pytest.mark.parametrize("mode", ["seconds:1", "past-date", "none"])
def test_fetch_429_then_success(server, mode):
    started = time.monotonic()
    result = fetch(server.url(f"/retry-after/{mode}/2/a.jpg"))
    elapsed = time.monotonic() - started

    assert result.status == httpclient.OK
    assert result.attempts == 3
    if mode == "seconds:1":
        assert elapsed >= 2.0  # waited the server's 1 s twice
    else:
        assert elapsed < 1.0


def test_fetch_retry_after_over_limit_gives_up(server):
    config = replace(FAST, max_retry_after=5)
    result = fetch(server.url("/retry-after/seconds:3600/5/a.jpg"), config)

    assert result.status == httpclient.HTTP_ERROR
    assert result.http_status == 429
    assert result.attempts == 1
    assert "3600" in result.error


def test_fetch_retry_after_holds_the_whole_host(server):
    config = replace(FAST, max_attempts=2)
    started = time.monotonic()
    results = fetch_many(
        [server.url("/retry-after/seconds:1/1/a.jpg"), server.url("/slow/300/a.jpg")], config
    )

    assert [r.status for r in results] == [httpclient.OK, httpclient.OK]
    assert time.monotonic() - started >= 1.0


def test_fetch_connection_dropped_is_retried(server):
    urls = [server.url("/drop/3/a.jpg") for _ in range(9)]
    results = fetch_many(urls)

    assert all(r.status == httpclient.OK for r in results)
    assert sum(r.attempts for r in results) > 9


def test_fetch_slow_responses_under_small_limit(server):
    config = replace(FAST, per_host=2, request_timeout=2)
    started = time.monotonic()
    results = fetch_many([server.url("/slow/400/a.jpg") for _ in range(6)], config)
    elapsed = time.monotonic() - started

    assert all(r.status == httpclient.OK for r in results)
    # Six 0.4 s requests two at a time take three rounds; none timed out while queued.
    assert elapsed >= 1.1
    assert all(r.elapsed_ms < 1500 for r in results)


def test_fetch_trickle_hits_request_timeout(server):
    config = replace(FAST, request_timeout=1.5, read_timeout=5, max_attempts=1)
    started = time.monotonic()
    result = fetch(server.url("/trickle/0.5/a.jpg"), config)

    assert result.status == httpclient.TIMEOUT
    assert "1.5" in result.error
    assert time.monotonic() - started < 4


def test_fetch_read_timeout_between_bytes(server):
    config = replace(FAST, request_timeout=20, read_timeout=0.5, max_attempts=1)
    result = fetch(server.url("/trickle/2/a.jpg"), config)

    assert result.status == httpclient.TIMEOUT
    assert "no data" in result.error


def test_fetch_redirect_chain_followed(server):
    result = fetch(server.url("/redirect-chain/3/a.jpg"))

    assert result.status == httpclient.OK
    assert result.final_url.endswith("/redirect-chain/0/a.jpg")


def test_fetch_redirect_limit(server):
    result = fetch(server.url("/redirect-chain/6/a.jpg"), replace(FAST, max_redirects=5))

    assert result.status == httpclient.HTTP_ERROR
    assert "more than 5 redirects" in result.error


def test_fetch_redirect_loop_stops(server):
    result = fetch(server.url("/redirect-loop/0"))

    assert result.status == httpclient.HTTP_ERROR
    assert "redirects" in result.error
    assert result.attempts == 1


def test_fetch_redirect_to_refused_address(server):
    # [::1] is loopback on this machine, outside the allowed 127.0.0.1/32: refused
    # before any connection is made.
    target = f"http://[::1]:{server.port}/img/a.jpg"
    result = fetch(server.url(f"/redirect-to?target={target}"))

    assert result.status == httpclient.ADDRESS_REFUSED
    assert "::1" in result.error


def test_fetch_redirect_to_other_scheme(server):
    result = fetch(server.url("/redirect-to?target=file:///etc/passwd"))

    assert result.status == httpclient.HTTP_ERROR
    assert "unusable URL" in result.error


def test_fetch_loopback_refused_without_allow_option(server):
    result = fetch(server.url("/img/a.jpg"), replace(FAST, allowed_networks=()))

    assert result.status == httpclient.ADDRESS_REFUSED
    assert server.requests[-1]["raw_path"] != "refused"


def test_fetch_host_name_resolving_to_loopback_refused(server):
    result = fetch(f"http://localhost:{server.port}/img/a.jpg", replace(FAST, allowed_networks=()))

    assert result.status == httpclient.ADDRESS_REFUSED
    assert "localhost" in result.error


@pytest.mark.parametrize(
    "path",
    ["/echo/a%20b.jpg", "/echo/caf%C3%A9.jpg", "/echo/x%3Ay.jpg", "/echo/100%25.jpg"],
)
def test_fetch_sends_path_exactly(server, path):
    result = fetch(server.url(path))

    assert result.status == httpclient.OK
    assert result.body.decode() == path


def test_fetch_browser_only_host(server):
    plain = fetch(server.url("/browser-only/a.jpg"), replace(FAST, max_attempts=1))
    browser = fetch(
        server.url("/browser-only/a.jpg"),
        replace(FAST, user_agent="Mozilla/5.0 (X11; Linux x86_64)"),
    )

    assert plain.status == httpclient.HTTP_ERROR
    assert plain.http_status == 503
    assert browser.status == httpclient.OK
    assert server.requests[-1]["headers"]["User-Agent"].startswith("Mozilla")


def test_fetch_blocks_host_after_refusals(server):
    config = replace(FAST, max_attempts=1, blocked_host_threshold=3, concurrency=1, per_host=1)

    async def run() -> list:
        guard = AddressGuard(False, LOCAL)
        limiter = HostLimiter(1, 3)
        async with make_session(config, guard) as session:
            return [
                await fetch_url(session, server.url("/status/403"), config, limiter, guard)
                for _ in range(6)
            ]

    before = len(server.requests)
    results = asyncio.run(run())

    assert [r.status for r in results] == ["http_error"] * 3 + ["blocked"] * 3
    assert len(server.requests) - before == 3
    assert "3 requests in a row" in results[-1].error


def test_fetch_content_length_over_limit(server):
    result = fetch(server.url("/big/200000"), replace(FAST, max_bytes=100_000))

    assert result.status == httpclient.TOO_LARGE
    assert "Content-Length" in result.error


def test_fetch_chunked_body_over_limit(server):
    result = fetch(server.url("/big-chunked/500000"), replace(FAST, max_bytes=100_000))

    assert result.status == httpclient.TOO_LARGE
    assert result.body is None


@pytest.mark.parametrize(
    "value", ["noai", "noimageai", "noindex, noai", "product-image-classifier: noai"]
)
def test_fetch_respects_robots_tag(server, value):
    result = fetch(server.url(f"/robots/{quote(value, safe='')}/a.jpg"))

    assert result.status == httpclient.ROBOTS_DISALLOWED
    assert result.body is None


def test_fetch_robots_tag_for_other_bot_and_option(server):
    other = fetch(server.url(f"/robots/{quote('otherbot: noai', safe='')}/a.jpg"))
    ignored = fetch(server.url("/robots/noai/a.jpg"), replace(FAST, respect_robots_tag=False))

    assert other.status == httpclient.OK
    assert ignored.status == httpclient.OK


def test_parse_retry_after_forms():
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    earlier = format_datetime(now - timedelta(seconds=90), usegmt=True)

    assert parse_retry_after("120", now) == 120
    assert parse_retry_after(later, now) == pytest.approx(90)
    assert parse_retry_after(earlier, now) == 0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_robots_forbids_only_ai_directives():
    assert not robots_forbids(["noindex, nofollow"], "bot/1.0")
    assert robots_forbids(["NoImageAI"], "bot/1.0")
    assert robots_forbids(["bot: noai"], "bot/1.0")
    assert not robots_forbids(["other: noai"], "bot/1.0")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("concurrency", 0),
        ("per_host", -1),
        ("request_timeout", 0),
        ("max_attempts", 0),
        ("max_redirects", -1),
        ("user_agent", "bad\r\nInjected: header"),
        ("allowed_networks", ("not-a-network",)),
    ],
)
def test_http_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field.split("_")[0]):
        replace(HttpConfig(), **{field: value}).validate()
