"""Tests for URL normalisation: canonical forms, drop reasons and the vectorised fast path."""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest

from data.scripts.urls import (
    CANONICAL_URL_PATTERN,
    INVALID_URL,
    MAX_URL_CHARS,
    MISSING_URL,
    RELATIVE_URL,
    UNSUPPORTED_SCHEME,
    InvalidURL,
    canonical_mask,
    hex_keys,
    key_numbers,
    normalise_url,
    normalise_url_array,
    redact_credentials,
    redact_text,
    url_key,
)
from tests.helpers import TRIMMED_SAMPLES, requires_samples

AMAZON = "https://m.media-amazon.com/images/I/31UISB90sYL._AC_UL320_.jpg"
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff"
UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
# Host names of 253 characters (the maximum) and of 254.
MAX_LENGTH_HOST = ".".join(["a" * 63] * 3 + ["b" * 61])
TOO_LONG_HOST = ".".join(["a" * 63] * 3 + ["b" * 62])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (AMAZON, AMAZON),
        ("  " + AMAZON + "\t", AMAZON),
        ("HTTPS://M.Media-Amazon.COM/images/I/a.jpg", "https://m.media-amazon.com/images/I/a.jpg"),
        ("https://example.com:443/a.jpg", "https://example.com/a.jpg"),
        ("http://example.com:80/a.jpg", "http://example.com/a.jpg"),
        ("http://example.com:8080/a.jpg", "http://example.com:8080/a.jpg"),
        ("https://example.com", "https://example.com/"),
        ("https://example.com/a.jpg#frag", "https://example.com/a.jpg"),
        ("//m.media-amazon.com/a.jpg", "https://m.media-amazon.com/a.jpg"),
        ("https://example.com/a b.jpg", "https://example.com/a%20b.jpg"),
        ("https://example.com/caf\u00e9.jpg", "https://example.com/caf%C3%A9.jpg"),
        ("https://example.com/a%3Ab.jpg", "https://example.com/a%3Ab.jpg"),
        ("https://example.com/a%3ab.jpg", "https://example.com/a%3Ab.jpg"),
        ("https://example.com/a:b.jpg", "https://example.com/a:b.jpg"),
        ("https://example.com/100%.jpg", "https://example.com/100%25.jpg"),
        ("https://example.com/%zz.jpg", "https://example.com/%25zz.jpg"),
        ("https://example.com/a.jpg?w=1&h=2", "https://example.com/a.jpg?w=1&h=2"),
        ("https://example.com/a.jpg?", "https://example.com/a.jpg"),
        ("https://b\u00fccher.de/x.jpg", "https://xn--bcher-kva.de/x.jpg"),
        ("http://[::1]:8080/x.jpg", "http://[::1]:8080/x.jpg"),
        ("http://127.0.0.1:8000/x.jpg", "http://127.0.0.1:8000/x.jpg"),
        ("https://example.com./x.jpg", "https://example.com/x.jpg"),
        # Escapes of unreserved characters are decoded, other escapes kept.
        ("https://example.com/%73ame.jpg", "https://example.com/same.jpg"),
        ("https://example.com/%7Esame.jpg", "https://example.com/~same.jpg"),
        ("https://example.com/%7esame.jpg", "https://example.com/~same.jpg"),
        ("https://example.com/%2D%2e%5F%30%7a.jpg", "https://example.com/-._0z.jpg"),
        ("https://example.com/a.jpg?q=%41%2b", "https://example.com/a.jpg?q=A%2B"),
        ("https://example.com/%2541.jpg", "https://example.com/%2541.jpg"),
        ("https://example.com/%C3%A9%20.jpg", "https://example.com/%C3%A9%20.jpg"),
        # IPv6 literals are compressed and lower case.
        ("http://[0:0::1]/x.jpg", "http://[::1]/x.jpg"),
        ("http://[0000:0000:0000:0000:0000:0000:0000:0001]:80/x", "http://[::1]/x"),
        ("http://[2001:DB8::A]/x.jpg", "http://[2001:db8::a]/x.jpg"),
        ("http://[::ffff:1.2.3.4]/x.jpg", "http://[::ffff:102:304]/x.jpg"),
        # Host names at the length limits, and valid IDNA labels.
        ("https://" + "a" * 63 + ".com/x.jpg", "https://" + "a" * 63 + ".com/x.jpg"),
        ("https://" + MAX_LENGTH_HOST + "/x.jpg", "https://" + MAX_LENGTH_HOST + "/x.jpg"),
        ("https://XN--BCHER-KVA.de/x.jpg", "https://xn--bcher-kva.de/x.jpg"),
        ("https://r4---sn-abc.googlevideo.com/x.jpg", "https://r4---sn-abc.googlevideo.com/x.jpg"),
        ("http://93.184.216.34/a.jpg", "http://93.184.216.34/a.jpg"),
        # Zero-width characters around the URL go with the whitespace.
        ("\u200b" + AMAZON, AMAZON),
        (AMAZON + "\ufeff", AMAZON),
        (" \ufeff\u200c \u200d\u2060" + AMAZON + "\u200b \r\n", AMAZON),
    ],
)
def test_normalise_url_canonical_form(raw, expected):
    assert normalise_url(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", MISSING_URL),
        ("   ", MISSING_URL),
        (None, MISSING_URL),
        ("/images/I/a.jpg", RELATIVE_URL),
        ("images/a.jpg", RELATIVE_URL),
        ("ftp://example.com/a.jpg", UNSUPPORTED_SCHEME),
        ("javascript:alert(1)", UNSUPPORTED_SCHEME),
        ("data:image/png;base64,AAAA", UNSUPPORTED_SCHEME),
        ("file:///etc/passwd", UNSUPPORTED_SCHEME),
        ("http:/a.jpg", INVALID_URL),
        ("http://user:secret@example.com/a.jpg", INVALID_URL),
        ("http://example.com:99999/a.jpg", INVALID_URL),
        ("http://example.com:0/a.jpg", INVALID_URL),
        ("http://exa mple.com/a.jpg", INVALID_URL),
        ("http://example.com/a\nb.jpg", INVALID_URL),
        ("https://example.com/" + "a" * 3000, INVALID_URL),
        ("http://127.1/a.jpg", INVALID_URL),
        ("http://2130706433/a.jpg", INVALID_URL),
        ("http://0x7f000001/a.jpg", INVALID_URL),
        ("http://017700000001/a.jpg", INVALID_URL),
        ("http://127.000.000.001/a.jpg", INVALID_URL),
        ("http://0x7f.1/a.jpg", INVALID_URL),
        ("http://example.123/a.jpg", INVALID_URL),
        ("http://example.0x1f/a.jpg", INVALID_URL),
        ("http://[fe80::1%25eth0]/a.jpg", INVALID_URL),
        ("http://[v1.abc]/a.jpg", INVALID_URL),
        ("http://[::1]x/a.jpg", INVALID_URL),
        ("http://[::1/a.jpg", INVALID_URL),
        ("https://" + "a" * 64 + ".com/x.jpg", INVALID_URL),
        ("https://" + TOO_LONG_HOST + "/x.jpg", INVALID_URL),
        ("https://xn--a.com/x.jpg", INVALID_URL),
        ("https://xn--.com/x.jpg", INVALID_URL),
        ("https://xn---bbk.com/x.jpg", INVALID_URL),
        ("https://www.xn--zz-.com/x.jpg", INVALID_URL),
        ("\u200b/images/a.jpg", RELATIVE_URL),
        ("\u200b \ufeff", MISSING_URL),
    ],
)
def test_normalise_url_drop_reason(raw, reason):
    with pytest.raises(InvalidURL) as caught:
        normalise_url(raw)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    "raw",
    [
        "http://user:secret@example.com/a.jpg",
        "ftp://user:secret@example.com/a.jpg",
        "http://user:secret@[::1/a.jpg",
        "http://user:secret@example.com/a\x00.jpg",
        "//user:secret@example.com:99999/a.jpg",
    ],
)
def test_normalise_url_message_hides_password(raw):
    with pytest.raises(InvalidURL) as caught:
        normalise_url(raw)
    assert "secret" not in str(caught.value)


def test_normalise_url_is_idempotent():
    raw = "HTTP://Example.com:80/a b/%/caf\u00e9.jpg?q=a b"
    once = normalise_url(raw)
    assert normalise_url(once) == once


def test_normalise_array_reports_reasons_and_rewrites():
    values = pa.array([AMAZON, None, "/rel.jpg", "HTTPS://A.COM/x.jpg", "ftp://a/b"])

    urls, reasons, rewritten = normalise_url_array(values)

    assert urls.to_pylist() == [AMAZON, None, None, "https://a.com/x.jpg", None]
    assert reasons.to_pylist() == [None, MISSING_URL, RELATIVE_URL, None, UNSUPPORTED_SCHEME]
    assert rewritten == 1


def test_key_numbers_match_url_key():
    urls = [AMAZON, "https://a.com/x%C3%A9.jpg", "https://b.com/" + "p" * 300, "https://c.com/"]

    numbers = key_numbers(pa.array([*urls, None]))

    assert [f"{number:016x}" for number in numbers[:-1]] == [url_key(url) for url in urls]
    assert numbers[-1] == 0
    assert hex_keys(numbers[:-1]).to_pylist() == [url_key(url) for url in urls]
    # A key keeps its leading zeros.
    assert hex_keys([1]).to_pylist() == ["0000000000000001"]
    assert url_key(AMAZON) == "cbfa75d1cc7c0bf4"  # keys must never change


def test_normalise_array_fixes_in_place():
    values = pa.array(["  " + AMAZON, "HTTP://A.COM/x", AMAZON, "", "//b.com/y"])

    urls, reasons, rewritten = normalise_url_array(values)

    assert urls.to_pylist() == [AMAZON, "http://a.com/x", AMAZON, None, "https://b.com/y"]
    assert reasons.to_pylist() == [None, None, None, MISSING_URL, None]
    assert rewritten == 2


@requires_samples(TRIMMED_SAMPLES)
def test_canonical_pattern_agrees_with_normaliser_on_real_urls():
    urls = pacsv.read_csv(TRIMMED_SAMPLES / "Amazon-Products.csv").column("image")
    matches = pc.match_substring_regex(urls, CANONICAL_URL_PATTERN).to_pylist()

    assert sum(matches) > 0.99 * len(matches)
    for url, fast in zip(urls.to_pylist(), matches):
        if fast:
            assert normalise_url(url) == url


@pytest.mark.parametrize(
    "raw",
    [
        "http://127.1/a.jpg",
        "http://2130706433/a.jpg",
        "http://0x7f000001/a.jpg",
        "http://017700000001/a.jpg",
        "http://127.000.000.001/a.jpg",
        "http://0x7f.1/a.jpg",
        "https://example.com/" + "a" * 3011,
        "https://" + "a" * 64 + ".com/x.jpg",
        "https://" + TOO_LONG_HOST + "/x.jpg",
        "https://xn--a.com/x.jpg",
    ],
)
def test_fast_path_rejects_invalid_url(raw):
    urls, reasons, rewritten = normalise_url_array(pa.array([AMAZON, raw]))

    assert canonical_mask(pa.array([raw])).to_pylist() == [False]
    assert urls.to_pylist() == [AMAZON, None]
    assert reasons.to_pylist() == [None, INVALID_URL]
    assert rewritten == 0


@pytest.mark.parametrize(
    "url",
    [
        AMAZON,
        "http://93.184.216.34/a.jpg",
        "http://8.8.8.8/a.jpg?w=1",
        "https://" + "a" * 63 + ".com/x.jpg",
        "https://" + MAX_LENGTH_HOST + "/x.jpg",
        "https://example.com/" + "a" * (MAX_URL_CHARS - 20),
        "https://example.com/%C3%A9%2F%25%7F.jpg?q=%3D%40",
    ],
)
def test_fast_path_takes_canonical_url(url):
    assert len(url) <= MAX_URL_CHARS
    assert canonical_mask(pa.array([url])).to_pylist() == [True]
    assert normalise_url(url) == url


def test_url_longer_than_limit_is_invalid():
    longest = "https://example.com/" + "a" * (MAX_URL_CHARS - 20)

    urls, reasons, _ = normalise_url_array(pa.array([longest, longest + "a"]))

    assert urls.to_pylist() == [longest, None]
    assert reasons.to_pylist() == [None, INVALID_URL]


def test_escape_decoded_only_if_unreserved():
    for byte in range(256):
        for hex_digits in {f"{byte:02X}", f"{byte:02x}"}:
            url = f"https://example.com/a%{hex_digits}b.jpg?q=%{hex_digits}"
            char = chr(byte)
            part = char if char in UNRESERVED else f"%{byte:02X}"

            assert normalise_url(url) == f"https://example.com/a{part}b.jpg?q={part}", url
            fast = canonical_mask(pa.array([url])).to_pylist()[0]
            assert fast == (normalise_url(url) == url), url


def test_escaped_and_plain_unreserved_match():
    assert normalise_url("https://a.com/%73ame.jpg") == normalise_url("https://a.com/same.jpg")
    assert normalise_url("https://a.com/%7Esame.jpg") == normalise_url("https://a.com/~same.jpg")


def test_every_whitespace_and_zero_width_is_trimmed():
    # Every character that str.isspace accepts, and the zero-width ones, on both sides.
    whitespace = [chr(code) for code in range(0x110000) if chr(code).isspace()]
    edges = whitespace + list(ZERO_WIDTH)
    assert len(whitespace) > 20

    values = pa.array([edge + AMAZON + edge for edge in edges] + ["".join(edges) + AMAZON])
    urls, reasons, _ = normalise_url_array(values)

    for edge in edges:
        assert normalise_url(edge + AMAZON + edge) == AMAZON, hex(ord(edge))
    assert urls.to_pylist() == [AMAZON] * (len(edges) + 1)
    assert reasons.null_count == len(edges) + 1


def test_zero_width_inside_url_is_not_trimmed():
    # Inside the path it is percent-encoded. The rest of the URL is checked elsewhere.
    assert normalise_url("https://a.com/x\u200b.jpg") == "https://a.com/x%E2%80%8B.jpg"


def test_ipv6_spellings_share_one_url():
    spellings = ["http://[::1]/x", "http://[0:0::1]/x", "http://[0::0:1]:80/x", "http://[::0001]/x"]

    urls, reasons, _ = normalise_url_array(pa.array(spellings))

    assert set(urls.to_pylist()) == {"http://[::1]/x"}
    assert reasons.null_count == len(spellings)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "row,https://admin:s3cret@img.example/a.jpg,x",
            "row,https://***@img.example/a.jpg,x",
        ),
        (
            "GET http://u:p@a.example/x failed; retry https://v:q@b.example:8080/y?z=1",
            "GET http://***@a.example/x failed; retry https://***@b.example:8080/y?z=1",
        ),
        ("url='//u:secret@cdn.example/a.jpg'", "url='//***@cdn.example/a.jpg'"),
        ('3,"//u:secret@cdn.example/a.jpg",x', '3,"//***@cdn.example/a.jpg",x'),
        ("https://user:p@ss@host.example/a.jpg", "https://***@host.example/a.jpg"),
        ("https://u:pa,ss;w@host.example", "https://***@host.example"),
        ("HTTPS://User@Host.example/", "HTTPS://***@Host.example/"),
        ("https://:@host.example/", "https://***@host.example/"),
        ("ftp://u:p@files.example/a", "ftp://***@files.example/a"),
        ("line 1\nhttps://u:p@h.example/\tline 2", "line 1\nhttps://***@h.example/\tline 2"),
    ],
)
def test_redact_text_hides_credentials(text, expected):
    redacted = redact_text(text)

    assert redacted == expected
    assert redact_text(redacted) == redacted


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no URL here, mail bob@example.com",
        "row,https://img.example/a.jpg,bob@example.com",
        "https://img.example/path@2x.jpg?by=bob@example.com#a@b",
        "https://img.example/a//b@c.jpg",
        "https://img.example/x?next=//b@c.example",
        "mailto:bob@example.com",
        "see <https://img.example/a.jpg> or write to @bob",
        "//comment about bob",
        "a//b@c",
        "https://img.example/a.jpg\nbob@example.com",
        "caf\u00e9 https://b\u00fccher.example/\u00e9@x.jpg",
        '{"url": "https://img.example/a.jpg", "owner": "bob@example.com"}',
    ],
)
def test_redact_text_keeps_text_without_credentials(text):
    assert redact_text(text) == text


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://user:secret@example.com/a.jpg", "http://***@example.com/a.jpg"),
        ("http://user:p@ss@example.com/a.jpg", "http://***@example.com/a.jpg"),
        ("//user:secret@example.com/a.jpg", "//***@example.com/a.jpg"),
        ("  https://u@example.com", "  https://***@example.com"),
        ("https://example.com/a@b.jpg", "https://example.com/a@b.jpg"),
        ("https://example.com/a.jpg?u=x@y", "https://example.com/a.jpg?u=x@y"),
        (None, None),
        ("", ""),
    ],
)
def test_redact_credentials(url, expected):
    assert redact_credentials(url) == expected


# Hostile and ordinary image URLs: every kind of value the catalogue or an attacker can
# put in the image column.
HOSTILE_AND_ORDINARY = [
    AMAZON,
    "https://m.media-amazon.com/images/I/71MJaz+5s-L._AC_UL320_.jpg",
    "  " + AMAZON + "\t",
    "HTTPS://M.Media-Amazon.COM/images/I/a.jpg",
    "http://example.com:80/a.jpg",
    "https://example.com:443/a.jpg",
    "http://example.com:8080/a.jpg",
    "https://example.com",
    "https://example.com/a.jpg#frag",
    "https://example.com/a.jpg#",
    "https://example.com/a.jpg?",
    "https://example.com/a.jpg?w=1&h=2",
    "https://example.com/a.jpg?next=/b?c",
    "//m.media-amazon.com/a.jpg",
    "//user:pw@example.com/a.jpg",
    "http://user:secret@example.com/a.jpg",
    "http://user@example.com/a.jpg",
    "http://:@example.com/a.jpg",
    "https://a:b@c@example.com/a.jpg",
    "http://evil.example\\@good.example/a.jpg",
    "javascript:alert(1)",
    "JaVaScRiPt:alert(document.cookie)",
    "file:///etc/passwd",
    "file://localhost/etc/passwd",
    "data:image/png;base64,AAAA",
    "ftp://example.com/a.jpg",
    "/images/I/a.jpg",
    "images/a.jpg",
    "http:/a.jpg",
    "http:///a.jpg",
    "http://exa mple.com/a.jpg",
    "https://example.com/a b.jpg",
    "https://example.com/a\nb.jpg",
    "https://example.com/a\x00.jpg",
    "https://example.com/a\x7f.jpg",
    "https://example.com/a\x85.jpg",
    "https://example.com/caf\u00e9.jpg",
    "https://example.com/\u5546\u54c1.jpg",
    "https://b\u00fccher.de/x.jpg",
    "https://xn--bcher-kva.de/x.jpg",
    "https://XN--BCHER-KVA.DE/x.jpg",
    "https://xn--a.com/x.jpg",
    "https://xn---bbk.com/x.jpg",
    "https://xn--.com/x.jpg",
    "https://r4---sn-abc.googlevideo.com/x.jpg",
    "https://\uff45xample.com/x.jpg",
    "https://\uff11\uff12\uff17.0.0.1/x.jpg",
    "https://example.com./x.jpg",
    "https://example..com/x.jpg",
    "https://-example.com/x.jpg",
    "https://exa_mple.com/x.jpg",
    "https://" + "a" * 63 + ".com/x.jpg",
    "https://" + "a" * 64 + ".com/x.jpg",
    "https://" + MAX_LENGTH_HOST + "/x.jpg",
    "https://" + TOO_LONG_HOST + "/x.jpg",
    "https://a.b.c.d.e.example.com/x.jpg",
    "http://127.0.0.1:8000/x.jpg",
    "http://93.184.216.34/a.jpg",
    "http://127.1/a.jpg",
    "http://2130706433/a.jpg",
    "http://0x7f000001/a.jpg",
    "http://017700000001/a.jpg",
    "http://127.000.000.001/a.jpg",
    "http://0x7f.1/a.jpg",
    "http://1.2.3.4.5/a.jpg",
    "http://256.1.1.1/a.jpg",
    "http://example.123/a.jpg",
    "http://example.0x1f/a.jpg",
    "http://[::1]:8080/x.jpg",
    "http://[0:0::1]/x.jpg",
    "http://[::FFFF:1.2.3.4]/x.jpg",
    "http://[fe80::1%25eth0]/x.jpg",
    "http://[v1.abc]/x.jpg",
    "http://[::1/x.jpg",
    "http://[::1]x/a.jpg",
    "http://example.com:99999/a.jpg",
    "http://example.com:0/a.jpg",
    "http://example.com:/a.jpg",
    "http://example.com:8o/a.jpg",
    "https://example.com/%73ame.jpg",
    "https://example.com/same.jpg",
    "https://example.com/%7Esame.jpg",
    "https://example.com/%7esame.jpg",
    "https://example.com/~same.jpg",
    "https://example.com/a%2fb%3A%3a.jpg",
    "https://example.com/100%.jpg",
    "https://example.com/%zz.jpg",
    "https://example.com/%2541.jpg",
    "https://example.com/a.jpg?q=%41%2B",
    "https://example.com/" + "a" * 3011,
    "https://example.com/" + "a" * (MAX_URL_CHARS - 20),
    "https://example.com/" + "a" * (MAX_URL_CHARS - 19),
    "\u200bhttps://example.com/a.jpg",
    "https://example.com/a.jpg\ufeff",
    "\ufeff \u200c\u200d\u2060https://example.com/a.jpg\u200b \n",
    "\u200b/images/a.jpg",
    "https://exa\u200bmple.com/a.jpg",
    "https://example.com/a\u200b.jpg",
    "https://example.com/a.jpg\\..\\b",
    "",
    "   ",
    "\u200b",
    None,
]


def _normalise_or_reason(raw: str | None) -> tuple[str | None, str | None]:
    try:
        return normalise_url(raw), None
    except InvalidURL as exc:
        return None, exc.reason


def _check_array_matches_normaliser(values: list[str | None]) -> int:
    """Assert the fast path agrees with normalise_url; return how many rows it took."""
    urls, reasons, rewritten = normalise_url_array(pa.array(values, pa.string()))
    trimmed = pc.utf8_trim_whitespace(pc.fill_null(pa.array(values, pa.string()), ""))
    fast = canonical_mask(trimmed).to_pylist()
    matches = pc.match_substring_regex(trimmed, CANONICAL_URL_PATTERN).to_pylist()

    expected_rewritten = 0
    for raw, url, reason, fast_row, matched in zip(
        values, urls.to_pylist(), reasons.to_pylist(), fast, matches
    ):
        expected_url, expected_reason = _normalise_or_reason(raw)
        assert (url, reason) == (expected_url, expected_reason), repr(raw)
        if fast_row:
            assert expected_url == raw.strip(), repr(raw)
        if matched and not fast_row:
            # The only URLs the pattern alone accepts wrongly are too long.
            assert len(raw.strip()) > MAX_URL_CHARS, repr(raw)
        expected_rewritten += expected_url is not None and expected_url != (raw or "").strip()
    assert rewritten == expected_rewritten
    return sum(fast)


def test_array_agrees_with_normaliser():
    assert len(HOSTILE_AND_ORDINARY) >= 60

    fast_rows = _check_array_matches_normaliser(HOSTILE_AND_ORDINARY)

    assert fast_rows >= 10


def test_array_agrees_with_normaliser_on_random_urls():
    # Random URLs built from pieces near the pattern's edges: numeric and IDNA hosts,
    # long labels, escapes in both cases, reserved and unsafe characters. Half of the
    # paths use only pieces the canonical form keeps, so many rows take the fast path.
    rng = random.Random(20261205)
    hosts = [
        *"a.com m.media-amazon.com 127.0.0.1 127.1 0x7f.1 1.2.3.04 255.255.255.255".split(),
        *"256.0.0.1 x.0x a.b1 1a.b xn--bcher-kva.de xn--ab.com ab--cd.com r4---sn.x.com".split(),
        *"a-.com -a.com A.COM a.b.c.d.com a.com. [::1] [0::1] a.com:443 a.com:8080".split(),
        *["a_b.com", "a" * 63 + ".com", "a" * 64 + ".com", MAX_LENGTH_HOST, TOO_LONG_HOST, ""],
    ]
    canonical_pieces = [*"aZ9-._~/:@!$&'(*+,;=", "%2F", "%25", "%3A", "%5B", "%7F", "%FF", "%C3%A9"]
    other_pieces = [*'?#% "<[\\^`{|\u00e9\u200b', "%41", "%7e", "%7E", "%2f", "%5F", "%G1", "%2"]
    values = []
    for _ in range(3000):
        choices = canonical_pieces if rng.random() < 0.5 else canonical_pieces + other_pieces
        path = "".join(rng.choice(choices) for _ in range(rng.randrange(0, 12)))
        scheme = rng.choice(["https://", "http://", "HTTP://", "//", "ftp://"])
        values.append(scheme + rng.choice(hosts) + "/" + path)

    fast_rows = _check_array_matches_normaliser(values)

    assert fast_rows >= 150
