"""Test helpers: paths to the real sample data and a writer for small CSV files."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
SAMPLES = SHARED / "samples"
AMAZON_SAMPLES = SAMPLES / "amazon-products-2023"
TRIMMED_SAMPLES = AMAZON_SAMPLES / "gracious7_merge-and-trim-csv"
ALL_ELECTRONICS = AMAZON_SAMPLES / "FaeKiseki_amazon-consumer-analysis-2023" / "All Electronics.csv"

HEADER = (
    "name,main_category,sub_category,image,link,ratings,no_of_ratings,"
    "discount_price,actual_price"
)


def requires_samples(path: Path = AMAZON_SAMPLES) -> pytest.MarkDecorator:
    """Skip a test when the real sample data beside the repository is absent."""
    return pytest.mark.skipif(
        not path.exists(),
        reason=f"real sample data not found at {path} (a clone without ../shared/samples)",
    )


def product_row(
    name: str = "Plain product",
    main_category: str = "appliances",
    sub_category: str = "Air Conditioners",
    image: str = "https://m.media-amazon.com/images/I/31UISB90sYL._AC_UL320_.jpg",
    ratings: str = "4.2",
    no_of_ratings: str = '"2,255"',
    discount_price: str = '"₹32,999"',
    actual_price: str = '"₹58,990"',
    link: str = "https://www.amazon.in/dp/B0BRKXTSBT",
) -> str:
    """One data line in the dataset's format; arguments are written as given (raw CSV)."""
    return ",".join(
        [
            name,
            main_category,
            sub_category,
            image,
            link,
            ratings,
            no_of_ratings,
            discount_price,
            actual_price,
        ]
    )


def write_csv(path: Path, lines: list[str], *, header: str = HEADER, bom: bool = False) -> Path:
    """Write a CSV file with CRLF line endings, as the Kaggle files have."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\r\n".join([header, *lines]) + "\r\n"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path
