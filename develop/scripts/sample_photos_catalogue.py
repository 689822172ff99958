"""Write a catalogue CSV, in the Amazon Products format, for a folder of labelled photos.

The real image URLs of the Amazon Products dataset point at a CDN. To run collection,
training and serving on real product photos from a machine without that access, serve
the photos from 127.0.0.1 and list them in a CSV that the pipeline reads like any other
source file::

    python develop/scripts/sample_photos_catalogue.py \\
        --photos ../shared/samples/product-images --base-url http://127.0.0.1:18555 \\
        --out data/raw/samples
    python -m data.scripts.demo_server --site ../shared/samples/product-images --port 18555

The photos folder holds one sub-folder per category. ``--category-map`` maps each folder
name onto one of the dataset's ``main_category`` values, so the default category mapping
turns them into labels; the defaults fit the sample photos' folders.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from urllib.parse import quote

HEADER = [
    "name",
    "main_category",
    "sub_category",
    "image",
    "link",
    "ratings",
    "no_of_ratings",
    "discount_price",
    "actual_price",
]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}
# Folder name of the sample photos -> a main_category of the Amazon Products dataset.
DEFAULT_CATEGORIES = {
    "beauty": "beauty & health",
    "electronics": "tv, audio & cameras",
    "fashion": "women's clothing",
    "home": "home & kitchen",
    "home-living": "home & kitchen",
    "nutrition": "grocery & gourmet foods",
}


def catalogue_rows(photos: Path, base_url: str, categories: dict[str, str]) -> list[list[str]]:
    """Return one CSV row per photo under ``photos/<folder>/``, sorted by path."""
    rows = []
    unknown = set()
    for path in sorted(photos.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        relative = path.relative_to(photos)
        folder = relative.parts[0]
        if folder not in categories:
            unknown.add(folder)
            continue
        url = f"{base_url.rstrip('/')}/{quote(relative.as_posix())}"
        name = f"Sample photo {relative.as_posix()}"
        rows.append([name, categories[folder], folder.title(), url, "", "", "", "", ""])
    if unknown:
        raise ValueError(
            f"no main_category for the folders {sorted(unknown)}; add them with "
            "--category-map FOLDER=CATEGORY"
        )
    return rows


def parse_category_map(values: list[str]) -> dict[str, str]:
    """Return ``DEFAULT_CATEGORIES`` updated with ``FOLDER=CATEGORY`` values."""
    categories = dict(DEFAULT_CATEGORIES)
    for value in values:
        folder, sep, category = value.partition("=")
        if not sep or not folder or not category:
            raise ValueError(f"invalid --category-map {value!r}; expected FOLDER=CATEGORY")
        categories[folder] = category
    return categories


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, required=True, help="folder of <category>/ folders")
    parser.add_argument("--base-url", required=True, help="URL the photos folder is served at")
    parser.add_argument("--out", type=Path, required=True, help="raw folder to write the CSV to")
    parser.add_argument("--file-name", default="Sample Photos.csv", help="name of the CSV file")
    parser.add_argument(
        "--category-map", action="append", default=[], help="FOLDER=CATEGORY (repeatable)"
    )
    args = parser.parse_args(argv)
    try:
        rows = catalogue_rows(args.photos, args.base_url, parse_category_map(args.category_map))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print(f"error: no image files under {args.photos}/<folder>/", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / args.file_name
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(HEADER)
        writer.writerows(rows)
    tmp.replace(target)
    print(f"wrote {len(rows)} rows to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
