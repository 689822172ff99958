"""Generate a full-size replica of the Kaggle "Amazon Products Dataset 2023" CSV files.

The real dataset (``lokeshparab/amazon-products-dataset``) has 139 per-sub-category CSV
files with 551,585 data rows and 185,809,045 bytes in total, plus a merged
``Amazon-Products.csv``. The replica uses the same file names, header, encoding (UTF-8,
CRLF line endings, minimal quoting) and per-file row counts, and aims each file at the
byte size of the real one. It lets the pipeline be benchmarked and tested at full size
without a Kaggle download. Every figure it needs is embedded here, so it runs in any clone.

Values are random but shaped like the real ones. Names have each file's real mean length,
and long names are cut to 122 characters plus ``...``. Image and product URLs have the
real form and length. Ratings look like ``4.2``, rating counts like ``"2,255"`` and prices
use Indian digit grouping, as in ``"₹1,26,189"``. The real quirks appear at their measured
rates: empty ratings, ``Get`` / ``FREE Delivery by Amazon`` junk, empty prices, paise
decimals and non-ASCII characters. The same product is listed in several files, sometimes
under another main_category, at an estimated rate.

Usage::

    python -m bench.make_replica --out DIR [--rows 551585] [--seed 0] [--merged]

The output depends only on ``--rows`` and ``--seed`` (and the numpy version, see
``generate_replica``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from data.scripts.common import atomic_path, setup_logging

logger = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = (
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
HEADER_BYTES = len(",".join(COLUMNS)) + 2  # 94: the header line plus CRLF
REAL_TOTAL_ROWS = 551_585
MERGED_FILE_NAME = "Amazon-Products.csv"


class FileSpec(NamedTuple):
    """One per-sub-category file of the real dataset."""

    file_name: str
    main_category: str  # "" for header-only files, whose category is unknown
    sub_category: str
    real_bytes: int  # size of the real file, header line included
    real_rows: int  # data rows, estimated for most files (see the NOTE above _NON_EMPTY_FILES)
    name_mean_chars: float  # mean length of the name column, 0.0 for header-only files
    search_store: str  # the "s=" parameter of product links, or "" for links with "sr=8-N"


# The sizes come from the Git LFS pointers of the real files. Values of main_category,
# sub_category and the "s=" link parameter were read from the real rows of each file, and
# the mean name length from its first 100 rows (all rows for All Electronics.csv).
# NOTE: real_rows is exact only for the 7 files that were available complete (All
# Electronics.csv, Value Bazaar.csv and the five files under 100 rows). The others are
# estimates: real bytes divided by the mean bytes per row of the file's first 100 rows,
# scaled so that the 112 files sum to 551,585 rows, the row count of the merged file.
_NON_EMPTY_FILES: dict[str, tuple[tuple[str, str, int, int, float, str], ...]] = {
    "accessories": (
        ("Bags and Luggage.csv", "Bags & Luggage", 6_563_675, 17_824, 96.1, "luggage"),
        (
            "Fashion and Silver Jewellery.csv",
            "Fashion & Silver Jewellery",
            7_045_316,
            18_444,
            93.5,
            "jewelry",
        ),
        (
            "Gold and Diamond Jewellery.csv",
            "Gold & Diamond Jewellery",
            6_058_375,
            19_599,
            62.1,
            "jewelry",
        ),
        ("Handbags and Clutches.csv", "Handbags & Clutches", 6_260_299, 18_788, 76.0, "shoes"),
        ("Jewellery.csv", "Jewellery", 6_730_217, 19_315, 80.5, "jewelry"),
        ("Sunglasses.csv", "Sunglasses", 463_184, 1_354, 86.5, "apparel"),
        ("Watches.csv", "Watches", 6_151_619, 17_985, 74.8, "watches"),
    ),
    "appliances": (
        ("Air Conditioners.csv", "Air Conditioners", 247_753, 671, 117.4, "kitchen"),
        ("All Appliances.csv", "All Appliances", 3_490_779, 9_495, 98.1, "appliances"),
        (
            "Heating and Cooling Appliances.csv",
            "Heating & Cooling Appliances",
            3_489_840,
            9_487,
            102.3,
            "kitchen",
        ),
        (
            "Kitchen and Home Appliances.csv",
            "Kitchen & Home Appliances",
            3_545_354,
            9_613,
            97.8,
            "kitchen",
        ),
        ("Refrigerators.csv", "Refrigerators", 747_127, 2_104, 105.8, "kitchen"),
        ("Washing Machines.csv", "Washing Machines", 510_337, 1_387, 109.7, "kitchen"),
    ),
    "bags & luggage": (
        ("Backpacks.csv", "Backpacks", 697_757, 2_135, 87.7, "luggage"),
        ("Rucksacks.csv", "Rucksacks", 826_483, 2_467, 93.7, "luggage"),
        (
            "Suitcases and Trolley Bags.csv",
            "Suitcases & Trolley Bags",
            417_911,
            1_130,
            97.2,
            "luggage",
        ),
        ("Travel Accessories.csv", "Travel Accessories", 662_838, 1_777, 108.8, "luggage"),
        ("Travel Duffles.csv", "Travel Duffles", 406_106, 1_215, 89.2, "luggage"),
        ("Wallets.csv", "Wallets", 663_393, 1_912, 80.2, "luggage"),
    ),
    "beauty & health": (
        ("Beauty and Grooming.csv", "Beauty & Grooming", 681_311, 1_974, 95.0, "beauty"),
        ("Diet and Nutrition.csv", "Diet & Nutrition", 409_520, 1_205, 95.3, "hpc"),
        ("Health and Personal Care.csv", "Health & Personal Care", 399_638, 1_100, 97.7, "hpc"),
        ("Household Supplies.csv", "Household Supplies", 384_315, 1_118, 90.0, "hpc"),
        ("Luxury Beauty.csv", "Luxury Beauty", 293_659, 876, 88.0, "luxury-beauty"),
        ("Make-up.csv", "Make-up", 891_819, 2_574, 96.5, "beauty"),
        ("Personal Care Appliances.csv", "Personal Care Appliances", 449_961, 1_217, 104.4, "hpc"),
        ("Value Bazaar.csv", "Value Bazaar", 21_482, 66, 91.3, ""),
    ),
    "car & motorbike": (
        (
            "All Car and Motorbike Products.csv",
            "All Car & Motorbike Products",
            474_820,
            1_244,
            103.7,
            "automotive",
        ),
        ("Car Accessories.csv", "Car Accessories", 512_713, 1_437, 109.3, "automotive"),
        ("Car Electronics.csv", "Car Electronics", 378_730, 1_063, 105.0, "electronics"),
        ("Car Parts.csv", "Car Parts", 423_697, 1_230, 102.0, "automotive"),
        ("Car and Bike Care.csv", "Car & Bike Care", 341_209, 969, 95.2, "automotive"),
        (
            "Motorbike Accessories and Parts.csv",
            "Motorbike Accessories & Parts",
            446_241,
            1_234,
            85.0,
            "automotive",
        ),
    ),
    "grocery & gourmet foods": (
        (
            "All Grocery and Gourmet Foods.csv",
            "All Grocery & Gourmet Foods",
            336_128,
            1_017,
            70.8,
            "grocery",
        ),
        (
            "Coffee Tea and Beverages.csv",
            "Coffee, Tea & Beverages",
            459_639,
            1_356,
            75.1,
            "grocery",
        ),
        ("Snack Foods.csv", "Snack Foods", 363_955, 1_115, 84.4, "grocery"),
    ),
    "home & kitchen": (
        ("All Home and Kitchen.csv", "All Home & Kitchen", 451_431, 1_264, 100.5, "kitchen"),
        ("Bedroom Linen.csv", "Bedroom Linen", 451_595, 1_209, 114.2, "kitchen"),
        ("Furniture.csv", "Furniture", 485_076, 1_337, 111.2, "kitchen"),
        ("Garden and Outdoors.csv", "Garden & Outdoors", 392_254, 1_070, 105.7, "garden"),
        ("Home Dcor.csv", "Home Décor", 461_369, 1_300, 106.2, "kitchen"),
        ("Home Furnishing.csv", "Home Furnishing", 521_791, 1_405, 110.1, "kitchen"),
        ("Home Improvement.csv", "Home Improvement", 379_822, 1_042, 107.1, "kitchen"),
        ("Home Storage.csv", "Home Storage", 451_264, 1_258, 113.0, "kitchen"),
        ("Indoor Lighting.csv", "Indoor Lighting", 449_612, 1_261, 96.5, "kitchen"),
        (
            "Kitchen Storage and Containers.csv",
            "Kitchen Storage & Containers",
            385_771,
            1_066,
            104.5,
            "kitchen",
        ),
        ("Kitchen and Dining.csv", "Kitchen & Dining", 440_515, 1_217, 104.1, "kitchen"),
        (
            "Sewing and Craft Supplies.csv",
            "Sewing & Craft Supplies",
            467_899,
            1_252,
            96.6,
            "kitchen",
        ),
    ),
    "home, kitchen, pets": (
        ("Refurbished and Open Box.csv", "Refurbished & Open Box", 8_161, 24, 81.9, "kitchen"),
    ),
    "industrial supplies": (
        (
            "Industrial and Scientific Supplies.csv",
            "Industrial & Scientific Supplies",
            238_974,
            615,
            100.9,
            "industrial",
        ),
        (
            "Janitorial and Sanitation Supplies.csv",
            "Janitorial & Sanitation Supplies",
            355_062,
            882,
            108.3,
            "industrial",
        ),
        ("Lab and Scientific.csv", "Lab & Scientific", 397_455, 1_137, 84.9, "industrial"),
        (
            "Test Measure and Inspect.csv",
            "Test, Measure & Inspect",
            530_554,
            1_436,
            96.1,
            "industrial",
        ),
    ),
    "kids' fashion": (
        ("Baby Fashion.csv", "Baby Fashion", 732_098, 2_220, 93.5, "apparel"),
        ("Kids Clothing.csv", "Kids' Clothing", 673_575, 2_118, 75.8, "apparel"),
        ("Kids Fashion.csv", "Kids' Fashion", 918_331, 2_799, 72.5, "apparel"),
        ("Kids Shoes.csv", "Kids' Shoes", 682_969, 2_221, 57.5, "shoes"),
        ("Kids Watches.csv", "Kids' Watches", 712_544, 2_050, 92.7, "watches"),
        ("School Bags.csv", "School Bags", 782_792, 2_303, 83.2, "luggage"),
    ),
    "men's clothing": (
        ("Innerwear.csv", "Innerwear", 6_085_573, 17_967, 57.4, "apparel"),
        ("Jeans.csv", "Jeans", 5_689_779, 19_200, 38.6, "apparel"),
        ("Shirts.csv", "Shirts", 5_751_549, 19_616, 56.1, "apparel"),
        ("T-shirts and Polos.csv", "T-shirts & Polos", 6_145_385, 19_663, 60.8, "apparel"),
    ),
    "men's shoes": (
        ("Casual Shoes.csv", "Casual Shoes", 5_736_321, 19_090, 49.7, "shoes"),
        ("Formal Shoes.csv", "Formal Shoes", 5_785_257, 20_172, 41.1, "shoes"),
        ("Sports Shoes.csv", "Sports Shoes", 5_892_581, 20_836, 49.6, "shoes"),
    ),
    "music": (
        (
            "Musical Instruments and Professional Audio.csv",
            "Musical Instruments & Professional Audio",
            403_018,
            1_082,
            89.7,
            "musical-instruments",
        ),
    ),
    "pet supplies": (
        ("All Pet Supplies.csv", "All Pet Supplies", 226_297, 668, 90.7, "pet-supplies"),
        ("Dog supplies.csv", "Dog supplies", 350_208, 983, 95.9, "pet-supplies"),
    ),
    "sports & fitness": (
        ("All Exercise and Fitness.csv", "All Exercise & Fitness", 410_062, 1_166, 97.4, "sports"),
        (
            "All Sports Fitness and Outdoors.csv",
            "All Sports, Fitness & Outdoors",
            444_480,
            1_247,
            84.8,
            "sports",
        ),
        ("Badminton.csv", "Badminton", 395_399, 1_254, 76.9, "sports"),
        ("Camping and Hiking.csv", "Camping & Hiking", 286_071, 777, 101.6, "sports"),
        ("Cardio Equipment.csv", "Cardio Equipment", 86_997, 238, 111.3, "sports"),
        ("Cricket.csv", "Cricket", 388_540, 1_227, 67.6, "sports"),
        ("Cycling.csv", "Cycling", 390_473, 1_085, 99.2, "sports"),
        ("Fitness Accessories.csv", "Fitness Accessories", 470_308, 1_309, 95.4, "sports"),
        ("Football.csv", "Football", 390_473, 1_242, 69.2, "sports"),
        ("Running.csv", "Running", 285_922, 895, 72.5, "sports"),
        ("Strength Training.csv", "Strength Training", 403_990, 1_089, 104.6, "sports"),
        ("Yoga.csv", "Yoga", 357_865, 1_069, 90.0, "sports"),
    ),
    "stores": (
        ("Amazon Fashion.csv", "Amazon Fashion", 793_483, 2_311, 93.3, "apparel"),
        ("Fashion Sales and Deals.csv", "Fashion Sales & Deals", 13_025, 44, 53.9, "apparel"),
        ("Mens Fashion.csv", "Men's Fashion", 6_193_234, 19_839, 79.3, "apparel"),
        ("Sportswear.csv", "Sportswear", 2_129_639, 7_211, 45.0, "apparel"),
        ("The Designer Boutique.csv", "The Designer Boutique", 556_626, 1_665, 74.8, "apparel"),
        ("Womens Fashion.csv", "Women's Fashion", 698_356, 2_065, 84.2, "apparel"),
    ),
    "toys & baby products": (
        (
            "Baby Bath Skin and Grooming.csv",
            "Baby Bath, Skin & Grooming",
            513_455,
            1_418,
            93.9,
            "baby",
        ),
        ("Baby Products.csv", "Baby Products", 383_790, 1_095, 90.4, "baby"),
        ("Diapers.csv", "Diapers", 389_043, 1_096, 97.2, "baby"),
        ("International Toy Store.csv", "International Toy Store", 8_329, 24, 57.5, "toys"),
        ("Nursing and Feeding.csv", "Nursing & Feeding", 385_563, 1_030, 106.0, "baby"),
        ("STEM Toys Store.csv", "STEM Toys Store", 18_136, 48, 92.6, "toys"),
        ("Strollers and Prams.csv", "Strollers & Prams", 225_954, 656, 95.6, "baby"),
        ("Toys Gifting Store.csv", "Toys Gifting Store", 8_573, 24, 102.4, "toys"),
        ("Toys and Games.csv", "Toys & Games", 339_167, 943, 103.8, "toys"),
    ),
    "tv, audio & cameras": (
        ("All Electronics.csv", "All Electronics", 3_691_715, 9_600, 108.3, "electronics"),
        ("Camera Accessories.csv", "Camera Accessories", 3_681_698, 9_791, 107.6, "electronics"),
        ("Cameras.csv", "Cameras", 3_596_052, 9_534, 110.2, "electronics"),
        ("Headphones.csv", "Headphones", 3_627_183, 9_897, 111.9, "electronics"),
        ("Home Audio and Theater.csv", "Home Audio & Theater", 142_420, 377, 97.7, "electronics"),
        (
            "Home Entertainment Systems.csv",
            "Home Entertainment Systems",
            3_724_917,
            10_059,
            104.1,
            "electronics",
        ),
        ("Security Cameras.csv", "Security Cameras", 3_619_595, 9_474, 119.9, "electronics"),
        ("Speakers.csv", "Speakers", 3_571_993, 9_514, 116.6, "electronics"),
        ("Televisions.csv", "Televisions", 369_823, 1_018, 84.6, "electronics"),
    ),
    "women's clothing": (
        ("Clothing.csv", "Clothing", 6_402_549, 18_610, 84.8, "apparel"),
        ("Ethnic Wear.csv", "Ethnic Wear", 6_344_238, 19_852, 72.7, "apparel"),
        ("Lingerie and Nightwear.csv", "Lingerie & Nightwear", 6_609_118, 18_476, 90.1, "apparel"),
        ("Western Wear.csv", "Western Wear", 6_114_125, 18_450, 70.9, "apparel"),
    ),
    "women's shoes": (
        ("Ballerinas.csv", "Ballerinas", 433_709, 1_440, 55.3, "shoes"),
        ("Fashion Sandals.csv", "Fashion Sandals", 665_372, 2_318, 52.1, "shoes"),
        ("Shoes.csv", "Shoes", 560_965, 1_848, 58.7, "shoes"),
    ),
}
HEADER_ONLY_FILE_NAMES: tuple[str, ...] = (
    "All Books.csv",
    "All English.csv",
    "All Hindi.csv",
    "All Movies and TV Shows.csv",
    "All Music.csv",
    "All Video Games.csv",
    "Amazon Pharmacy.csv",
    "Blu-ray.csv",
    "Childrens Books.csv",
    "Entertainment Collectibles.csv",
    "Exam Central.csv",
    "Fiction Books.csv",
    "Film Songs.csv",
    "Fine Art.csv",
    "Gaming Accessories.csv",
    "Gaming Consoles.csv",
    "Indian Classical.csv",
    "Indian Language Books.csv",
    "International Music.csv",
    "Kindle eBooks.csv",
    "PC Games.csv",
    "Pantry.csv",
    "School Textbooks.csv",
    "Sports Collectibles.csv",
    "Subscribe and Save.csv",
    "Textbooks.csv",
    "Video Games Deals.csv",
)


def _build_file_specs() -> tuple[FileSpec, ...]:
    specs = [
        FileSpec(file_name, main_category, sub_category, real_bytes, real_rows, name_mean, store)
        for main_category, files in _NON_EMPTY_FILES.items()
        for file_name, sub_category, real_bytes, real_rows, name_mean, store in files
    ]
    specs += [FileSpec(name, "", "", HEADER_BYTES, 0, 0.0, "") for name in HEADER_ONLY_FILE_NAMES]
    return tuple(sorted(specs, key=lambda spec: spec.file_name))


FILES: tuple[FileSpec, ...] = _build_file_specs()

# Rates and distributions below were measured on 20,430 real rows: the first 100 rows of
# the 112 non-empty files plus all 9,600 rows of All Electronics.csv.
EMPTY_RATINGS_RATE = 0.034  # ratings and no_of_ratings both empty
GET_FREE_DELIVERY_RATE = 0.0022  # ratings "Get", no_of_ratings "FREE Delivery by Amazon"
GET_ONLY_LEFT_RATE = 0.0006  # ratings "Get", no_of_ratings "Only 2 left in stock."
EMPTY_DISCOUNT_RATE = 0.055  # discount_price empty, actual_price present
EMPTY_PRICES_RATE = 0.008  # discount_price and actual_price both empty
DISCOUNT_PAISE_RATE = 0.017  # discount_price with paise, such as "₹284.05"
ACTUAL_PAISE_RATE = 0.0027
PNG_IMAGE_RATE = 0.00005  # 1 of the 20,430 real image URLs ends in ".png", the rest ".jpg"
SPONSORED_LINK_RATE = 0.023  # links with "ref=sr_1_N_mod_primary_new" and an "sbo=" token
# Of those 20,430 rows, 16.7% share an image id with a row of another file and 8.7% share
# the exact URL. They are only the first 100 rows of most files, so these are lower bounds.
# NOTE: the full-data rates are unknown. The rates below are estimates. At full size they
# give 22.5% of rows an exact image URL that another file contains too.
CROSS_FILE_DUPLICATE_RATE = 0.13
SAME_MAIN_CATEGORY_SHARE = 0.6  # share of cross-file duplicates drawn from the same main_category
WITHIN_FILE_DUPLICATE_RATE = 0.05  # All Electronics.csv repeats an image id in 6.3% of rows
# Share of duplicates that copy the source's image URL form. The rest use their own page's
# form, which may be the same one.
EXACT_URL_SHARE = 0.75
NON_ASCII_WORD_RATE = 0.0056  # about 6.6% of real names contain a non-ASCII character
INCH_MARK_WORD_RATE = 0.002  # about 2.5% of names contain '"', as in 15.6"
# Real rows come in blocks of 24, one search result page each, and a page uses one image URL
# form.
PAGE_ROWS = 24
IMAGE_URL_PREFIXES = (
    "https://m.media-amazon.com/images/I/",
    "https://m.media-amazon.com/images/W/IMAGERENDERING_521856-T1/images/I/",
    "https://m.media-amazon.com/images/W/IMAGERENDERING_521856-T2/images/I/",
)
IMAGE_URL_PREFIX_WEIGHTS = (0.65, 0.17, 0.18)
IMAGE_URL_SUFFIX = "._AC_UL320_.jpg"
SPONSORED_LINK_TOKEN = "RZvfv%2F%2FHxDF%2BO5021pAnSA%3D%3D"
FIRST_QUERY_ID = 1_679_128_058  # the earliest "qid=" Unix time in real links, 2023-03-18

# Real names are cut to 122 characters plus "..." (125), or 124 where the cut hits a space.
TRUNCATED_NAME_PREFIX_CHARS = 122
TRUNCATED_NAME_CHARS = 125
MAX_FULL_NAME_CHARS = 121
MIN_NAME_CHARS = 4
NAME_LENGTH_SIGMA = 0.35  # log-normal spread of untruncated name lengths within a file
# Slug lengths fill each file's byte budget. The real per-file mean link length ranges from
# 109 to 139 characters, so slug means are kept between 20 and 60 characters.
MIN_SLUG_MEAN_CHARS = 20
MAX_SLUG_MEAN_CHARS = 60
SLUG_LENGTH_SPREAD = 0.17  # relative standard deviation within a file
MIN_SLUG_CHARS = 12
MAX_SLUG_CHARS = 100
LINK_PREFIX = "https://www.amazon.in/"

RATING_VALUES = tuple(f"{tenths / 10:.1f}" for tenths in range(10, 51))
# Shares per mille of "1.0" ... "5.0" among non-empty ratings ("1.1" never occurs).
RATING_PER_MILLE = (
    (2.2, 0.0, 0.1, 0.2, 0.1, 0.3, 0.1, 0.3, 0.2, 0.3)
    + (1.3, 0.4, 0.8, 0.7, 0.9, 1.4, 1.5, 1.6, 2.7, 3.6)
    + (7.5, 6.0, 8.8, 13.1, 20.4, 25.5, 35.3, 45.8, 68.6, 88.7)
    + (106.4, 118.2, 121.4, 117.9, 85.8, 53.0, 25.3, 10.4, 4.1, 1.4)
    + (18.2,)
)
# log10 of no_of_ratings: median 2.9, 10th percentile 1.2, 90th percentile 4.2.
RATING_COUNT_LOG10_MEAN = 2.85
RATING_COUNT_LOG10_SIGMA = 1.1
RATING_COUNT_LOG10_MAX = 5.9
# log10 of actual_price in rupees: median 3.1, 10th percentile 2.6, 90th percentile 4.0.
ACTUAL_PRICE_LOG10_MEAN = 3.12
ACTUAL_PRICE_LOG10_SIGMA = 0.6
# Last two digits of prices of 100 rupees or more. The remaining share gets any ending.
ACTUAL_PRICE_ENDINGS = ((99, 0.63), (0, 0.10), (90, 0.06), (49, 0.035), (95, 0.03), (50, 0.03))
DISCOUNT_PRICE_ENDINGS = (
    (99, 0.36),
    (49, 0.10),
    (90, 0.04),
    (79, 0.035),
    (89, 0.035),
    (29, 0.03),
    (69, 0.025),
    (59, 0.02),
)

# Frequent words of real names. Shares: common words 65%, made-up brand words 20%, numbers
# and model codes 15%, which gives the real mean word length of 5.3 characters.
COMMON_WORDS = (
    "for with and of to in & / + x - Cover Case Compatible USB Wireless Bluetooth Back Smart "
    "Women Laptop Pro Black Pack Bag Cable Men Watch Ear HD (Black) Women's Men's Set Fast "
    "Camera LED Charging Type-C Portable Ultra Cotton Baby Car Soft Mobile Holder Charger "
    "Screen Full Stand Home Phone Adapter Leather Protection Glass Dual Power Protector Travel "
    "Light Water All Silicone Mini Kids Band TV Tempered Adjustable Backpack Gold cm Wired Air "
    "Fit Remote Earbuds Shoes Blue Edge Sports Girls inch Battery Digital Star Slim Clear "
    "Waterproof Premium Audio Steel Card Plus Gaming Size Free High White Casual Upto Wall "
    "Hard Speaker Universal Series Cleaning Plastic Noise Mic Kit Foldable Mouse Hair Storage "
    "Design Multicolour Running Kurta Saree Regular Shirt Solid Printed Kitchen Bottle Organic "
    "Stainless Round Neck Sleeve Ring Necklace Earrings Plated Dog Food Toy Bed Sheet Pillow "
    "Curtain Wooden Rack Grey Red Green Pink Brown Cushion Jeans Sandals Sneakers Trolley "
    "Suitcase Wallet Handbag Sunglasses Polarized Frame Lamp Bulb Fan Heater Mixer Grinder "
    "Refrigerator Inverter Split Capacity Litre Dry Wet Trimmer Shaver Cream Serum Lotion "
    "Shampoo Oil Face Skin Natural Herbal Tea Coffee Powder Pure Gift Box (Pack of 2) 3)"
).split()
COMMON_WORD_SHARE = 0.65
MADE_UP_WORD_SHARE = 0.20
SYLLABLES = (
    "ka ro ti ne lu ma shi vo ra zen tex lo pri mo del an el ix on ur sa vi go fle bo "
    "kar mi nu tro sol ve da li qua fy"
).split()
MEASURE_UNITS = ("GB", "TB", "ml", "L", "kg", "g", "W", "mAh", "mm", "cm", "Inch", "Pcs", "V")
# Separators after a word in names: a space, ", ", " | " or " - ".
NAME_SEPARATORS = (" ", ", ", " | ", " - ")
NAME_SEPARATOR_WEIGHTS = (0.91, 0.05, 0.025, 0.015)
# Non-ASCII characters of real names, most frequent first: registered sign, degree sign,
# no-break space, trade mark sign, en dash, right double quotation mark, e acute, right
# single quotation mark, a Devanagari word, zero-width space and a horizontal ellipsis.
NON_ASCII_SUFFIXES = ("®", "°", "\xa0", "™", "–", "”", "é", "’", " रंग", "\u200b", "…")
NON_ASCII_SUFFIX_WEIGHTS = (0.40, 0.10, 0.10, 0.08, 0.07, 0.06, 0.05, 0.05, 0.04, 0.03, 0.02)
# Percent-encoded non-ASCII characters in link slugs, such as "360%C2%B0Rotatable".
SLUG_NON_ASCII_SUFFIXES = ("%C2%AE", "%C2%B0", "%E2%84%A2")
SLUG_NON_ASCII_WORD_RATE = 0.004
ASIN_THIRD_CHARS = ("B", "9", "7", "8", "0", "1", "6")
ASIN_THIRD_CHAR_WEIGHTS = (0.27, 0.235, 0.195, 0.18, 0.055, 0.05, 0.015)
IMAGE_ID_PREFIXES = ("61", "71", "51", "81", "41", "31", "91", "21", "A1", "11")
IMAGE_ID_PREFIX_WEIGHTS = (0.31, 0.23, 0.21, 0.10, 0.085, 0.03, 0.024, 0.006, 0.003, 0.002)
ALPHANUMERIC = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
UPPER_ALPHANUMERIC = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


@dataclass
class ReplicaSummary:
    """Counts and timing of one replica run."""

    out_dir: Path
    files: int  # per-sub-category files written, the merged file not included
    rows: int  # data rows over those files
    bytes: int  # bytes over those files
    target_bytes: int  # real bytes of those files, scaled to the row counts written
    merged_path: Path | None
    seconds: float


@dataclass
class _Columns:
    """The CSV columns of all rows in FILES order, except the per-file category columns."""

    names: list[str]
    images: list[str]
    links: list[str]
    ratings: np.ndarray  # object arrays of str, one entry per row
    rating_counts: np.ndarray
    discount_prices: np.ndarray
    actual_prices: np.ndarray


def allocate_rows(total_rows: int) -> np.ndarray:
    """Split ``total_rows`` over FILES in proportion to the real row counts.

    The counts sum to ``total_rows`` exactly, by largest remainder. The 27 header-only
    files get 0 rows. When ``total_rows`` is at least the number of non-empty real files
    (112), each of them gets at least one row, so the header-only files stay the real 27.
    """
    if total_rows < 0:
        raise ValueError(f"total_rows must be 0 or more, got {total_rows}")
    weights = np.array([spec.real_rows for spec in FILES], dtype=np.float64)
    quotas = weights * total_rows / weights.sum()
    counts = np.floor(quotas).astype(np.int64)
    non_empty = weights > 0
    if total_rows >= non_empty.sum():
        counts[non_empty & (counts == 0)] = 1

    shortfall = total_rows - int(counts.sum())
    if shortfall > 0:
        order = np.argsort(-(quotas - counts), kind="stable")
        counts[order[:shortfall]] += 1
    # Raising files to one row can overshoot the total. Then the counts sum to more than the
    # 112 non-empty files, so the largest file has at least two rows and can give one back.
    while shortfall < 0:
        counts[int(np.argmax(counts))] -= 1
        shortfall += 1
    return counts


def csv_field_bytes(value: str) -> int:
    """Return the UTF-8 bytes that ``csv.QUOTE_MINIMAL`` writes for ``value``."""
    size = len(value.encode("utf-8"))
    if "," in value or '"' in value or "\n" in value or "\r" in value:
        size += 2 + value.count('"')
    return size


def format_rupees(paise: int) -> str:
    """Format a price like Amazon India: ``₹999``, ``₹32,999``, ``₹1,26,189``, ``₹284.05``.

    Rupees use Indian digit grouping (the last three digits, then groups of two). A price
    with whole rupees has no decimals. A negative ``paise`` stands for a missing price and
    gives "".
    """
    if paise < 0:
        return ""
    rupees, fraction = divmod(paise, 100)
    digits = str(rupees)
    if len(digits) > 3:
        head, tail = digits[:-3], digits[-3:]
        groups = [tail]
        while len(head) > 2:
            groups.insert(0, head[-2:])
            head = head[:-2]
        groups.insert(0, head)
        digits = ",".join(groups)
    text = "₹" + digits
    if fraction:
        text += f".{fraction:02d}"
    return text


def format_rating_count(code: int) -> str:
    """Format no_of_ratings: a count with thousands separators, or one of the junk values.

    Codes: 1 or more is a count, 0 is empty, -1 is "FREE Delivery by Amazon" and -2 to -4
    are "Only 1 left in stock." to "Only 3 left in stock.".
    """
    if code > 0:
        return f"{code:,}"
    if code == 0:
        return ""
    if code == -1:
        return "FREE Delivery by Amazon"
    return f"Only {-code - 1} left in stock."


def _format_column(
    codes: np.ndarray, formatter: Callable[[int], str]
) -> tuple[np.ndarray, np.ndarray]:
    """Format each distinct code once and return the row strings and their CSV bytes."""
    distinct, inverse = np.unique(codes, return_inverse=True)
    table = [formatter(int(code)) for code in distinct]
    sizes = np.array([csv_field_bytes(text) for text in table], dtype=np.int64)
    return np.array(table, dtype=object)[inverse], sizes[inverse]


def _random_strings(
    rng: np.random.Generator, count: int, length: int, alphabet: str, weights: Sequence[float]
) -> np.ndarray:
    """Draw ``count`` random ASCII strings of ``length`` characters as a numpy byte matrix."""
    codes = np.frombuffer(alphabet.encode("ascii"), dtype=np.uint8)
    probabilities = np.asarray(weights, dtype=np.float64)
    return codes[
        rng.choice(len(codes), size=(count, length), p=probabilities / probabilities.sum())
    ]


def _byte_matrix_to_str(matrix: np.ndarray) -> list[str]:
    width = matrix.shape[1]
    return np.ascontiguousarray(matrix).view(f"S{width}").ravel().astype(f"U{width}").tolist()


def _make_image_ids(rng: np.random.Generator, count: int) -> list[str]:
    """Draw 11-character image ids such as ``31UISB90sYL``.

    The first two characters follow the real mix (``61``, ``71``, ``51`` ...). The next
    eight are letters and digits with about 1.3% each of "+" and "-", and the last is
    "L" (95%) or "S".
    """
    prefixes = np.frombuffer("".join(IMAGE_ID_PREFIXES).encode("ascii"), dtype=np.uint8)
    prefix_index = rng.choice(len(IMAGE_ID_PREFIXES), size=count, p=IMAGE_ID_PREFIX_WEIGHTS)
    middle_weights = [0.974 / len(ALPHANUMERIC)] * len(ALPHANUMERIC) + [0.013, 0.013]
    middle = _random_strings(rng, count, 8, ALPHANUMERIC + "+-", middle_weights)
    last = np.where(rng.random(count) < 0.95, ord("L"), ord("S")).astype(np.uint8)
    matrix = np.empty((count, 11), dtype=np.uint8)
    matrix[:, 0] = prefixes[2 * prefix_index]
    matrix[:, 1] = prefixes[2 * prefix_index + 1]
    matrix[:, 2:10] = middle
    matrix[:, 10] = last
    return _byte_matrix_to_str(matrix)


def _make_asins(rng: np.random.Generator, count: int) -> list[str]:
    """Draw 10-character product ids such as ``B09Y64H8VS``."""
    matrix = np.empty((count, 10), dtype=np.uint8)
    matrix[:, 0] = ord("B")
    matrix[:, 1] = ord("0")
    matrix[:, 2:3] = _random_strings(
        rng, count, 1, "".join(ASIN_THIRD_CHARS), ASIN_THIRD_CHAR_WEIGHTS
    )
    uniform = [1.0] * len(UPPER_ALPHANUMERIC)
    matrix[:, 3:] = _random_strings(rng, count, 7, UPPER_ALPHANUMERIC, uniform)
    return _byte_matrix_to_str(matrix)


def _make_word_pool(rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """Build the words that names and link slugs are made of, with their draw weights."""
    made_up = []
    for syllable_count in rng.integers(2, 5, size=4000).tolist():
        syllables = rng.choice(SYLLABLES, size=syllable_count).tolist()
        made_up.append("".join(syllables).capitalize())

    codes = []
    letters = rng.choice(list(UPPER_ALPHANUMERIC[:26]), size=(2000, 2)).tolist()
    numbers = np.rint(10 ** rng.uniform(0, 4, size=4000)).astype(int).tolist()
    units = rng.choice(MEASURE_UNITS, size=2000).tolist()
    for index in range(2000):
        kind = index % 4
        if kind == 0:
            codes.append(str(numbers[index] % 20 + 1))
        elif kind == 1:
            codes.append(f"{numbers[index]}{units[index]}")
        elif kind == 2:
            codes.append(f"{letters[index][0]}{numbers[index]}")
        else:
            codes.append(f"{letters[index][0]}{letters[index][1]}-{numbers[2000 + index]}")

    words = list(COMMON_WORDS) + made_up + codes
    weights = np.concatenate(
        [
            np.full(len(COMMON_WORDS), COMMON_WORD_SHARE / len(COMMON_WORDS)),
            np.full(len(made_up), MADE_UP_WORD_SHARE / len(made_up)),
            np.full(len(codes), (1 - COMMON_WORD_SHARE - MADE_UP_WORD_SHARE) / len(codes)),
        ]
    )
    return words, weights / weights.sum()


def _make_name_corpus(
    rng: np.random.Generator, words: list[str], weights: np.ndarray, word_count: int
) -> tuple[str, np.ndarray]:
    """Join random words into one long text and return it with each word's start offset.

    Names are slices of this text, so its separators, inch marks and non-ASCII characters
    appear in names at the per-word rates above.
    """
    pieces = np.array(words, dtype=object)[rng.choice(len(words), size=word_count, p=weights)]
    inch_marks = np.flatnonzero(rng.random(word_count) < INCH_MARK_WORD_RATE)
    inch_sizes = rng.choice(["15.6", "32", "43", "55", "6.5", "10", "1.5"], size=len(inch_marks))
    for index, size in zip(inch_marks.tolist(), inch_sizes.tolist()):
        pieces[index] = f'{size}"'
    non_ascii = np.flatnonzero(rng.random(word_count) < NON_ASCII_WORD_RATE)
    suffixes = rng.choice(NON_ASCII_SUFFIXES, size=len(non_ascii), p=NON_ASCII_SUFFIX_WEIGHTS)
    for index, suffix in zip(non_ascii.tolist(), suffixes.tolist()):
        pieces[index] = pieces[index] + suffix

    separators = np.array(NAME_SEPARATORS, dtype=object)[
        rng.choice(len(NAME_SEPARATORS), size=word_count, p=NAME_SEPARATOR_WEIGHTS)
    ]
    pieces = (pieces + separators).tolist()
    lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=word_count)
    starts = np.cumsum(lengths) - lengths
    return "".join(pieces), starts


@dataclass
class _SlugCorpus:
    """Hyphen-joined words that link slugs such as ``Redmi-Power-Black-128GB-Storage`` cut."""

    text: str
    starts: np.ndarray  # offset of each row's first slug word, one distinct word per row
    word_ends: np.ndarray  # offset of the "-" after each word

    def ends(self, drawn_chars: np.ndarray) -> np.ndarray:
        """Return each row's slug end: the first word end at least ``drawn_chars`` in."""
        return self.word_ends[np.searchsorted(self.word_ends, self.starts + drawn_chars)]


def _make_slug_corpus(
    rng: np.random.Generator, words: list[str], weights: np.ndarray, count: int
) -> _SlugCorpus:
    keep = np.array([word.replace("'", "").isalnum() for word in words])
    slug_words = [word for word, kept in zip(words, keep.tolist()) if kept]
    slug_weights = weights[keep]
    word_count = 2 * count + 200
    pieces = np.array(slug_words, dtype=object)[
        rng.choice(len(slug_words), size=word_count, p=slug_weights / slug_weights.sum())
    ]
    encoded = np.flatnonzero(rng.random(word_count) < SLUG_NON_ASCII_WORD_RATE)
    for index, suffix in zip(encoded.tolist(), rng.choice(SLUG_NON_ASCII_SUFFIXES, len(encoded))):
        pieces[index] = f"{pieces[index]}{suffix}"
    pieces = (pieces + "-").tolist()
    lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=word_count)
    word_ends = np.cumsum(lengths) - 1
    word_starts = word_ends - lengths + 1
    # A slug is at most MAX_SLUG_CHARS plus one word long, and each of the last 100 words
    # has at least 2 characters, so no slug starting before them runs past the text.
    # Sorted starts keep the searchsorted queries in ends() nearly sorted, which makes them
    # much faster than queries in random order.
    first_words = np.sort(rng.choice(word_count - 100, size=count, replace=False))
    return _SlugCorpus("".join(pieces), word_starts[first_words], word_ends)


def _round_price_endings(
    rng: np.random.Generator, rupees: np.ndarray, endings: Sequence[tuple[int, float]]
) -> np.ndarray:
    """Replace the last two digits of prices of 100 rupees or more with common endings."""
    values = [ending for ending, _ in endings] + [-1]
    weights = [share for _, share in endings]
    weights.append(1 - sum(weights))
    chosen = np.array(values)[rng.choice(len(values), size=len(rupees), p=weights)]
    chosen = np.where(chosen < 0, rng.integers(0, 100, size=len(rupees)), chosen)
    hundreds = rupees // 100 * 100
    return np.where(rupees >= 100, hundreds + chosen, rupees)


def _make_prices(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw actual and discount prices in paise, with -1 for an empty price."""
    log10_price = rng.normal(ACTUAL_PRICE_LOG10_MEAN, ACTUAL_PRICE_LOG10_SIGMA, size=count)
    actual = np.rint(10 ** np.clip(log10_price, 1.0, 6.0)).astype(np.int64)
    actual = _round_price_endings(rng, actual, ACTUAL_PRICE_ENDINGS)

    # Discounts: the real discount / actual ratio has quartiles 0.33, 0.49 and 0.69.
    ratio = 0.02 + 0.96 * rng.beta(2.0, 2.0, size=count)
    discount = np.rint(actual * ratio).astype(np.int64)
    discount = _round_price_endings(rng, discount, DISCOUNT_PRICE_ENDINGS)
    discount = np.clip(np.minimum(discount, actual - 1), 1, None)

    actual_paise = actual * 100
    discount_paise = discount * 100
    with_paise = rng.random(count) < DISCOUNT_PAISE_RATE
    paise = rng.integers(1, 100, size=count)
    discount_paise = np.where(with_paise & (discount > 1), discount_paise - paise, discount_paise)
    with_paise = rng.random(count) < ACTUAL_PAISE_RATE
    actual_paise = np.where(with_paise, actual_paise + paise, actual_paise)

    missing = rng.random(count)
    discount_paise[missing < EMPTY_DISCOUNT_RATE + EMPTY_PRICES_RATE] = -1
    actual_paise[missing < EMPTY_PRICES_RATE] = -1
    return actual_paise, discount_paise


def _make_ratings(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw ratings as indices into ["", *RATING_VALUES, "Get"] and rating-count codes.

    Rating-count codes are those of ``format_rating_count``.
    """
    weights = np.asarray(RATING_PER_MILLE, dtype=np.float64)
    ratings = 1 + rng.choice(len(RATING_VALUES), size=count, p=weights / weights.sum())
    log10_count = rng.normal(RATING_COUNT_LOG10_MEAN, RATING_COUNT_LOG10_SIGMA, size=count)
    rating_counts = np.floor(10 ** np.clip(log10_count, 0, RATING_COUNT_LOG10_MAX)).astype(np.int64)

    kind = rng.random(count)
    empty = kind < EMPTY_RATINGS_RATE
    free_delivery = (kind >= EMPTY_RATINGS_RATE) & (
        kind < EMPTY_RATINGS_RATE + GET_FREE_DELIVERY_RATE
    )
    only_left = (kind >= EMPTY_RATINGS_RATE + GET_FREE_DELIVERY_RATE) & (
        kind < EMPTY_RATINGS_RATE + GET_FREE_DELIVERY_RATE + GET_ONLY_LEFT_RATE
    )
    ratings[empty] = 0
    rating_counts[empty] = 0
    ratings[free_delivery | only_left] = len(RATING_VALUES) + 1
    rating_counts[free_delivery] = -1
    rating_counts[only_left] = -1 - rng.integers(1, 4, size=int(only_left.sum()))
    return ratings, rating_counts


def _choose_sources(
    rng: np.random.Generator, file_of_row: np.ndarray, main_of_row: np.ndarray
) -> np.ndarray:
    """Pick, for each row, the row whose product it lists: itself or a duplicated product.

    A cross-file duplicate copies a row of another file, drawn from the same main_category
    with probability SAME_MAIN_CATEGORY_SHARE where that main_category has another
    non-empty file, else from any other file. A within-file duplicate copies another row
    of its own file. Sources are always rows that list their own product, so every
    duplicated image URL also appears in its source row.
    """
    count = len(file_of_row)
    source = np.arange(count)
    draw = rng.random(count)
    cross_file = draw < CROSS_FILE_DUPLICATE_RATE
    within_file = ~cross_file & (draw < CROSS_FILE_DUPLICATE_RATE + WITHIN_FILE_DUPLICATE_RATE)
    originals = np.flatnonzero(~(cross_file | within_file))
    if originals.size == 0:
        return source

    # originals is sorted by row, so each file's originals form one slice of it.
    file_lo = np.searchsorted(file_of_row[originals], np.arange(len(FILES)), side="left")
    file_hi = np.searchsorted(file_of_row[originals], np.arange(len(FILES)), side="right")
    by_main = originals[np.argsort(main_of_row[originals], kind="stable")]
    main_count = int(main_of_row.max()) + 1
    main_lo = np.searchsorted(main_of_row[by_main], np.arange(main_count), side="left")
    main_hi = np.searchsorted(main_of_row[by_main], np.arange(main_count), side="right")

    def draw_from(pool: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        offset = np.floor(rng.random(len(lo)) * (hi - lo)).astype(np.int64)
        return pool[np.minimum(lo + offset, len(pool) - 1)]

    # Within-file duplicates: any original row of the same file.
    rows = np.flatnonzero(within_file)
    lo, hi = file_lo[file_of_row[rows]], file_hi[file_of_row[rows]]
    has_original = hi > lo
    source[rows[has_original]] = draw_from(originals, lo[has_original], hi[has_original])

    # Cross-file duplicates: a drawn row in the duplicate's own file is drawn again, up to
    # 20 times. Rows still without a source after that list their own product.
    def assign_from_other_files(pending: np.ndarray, pick: Callable) -> np.ndarray:
        for _ in range(20):
            if pending.size == 0:
                break
            candidates = pick(pending)
            accepted = file_of_row[candidates] != file_of_row[pending]
            source[pending[accepted]] = candidates[accepted]
            pending = pending[~accepted]
        return pending

    def pick_same_main(pending: np.ndarray) -> np.ndarray:
        groups = main_of_row[pending]
        return draw_from(by_main, main_lo[groups], main_hi[groups])

    def pick_any(pending: np.ndarray) -> np.ndarray:
        return originals[rng.integers(0, len(originals), size=len(pending))]

    rows = np.flatnonzero(cross_file)
    same_main = rng.random(len(rows)) < SAME_MAIN_CATEGORY_SHARE
    # Where the row's own file is the only one of its main_category, no draw succeeds, and
    # those rows take a source from any other file.
    left = assign_from_other_files(rows[same_main], pick_same_main)
    assign_from_other_files(np.concatenate([left, rows[~same_main]]), pick_any)
    return source


def _name_lengths(
    mean_chars: np.ndarray, normal_draws: np.ndarray, uniform_draws: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Turn fixed random draws into name lengths around a per-row mean, in characters.

    In the real files, a file with longer names has both more truncated names and longer
    untruncated ones. Per file, the untruncated mean is about min(m, 28 + 0.55 m) for a
    file mean of m characters, and the truncated share makes up the rest of the mean.
    Returns the lengths (125 for truncated names) and the truncated mask.
    """
    full_mean = np.minimum(mean_chars, 28 + 0.55 * mean_chars)
    truncated_share = (mean_chars - full_mean) / (TRUNCATED_NAME_CHARS - full_mean)
    truncated = uniform_draws < np.clip(truncated_share, 0.0, 0.95)
    spread = np.exp(NAME_LENGTH_SIGMA * normal_draws - NAME_LENGTH_SIGMA**2 / 2)
    lengths = np.clip(np.rint(full_mean * spread), MIN_NAME_CHARS, MAX_FULL_NAME_CHARS)
    lengths = np.where(truncated, TRUNCATED_NAME_CHARS, lengths).astype(np.int64)
    return lengths, truncated


def _cut_names(
    corpus: str, starts: np.ndarray, lengths: np.ndarray, truncated: np.ndarray
) -> list[str]:
    names = []
    for start, length, cut in zip(starts.tolist(), lengths.tolist(), truncated.tolist()):
        if cut:
            names.append(corpus[start : start + TRUNCATED_NAME_PREFIX_CHARS].rstrip(" ") + "...")
        else:
            names.append(corpus[start : start + length].rstrip(" ,|-\xa0\u200b"))
    return names


def _format_link_tail(asin: str, position: int, query_id: int, store: str, sponsored: bool) -> str:
    """Format a product link after its slug: the product id, search position and query time."""
    tail = f"/dp/{asin}/ref=sr_1_{position}"
    if not store:
        return f"{tail}?qid={query_id}&sr=8-{position}"
    if sponsored:
        return (
            f"{tail}_mod_primary_new?qid={query_id}&s={store}"
            f"&sbo={SPONSORED_LINK_TOKEN}&sr=1-{position}"
        )
    return f"{tail}?qid={query_id}&s={store}&sr=1-{position}"


def _per_file_mean(values: np.ndarray, file_of_row: np.ndarray, counts: np.ndarray) -> np.ndarray:
    sums = np.bincount(file_of_row, weights=values, minlength=len(FILES))
    return sums / np.maximum(counts, 1)


def _solve_per_file_means(
    target: np.ndarray,
    realise: Callable[[np.ndarray], np.ndarray],
    low: float,
    high: float,
) -> np.ndarray:
    """Find per-file model means whose realised per-file means come close to ``target``.

    ``realise`` maps model means to realised means. Clipping and duplicated rows, which
    copy lengths across files, make that map nonlinear, so a few fixed-point steps are
    taken in place of a closed form.
    """
    model = np.clip(target, low, high)
    for _ in range(8):
        model = np.clip(model + target - realise(model), low, high)
    return model


def generate_replica(
    total_rows: int = REAL_TOTAL_ROWS, seed: int = 0
) -> tuple[np.ndarray, _Columns]:
    """Generate every row of a replica in memory; return the per-file counts and the columns.

    Rows are in FILES order. Names get each file's real mean length, and link slugs then
    fill the rest of the real bytes per row, so file sizes come close to the real ones.
    NOTE: numpy does not promise the same random streams across releases for all the
    Generator methods used here, so the output is repeatable for one numpy version.
    """
    rng = np.random.default_rng(seed)
    counts = allocate_rows(total_rows)
    row_count = int(counts.sum())
    file_of_row = np.repeat(np.arange(len(FILES)), counts)
    row_in_file = np.arange(row_count) - (np.cumsum(counts) - counts)[file_of_row]
    main_categories = sorted({spec.main_category for spec in FILES})
    main_of_file = np.array([main_categories.index(spec.main_category) for spec in FILES])
    main_of_row = main_of_file[file_of_row]

    # One product per row. Duplicated rows then take another row's product via source.
    words, word_weights = _make_word_pool(rng)
    image_ids = _make_image_ids(rng, row_count)
    png = rng.random(row_count) < PNG_IMAGE_RATE
    asins = _make_asins(rng, row_count)
    slug_corpus = _make_slug_corpus(rng, words, word_weights, row_count)
    slug_draws = rng.standard_normal(row_count)
    ratings, rating_counts = _make_ratings(rng, row_count)
    actual_prices, discount_prices = _make_prices(rng, row_count)
    corpus, word_starts = _make_name_corpus(rng, words, word_weights, 3 * row_count + 200)
    # The last 200 words are never a first word, so every name ends inside the corpus.
    name_starts = word_starts[rng.choice(len(word_starts) - 200, size=row_count, replace=False)]
    normal_draws = rng.standard_normal(row_count)
    uniform_draws = rng.random(row_count)
    source = _choose_sources(rng, file_of_row, main_of_row)
    duplicated = source != np.arange(row_count)

    # Image URLs: each result page has one URL form, and exact duplicates keep the form
    # of their source. The others share only the image id.
    pages = -(-counts // PAGE_ROWS)
    page_of_row = (np.cumsum(pages) - pages)[file_of_row] + row_in_file // PAGE_ROWS
    page_form = rng.choice(
        len(IMAGE_URL_PREFIXES), size=int(pages.sum()), p=IMAGE_URL_PREFIX_WEIGHTS
    )
    own_form = page_form[page_of_row]
    exact_url = duplicated & (rng.random(row_count) < EXACT_URL_SHARE)
    form = np.where(exact_url, own_form[source], own_form)
    suffixes = np.where(png[source], IMAGE_URL_SUFFIX[:-4] + ".png", IMAGE_URL_SUFFIX)
    images = [
        IMAGE_URL_PREFIXES[url_form] + image_ids[product] + suffix
        for url_form, product, suffix in zip(form.tolist(), source.tolist(), suffixes.tolist())
    ]

    # Links: the position counts from 1 in each file, and each page has its own query time.
    stores = [FILES[index].search_store for index in file_of_row.tolist()]
    query_ids = FIRST_QUERY_ID + 2 * page_of_row + 60 * file_of_row
    sponsored = rng.random(row_count) < SPONSORED_LINK_RATE
    link_tails = [
        _format_link_tail(asins[product], position, query_id, store, is_sponsored)
        for product, position, query_id, store, is_sponsored in zip(
            source.tolist(),
            (row_in_file + 1).tolist(),
            query_ids.tolist(),
            stores,
            sponsored.tolist(),
        )
    ]

    rating_table = ["", *RATING_VALUES, "Get"]
    rating_column, rating_bytes = _format_column(ratings[source], rating_table.__getitem__)
    count_column, count_bytes = _format_column(rating_counts[source], format_rating_count)
    discount_column, discount_bytes = _format_column(discount_prices[source], format_rupees)
    actual_column, actual_bytes = _format_column(actual_prices[source], format_rupees)

    # Names: solve the length model so each file's mean matches the real one.
    target_name_chars = np.array([spec.name_mean_chars for spec in FILES])

    def realise_name_chars(model: np.ndarray) -> np.ndarray:
        lengths, _ = _name_lengths(model[file_of_row], normal_draws, uniform_draws)
        return _per_file_mean(lengths[source], file_of_row, counts)

    name_model = _solve_per_file_means(
        target_name_chars, realise_name_chars, MIN_NAME_CHARS, TRUNCATED_NAME_CHARS
    )
    lengths, truncated = _name_lengths(name_model[file_of_row], normal_draws, uniform_draws)
    names = _cut_names(corpus, name_starts[source], lengths[source], truncated[source])
    name_bytes = np.fromiter(map(csv_field_bytes, names), dtype=np.int64, count=row_count)

    # Slugs fill the rest of each file's real bytes per row. All other fields are ASCII
    # without commas or quotes except those measured by csv_field_bytes.
    category_bytes = np.array(
        [csv_field_bytes(spec.main_category) + csv_field_bytes(spec.sub_category) for spec in FILES]
    )
    separator_bytes = len(COLUMNS) - 1 + 2  # commas and CRLF
    row_bytes_without_slug = (
        name_bytes
        + category_bytes[file_of_row]
        + np.fromiter(map(len, images), dtype=np.int64, count=row_count)
        + len(LINK_PREFIX)
        + np.fromiter(map(len, link_tails), dtype=np.int64, count=row_count)
        + rating_bytes
        + count_bytes
        + discount_bytes
        + actual_bytes
        + separator_bytes
    )
    real_rows = np.array([max(spec.real_rows, 1) for spec in FILES])
    real_row_bytes = np.array([spec.real_bytes - HEADER_BYTES for spec in FILES]) / real_rows
    slug_budget = real_row_bytes - _per_file_mean(row_bytes_without_slug, file_of_row, counts)

    def slug_lengths(model: np.ndarray) -> np.ndarray:
        drawn = model[file_of_row] * (1 + SLUG_LENGTH_SPREAD * slug_draws)
        drawn = np.clip(np.rint(drawn), MIN_SLUG_CHARS, MAX_SLUG_CHARS).astype(np.int64)
        return slug_corpus.ends(drawn) - slug_corpus.starts

    slug_model = _solve_per_file_means(
        np.clip(slug_budget, MIN_SLUG_MEAN_CHARS, MAX_SLUG_MEAN_CHARS),
        lambda model: _per_file_mean(slug_lengths(model)[source], file_of_row, counts),
        MIN_SLUG_CHARS,
        MAX_SLUG_CHARS,
    )
    slug_starts = slug_corpus.starts[source]
    slug_ends = slug_starts + slug_lengths(slug_model)[source]
    links = [
        LINK_PREFIX + slug_corpus.text[start:end] + tail
        for start, end, tail in zip(slug_starts.tolist(), slug_ends.tolist(), link_tails)
    ]

    columns = _Columns(
        names=names,
        images=images,
        links=links,
        ratings=rating_column,
        rating_counts=count_column,
        discount_prices=discount_column,
        actual_prices=actual_column,
    )
    return counts, columns


def target_bytes(counts: np.ndarray) -> int:
    """Return the real bytes of the 139 files, scaled per file to ``counts`` rows."""
    total = 0.0
    for spec, count in zip(FILES, counts.tolist()):
        total += HEADER_BYTES
        if spec.real_rows:
            total += (spec.real_bytes - HEADER_BYTES) * count / spec.real_rows
    return round(total)


def write_replica(
    out_dir: str | Path, total_rows: int = REAL_TOTAL_ROWS, seed: int = 0, merged: bool = False
) -> ReplicaSummary:
    """Write the 139 replica CSV files, and the merged file if ``merged``, into ``out_dir``.

    Each file is written to a temporary file and renamed into place. The merged
    ``Amazon-Products.csv`` concatenates the rows of all files in FILES order, after a
    leading unnamed index column that counts from 0, as pandas ``to_csv`` writes it.
    """
    started = time.perf_counter()
    out_path = Path(out_dir)
    logger.info(
        "Generating a replica: %d rows in %d files under %s (seed %d, merged file: %s)",
        total_rows,
        len(FILES),
        out_path,
        seed,
        "yes" if merged else "no",
    )
    counts, columns = generate_replica(total_rows, seed)
    out_path.mkdir(parents=True, exist_ok=True)

    merged_path = out_path / MERGED_FILE_NAME if merged else None
    with contextlib.ExitStack() as stack:
        merged_writer = None
        if merged_path is not None:
            merged_tmp = stack.enter_context(atomic_path(merged_path))
            merged_handle = stack.enter_context(merged_tmp.open("w", encoding="utf-8", newline=""))
            merged_writer = csv.writer(merged_handle, lineterminator="\r\n")
            merged_writer.writerow(["", *COLUMNS])

        first_row = 0
        for spec, count in zip(FILES, counts.tolist()):
            rows = _file_rows(spec, columns, first_row, first_row + count)
            with atomic_path(out_path / spec.file_name) as tmp:
                with tmp.open("w", encoding="utf-8", newline="") as handle:
                    writer = csv.writer(handle, lineterminator="\r\n")
                    writer.writerow(COLUMNS)
                    writer.writerows(rows)
            if merged_writer is not None:
                merged_writer.writerows(
                    (index, *row) for index, row in enumerate(rows, start=first_row)
                )
            logger.debug("Wrote %s: %d rows", spec.file_name, count)
            first_row += count

    written_bytes = sum((out_path / spec.file_name).stat().st_size for spec in FILES)
    summary = ReplicaSummary(
        out_dir=out_path,
        files=len(FILES),
        rows=first_row,
        bytes=written_bytes,
        target_bytes=target_bytes(counts),
        merged_path=merged_path,
        seconds=time.perf_counter() - started,
    )
    logger.info(
        "Wrote %d files with %d rows and %d bytes (%.4f of the real bytes for these row "
        "counts)%s in %.1f s",
        summary.files,
        summary.rows,
        summary.bytes,
        summary.bytes / summary.target_bytes,
        f", plus {MERGED_FILE_NAME}" if merged_path is not None else "",
        summary.seconds,
    )
    return summary


def _file_rows(spec: FileSpec, columns: _Columns, start: int, stop: int) -> list[tuple]:
    size = stop - start
    return list(
        zip(
            columns.names[start:stop],
            [spec.main_category] * size,
            [spec.sub_category] * size,
            columns.images[start:stop],
            columns.links[start:stop],
            columns.ratings[start:stop].tolist(),
            columns.rating_counts[start:stop].tolist(),
            columns.discount_prices[start:stop].tolist(),
            columns.actual_prices[start:stop].tolist(),
        )
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.make_replica",
        description=(
            "Write a replica of the 139 per-sub-category CSV files of the Kaggle Amazon "
            "Products Dataset 2023, with the real file names, header, encoding, row counts "
            "and close to the real sizes, filled with random values of the real shape."
        ),
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder to write the CSV files into, created if missing (required, no default)",
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=REAL_TOTAL_ROWS,
        help=(
            "total data rows over the 139 files, split in proportion to the real per-file "
            "counts (default: %(default)s, the real total)"
        ),
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random generator (default: %(default)s)"
    )
    parser.add_argument(
        "--merged",
        action=argparse.BooleanOptionalAction,
        default=False,
        help=(
            f"also write the merged {MERGED_FILE_NAME}, all rows after a leading unnamed "
            "index column (default: --no-merged)"
        ),
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log each file written (default: off)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.rows < 1:
        build_parser().error(f"--rows must be 1 or more, got {args.rows}")
    if args.seed < 0:
        build_parser().error(f"--seed must be 0 or more, got {args.seed}")
    write_replica(args.out, total_rows=args.rows, seed=args.seed, merged=args.merged)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
