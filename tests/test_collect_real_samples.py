"""The data and collection stages on the real sample photos, served from 127.0.0.1."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import pytest

from data.scripts import extract, merge, relabel, validate
from data.scripts.fetch import FetchOptions, run_fetch
from data.scripts.httpclient import HttpConfig
from data.scripts.images import ImageCheckConfig
from tests.fault_server import FaultServer
from tests.helpers import HEADER, SAMPLES, requires_samples

PHOTOS = SAMPLES / "product-images"
CATEGORY_OF_FOLDER = {
    "beauty": "beauty & health",
    "electronics": "tv, audio & cameras",
    "fashion": "women's clothing",
    "home": "home & kitchen",
    "home-living": "home & kitchen",
    "nutrition": "grocery & gourmet foods",
}
HTTP = HttpConfig(
    concurrency=8,
    per_host=8,
    request_timeout=20,
    max_attempts=2,
    backoff_base=0.01,
    allowed_networks=("127.0.0.1/32",),
)

pytestmark = [pytest.mark.slow, pytest.mark.network_local, requires_samples(PHOTOS)]


@pytest.fixture(scope="module")
def server():
    instance = FaultServer()
    instance.add_static("/photos", str(PHOTOS))
    instance.start()
    yield instance
    instance.stop()


def write_catalogue(raw: Path, server: FaultServer) -> int:
    """List every sample photo in the dataset's CSV format, plus rows that must fail."""
    raw.mkdir(parents=True)
    with open(PHOTOS / "manifest.csv", newline="", encoding="utf-8") as handle:
        photos = list(csv.DictReader(handle))
    lines = []
    for photo in photos:
        url = server.url("/photos/" + quote(photo["path"]))
        category = CATEGORY_OF_FOLDER[photo["category"]]
        lines.append(
            [
                "Sample " + photo["path"],
                category,
                photo["category"],
                url,
                "",
                "4.1",
                "10",
                "100",
                "200",
            ]
        )
    lines.append(["Gone", "music", "Music", server.url("/status/404"), "", "", "", "", ""])
    lines.append(["Page", "music", "Music", server.url("/html"), "", "", "", "", ""])
    with open(raw / "Samples.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(HEADER.split(","))
        writer.writerows(lines)
    return len(photos)


def test_real_photos_through_prepare_validate_fetch(server, tmp_path):
    photos = write_catalogue(tmp_path / "raw", server)
    out = tmp_path / "processed"
    extract.run_extract(tmp_path / "raw", out)
    merge.run_merge(out)
    relabel.run_relabel(out, relabel.DEFAULT_MAPPING)

    survey = validate.run_validate(out, HTTP)
    stats = run_fetch(
        FetchOptions(
            processed_dir=out,
            input_path=out / "products.parquet",
            http=HTTP,
            image=ImageCheckConfig(image_size=256),
        )
    )
    manifest = pd.read_parquet(out / "manifest.parquet")

    assert survey["urls"] == photos + 2
    assert survey["reachable"] == photos + 1  # the HTML page answers 200 to HEAD
    assert len(manifest) == photos + 2
    assert sum(stats["status_counts"].values()) == len(manifest)
    assert stats["status_counts"]["http_error"] == 1
    assert stats["status_counts"]["not_an_image"] == 1
    assert stats["status_counts"]["ok"] + stats["status_counts"].get("duplicate", 0) == photos
    stored = list((out / "images").rglob("*.jpg"))
    assert len(stored) == stats["status_counts"]["ok"]
    assert set(manifest.loc[manifest.status == "ok", "label"]) == {
        "other",
        "electronics_and_appliances",
        "fashion",
        "household_essentials",
    }
    ok = manifest[manifest.status == "ok"]
    assert (ok[["width", "height"]].max(axis=1) <= 256).all()
    assert json.loads((out / "stats" / "fetch.json").read_text())["rows"] == len(manifest)
