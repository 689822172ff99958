"""Tests for URL normalisation: canonical forms, drop reasons and the vectorised fast path."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest

from data.scripts.urls import (
    CANONICAL_URL_PATTERN,
    INVALID_URL,
    MISSING_URL,
    RELATIVE_URL,
    UNSUPPORTED_SCHEME,
    InvalidURL,
    hex_keys,
    key_numbers,
    normalise_url,
    normalise_url_array,
    url_key,
)
from tests.helpers import TRIMMED_SAMPLES, requires_samples

AMAZON = "https://m.media-amazon.com/images/I/31UISB90sYL._AC_UL320_.jpg"


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
    ],
)
def test_normalise_url_drop_reason(raw, reason):
    with pytest.raises(InvalidURL) as caught:
        normalise_url(raw)
    assert caught.value.reason == reason


def test_normalise_url_message_hides_password():
    with pytest.raises(InvalidURL) as caught:
        normalise_url("http://user:secret@example.com/a.jpg")
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
