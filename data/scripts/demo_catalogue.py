"""Generate the demo catalogue: CSV files in the Kaggle dataset's format and their images.

``python -m data.scripts.demo_catalogue --out data/raw/demo --site data/raw/demo-site
--seed 0 --base-url http://127.0.0.1:8770`` writes:

* ``<out>/<Sub-category>.csv``: one file per sub-category, named as the real files are
  (``Kitchen and Dining.csv``), with the real header, UTF-8, CRLF line endings and quotes
  only where needed. Values look like the real ones: long product names cut at 122
  characters plus ``...``, Amazon product links, ratings such as ``4.2``, rating counts
  such as ``"2,255"`` and prices with Indian digit grouping such as ``"₹1,26,189"``.
  The ``main_category`` values cover all 7 labels of ``data/category_mapping.toml``.
* ``<site>/images/I/<id>._AC_UL320_.<jpg|png|webp>``: one image per row, drawn with OpenCV,
  which ``data.scripts.demo_server`` serves at ``--base-url``.
* ``<out>/.demo-catalogue.json``: the settings, counts and the rows planted on purpose.
  The extract stage ignores hidden files, so this file never reaches the data.

Images of one label share a shape and a colour layout (see ``CLASS_STYLES``). Hue jitter
that overlaps the neighbouring classes, off-palette colours, random position, scale and
rotation, smooth random backgrounds, distractor shapes and noise keep them from being
trivial.
A few rows are planted the way the real data has them, and each one appears in the counts
of some stage:

* extract: a name with an unquoted ``"`` and commas, mojibake names, a header-only file,
  junk such as ``Get`` in the number columns;
* merge: empty and relative image URLs, and duplicate URLs. One duplicate differs only in
  the case of its scheme, and one image is listed under two labels (``label_conflict``);
* fetch: a URL that returns 404, a ``.jpg`` that is an HTML page (``not_an_image``), and an
  image of 20 pixels (``too_small``);
* find-label-issues: 3% of each label's images show another label's design (label noise),
  and one photo appears again, re-encoded, at another URL under another label.

Output depends only on the settings (seed, base URL, images per label, image sizes) and on
the OpenCV and numpy builds. The same settings again skip all work. Other settings build
both folders anew in hidden temporary folders and swap them in, so an interrupted run
leaves the previous catalogue or none.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

from data.scripts.common import PROJECT_ROOT, setup_logging, write_json

logger = logging.getLogger(__name__)

# Bump when the output for the same settings changes, so old catalogues are rebuilt.
GENERATOR_VERSION = 1
STAMP_FILE = ".demo-catalogue.json"
COLUMNS = (
    "name",
    "main_category",
    "sub_category",
    "image",
    "link",
    "ratings",
    "no_of_ratings",
    "discount_price",
    "actual_price",
)
IMAGE_PATH = "images/I/{image_id}._AC_UL320_.{extension}"
NAME_MAX_CHARS = 122  # the real files cut longer names to 122 characters plus "..."
DEFAULT_BASE_URL = "http://127.0.0.1:8770"
DEFAULT_PER_LABEL = 100
DEFAULT_MIN_SIZE = 64
DEFAULT_MAX_SIZE = 128
MISLABELLED_SHARE = 0.03  # share of each label's images drawn in another label's design
OFF_PALETTE_SHARE = 0.08  # share of images in random colours, unrelated to the label
HUE_JITTER = 8  # OpenCV hue units (0..179)
FORMAT_WEIGHTS = {"jpg": 0.85, "png": 0.1, "webp": 0.05}
TOO_SMALL_SIDE = 20  # below the fetch stage's default min_side of 32 pixels
NOT_AN_IMAGE = b"<!doctype html><html><head><title>Robot check</title></head><body></body></html>"
IMAGE_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


class ClassStyle(NamedTuple):
    """The look of one label's images: a shape and a colour layout."""

    shape: str  # one of the SHAPES drawn by draw_shape
    hue: int  # OpenCV hue, 0..179
    accent_hue: int  # second colour of the layout
    background: str  # "light" or "dark" colours of the background blend


# Neighbouring hues are 16-28 apart and jittered by up to HUE_JITTER, so colour alone
# overlaps a little, and the shapes are drawn over distractor shapes of every kind.
CLASS_STYLES: dict[str, ClassStyle] = {
    "fashion": ClassStyle("dress", hue=165, accent_hue=20, background="light"),
    "household_essentials": ClassStyle("jar", hue=60, accent_hue=15, background="light"),
    "electronics_and_appliances": ClassStyle("screen", hue=110, accent_hue=95, background="dark"),
    "other": ClassStyle("blobs", hue=12, accent_hue=150, background="light"),
    "sports_and_fitness": ClassStyle("ball", hue=28, accent_hue=0, background="dark"),
    "accessories": ClassStyle("star", hue=88, accent_hue=28, background="dark"),
    "stores": ClassStyle("tag", hue=140, accent_hue=60, background="light"),
}
SHAPES = tuple(sorted({style.shape for style in CLASS_STYLES.values()}))


class CatalogueFile(NamedTuple):
    """One per-sub-category CSV file and what its rows look like."""

    file_name: str
    main_category: str
    sub_category: str
    label: str  # folder name of the label that main_category maps to (for the images)
    store: str  # the "s=" parameter of product links
    brands: tuple[str, ...]
    items: tuple[str, ...]


CATALOGUE_FILES: tuple[CatalogueFile, ...] = (
    CatalogueFile(
        "Shirts.csv",
        "men's clothing",
        "Shirts",
        "fashion",
        "apparel",
        ("Allen Solly", "Van Heusen", "Peter England", "Amazon Brand - Symbol"),
        (
            "Men's Regular Fit Cotton Casual Shirt",
            "Men's Slim Fit Formal Shirt",
            "Men's Checkered Full Sleeve Shirt, Navy Blue",
        ),
    ),
    CatalogueFile(
        "Fashion Sandals.csv",
        "women's shoes",
        "Fashion Sandals",
        "fashion",
        "shoes",
        ("Bata", "Metro", "Catwalk", "Inc.5"),
        (
            "Women's Block Heel Fashion Sandal",
            "Women's Flat Sandals, Tan",
            "Women's Ethnic Slip-On Sandals",
        ),
    ),
    CatalogueFile(
        "Kids Clothing.csv",
        "kids' fashion",
        "Kids' Clothing",
        "fashion",
        "apparel",
        ("Max", "Babyhug", "US Polo Association"),
        (
            "Boys' Regular Fit T-Shirt (Pack of 2)",
            "Girls' Cotton Frock Dress",
            "Baby Boys & Girls Romper Set",
        ),
    ),
    CatalogueFile(
        "Kitchen and Dining.csv",
        "home & kitchen",
        "Kitchen & Dining",
        "household_essentials",
        "kitchen",
        ("Prestige", "Pigeon", "Milton", "Borosil"),
        (
            "Stainless Steel Pressure Cooker, 3 Litres, Silver",
            "Glass Storage Jar Set of 3",
            "Non-Stick Tawa 25 cm, Black",
            "Thermosteel Flask 1000 ml",
        ),
    ),
    CatalogueFile(
        "Snack Foods.csv",
        "grocery & gourmet foods",
        "Snack Foods",
        "household_essentials",
        "grocery",
        ("Haldiram's", "Lay's", "Too Yumm!", "Britannia"),
        (
            "Aloo Bhujia 1 kg",
            "Classic Salted Potato Chips, 90 g (Pack of 4)",
            "Multigrain Chips, Pudina Party",
        ),
    ),
    CatalogueFile(
        "Refurbished and Open Box.csv",
        "home, kitchen, pets",
        "Refurbished & Open Box",
        "household_essentials",
        "kitchen",
        ("Amazon Renewed", "Usha", "Philips"),
        (
            "(Renewed) Mixer Grinder 750 W, White",
            "(Renewed) Steam Iron 1440 W",
            "(Renewed) Induction Cooktop",
        ),
    ),
    CatalogueFile(
        "Televisions.csv",
        "tv, audio & cameras",
        "Televisions",
        "electronics_and_appliances",
        "electronics",
        ("Samsung", "LG", "Redmi", "Acer", "OnePlus"),
        (
            "80 cm (32 inches) HD Ready Smart LED TV",
            "108 cm (43 inches) 4K Ultra HD Smart TV",
            "Crystal 4K Series Android LED TV, Black",
        ),
    ),
    CatalogueFile(
        "Air Conditioners.csv",
        "appliances",
        "Air Conditioners",
        "electronics_and_appliances",
        "kitchen",
        ("Lloyd", "Voltas", "Daikin", "Blue Star"),
        (
            "1.5 Ton 3 Star Inverter Split AC (Copper, 2023 Model, White)",
            "1 Ton 5 Star Window AC, Anti-Viral Filter",
        ),
    ),
    CatalogueFile(
        "Lab and Scientific.csv",
        "industrial supplies",
        "Lab & Scientific",
        "electronics_and_appliances",
        "industry",
        ("Labtronics", "Borosil", "Kaxo"),
        (
            "Digital pH Meter with LCD Display",
            "Magnetic Stirrer Hot Plate 230 V",
            "Digital Weighing Scale 0.01 g",
        ),
    ),
    CatalogueFile(
        "Make-up.csv",
        "beauty & health",
        "Make-up",
        "other",
        "beauty",
        ("Lakmé", "Maybelline New York", "Sugar", "Swiss Beauty"),
        ("Matte Liquid Lipstick, Red", "Fit Me Foundation 30 ml", "Kajal, Black, 0.35 g"),
    ),
    CatalogueFile(
        "Toys and Games.csv",
        "toys & baby products",
        "Toys & Games",
        "other",
        "toys",
        ("Funskool", "Hasbro", "Mattel"),
        ("Monopoly Board Game", "Building Blocks Set, 120 Pieces", "Remote Control Car"),
    ),
    CatalogueFile(
        "Car Accessories.csv",
        "car & motorbike",
        "Car Accessories",
        "other",
        "automotive",
        ("Bergmann", "Autofy", "Amazon Basics"),
        ("Car Vacuum Cleaner 12 V", "Tyre Inflator with Digital Gauge", "Car Seat Cushion"),
    ),
    CatalogueFile(
        "Yoga.csv",
        "sports & fitness",
        "Yoga",
        "sports_and_fitness",
        "sporting",
        ("Boldfit", "Strauss", "Kore"),
        ("Yoga Mat 6 mm, Anti-Slip, Purple", "Yoga Block Set of 2", "Resistance Band Set"),
    ),
    CatalogueFile(
        "Cricket.csv",
        "sports & fitness",
        "Cricket",
        "sports_and_fitness",
        "sporting",
        ("SG", "SS", "Cosco", "Nivia"),
        (
            "Kashmir Willow Cricket Bat, Size 6",
            "Leather Cricket Ball, Red (Pack of 2)",
            "Batting Gloves, Youth",
        ),
    ),
    CatalogueFile(
        "Watches.csv",
        "accessories",
        "Watches",
        "accessories",
        "watches",
        ("Titan", "Fastrack", "Casio", "Sonata"),
        (
            "Analog Men's Watch, Black Dial",
            "Women's Analog Watch, Rose Gold",
            "Digital Sports Watch",
        ),
    ),
    CatalogueFile(
        "Sunglasses.csv",
        "accessories",
        "Sunglasses",
        "accessories",
        "apparel",
        ("Fastrack", "Vincent Chase", "Ray-Ban"),
        ("UV Protected Aviator Sunglasses", "Polarized Wayfarer Sunglasses, Unisex"),
    ),
    CatalogueFile(
        "Mens Fashion.csv",
        "stores",
        "Men's Fashion",
        "stores",
        "apparel",
        ("Amazon Brand - Inkast", "Levi's", "Puma"),
        ("Men's Hoodie, Grey", "Men's Slim Jeans", "Men's Sneakers, White"),
    ),
    CatalogueFile(
        "Amazon Fashion.csv",
        "stores",
        "Amazon Fashion",
        "stores",
        "apparel",
        ("Symbol", "Amazon Brand - Myx", "House of Pataudi"),
        ("Women's Kurta Set", "Men's Cotton Kurta", "Women's Handbag, Tan"),
    ),
)
# The real dataset has 27 files with only a header; the extract stage must handle them.
HEADER_ONLY_FILES = ("Kids Watches.csv",)


@dataclasses.dataclass(frozen=True)
class CatalogueSettings:
    """Everything the output depends on; the stamp file stores it."""

    seed: int = 0
    base_url: str = DEFAULT_BASE_URL
    per_label: int = DEFAULT_PER_LABEL
    min_size: int = DEFAULT_MIN_SIZE
    max_size: int = DEFAULT_MAX_SIZE

    def validate(self) -> None:
        """Raise ValueError naming the first invalid setting."""
        if not self.base_url.startswith(("http://", "https://")) or self.base_url.endswith("/"):
            raise ValueError(
                "base_url must be an http(s) URL without a trailing '/', such as "
                f"http://127.0.0.1:8770. Received: base_url={self.base_url!r}"
            )
        if self.per_label < 10:
            raise ValueError(
                "per_label must be at least 10, so that every label has images in every split. "
                f"Received: per_label={self.per_label!r}"
            )
        if not 32 <= self.min_size <= self.max_size <= 1024:
            raise ValueError(
                "image sizes must satisfy 32 <= min_size <= max_size <= 1024. "
                f"Received: min_size={self.min_size!r}, max_size={self.max_size!r}"
            )

    def to_json(self) -> dict[str, Any]:
        return {"generator_version": GENERATOR_VERSION, **dataclasses.asdict(self)}

    def digest(self) -> str:
        """Return a SHA-256 hex digest of the settings: the identity of a catalogue."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()


@dataclasses.dataclass
class Row:
    """One planned CSV row and the image behind its URL."""

    file: CatalogueFile
    values: dict[str, str]
    image_path: str | None = None  # relative to the site folder; None: nothing to write
    drawn_label: str | None = None  # the style its image is drawn in
    image_kind: str = "image"  # "image", "too_small", "not_an_image", "missing"
    extension: str = "jpg"
    planted: str | None = None  # why the row is unusual, for the stamp file
    copy_of: Row | None = None  # serve this row's image, scaled and saved again
    raw_line: str | None = None  # written as is instead of through the csv module


# ---- values ----


def format_rupees(amount: float) -> str:
    """Format a price with the rupee sign and Indian digit grouping: ``₹1,26,189``."""
    rupees = int(amount)
    paise = round((amount - rupees) * 100)
    digits = str(rupees)
    if len(digits) > 3:
        head, tail = digits[:-3], digits[-3:]
        groups = [head[max(0, i - 2) : i] for i in range(len(head), 0, -2)][::-1]
        digits = ",".join([*groups, tail])
    return f"₹{digits}" + (f".{paise:02d}" if paise else "")


def make_name(file: CatalogueFile, rng: np.random.Generator) -> str:
    brand = file.brands[rng.integers(len(file.brands))]
    item = file.items[rng.integers(len(file.items))]
    extras = ("", "", " | Latest Launch", " with 1 Year Warranty", ", Combo Offer", " (Pack of 3)")
    name = f"{brand} {item}{extras[rng.integers(len(extras))]}"
    if rng.random() < 0.25:
        name += " - Best Seller in " + file.sub_category + ", Free Delivery on Eligible Orders"
    if len(name) > NAME_MAX_CHARS:
        name = name[:NAME_MAX_CHARS].rstrip() + "..."
    return name


def make_link(name: str, position: int, file: CatalogueFile, rng: np.random.Generator) -> str:
    slug = "-".join("".join(c for c in word if c.isalnum()) for word in name.split()[:6])
    asin = "B0" + "".join(IMAGE_ID_ALPHABET[i] for i in rng.integers(26, 62, size=8)).upper()
    query_id = 1679130000 + int(rng.integers(100_000))
    return (
        f"https://www.amazon.in/{slug}/dp/{asin}/ref=sr_1_{position}"
        f"?qid={query_id}&s={file.store}&sr=1-{position}"
    )


def make_numbers(rng: np.random.Generator) -> dict[str, str]:
    """Ratings, rating count and prices, with the real data's gaps and junk."""
    draw = rng.random()
    if draw < 0.03:  # the scraper read a delivery banner instead of the rating
        ratings, count = "Get", "FREE Delivery by Amazon"
    elif draw < 0.08:
        ratings, count = "", ""
    else:
        ratings = f"{rng.uniform(2.8, 5.0):.1f}"
        count = f"{int(rng.lognormal(5, 2)) + 1:,}"
    actual = float(np.round(rng.lognormal(7.5, 1.2), -1) - 1)
    actual = max(actual, 99.0)
    discount = float(round(actual * rng.uniform(0.3, 0.9)))
    if rng.random() < 0.03:  # a few prices have paise
        discount += 0.5
    return {
        "ratings": ratings,
        "no_of_ratings": count,
        "discount_price": "" if rng.random() < 0.05 else format_rupees(discount),
        "actual_price": format_rupees(actual),
    }


def mojibake(text: str) -> str:
    """Return ``text`` as it reads after its UTF-8 bytes were decoded as cp1252."""
    return text.encode("utf-8").decode("cp1252", errors="replace")


# ---- images ----


def _colour(
    rng: np.random.Generator, hue: float, jitter: float = HUE_JITTER
) -> tuple[int, int, int]:
    """Draw a BGR colour near ``hue`` with random saturation and value."""
    shifted = (hue + rng.uniform(-jitter, jitter)) % 180
    hsv = np.uint8([[[shifted, rng.integers(150, 256), rng.integers(140, 256)]]])
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def _background(rng: np.random.Generator, size: tuple[int, int], kind: str) -> np.ndarray:
    """Paint a smooth random blend of two low-saturation colours, light or dark, in any hue.

    The blend weights come from a coarse random grid scaled up, not from a linear
    gradient: gradients would give most images nearly the same difference hash (dHash),
    and find-label-issues would report them as near-duplicates.
    """
    height, width = size
    low, high = (150, 256) if kind == "light" else (20, 110)
    corners = []
    for _ in range(2):
        hsv = np.uint8([[[rng.integers(180), rng.integers(0, 90), rng.integers(low, high)]]])
        corners.append(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32))
    cells = int(rng.integers(3, 7))
    grid = rng.random((cells, cells)).astype(np.float32)
    weights = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    image = corners[0] * (1 - weights[..., None]) + corners[1] * weights[..., None]
    return image.astype(np.uint8)


AA = cv2.LINE_AA


class Canvas(NamedTuple):
    """The place of one shape: the image, its centre and radius in pixels, and two colours."""

    image: np.ndarray
    cx: float
    cy: float
    r: float
    main: tuple[int, int, int]
    accent: tuple[int, int, int]

    def at(self, dx: float, dy: float) -> tuple[int, int]:
        """Return the pixel at (dx, dy) radii from the centre."""
        return int(self.cx + dx * self.r), int(self.cy + dy * self.r)

    def size(self, share: float, minimum: int = 1) -> int:
        return max(minimum, int(share * self.r))


def _draw_dress(c: Canvas, rng: np.random.Generator) -> None:
    """Draw a triangle under a narrow band: a dress on a hanger."""
    cv2.fillPoly(c.image, [np.int32([c.at(0, -0.6), c.at(-1, 1), c.at(1, 1)])], c.main, AA)
    cv2.rectangle(c.image, c.at(-0.3, -1), c.at(0.3, -0.5), c.accent, -1, AA)


def _draw_jar(c: Canvas, rng: np.random.Generator) -> None:
    """Draw a box with an oval lid."""
    cv2.rectangle(c.image, c.at(-0.6, -0.6), c.at(0.6, 1), c.main, -1, AA)
    cv2.ellipse(c.image, c.at(0, -0.7), (c.size(0.7), c.size(0.25)), 0, 0, 360, c.accent, -1, AA)


def _draw_screen(c: Canvas, rng: np.random.Generator) -> None:
    """Draw a screen in a frame, on a stand."""
    cv2.rectangle(c.image, c.at(-1, -0.6), c.at(1, 0.5), c.main, -1, AA)
    cv2.rectangle(c.image, c.at(-0.85, -0.45), c.at(0.85, 0.35), c.accent, -1, AA)
    cv2.rectangle(c.image, c.at(-0.1, 0.5), c.at(0.1, 0.8), c.main, -1, AA)


def _draw_blobs(c: Canvas, rng: np.random.Generator) -> None:
    """Draw a cluster of 3 to 6 round items."""
    for _ in range(int(rng.integers(3, 7))):
        dx, dy = rng.uniform(-0.7, 0.7, size=2)
        colour = c.main if rng.random() < 0.6 else c.accent
        cv2.circle(c.image, c.at(dx, dy), c.size(rng.uniform(0.15, 0.35), 2), colour, -1, AA)


def _draw_ball(c: Canvas, rng: np.random.Generator) -> None:
    """Draw a disc with two curved seams."""
    cv2.circle(c.image, c.at(0, 0), c.size(1), c.main, -1, AA)
    axes = (c.size(0.6), c.size(0.9))
    cv2.ellipse(c.image, c.at(-0.9, 0), axes, 0, -60, 60, c.accent, c.size(0.12), AA)
    cv2.ellipse(c.image, c.at(0.9, 0), axes, 0, 120, 240, c.accent, c.size(0.12), AA)


def _draw_star(c: Canvas, rng: np.random.Generator) -> None:
    """Draw a five-pointed star, turned a little, with a round centre."""
    angles = np.arange(10) * math.pi / 5 + rng.uniform(-0.4, 0.4) - math.pi / 2
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    points = [c.at(r * math.cos(a), r * math.sin(a)) for r, a in zip(radii, angles)]
    cv2.fillPoly(c.image, [np.int32(points)], c.main, AA)
    cv2.circle(c.image, c.at(0, 0), c.size(0.2), c.accent, -1, AA)


def _draw_tag(c: Canvas, rng: np.random.Generator) -> None:
    """Draw a price tag with three stripes and a hole."""
    outline = [c.at(-1, -0.5), c.at(0.5, -0.5), c.at(1, 0), c.at(0.5, 0.5), c.at(-1, 0.5)]
    cv2.fillPoly(c.image, [np.int32(outline)], c.main, AA)
    for dx in (-0.6, -0.2, 0.2):
        cv2.line(c.image, c.at(dx, -0.4), c.at(dx, 0.4), c.accent, c.size(0.1), AA)
    cv2.circle(c.image, c.at(0.55, 0), c.size(0.1), (255, 255, 255), -1, AA)


SHAPE_DRAWERS = {
    "dress": _draw_dress,
    "jar": _draw_jar,
    "screen": _draw_screen,
    "blobs": _draw_blobs,
    "ball": _draw_ball,
    "star": _draw_star,
    "tag": _draw_tag,
}


def draw_shape(
    image: np.ndarray,
    shape: str,
    centre: tuple[float, float],
    radius: float,
    colours: tuple[tuple[int, int, int], tuple[int, int, int]],
    rng: np.random.Generator,
) -> None:
    """Draw one of ``SHAPES`` in place: ``colours`` are the main and the accent colour (BGR)."""
    if shape not in SHAPE_DRAWERS:
        raise ValueError(f"shape must be one of {SHAPES}. Received: shape={shape!r}")
    SHAPE_DRAWERS[shape](Canvas(image, *centre, radius, *colours), rng)


def draw_product(style: ClassStyle, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Draw one product photo of ``style``: a BGR uint8 array of ``size`` (height, width)."""
    height, width = size
    image = _background(rng, size, style.background)

    # distractors first, so the product is drawn over them
    for _ in range(int(rng.integers(0, 3))):
        shape = SHAPES[rng.integers(len(SHAPES))]
        radius = min(height, width) * rng.uniform(0.06, 0.14)
        centre = (rng.uniform(0, width), rng.uniform(0, height))
        colours = (_colour(rng, rng.uniform(0, 180), 0), _colour(rng, rng.uniform(0, 180), 0))
        draw_shape(image, shape, centre, radius, colours, rng)

    # the product: random scale and position, in the class palette or off-palette
    radius = min(height, width) * rng.uniform(0.22, 0.4)
    centre = (
        rng.uniform(radius, width - radius),
        rng.uniform(radius, height - radius),
    )
    if rng.random() < OFF_PALETTE_SHARE:
        colours = (_colour(rng, rng.uniform(0, 180), 0), _colour(rng, rng.uniform(0, 180), 0))
    else:
        colours = (_colour(rng, style.hue), _colour(rng, style.accent_hue))
    draw_shape(image, style.shape, centre, radius, colours, rng)

    # a small random rotation of the whole photo, then sensor noise
    angle = rng.uniform(-15, 15)
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
    image = cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)
    noise = rng.normal(0, rng.uniform(3, 12), size=image.shape)
    return np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def encode_image(image: np.ndarray, extension: str, rng: np.random.Generator) -> bytes:
    """Encode a BGR image as JPEG (random quality 70-95), PNG or WebP."""
    if extension == "jpg":
        params = [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(70, 96))]
    elif extension == "webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, 80]
    else:
        params = []
    ok, buffer = cv2.imencode(f".{extension}", image, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a .{extension} image")
    return buffer.tobytes()


def reencode(data: bytes) -> bytes:
    """Scale the photo in ``data`` to 90% and save it as JPEG again, as a re-upload looks."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    height, width = image.shape[:2]
    smaller = cv2.resize(image, (width * 9 // 10, height * 9 // 10), interpolation=cv2.INTER_AREA)
    return encode_image(smaller, "jpg", np.random.default_rng(0))


def image_bytes(row: Row, settings: CatalogueSettings, index: int) -> bytes | None:
    """The bytes served for ``row``; None when the URL must return 404."""
    if row.image_kind == "missing":
        return None
    if row.image_kind == "not_an_image":
        return NOT_AN_IMAGE
    rng = np.random.default_rng([settings.seed, index])
    if row.image_kind == "too_small":
        size = (TOO_SMALL_SIDE, TOO_SMALL_SIDE)
    else:
        side = int(rng.integers(settings.min_size, settings.max_size + 1))
        aspect = 1.0 if rng.random() < 0.7 else rng.uniform(0.75, 1.33)
        size = (side, max(settings.min_size, min(settings.max_size, round(side * aspect))))
    image = draw_product(CLASS_STYLES[row.drawn_label], size, rng)
    return encode_image(image, row.extension, rng)


# ---- planning ----


class Planner:
    """Plan every row of the catalogue from one seeded generator, in a fixed order."""

    def __init__(self, settings: CatalogueSettings) -> None:
        self.settings = settings
        self.rng = np.random.default_rng(settings.seed)
        self.used_ids: set[str] = set()
        self.rows: list[Row] = []
        self.positions: Counter[str] = Counter()

    def new_image_path(self, extension: str = "jpg") -> str:
        while True:
            letters = self.rng.integers(len(IMAGE_ID_ALPHABET), size=11)
            image_id = "".join(IMAGE_ID_ALPHABET[i] for i in letters)
            if image_id not in self.used_ids:
                self.used_ids.add(image_id)
                return IMAGE_PATH.format(image_id=image_id, extension=extension)

    def add_row(self, file: CatalogueFile, image: str, **fields: Any) -> Row:
        """Append a row of ``file`` whose image column is ``image`` (a path or a raw value)."""
        self.positions[file.file_name] += 1
        name = make_name(file, self.rng)
        values = {
            "name": name,
            "main_category": file.main_category,
            "sub_category": file.sub_category,
            "image": image,
            "link": make_link(name, self.positions[file.file_name], file, self.rng),
            **make_numbers(self.rng),
        }
        row = Row(file=file, values=values, **fields)
        self.rows.append(row)
        return row

    def url(self, path: str) -> str:
        return f"{self.settings.base_url}/{path}"

    def add_products(self) -> None:
        """``per_label`` rows per label, spread over the label's files, each with an image."""
        labels = list(CLASS_STYLES)
        for label in labels:
            files = [file for file in CATALOGUE_FILES if file.label == label]
            count = round(MISLABELLED_SHARE * self.settings.per_label)
            mislabelled = set(self.rng.choice(self.settings.per_label, count, replace=False))
            for i in range(self.settings.per_label):
                file = files[i % len(files)]
                drawn = label
                planted = None
                if i in mislabelled:
                    others = [other for other in labels if other != label]
                    drawn = others[self.rng.integers(len(others))]
                    planted = f"mislabelled: drawn as {drawn}"
                draw = self.rng.random()
                extension = "jpg" if draw < FORMAT_WEIGHTS["jpg"] else "png"
                if draw >= FORMAT_WEIGHTS["jpg"] + FORMAT_WEIGHTS["png"]:
                    extension = "webp"
                path = self.new_image_path(extension)
                self.add_row(
                    file,
                    self.url(path),
                    image_path=path,
                    drawn_label=drawn,
                    extension=extension,
                    planted=planted,
                )

    def add_planted_rows(self) -> None:
        """Rows that a stage must drop, repair or report, as the real data has them."""
        by_label = {file.label: file for file in CATALOGUE_FILES}
        products = [row for row in self.rows if row.planted is None]
        files = list(CATALOGUE_FILES)

        def pick_file() -> CatalogueFile:
            return files[self.rng.integers(len(files))]

        # merge drops these
        self.add_row(pick_file(), "", planted="missing_url")
        self.add_row(pick_file(), "", planted="missing_url")
        self.add_row(pick_file(), "/" + self.new_image_path(), planted="relative_url")
        self.add_row(
            pick_file(), "images/I/" + "x" * 11 + "._AC_UL320_.jpg", planted="relative_url"
        )
        # duplicates: under another file of the same label, with an upper-case scheme, and
        # under a main category of another label (a label conflict)
        for source in products[5:8]:
            same_label = [f for f in files if f.label == source.file.label and f != source.file]
            self.add_row(same_label[0], source.values["image"], planted="duplicate_url")
        source = products[20]
        upper = source.values["image"].replace("http://", "HTTP://", 1)
        self.add_row(source.file, upper, planted="duplicate_url: scheme in upper case")
        source = products[40]
        other = by_label["stores" if source.file.label != "stores" else "fashion"]
        self.add_row(other, source.values["image"], planted="duplicate_url: another label")
        # the same photo re-encoded at a second URL under another label: fetch keeps both,
        # and find-label-issues reports them as near-duplicates with different labels
        source = products[60]
        other = by_label["other" if source.file.label != "other" else "fashion"]
        path = self.new_image_path()
        self.add_row(
            other,
            self.url(path),
            image_path=path,
            drawn_label=source.drawn_label,
            copy_of=source,
            planted="near_duplicate: the same photo re-encoded under another label",
        )

        # fetch records these
        for kind, count in (("missing", 2), ("not_an_image", 2), ("too_small", 1)):
            for _ in range(count):
                file = pick_file()
                path = self.new_image_path()
                self.add_row(
                    file,
                    self.url(path),
                    image_path=path,
                    drawn_label=file.label,
                    image_kind=kind,
                    planted=f"fetch: {'http_404' if kind == 'missing' else kind}",
                )

    def plant_text_faults(self) -> None:
        """Mojibake in 3 names, and a name with an unquoted quote and commas; extract fixes both."""
        plain = [row for row in self.rows if row.planted is None]
        for row in plain[10:13]:
            row.values["name"] = mojibake(f"{row.values['name']} – Home Décor Edition ₹ Offer")
            row.planted = "mojibake name"
        row = plain[30]
        row.values["name"] = f'{row.values["name"].rstrip(".")}, 43" Display, 2023 Model'
        fields = [_quote(row.values[column]) for column in COLUMNS]
        fields[0] = row.values["name"]  # written without quotes, as some real rows are
        row.raw_line = ",".join(fields)
        row.planted = "unquoted quote in name"

    def plan(self) -> list[Row]:
        self.add_products()
        self.add_planted_rows()
        self.plant_text_faults()
        order = self.rng.permutation(len(self.rows))  # rows of a file are not sorted by kind
        return [self.rows[i] for i in order]


def _quote(value: str) -> str:
    """Format one CSV field, quoted only where needed, as the real files have it."""
    if not value:
        return ""  # the csv module would write "" for a row of one empty field
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([value])
    return buffer.getvalue()


# ---- writing ----


def write_csv_files(folder: Path, rows: list[Row]) -> dict[str, int]:
    """Write one CSV file per catalogue file plus the header-only ones; return rows per file."""
    counts: dict[str, int] = {}
    for file in CATALOGUE_FILES:
        lines = [",".join(COLUMNS)]
        for row in rows:
            if row.file is not file:
                continue
            lines.append(row.raw_line or ",".join(_quote(row.values[c]) for c in COLUMNS))
        (folder / file.file_name).write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
        counts[file.file_name] = len(lines) - 1
    for name in HEADER_ONLY_FILES:
        (folder / name).write_bytes((",".join(COLUMNS) + "\r\n").encode("utf-8"))
        counts[name] = 0
    return counts


def write_site(folder: Path, rows: list[Row], settings: CatalogueSettings) -> Counter[str]:
    """Write the image of every row that has one; return counts per kind and format."""
    counts: Counter[str] = Counter()
    (folder / "images" / "I").mkdir(parents=True, exist_ok=True)
    index_of = {id(row): index for index, row in enumerate(rows)}
    for index, row in enumerate(rows):
        if row.image_path is None:
            continue
        if row.copy_of is not None:
            data = reencode(image_bytes(row.copy_of, settings, index_of[id(row.copy_of)]))
        else:
            data = image_bytes(row, settings, index)
        if data is None:
            counts["missing"] += 1
            continue
        (folder / row.image_path).write_bytes(data)
        kind = row.extension if row.image_kind == "image" else row.image_kind
        counts[kind] += 1
    return counts


def read_stamp(out_dir: Path) -> dict[str, Any] | None:
    """Return the stamp of the catalogue in ``out_dir``, or None when there is none."""
    try:
        return json.loads((Path(out_dir) / STAMP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _swap_in(built: Path, target: Path) -> None:
    """Replace ``target`` with the folder ``built`` by two renames."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    built.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(target: Path) -> None:
    """Remove temporary folders that an interrupted generation left beside ``target``."""
    if not target.parent.exists():
        return
    for path in target.parent.glob(f".{target.name}.*-*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def generate_catalogue(
    out_dir: str | os.PathLike[str],
    site_dir: str | os.PathLike[str],
    settings: CatalogueSettings | None = None,
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Write the catalogue CSV files to ``out_dir`` and the images to ``site_dir``.

    Skips all work when both folders hold a catalogue of the same settings, unless
    ``force``. Returns the stamp, with ``reused`` (True when nothing was written) and
    ``seconds`` added. Raises ValueError for invalid settings.
    """
    settings = settings or CatalogueSettings()
    settings.validate()
    out_dir, site_dir = Path(out_dir), Path(site_dir)
    started = time.perf_counter()

    stamp = read_stamp(out_dir)
    site_stamp = read_stamp(site_dir)
    if not force and stamp and stamp == site_stamp and stamp.get("digest") == settings.digest():
        logger.info("demo_catalogue: reusing the catalogue in %s (same settings)", out_dir)
        return {**stamp, "reused": True, "seconds": round(time.perf_counter() - started, 2)}

    # plan, then build both folders in temporary places beside their targets
    rows = Planner(settings).plan()
    for target in (out_dir, site_dir):
        _remove_leftovers(target)
        target.parent.mkdir(parents=True, exist_ok=True)
    built_out = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    built_site = site_dir.with_name(f".{site_dir.name}.tmp-{os.getpid()}")
    try:
        built_out.mkdir()
        built_site.mkdir()
        files = write_csv_files(built_out, rows)
        images = write_site(built_site, rows, settings)
        stamp = make_stamp(settings, rows, files, images)
        write_json(built_site / STAMP_FILE, stamp)
        write_json(built_out / STAMP_FILE, stamp)
        # the site first: a catalogue is complete once its CSV folder carries the stamp
        _swap_in(built_site, site_dir)
        _swap_in(built_out, out_dir)
    finally:
        for path in (built_out, built_site):
            shutil.rmtree(path, ignore_errors=True)

    seconds = round(time.perf_counter() - started, 2)
    logger.info(
        "demo_catalogue: %d rows in %d files into %s and %d images into %s in %.1f s",
        stamp["rows"],
        len(files),
        out_dir,
        sum(images.values()),
        site_dir,
        seconds,
    )
    return {**stamp, "reused": False, "seconds": seconds}


def make_stamp(
    settings: CatalogueSettings, rows: list[Row], files: dict[str, int], images: Counter[str]
) -> dict[str, Any]:
    """Build the stamp file: settings, counts and every planted row with its image column."""
    planted = [
        {"file": row.file.file_name, "image": row.values["image"], "planted": row.planted}
        for row in rows
        if row.planted
    ]
    labels = Counter(row.file.label for row in rows if row.image_kind == "image")
    return {
        "settings": settings.to_json(),
        "digest": settings.digest(),
        "rows": len(rows),
        "files": files,
        "images": dict(sorted(images.items())),
        "rows_with_images_per_label": dict(sorted(labels.items())),
        "planted": planted,
    }


# ---- command line ----


def build_parser() -> argparse.ArgumentParser:
    defaults = CatalogueSettings()
    parser = argparse.ArgumentParser(
        prog="python -m data.scripts.demo_catalogue", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=PROJECT_ROOT / "data" / "raw" / "demo",
        help="folder for the CSV files (default: data/raw/demo)",
    )
    parser.add_argument(
        "--site",
        type=Path,
        default=PROJECT_ROOT / "data" / "raw" / "demo-site",
        help="folder for the images that the demo server serves (default: data/raw/demo-site)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default: 0)")
    parser.add_argument(
        "--base-url",
        default=defaults.base_url,
        help=f"address the image URLs start with, no trailing '/' (default: {defaults.base_url})",
    )
    parser.add_argument(
        "--per-label",
        type=int,
        default=defaults.per_label,
        help=f"product rows with an image per label (default: {defaults.per_label})",
    )
    parser.add_argument(
        "--min-size",
        type=int,
        default=defaults.min_size,
        help=f"smallest image side in pixels (default: {defaults.min_size})",
    )
    parser.add_argument(
        "--max-size",
        type=int,
        default=defaults.max_size,
        help=f"largest image side in pixels (default: {defaults.max_size})",
    )
    parser.add_argument(
        "--force", action="store_true", help="generate again even when the settings are the same"
    )
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    settings = CatalogueSettings(
        seed=args.seed,
        base_url=args.base_url,
        per_label=args.per_label,
        min_size=args.min_size,
        max_size=args.max_size,
    )
    try:
        generate_catalogue(args.out, args.site, settings, force=args.force)
    except ValueError as exc:
        logger.error("demo_catalogue: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
