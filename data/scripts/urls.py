"""Image URL normalisation: one canonical, fully percent-encoded form per URL.

The canonical form is what the merge stage deduplicates on, what the key is hashed
from, and exactly what the download stage sends (aiohttp is told the URL is already
encoded, so nothing re-quotes it on the way out). Rules, after RFC 3986 section 6:

* leading and trailing whitespace removed; a URL with control characters is invalid;
* ``//host/path`` (protocol-relative) becomes ``https://host/path``;
* only ``http`` and ``https``; scheme and host lower case, host IDNA-encoded,
  default ports (80, 443) dropped, an empty path becomes ``/``, the fragment dropped;
* in path and query, existing ``%XX`` escapes are kept (hex upper-cased), a bare ``%``
  becomes ``%25``, and spaces, non-ASCII and other unsafe characters are encoded as
  UTF-8 percent escapes. Reserved characters such as ``:`` and ``%3A`` are left as
  given, so a server that tells them apart gets what the catalogue says.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

import idna
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

# Reasons a row's URL is dropped; the merge stage counts rows per reason.
MISSING_URL = "missing_url"
RELATIVE_URL = "relative_url"
UNSUPPORTED_SCHEME = "unsupported_scheme"
INVALID_URL = "invalid_url"
DROP_REASONS = (MISSING_URL, RELATIVE_URL, UNSUPPORTED_SCHEME, INVALID_URL)

_DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_CHARS = 2048  # longer URLs are not image links; most servers refuse them anyway
_UNRESERVED_AND_SUBDELIMS = "-._~!$&'()*+,;=:@"
_PATH_SAFE = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/" + _UNRESERVED_AND_SUBDELIMS
)
_QUERY_SAFE = _PATH_SAFE | frozenset("?")
_HEX = frozenset("0123456789abcdefABCDEF")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_CREDENTIALS_RE = re.compile(r"^(\s*[A-Za-z][A-Za-z0-9+.-]*://)[^/?#@]*@")
_NUMERIC_HOST_RE = re.compile(r"^(?:0x[0-9a-f]+|[0-9.]+)$")
_HOST_RE = re.compile(
    r"^[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?)*\.?$"
)

# URLs that already are in canonical form skip the per-row Python work. A URL that
# matches this pattern is returned unchanged by ``normalise_url`` (tests check it).
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_SAFE_RUN = r"(?:[-A-Za-z0-9._~!$&'()*+,;=:@/]|%[0-9A-F]{2})*"
CANONICAL_URL_PATTERN = (
    rf"^https?://{_LABEL}(?:\.{_LABEL})*/{_SAFE_RUN}"
    rf"(?:\?(?:[-A-Za-z0-9._~!$&'()*+,;=:@/?]|%[0-9A-F]{{2}})+)?$"
)


class InvalidURL(ValueError):
    """A URL that cannot be normalised; ``reason`` is one of ``DROP_REASONS``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _percent_encode(text: str, safe: frozenset[str]) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        escape = text[i + 1 : i + 3]
        if char == "%" and len(escape) == 2 and set(escape) <= _HEX:
            out.append("%" + escape.upper())
            i += 3
            continue
        if char in safe:
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
        i += 1
    return "".join(out)


def _encode_host(host: str) -> str:
    host = host.rstrip(".")  # "example.com." and "example.com" name the same host
    if host.isascii():
        ascii_host = host.lower()
    else:
        try:
            ascii_host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise InvalidURL(INVALID_URL, f"host {host!r} is not a valid domain name: {exc}")
    if not _HOST_RE.match(ascii_host):
        raise InvalidURL(INVALID_URL, f"host {host!r} is not a valid domain name")
    if _NUMERIC_HOST_RE.match(ascii_host) and not _is_canonical_ipv4(ascii_host):
        # "127.1", "2130706433" or "0x7f000001" would reach an address that no one reading
        # the URL expects; HTTP clients such as aiohttp reject them too.
        raise InvalidURL(INVALID_URL, f"host {host!r} is not a canonical IPv4 address")
    return ascii_host


def _is_canonical_ipv4(host: str) -> bool:
    try:
        return str(ipaddress.IPv4Address(host)) == host
    except ValueError:
        return False


def normalise_url(raw: str | None) -> str:
    """Return the canonical form of ``raw`` or raise InvalidURL with a reason.

    ``normalise_url(" HTTP://Example.COM:80/a b%2f%?x=1#top ")`` returns
    ``"http://example.com/a%20b%2F%25?x=1"``.
    """
    text = (raw or "").strip()
    if not text:
        raise InvalidURL(MISSING_URL, "the image URL is empty")
    if len(text) > MAX_URL_CHARS:
        raise InvalidURL(
            INVALID_URL, f"URL of {len(text)} characters is longer than {MAX_URL_CHARS}"
        )
    if _CONTROL_RE.search(text):
        raise InvalidURL(INVALID_URL, f"URL {text[:200]!r} contains control characters")
    if text.startswith("//"):
        text = "https:" + text

    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidURL(INVALID_URL, f"URL {text!r} cannot be parsed: {exc}")
    scheme = parts.scheme.lower()
    if not scheme:
        raise InvalidURL(RELATIVE_URL, f"URL {text!r} is relative: it has no scheme and host")
    if scheme not in _DEFAULT_PORTS:
        raise InvalidURL(
            UNSUPPORTED_SCHEME, f"URL {text!r} uses scheme {scheme!r}; only http and https"
        )
    if not parts.netloc:
        raise InvalidURL(INVALID_URL, f"URL {text!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidURL(INVALID_URL, "URL contains a user name or password")

    host = parts.hostname or ""
    if not host:
        raise InvalidURL(INVALID_URL, f"URL {text!r} has no host")
    if ":" in host:  # an IPv6 literal; urlsplit has already checked the brackets
        host_part = f"[{host.lower()}]"
    else:
        host_part = _encode_host(host)
    if port == 0:
        raise InvalidURL(INVALID_URL, f"URL {text!r} has port 0")
    port_part = "" if port is None or port == _DEFAULT_PORTS[scheme] else f":{port}"

    path = _percent_encode(parts.path or "/", _PATH_SAFE)
    query = _percent_encode(parts.query, _QUERY_SAFE)
    return f"{scheme}://{host_part}{port_part}{path}" + (f"?{query}" if query else "")


def normalise_url_array(values: pa.Array) -> tuple[pa.Array, pa.Array, int]:
    """Normalise a string array of URLs.

    Returns ``(urls, reasons, rewritten)``: ``urls`` holds the canonical URL or null,
    ``reasons`` null or the drop reason for each row, and ``rewritten`` counts URLs
    whose canonical form differs from the trimmed input.
    """
    trimmed = pc.utf8_trim_whitespace(pc.fill_null(values, ""))
    canonical = pc.match_substring_regex(trimmed, CANONICAL_URL_PATTERN)
    if pc.all(canonical).as_py():
        return trimmed, pa.nulls(len(values), pa.string()), 0

    # Only the URLs the pattern does not accept go through Python; their results are
    # put back in place, so the canonical majority is never converted.
    other = pc.invert(canonical)
    urls: list[str | None] = []
    reasons: list[str | None] = []
    rewritten = 0
    for text in pc.filter(trimmed, other).to_pylist():
        try:
            url = normalise_url(text)
        except InvalidURL as exc:
            urls.append(None)
            reasons.append(exc.reason)
            continue
        rewritten += url != text
        urls.append(url)
        reasons.append(None)
    return (
        pc.replace_with_mask(trimmed, other, pa.array(urls, pa.string())),
        pc.replace_with_mask(
            pa.nulls(len(values), pa.string()), other, pa.array(reasons, pa.string())
        ),
        rewritten,
    )


def url_key(url: str) -> str:
    """Return the row key of a canonical URL: its XXH3 64-bit hash as 16 hex digits.

    XXH3's output for a given input is fixed by its specification (xxHash 0.8), so keys
    do not change between runs, machines or library versions. With 64 bits, the chance
    that two of a million URLs share a key is about 3e-8; the merge stage still checks
    and raises if it ever happens.
    """
    return f"{xxhash.xxh3_64_intdigest(url.encode('utf-8')):016x}"


def key_numbers(urls: pa.Array) -> np.ndarray:
    """Return the XXH3-64 number of each URL's UTF-8 bytes (0 for a null URL).

    ``hex_keys`` turns these numbers into the keys ``url_key`` gives. Casting to binary
    hands the hash function bytes without a Python string per URL in between.
    """
    as_bytes = pc.fill_null(urls, "").cast(pa.binary()).to_pylist()
    numbers = np.fromiter(
        map(xxhash.xxh3_64_intdigest, as_bytes), dtype=np.uint64, count=len(as_bytes)
    )
    if urls.null_count:
        numbers[pc.is_null(urls).to_numpy(zero_copy_only=False)] = 0
    return numbers


def hex_keys(numbers: np.ndarray) -> pa.Array:
    """Format 64-bit key numbers as 16 lower-case hex digits each, without a Python loop."""
    digits = np.asarray(numbers, dtype=">u8").tobytes().hex().encode("ascii")
    fixed = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(16), len(numbers), [None, pa.py_buffer(digits)]
    )
    return fixed.cast(pa.binary()).cast(pa.string())


def redact_credentials(url: str | None) -> str | None:
    """Replace a ``user:password@`` part of a URL with ``***@`` for logs and reports."""
    if not url:
        return url
    return _CREDENTIALS_RE.sub(r"\1***@", url)
