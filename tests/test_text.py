"""Tests for mojibake repair, category comparison forms and label folder names."""

from __future__ import annotations

import pyarrow as pa
import pytest

from data.scripts.text import (
    collapse_whitespace,
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


# Each raw value and its exact comparison form. The values of the last group differ in
# letters or words, so each keeps a form of its own.
CATEGORY_FORMS = [
    # apostrophe variants
    ("men\u2019s shoes", "men's shoes"),
    ("Men\u2018s Shoes", "men's shoes"),
    ("men\u02bcs shoes", "men's shoes"),
    ("men\uff07s shoes", "men's shoes"),
    ("men\u00b4s shoes", "men's shoes"),
    ("kids\u2019 fashion", "kids' fashion"),
    # spaces around commas and ampersands
    ("TV,Audio & Cameras", "tv, audio & cameras"),
    ("tv , audio & cameras", "tv, audio & cameras"),
    ("tv ,audio&cameras", "tv, audio & cameras"),
    ("tv\uff0c audio \uff06 cameras", "tv, audio & cameras"),
    ("home&kitchen", "home & kitchen"),
    # HTML character references, also escaped twice
    ("home &amp; kitchen", "home & kitchen"),
    ("Home &AMP; Kitchen", "home & kitchen"),
    ("home &amp;amp; kitchen", "home & kitchen"),
    ("men&#39;s shoes", "men's shoes"),
    ("men&#x27;s shoes", "men's shoes"),
    ("men&#146;s shoes", "men's shoes"),
    ("home&nbsp;&amp;&nbsp;kitchen", "home & kitchen"),
    # zero-width, format and control characters
    ("home\u200b& kitchen", "home & kitchen"),
    ("\ufeffstores", "stores"),
    ("sto\u00adres\u200d", "stores"),
    ("stores\x00", "stores"),
    ("\x07stores\x7f\x9b", "stores"),
    ("home &#8203;&amp; kitchen", "home & kitchen"),
    ("home\t&\nkitchen\r\n", "home & kitchen"),
    # values that stay different
    ("home & kitchen", "home & kitchen"),
    ("home, kitchen, pets", "home, kitchen, pets"),
    ("home and kitchen", "home and kitchen"),
    ("mens shoes", "mens shoes"),
    ("men's shoe", "men's shoe"),
    ("tv audio & cameras", "tv audio & cameras"),
    ("1,000 items", "1,000 items"),
    ("home &amp kitchen", "home & amp kitchen"),
    ("home &bogus; kitchen", "home & bogus; kitchen"),
]


@pytest.mark.parametrize(("value", "form"), CATEGORY_FORMS)
def test_normalise_category_punctuation_variants(value, form):
    assert normalise_category(value) == form
    # Extract stores this form and relabel normalises it again, so it must be stable.
    assert normalise_category(form) == form


@pytest.mark.parametrize(
    ("value", "cleaned"),
    [
        ("Bath\u200b &amp;  Shower ", "Bath & Shower"),
        ("\ufeffAir Conditioners\x00", "Air Conditioners"),
        ("Men&#39;s Sports Shoes", "Men's Sports Shoes"),
        ("Men\u2019s Sports Shoes", "Men\u2019s Sports Shoes"),
        ("Cameras,Lenses", "Cameras,Lenses"),
        ("Cafe\u0301 &amp;amp; Bar", "Caf\u00e9 & Bar"),
        ("Tom &copy Jerry &bogus;", "Tom &copy Jerry &bogus;"),
    ],
)
def test_collapse_whitespace_cleans_but_keeps_case(value, cleaned):
    assert collapse_whitespace(value) == cleaned
    assert collapse_whitespace(cleaned) == cleaned


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
