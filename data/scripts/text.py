"""Text clean-up shared by the data stages: mojibake repair, category and label names.

Values in the source CSV files are untrusted text. Category values are compared after
``normalise_category`` and labels become folder names only through ``safe_name``.
"""

from __future__ import annotations

import html
import html.entities
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
# A numeric (group 1) or named (group 2) HTML character reference ending in ";".
_CHARACTER_REFERENCE_RE = re.compile(
    r"&(?:(#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6})|([A-Za-z][A-Za-z0-9]{1,31}));"
)
# Characters typed in place of an apostrophe, a comma or an ampersand, such as
# typographic quotes, the modifier letter apostrophe, the prime, the grave and acute
# accents, and the fullwidth and small forms of CJK text.
_PUNCTUATION_VARIANTS = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201b": "'",
        "\u2032": "'",
        "\u02bc": "'",
        "\u0060": "'",
        "\u00b4": "'",
        "\uff07": "'",
        "\uff0c": ",",
        "\ufe50": ",",
        "\uff06": "&",
        "\ufe60": "&",
    }
)
# A comma or an ampersand with the spaces around it. normalise_category rewrites each
# match so that "tv,audio" and "tv , audio" compare equal to "tv, audio", except that a
# comma between two digits ("1,000") stays as it is.
_COMMA_RE = re.compile(r"\s*,\s*")
_AMPERSAND_RE = re.compile(r"\s*&\s*")
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


def remove_invisible_characters(value: str) -> str:
    """Remove control and format characters, except those that count as whitespace.

    Format characters (Unicode category Cf) include the zero-width space, joiners, the
    byte order mark, the soft hyphen and the bidirectional marks. Tabs, line breaks and
    other control characters that Python counts as whitespace are kept.
    """
    if value.isascii() and value.isprintable():
        return value
    return "".join(
        character
        for character in value
        if character.isspace() or unicodedata.category(character) not in ("Cc", "Cf")
    )


def unescape_character_references(value: str) -> str:
    """Decode HTML character references such as ``&amp;``, ``&#39;`` and ``&#x27;``.

    Only references that end in ``;`` are decoded, and unknown names are kept as
    written. ``html.unescape`` alone would also decode some names without the ``;``
    (``&copy``, ``&not``), which could change a word that follows an ``&``. Values
    escaped more than once (``&amp;amp;``) are decoded until no reference is left.
    """
    while True:
        decoded = _CHARACTER_REFERENCE_RE.sub(_decode_reference, value)
        if decoded == value:
            return value
        value = decoded


def _decode_reference(match: re.Match[str]) -> str:
    if match.group(1):
        return html.unescape(match.group())
    return html.entities.html5.get(match.group(2) + ";", match.group())


def clean_text(value: str) -> str:
    """Decode HTML character references and remove control and format characters.

    The two steps repeat until neither changes the value, because each step can make
    work for the other. For example, ``&#8203;`` decodes to a zero-width space, and
    removing one from ``&\\u200bamp;`` leaves a reference. The loop ends because every
    change makes the value shorter.
    """
    while True:
        cleaned = remove_invisible_characters(unescape_character_references(value))
        if cleaned == value:
            return value
        value = cleaned


def collapse_whitespace(value: str) -> str:
    """Clean ``value`` for display and comparison, keeping its case and punctuation.

    Decodes HTML character references, removes control and format characters (see
    ``clean_text``), applies Unicode NFC, trims, and turns every run of whitespace into
    one space: ``"Bath\\u200b &amp;  Shower "`` becomes ``"Bath & Shower"``.
    """
    text = unicodedata.normalize("NFC", clean_text(value))
    return _WHITESPACE_RE.sub(" ", text).strip()


def normalise_category(value: str) -> str:
    """Compute the comparison form of a category.

    Applies ``collapse_whitespace``, then writes apostrophe, comma and ampersand variants
    as ``'``, ``,`` and ``&``, puts one space after a comma and none before it, one
    space on each side of an ``&``, and case-folds. ``" Home &amp;Kitchen "``,
    ``"home\\u200b& kitchen"`` and ``"HOME  &  KITCHEN"`` all become ``"home & kitchen"``,
    and ``"Men\\u2019s Shoes"`` becomes ``"men's shoes"``. Values that differ in letters,
    digits or words stay different: ``"&"`` is not rewritten as ``"and"``.
    """
    text = collapse_whitespace(value).translate(_PUNCTUATION_VARIANTS)
    text = _COMMA_RE.sub(_comma_replacement, text)
    text = _AMPERSAND_RE.sub(" & ", text)
    return text.strip().casefold()


def _comma_replacement(match: re.Match[str]) -> str:
    text = match.string
    between_digits = (
        match.group() == ","
        and text[match.start() - 1 : match.start()].isdigit()
        and text[match.end() : match.end() + 1].isdigit()
    )
    return "," if between_digits else ", "


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
