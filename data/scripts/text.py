"""Text clean-up shared by the data stages: mojibake repair, category and label names.

Values in the source CSV files are untrusted text. Category values are compared after
``normalise_category`` and labels become folder names only through ``safe_name``.
"""

from __future__ import annotations

import re
import unicodedata

import ftfy
import pyarrow as pa
import pyarrow.compute as pc

# UTF-8 text that was decoded as cp1252 and encoded again shows a lead byte of a
# multi-byte sequence (U+00C2..U+00F4 as cp1252 reads it) followed by a byte that
# cp1252 maps to a continuation character (U+0080..U+00BF or one of its 27 special
# code points such as the euro sign). Only values matching this run through ftfy,
# which keeps the repair off the hot path for clean text.
_CP1252_CONTINUATION = (
    "\u0080-\u00bf\u20ac\u201a\u0192\u201e\u2026\u2020\u2021\u02c6\u2030\u0160\u2039"
    "\u0152\u017d\u2018\u2019\u201c\u201d\u2022\u2013\u2014\u02dc\u2122\u0161\u203a"
    "\u0153\u017e\u0178"
)
MOJIBAKE_PATTERN = f"[\u00c2-\u00f4][{_CP1252_CONTINUATION}]"
_MOJIBAKE_RE = re.compile(MOJIBAKE_PATTERN)
_WHITESPACE_RE = re.compile(r"\s+")
_NOT_NAME_CHAR_RE = re.compile(r"[^a-z0-9]+")
SAFE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,63}$")


def repair_mojibake(value: str) -> tuple[str, bool | None]:
    """Repair UTF-8 text that was read as cp1252 and encoded again.

    Returns ``(text, repaired)``: ``repaired`` is True when the value was repaired,
    None when it looks like mojibake but ftfy found no unambiguous repair (the value
    is kept as it was), and False when it does not look like mojibake at all.
    """
    if not _MOJIBAKE_RE.search(value):
        return value, False
    fixed = ftfy.fix_encoding(value)
    if fixed != value and not ftfy.badness.is_bad(fixed):
        return fixed, True
    return value, None


def repair_mojibake_array(values: pa.Array) -> tuple[pa.Array, int, int]:
    """Repair mojibake in a string array; return the array, repaired and suspect counts."""
    if len(values) == 0:
        return values, 0, 0
    candidates = pc.fill_null(pc.match_substring_regex(values, MOJIBAKE_PATTERN), False)
    if not pc.any(candidates).as_py():
        return values, 0, 0

    repaired = suspect = 0
    python_values = values.to_pylist()
    for index in pc.indices_nonzero(candidates).to_pylist():
        fixed, outcome = repair_mojibake(python_values[index])
        if outcome:
            python_values[index] = fixed
            repaired += 1
        elif outcome is None:
            suspect += 1
    return pa.array(python_values, type=pa.string()), repaired, suspect


def collapse_whitespace(value: str) -> str:
    """Apply Unicode NFC, trim, and turn every run of whitespace into one space."""
    return _WHITESPACE_RE.sub(" ", unicodedata.normalize("NFC", value)).strip()


def normalise_category(value: str) -> str:
    """Return the comparison form of a category: NFC, trimmed, single spaces, lower case.

    ``" Home & Kitchen "`` and ``"home &  kitchen"`` both become ``"home & kitchen"``.
    """
    return collapse_whitespace(value).casefold()


def safe_name(label: str) -> str:
    """Turn a label such as ``"Electronics and Appliances"`` into a folder name.

    The result contains only ``a-z``, ``0-9`` and ``_``, starts with a letter or digit and
    is at most 64 characters, so it can never contain a path separator, ``..`` or a
    hidden-file dot. Raises ValueError when nothing usable is left.
    """
    ascii_text = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode("ascii")
    ascii_text = ascii_text.casefold().replace("&", " and ")
    name = _NOT_NAME_CHAR_RE.sub("_", ascii_text).strip("_")[:64].rstrip("_")
    if not SAFE_NAME_RE.match(name):
        raise ValueError(
            f"label {label!r} has no letters or digits to make a folder name from; "
            "give it a name with at least one ASCII letter or digit"
        )
    return name
