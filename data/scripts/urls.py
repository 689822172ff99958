"""Image URL normalisation: one canonical, fully percent-encoded form per URL.

The canonical form is what the merge stage deduplicates on, what the key is hashed
from, and exactly what the download stage sends (aiohttp is told the URL is already
encoded, so nothing re-quotes it on the way out). Rules, after RFC 3986 section 6:

* leading and trailing whitespace and zero-width characters (U+200B, U+200C, U+200D,
  U+2060, U+FEFF) removed; a URL with control characters is invalid, and so is one
  longer than ``MAX_URL_CHARS``;
* ``//host/path`` (protocol-relative) becomes ``https://host/path``;
* only ``http`` and ``https``; scheme and host lower case, default ports (80, 443)
  dropped, an empty path becomes ``/``, the fragment dropped;
* a host name is IDNA-encoded; it is invalid with a label over 63 characters, more than
  253 characters in all, or an ``xn--`` label that is not valid IDNA. A host whose last
  label is a number (``127.1``, ``0x7f000001``) must be a dotted-decimal IPv4 address
  without leading zeros. An IPv6 literal is written compressed in lower case
  (``[::1]``), and one with a zone ID (``[fe80::1%25eth0]``) is invalid;
* in path and query, escapes of unreserved characters (letters, digits, ``-._~``) are
  decoded (``%7E`` becomes ``~``), other ``%XX`` escapes are kept (hex upper-cased), a
  bare ``%`` becomes ``%25``, and spaces, non-ASCII and other unsafe characters are
  encoded as UTF-8 percent escapes. Reserved characters such as ``:`` and ``%3A`` are
  left as given, so a server that tells them apart gets what the catalogue says.
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
MAX_LABEL_CHARS = 63  # RFC 1035
MAX_HOST_CHARS = 253  # RFC 1035 counted without the final dot, as the idna package does
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_UNRESERVED_AND_SUBDELIMS = "-._~!$&'()*+,;=:@"
_PATH_SAFE = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/" + _UNRESERVED_AND_SUBDELIMS
)
_QUERY_SAFE = _PATH_SAFE | frozenset("?")
_HEX = frozenset("0123456789abcdefABCDEF")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# Every character for which str.isspace() is true, then the zero-width characters that
# copy and paste leaves around URLs. str.strip with an explicit set runs in linear time,
# unlike a regular expression anchored at the end.
_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff"
_EDGE_CHARS = _WHITESPACE + _ZERO_WIDTH
# User information runs, as in urlsplit, to the last "@" of the authority. The authority
# ends at "/", "?", "#", whitespace, or a character that a URL never contains unescaped.
_USERINFO = r"[^\s/?#\[\]\"<>\\^`{|}\x00-\x1f\x7f]*@"
_CREDENTIALS_RE = re.compile(rf"^(\s*(?:[A-Za-z][A-Za-z0-9+.-]*:)?//){_USERINFO}")
# In free text, "//" without a scheme counts as a URL only at the start of a token, so a
# "//" inside a path ("https://a.example/x//y@z") is left alone.
_TEXT_CREDENTIALS_RE = re.compile(
    rf"((?:[A-Za-z][A-Za-z0-9+.-]*:|(?<![^\s,;|\"'(<\[{{]))//){_USERINFO}"
)
# A host whose last label is a number ("ends in a number" in the WHATWG URL Standard)
# is parsed as an IPv4 address by browsers. glibc's getaddrinfo, which aiohttp calls,
# also reads "127.1", "0x7f.1" and "2130706433" as 127.0.0.1.
_NUMERIC_LABEL_RE = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$")
_HOST_RE = re.compile(
    r"^[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?)*\.?$"
)
_IPV6_NETLOC_RE = re.compile(r"^\[[^\]]*\](?::[0-9]*)?$")


def _label_pattern(first: str, max_chars: int) -> str:
    # A label of at most max_chars letters, digits and inner hyphens, starting with
    # `first`, without hyphens in both the third and fourth positions: RFC 5891 section
    # 4.2.3.1 reserves that form for IDNA ("xn--"), whose labels need the slow path.
    char, char_or_hyphen = "[a-z0-9]", "[a-z0-9-]"
    return (
        f"{first}(?:{char_or_hyphen}?{char}"
        f"|{char_or_hyphen}{char}{char_or_hyphen}{{0,{max_chars - 4}}}{char}"
        f"|{char_or_hyphen}-{char}(?:{char_or_hyphen}{{0,{max_chars - 5}}}{char})?)?"
    )


# URLs that already are in canonical form skip the per-row Python work. A URL that
# matches this pattern and has at most MAX_URL_CHARS characters is returned unchanged
# by ``normalise_url`` (tests check it). ``canonical_mask`` checks the length separately
# because RE2 has no lookahead and its repeat counts stop at 1000. A pattern that bounded
# the length by counting path characters ran about 30 times slower on the 551,585 URLs
# of the bench.make_replica replica.
#
# The pattern accepts a subset of the canonical form. The host is a dotted-decimal
# IPv4 address without leading zeros, or at most 4 labels whose last starts with a
# letter (so the host never ends in a number), and the lengths 3 x 64 + 61 keep it
# within MAX_HOST_CHARS. An escape never decodes to an unreserved character: the
# alternatives below leave out %2D %2E %30-%39 %41-%5A %5F %61-%7A %7E.
# Everything else (ports, IDNA, IPv6, longer names) takes the slow path.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_HOST_NAME = (
    rf"(?:{_label_pattern('[a-z0-9]', MAX_LABEL_CHARS)}\.){{0,3}}"
    rf"{_label_pattern('[a-z]', MAX_HOST_CHARS - 3 * (MAX_LABEL_CHARS + 1))}"
)
_ESCAPE = r"%(?:[01][0-9A-F]|2[0-9A-CF]|3[A-F]|40|5[B-E]|60|7[B-DF]|[89A-F][0-9A-F])"
_PATH_CHAR = r"[-A-Za-z0-9._~!$&'()*+,;=:@/]"
_QUERY_CHAR = r"[-A-Za-z0-9._~!$&'()*+,;=:@/?]"
CANONICAL_URL_PATTERN = (
    rf"^https?://(?:{_IPV4}|{_HOST_NAME})/(?:{_PATH_CHAR}|{_ESCAPE})*"
    rf"(?:\?(?:{_QUERY_CHAR}|{_ESCAPE})+)?$"
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
            # RFC 3986 section 6.2.2.2: an escaped unreserved character is the character.
            decoded = chr(int(escape, 16))
            out.append(decoded if decoded in _UNRESERVED else "%" + escape.upper())
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
    if len(ascii_host) > MAX_HOST_CHARS:
        raise InvalidURL(
            INVALID_URL,
            f"host name of {len(ascii_host)} characters is longer than {MAX_HOST_CHARS}",
        )

    labels = ascii_host.split(".")
    for label in labels:
        _check_label(label)
    if _NUMERIC_LABEL_RE.match(labels[-1]) and not _is_canonical_ipv4(ascii_host):
        # "127.1", "2130706433", "0x7f000001" or "0x7f.1" would reach an address that no
        # one reading the URL expects.
        raise InvalidURL(
            INVALID_URL,
            f"host {host!r} ends in a number but is not a dotted-decimal IPv4 address "
            "without leading zeros, such as 127.0.0.1",
        )
    return ascii_host


def _check_label(label: str) -> None:
    if len(label) > MAX_LABEL_CHARS:
        raise InvalidURL(
            INVALID_URL,
            f"host label {label[:80]!r} of {len(label)} characters is longer than "
            f"{MAX_LABEL_CHARS}",
        )
    if label.startswith("xn--"):
        try:
            # Decodes the Punycode, checks the IDNA2008 rules and that the label is
            # the canonical encoding of what it decodes to.
            idna.ulabel(label)
        except idna.IDNAError as exc:
            raise InvalidURL(INVALID_URL, f"host label {label!r} is not valid IDNA: {exc}")


def _is_canonical_ipv4(host: str) -> bool:
    try:
        return str(ipaddress.IPv4Address(host)) == host
    except ValueError:
        return False


def _encode_ipv6(netloc: str, host: str) -> str:
    # urlsplit takes "[::1]x" for host "::1" and "[v1.x]" (IPvFuture) for host "v1.x".
    if not _IPV6_NETLOC_RE.match(netloc):
        raise InvalidURL(INVALID_URL, f"host {netloc!r} is not a valid IPv6 literal")
    if "%" in host:
        raise InvalidURL(
            INVALID_URL,
            f"IPv6 host [{host}] has a zone ID, which names a network interface of one "
            "machine and has no meaning in a catalogue",
        )
    try:
        return f"[{ipaddress.IPv6Address(host).compressed}]"
    except ValueError as exc:
        raise InvalidURL(INVALID_URL, f"host [{host}] is not a valid IPv6 address: {exc}")


def normalise_url(raw: str | None) -> str:
    """Return the canonical form of ``raw`` or raise InvalidURL with a reason.

    ``normalise_url(" HTTP://Example.COM:80/a b%2f%?x=1#top ")`` returns
    ``"http://example.com/a%20b%2F%25?x=1"``. Messages show the URL with any user name
    and password replaced by ``***``.
    """
    text = (raw or "").strip(_EDGE_CHARS)
    if not text:
        raise InvalidURL(MISSING_URL, "the image URL is empty")
    redacted = redact_credentials(text)
    if len(text) > MAX_URL_CHARS:
        raise InvalidURL(
            INVALID_URL, f"URL of {len(text)} characters is longer than {MAX_URL_CHARS}"
        )
    if _CONTROL_RE.search(text):
        raise InvalidURL(INVALID_URL, f"URL {redacted[:200]!r} contains control characters")
    if text.startswith("//"):
        text = "https:" + text

    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidURL(INVALID_URL, f"URL {redacted!r} cannot be parsed: {exc}")
    scheme = parts.scheme.lower()
    if not scheme:
        raise InvalidURL(RELATIVE_URL, f"URL {redacted!r} is relative: it has no scheme and host")
    if scheme not in _DEFAULT_PORTS:
        raise InvalidURL(
            UNSUPPORTED_SCHEME, f"URL {redacted!r} uses scheme {scheme!r}; only http and https"
        )
    if not parts.netloc:
        raise InvalidURL(INVALID_URL, f"URL {redacted!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidURL(INVALID_URL, "URL contains a user name or password")

    host = parts.hostname or ""
    if not host:
        raise InvalidURL(INVALID_URL, f"URL {redacted!r} has no host")
    if parts.netloc.startswith("["):
        host_part = _encode_ipv6(parts.netloc, host)
    else:
        host_part = _encode_host(host)
    if port == 0:
        raise InvalidURL(INVALID_URL, f"URL {redacted!r} has port 0")
    port_part = "" if port is None or port == _DEFAULT_PORTS[scheme] else f":{port}"

    path = _percent_encode(parts.path or "/", _PATH_SAFE)
    query = _percent_encode(parts.query, _QUERY_SAFE)
    return f"{scheme}://{host_part}{port_part}{path}" + (f"?{query}" if query else "")


def canonical_mask(urls: pa.Array) -> pa.Array:
    """Return a boolean array: true where a trimmed URL is already in canonical form.

    True means ``urls`` matches ``CANONICAL_URL_PATTERN`` and has at most
    ``MAX_URL_CHARS`` characters, so ``normalise_url`` returns it unchanged. False can
    also mean a canonical URL the pattern does not cover (a port, an IDNA host).
    """
    matches = pc.match_substring_regex(urls, CANONICAL_URL_PATTERN)
    # A URL the pattern matches is ASCII, so its byte length is its length in characters.
    return pc.and_(matches, pc.less_equal(pc.binary_length(urls), MAX_URL_CHARS))


def normalise_url_array(values: pa.Array) -> tuple[pa.Array, pa.Array, int]:
    """Normalise a string array of URLs.

    Returns ``(urls, reasons, rewritten)``: ``urls`` holds the canonical URL or null,
    ``reasons`` null or the drop reason for each row, and ``rewritten`` counts URLs
    whose canonical form differs from the input with whitespace trimmed. Each row gets
    what ``normalise_url`` returns or raises for it.
    """
    trimmed = pc.utf8_trim_whitespace(pc.fill_null(values, ""))
    canonical = canonical_mask(trimmed)
    if pc.all(canonical).as_py():
        return trimmed, pa.nulls(len(values), pa.string()), 0

    # Only the URLs that canonical_mask rejects go through Python. Their results are put
    # back in place, so the canonical majority is never converted to Python strings.
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
    """Replace a ``user:password@`` part of a URL with ``***@`` for logs and reports.

    The user information runs to the last ``@`` before the host, as urlsplit reads it,
    and a protocol-relative URL (``//user:password@host/``) is redacted too.
    """
    if not url:
        return url
    return _CREDENTIALS_RE.sub(r"\1***@", url)


def redact_text(text: str) -> str:
    """Replace the ``user:password@`` part of every URL in free text with ``***@``.

    For log lines and CSV rows: ``"row,https://admin:s3cret@img.example/a.jpg,x"``
    becomes ``"row,https://***@img.example/a.jpg,x"``. A URL is a scheme followed by
    ``//``, or ``//`` at the start of the text or after whitespace or one of
    ``,;|"'(<[{``. Text without such a URL with an ``@`` in its authority is returned
    unchanged.
    """
    return _TEXT_CREDENTIALS_RE.sub(r"\1***@", text)
