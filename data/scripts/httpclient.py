"""HTTP client shared by the validate and fetch stages.

One ``fetch_url`` call downloads one URL with the project's rules:

* **Limits before the clock starts.** A global semaphore (the worker count) and one
  semaphore per host are acquired before a request is sent, and the connection pool is
  at least as large, so time spent waiting for a slot never counts against the
  request's timeouts.
* **Timeouts.** ``connect_timeout`` for the TCP and TLS set-up, ``read_timeout`` for
  the longest gap between two reads, and ``request_timeout`` for one whole attempt,
  which also stops a server that trickles a byte every few seconds.
* **Retries** with full-jitter exponential backoff for timeouts, connection errors,
  5xx, 408 and 429; ``Retry-After`` is honoured in both its seconds and HTTP-date forms
  and delays every request to that host, not only the one that got it. Other 4xx
  responses are final.
* **Blocked hosts.** A host that refuses (403, 429 or 503) ``blocked_host_threshold``
  times in a row without one success is marked blocked, and its remaining URLs are
  skipped without a request.
* **Redirects** are followed by hand, up to ``max_redirects``, and every hop is
  normalised and checked by the address guard again.
* **Size.** A declared ``Content-Length`` over ``max_bytes`` is refused before the
  body is read, and reading stops as soon as the body passes ``max_bytes``.
* **X-Robots-Tag.** ``noai`` and ``noimageai`` are respected unless turned off.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone

import aiohttp
from yarl import URL

from data.scripts.netguard import AddressGuard, AddressRefused, GuardedResolver, refused_reason
from data.scripts.urls import InvalidURL, normalise_url, redact_credentials

logger = logging.getLogger(__name__)

DEFAULT_USER_AGENT = "product-image-classifier/0.1 (dataset builder; respects X-Robots-Tag noai)"
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})
REFUSAL_STATUSES = frozenset({403, 429, 503})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
ROBOTS_DIRECTIVES = frozenset({"noai", "noimageai"})
READ_CHUNK_BYTES = 64 << 10
_DELTA_SECONDS_RE = re.compile(r"[0-9]{1,12}")  # ASCII digits only: "²".isdigit() is True
MAX_HEADER_CHARS = 200

# Outcomes of one URL; the fetch stage adds the image checks' outcomes to these.
OK = "ok"
HTTP_ERROR = "http_error"
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
BLOCKED = "blocked"
ROBOTS_DISALLOWED = "robots_disallowed"
TOO_LARGE = "too_large"
ADDRESS_REFUSED = "address_refused"
INVALID_INPUT = "invalid_input"


@dataclass(frozen=True)
class HttpConfig:
    """Network settings of a run; every number is validated by ``validate``."""

    concurrency: int = 64
    per_host: int = 16
    connect_timeout: float = 10.0
    read_timeout: float = 20.0
    request_timeout: float = 60.0
    max_attempts: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_retry_after: float = 300.0
    user_agent: str = DEFAULT_USER_AGENT
    max_redirects: int = 5
    max_bytes: int = 20 << 20
    respect_robots_tag: bool = True
    allow_private_addresses: bool = False
    allowed_networks: tuple[str, ...] = ()
    blocked_host_threshold: int = 20
    dns_cache_seconds: int = 300

    def validate(self) -> None:
        """Raise ValueError naming the first setting that is out of range."""
        positive = {
            "concurrency": self.concurrency,
            "per_host": self.per_host,
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "request_timeout": self.request_timeout,
            "max_attempts": self.max_attempts,
            "max_bytes": self.max_bytes,
            "blocked_host_threshold": self.blocked_host_threshold,
        }
        for name, value in positive.items():
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a number greater than 0, received {value!r}")
        non_negative = {
            "backoff_base": self.backoff_base,
            "backoff_max": self.backoff_max,
            "max_retry_after": self.max_retry_after,
            "max_redirects": self.max_redirects,
            "dns_cache_seconds": self.dns_cache_seconds,
        }
        for name, value in non_negative.items():
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a number, 0 or more, received {value!r}")
        AddressGuard(self.allow_private_addresses, self.allowed_networks)  # checks the CIDRs
        if not self.user_agent.strip() or any(c in self.user_agent for c in "\r\n"):
            raise ValueError(f"user_agent must be one non-empty line, received {self.user_agent!r}")


@dataclass
class FetchResult:
    """What happened to one URL; ``body`` is set only when ``status`` is ``ok``."""

    status: str
    url: str
    http_status: int | None = None
    error: str | None = None
    attempts: int = 0
    body: bytes | None = None
    content_type: str | None = None
    content_length: int | None = None
    content_range: str | None = None
    final_url: str | None = None
    elapsed_ms: float = 0.0


@dataclass
class HostState:
    """Per-host limits and counters shared by every request to that host."""

    semaphore: asyncio.Semaphore
    not_before: float = 0.0  # time.monotonic() before which no request is sent
    consecutive_refusals: int = 0
    successes: int = 0
    blocked_reason: str | None = None


@dataclass
class HostLimiter:
    """Per-host semaphores, shared delays after Retry-After, and blocking."""

    per_host: int
    threshold: int
    hosts: dict[str, HostState] = field(default_factory=dict)

    def state(self, host: str) -> HostState:
        if host not in self.hosts:
            self.hosts[host] = HostState(asyncio.Semaphore(self.per_host))
        return self.hosts[host]

    @asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[HostState]:
        """Wait for the host's delay and a free slot; yield the host state."""
        state = self.state(host)
        while (wait := state.not_before - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        async with state.semaphore:
            yield state

    def record(self, host: str, http_status: int | None, ok: bool) -> None:
        state = self.state(host)
        if ok:
            state.successes += 1
            state.consecutive_refusals = 0
            if state.blocked_reason is not None:
                logger.info("host %s answered with success again; it is no longer blocked", host)
                state.blocked_reason = None
        elif http_status in REFUSAL_STATUSES:
            state.consecutive_refusals += 1
            if (
                state.successes == 0
                and state.consecutive_refusals >= self.threshold
                and state.blocked_reason is None
            ):
                state.blocked_reason = (
                    f"host {host} answered {state.consecutive_refusals} requests in a row with "
                    f"403, 429 or 503 and none with success; its remaining URLs are skipped"
                )
                logger.warning("%s", state.blocked_reason)

    def blocked_hosts(self) -> dict[str, str]:
        return {h: s.blocked_reason for h, s in self.hosts.items() if s.blocked_reason}


def clean_header(value: str | None) -> str | None:
    """Return a header value safe to store: valid UTF-8, at most ``MAX_HEADER_CHARS``.

    aiohttp decodes header bytes that are not UTF-8 as surrogates, which Parquet and
    JSON writers reject.
    """
    if value is None:
        return None
    text = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return text[:MAX_HEADER_CHARS]


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Return the delay a ``Retry-After`` header asks for, in seconds, or None.

    Accepts delta-seconds (``"120"``) and an HTTP-date; a date in the past gives 0.
    """
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS_RE.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


def backoff_delay(attempt: int, config: HttpConfig) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(max, base * 2**attempt)]."""
    return random.uniform(0, min(config.backoff_max, config.backoff_base * 2**attempt))


def robots_forbids(headers: list[str], user_agent: str) -> bool:
    """Return True when an ``X-Robots-Tag`` value says ``noai`` or ``noimageai`` to us.

    A value may be prefixed with a crawler name (``otherbot: noai``); such a value
    applies only when the name is our user agent's product token.
    """
    product = user_agent.split("/", 1)[0].strip().lower()
    for header in headers:
        for part in header.split(","):
            directive = part.strip().lower()
            if ":" in directive:
                bot, directive = (s.strip() for s in directive.split(":", 1))
                if bot != product:
                    continue
            if directive in ROBOTS_DIRECTIVES:
                return True
    return False


def make_session(config: HttpConfig, guard: AddressGuard) -> aiohttp.ClientSession:
    """Create the session: guarded DNS with a cache, a pool as large as the semaphores."""
    connector = aiohttp.TCPConnector(
        limit=config.concurrency,
        limit_per_host=max(config.per_host, 1),
        ttl_dns_cache=config.dns_cache_seconds,
        use_dns_cache=config.dns_cache_seconds > 0,
        resolver=GuardedResolver(guard),
    )
    timeout = aiohttp.ClientTimeout(
        total=None,
        sock_connect=config.connect_timeout,
        sock_read=config.read_timeout,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        headers={"User-Agent": config.user_agent, "Accept": "image/*,*/*;q=0.5"},
        trust_env=False,
        auto_decompress=True,
    )


class _Final(Exception):
    """A final outcome raised from inside one attempt."""

    def __init__(self, status: str, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.http_status = http_status


class _Retry(Exception):
    """A retryable outcome; ``delay`` is the server's Retry-After, if any."""

    def __init__(
        self, status: str, message: str, http_status: int | None = None, delay: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.http_status = http_status
        self.delay = delay


async def _read_body(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise _Final(
            TOO_LARGE,
            f"Content-Length {declared} bytes exceeds the limit of {max_bytes} bytes",
            response.status,
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(READ_CHUNK_BYTES):
        size += len(chunk)
        if size > max_bytes:
            raise _Final(
                TOO_LARGE,
                f"body exceeds the limit of {max_bytes} bytes",
                response.status,
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _attempt(
    session: aiohttp.ClientSession,
    url: str,
    config: HttpConfig,
    guard: AddressGuard,
    result: FetchResult,
    method: str,
    headers: dict[str, str] | None,
    read_body: bool,
) -> None:
    """Send one request, following redirects; fill ``result`` or raise _Final/_Retry."""
    current = url
    for _hop in range(config.max_redirects + 1):
        target = URL(current, encoded=True)
        guard.check_url(target)
        async with session.request(
            method, target, allow_redirects=False, headers=headers
        ) as response:
            if response.status in REDIRECT_STATUSES:
                current = _next_hop(current, response)
                continue
            if response.status in RETRYABLE_STATUSES:
                delay = parse_retry_after(response.headers.get("Retry-After"))
                raise _Retry(HTTP_ERROR, f"HTTP {response.status}", response.status, delay)
            if response.status >= 400:
                raise _Final(HTTP_ERROR, f"HTTP {response.status}", response.status)
            result.http_status = response.status
            result.final_url = current
            result.content_type = clean_header(response.headers.get("Content-Type"))
            result.content_length = response.content_length
            result.content_range = clean_header(response.headers.get("Content-Range"))
            robots = [clean_header(v) or "" for v in response.headers.getall("X-Robots-Tag", [])]
            if config.respect_robots_tag and robots_forbids(robots, config.user_agent):
                raise _Final(
                    ROBOTS_DISALLOWED,
                    f"X-Robots-Tag {', '.join(robots)!r} forbids AI use",
                    response.status,
                )
            if read_body:
                result.body = await _read_body(response, config.max_bytes)
            return
    raise _Final(HTTP_ERROR, f"more than {config.max_redirects} redirects", None)


def _next_hop(current: str, response: aiohttp.ClientResponse) -> str:
    location = response.headers.get("Location")
    if not location:
        raise _Final(HTTP_ERROR, f"HTTP {response.status} without a Location", response.status)
    try:
        joined = URL(current, encoded=True).join(URL(location.strip()))
        return normalise_url(str(joined))
    except (InvalidURL, ValueError) as exc:
        shown = redact_credentials(clean_header(location))
        raise _Final(
            HTTP_ERROR, f"redirect to an unusable URL {shown!r}: {exc}", response.status
        ) from exc


async def fetch_url(
    session: aiohttp.ClientSession,
    url: str,
    config: HttpConfig,
    limiter: HostLimiter,
    guard: AddressGuard,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    read_body: bool = True,
) -> FetchResult:
    """Fetch ``url`` (already canonical, see ``data.scripts.urls``) with retries.

    Never raises for a network or server problem: the outcome is in the returned
    ``FetchResult.status``. ``elapsed_ms`` counts only time spent in requests, not
    time waiting for a slot or for a backoff delay.
    """
    result = FetchResult(status=OK, url=url)
    try:
        host = URL(url, encoded=True).host or ""
    except ValueError as exc:
        result.status, result.error = INVALID_INPUT, f"URL cannot be parsed: {exc}"
        return result
    for attempt in range(1, config.max_attempts + 1):
        state = limiter.state(host)
        if state.blocked_reason:
            result.status, result.error = BLOCKED, state.blocked_reason
            return result
        result.attempts = attempt
        result.status, result.error = OK, None
        retry: _Retry | None = None
        async with limiter.slot(host) as state:
            if state.blocked_reason:  # blocked while this request waited for its slot
                result.status, result.error = BLOCKED, state.blocked_reason
                result.attempts = attempt - 1
                return result
            started = time.monotonic()
            try:
                async with asyncio.timeout(config.request_timeout):
                    await _attempt(session, url, config, guard, result, method, headers, read_body)
            except _Final as final:
                result.status, result.error = final.status, str(final)
                result.http_status = final.http_status or result.http_status
            except _Retry as exc:
                retry = exc
            except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
                retry = _Retry(TIMEOUT, _timeout_message(exc, config))
            except AddressRefused as exc:
                result.status, result.error = ADDRESS_REFUSED, str(exc)
            except (aiohttp.ClientError, OSError) as exc:
                reason = refused_reason(exc)
                if reason is not None:
                    result.status, result.error = ADDRESS_REFUSED, reason
                else:
                    retry = _Retry(CONNECTION_ERROR, f"{type(exc).__name__}: {exc}"[:300])
            finally:
                result.elapsed_ms += (time.monotonic() - started) * 1000

        if retry is None:
            limiter.record(host, result.http_status, ok=result.status == OK)
            if result.status != OK:
                result.body = None
            return result

        limiter.record(host, retry.http_status, ok=False)
        result.status, result.error, result.http_status = (
            retry.status,
            str(retry),
            retry.http_status,
        )
        result.body = None
        if attempt == config.max_attempts:
            break
        delay = _retry_delay(retry, attempt, config, host, limiter)
        if delay is None:
            result.error = (
                f"{retry}; Retry-After of {retry.delay:.0f} s exceeds the limit of "
                f"{config.max_retry_after:.0f} s"
            )
            break
        logger.debug("retrying %s in %.2f s after %s (attempt %d)", url, delay, retry, attempt)
        await asyncio.sleep(delay)
    return result


def _retry_delay(
    retry: _Retry, attempt: int, config: HttpConfig, host: str, limiter: HostLimiter
) -> float | None:
    """Return how long to wait before the next attempt, or None to give up."""
    if retry.delay is None:
        return backoff_delay(attempt, config)
    if retry.delay > config.max_retry_after:
        return None
    # Retry-After speaks for the whole host: hold every request to it until then.
    state = limiter.state(host)
    state.not_before = max(state.not_before, time.monotonic() + retry.delay)
    return retry.delay


def _timeout_message(exc: BaseException, config: HttpConfig) -> str:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return f"connect timed out after {config.connect_timeout} s"
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return f"no data for {config.read_timeout} s"
    return f"request took longer than {config.request_timeout} s"
