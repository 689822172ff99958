"""Tests for mojibake repair, category comparison forms and label folder names."""

from __future__ import annotations

import pyarrow as pa
import pytest

from data.scripts.text import (
    normalise_category,
    repair_mojibake,
    repair_mojibake_array,
    safe_name,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Home D\u00c3\u00a9cor", "Home D\u00e9cor"),
        ("Kids\u00e2\u20ac\u2122 Fashion", "Kids\u2019 Fashion"),
        ("\u00e2\u201a\u00b932,999", "\u20b932,999"),
    ],
)
def test_repair_mojibake_fixes_double_encoding(text, expected):
    assert repair_mojibake(text) == (expected, True)


@pytest.mark.parametrize("text", ["Home D\u00e9cor", "Beyonc\u00e9", "plain ascii", "Cr\u00e8me"])
def test_repair_mojibake_leaves_clean_text(text):
    assert repair_mojibake(text) == (text, False)


def test_repair_mojibake_keeps_ambiguous_text():
    # "é®" looks like a UTF-8 sequence read as cp1252 but is a real French word and a
    # registered sign; no repair is unambiguous, so the value is kept and counted.
    assert repair_mojibake("eller sant\u00e9\u00ae charger") == (
        "eller sant\u00e9\u00ae charger",
        None,
    )


def test_repair_mojibake_array_counts():
    values = pa.array(["Home D\u00c3\u00a9cor", "clean", None, "sant\u00e9\u00ae"])

    fixed, repaired, suspect = repair_mojibake_array(values)

    assert fixed.to_pylist() == ["Home D\u00e9cor", "clean", None, "sant\u00e9\u00ae"]
    assert (repaired, suspect) == (1, 1)


@pytest.mark.parametrize(
    "value", ["home & kitchen", " Home & Kitchen ", "HOME  &\tKITCHEN", "home\u00a0& kitchen"]
)
def test_normalise_category_variants_match(value):
    assert normalise_category(value) == "home & kitchen"


@pytest.mark.parametrize(
    ("label", "folder"),
    [
        ("Fashion", "fashion"),
        ("Household Essentials", "household_essentials"),
        ("Electronics and Appliances", "electronics_and_appliances"),
        ("Sports & Fitness", "sports_and_fitness"),
        ("Caf\u00e9 Items", "cafe_items"),
        ("../../etc", "etc"),
        ("  Stores  ", "stores"),
    ],
)
def test_safe_name_makes_folder_names(label, folder):
    assert safe_name(label) == folder


@pytest.mark.parametrize("label", ["", "...", "/", "\u4e2d\u6587"])
def test_safe_name_rejects_empty_result(label):
    with pytest.raises(ValueError, match="folder name"):
        safe_name(label)
