"""End-to-end tests: main categories spelled with other punctuation keep their label.

Each case goes through the real extract, merge and relabel stages with the default
mapping file, once in a well-formed file (pyarrow's reader) and once in a file with a
broken row (the line-by-line parser).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from data.scripts import extract, merge, relabel
from data.scripts.relabel import DEFAULT_MAPPING, MappingError
from tests.helpers import product_row, write_csv

# (main category as written in the CSV, its plain spelling, the label of that spelling).
# Values with a comma are quoted, as the Kaggle files quote them.
VARIANTS = [
    ("men\u2019s shoes", "men's shoes", "fashion"),
    ("Men\u2018s Shoes", "men's shoes", "fashion"),
    ("men\u02bcs shoes", "men's shoes", "fashion"),
    ("men\uff07s shoes", "men's shoes", "fashion"),
    ("men\u00b4s shoes", "men's shoes", "fashion"),
    ("Kids\u2019 Fashion", "kids' fashion", "fashion"),
    # U+2019 written as UTF-8 and read back as cp1252 (mojibake), repaired first
    ("Women\u00e2\u20ac\u2122s Clothing", "women's clothing", "fashion"),
    ('"TV,Audio & Cameras"', "tv, audio & cameras", "electronics_and_appliances"),
    ('"tv , audio & cameras"', "tv, audio & cameras", "electronics_and_appliances"),
    ("home &amp; kitchen", "home & kitchen", "household_essentials"),
    ('"Home,Kitchen,Pets"', "home, kitchen, pets", "household_essentials"),
    ("men&#39;s shoes", "men's shoes", "fashion"),
    ("men&#x27;s shoes", "men's shoes", "fashion"),
    ("home\u200b& kitchen", "home & kitchen", "household_essentials"),
    ("\ufeffstores", "stores", "stores"),
    ("stores\x00", "stores", "stores"),
    ("\x07Sports\u00a0&\x1bFitness", "sports & fitness", "sports_and_fitness"),
]


def variant_rows(prefix: str) -> list[str]:
    return [
        product_row(
            name=f"{prefix} {index}",
            main_category=category,
            image=f"https://example.com/{prefix}/{index}.jpg",
        )
        for index, (category, _, _) in enumerate(VARIANTS)
    ]


def run_stages(raw: Path, out: Path) -> tuple[dict, pd.DataFrame]:
    extract_stats = extract.run_extract(raw, out)
    merge.run_merge(out, DEFAULT_MAPPING)
    relabel.run_relabel(out, DEFAULT_MAPPING)
    return extract_stats, pd.read_parquet(out / relabel.PRODUCTS_FILE)


@pytest.mark.parametrize("broken_row", [False, True], ids=["fast_reader", "line_by_line"])
def test_variants_get_label_of_plain_spelling(tmp_path, broken_row):
    lines = variant_rows("Variant")
    if broken_row:
        # An unquoted quote and commas in a name send the file to the line-by-line parser.
        lines.append(
            product_row(name='TV 55" Smart, 4K, Black', image="https://example.com/tv.jpg")
        )
    write_csv(tmp_path / "raw" / "Variants.csv", lines)

    extract_stats, products = run_stages(tmp_path / "raw", tmp_path / "out")
    products = products[products["name"].str.startswith("Variant ")].sort_values("source_row")

    expected_reader = ["Variants.csv"] if broken_row else []
    assert extract_stats["files_read_line_by_line"] == expected_reader
    assert len(products) == len(VARIANTS)
    for (written, plain, label), row in zip(VARIANTS, products.itertuples()):
        assert row.main_category == plain, f"main category {written!r}"
        assert row.label == label, f"main category {written!r}"


def test_variants_match_plain_rows_in_other_file(tmp_path):
    plain_lines = [
        product_row(
            name=f"Plain {index}",
            main_category=f'"{plain}"',
            image=f"https://example.com/plain/{index}.jpg",
        )
        for index, (_, plain, _) in enumerate(VARIANTS)
    ]
    write_csv(tmp_path / "raw" / "Plain.csv", plain_lines)
    write_csv(tmp_path / "raw" / "Variants.csv", variant_rows("Variant"))

    _, products = run_stages(tmp_path / "raw", tmp_path / "out")
    per_category = products.groupby("main_category")["label"].agg(["nunique", "count"])

    assert sorted(per_category.index) == sorted({plain for _, plain, _ in VARIANTS})
    assert per_category["nunique"].eq(1).all()
    assert per_category["count"].sum() == 2 * len(VARIANTS)


def test_different_words_stay_unknown(tmp_path):
    lines = [
        product_row(main_category="home and kitchen", image="https://example.com/1.jpg"),
        product_row(main_category="home &amp kitchen", image="https://example.com/2.jpg"),
        product_row(main_category="mens shoes", image="https://example.com/3.jpg"),
        product_row(main_category="men\u2019s shoes", image="https://example.com/4.jpg"),
    ]
    write_csv(tmp_path / "raw" / "Unknown.csv", lines)
    out = tmp_path / "out"
    extract.run_extract(tmp_path / "raw", out)
    merge.run_merge(out, DEFAULT_MAPPING)

    with pytest.raises(MappingError) as raised:
        relabel.run_relabel(out, DEFAULT_MAPPING)

    message = str(raised.value)
    assert message.startswith("3 main category value(s) are not in the mapping file")
    assert "'home and kitchen': 1 rows" in message
    assert "'home & amp kitchen': 1 rows" in message
    assert "'mens shoes': 1 rows" in message
    assert "men's shoes" not in message
    assert not (out / relabel.PRODUCTS_FILE).exists()
