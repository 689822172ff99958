"""End-to-end tests of the fetch stage against a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.scripts import fetch, httpclient
from data.scripts.fetch import FetchOptions, parse_shard, run_fetch
from data.scripts.httpclient import HttpConfig
from data.scripts.images import ImageCheckConfig
from data.scripts.manifest import read_manifest
from data.scripts.merge import url_key
from data.scripts.urls import normalise_url
from tests.fault_server import FaultServer
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.network_local

LOCAL_HTTP = HttpConfig(
    concurrency=8,
    per_host=8,
    connect_timeout=2,
    read_timeout=2,
    request_timeout=4,
    max_attempts=2,
    backoff_base=0.01,
    backoff_max=0.05,
    allowed_networks=("127.0.0.1/32",),
)
COMPARED = ["key", "url", "label", "status", "http_status", "sha256", "path", "duplicate_of"]


def make_jpeg(seed: int, size: tuple[int, int] = (96, 128)) -> bytes:
    """A JPEG whose content depends on ``seed``: a coloured rectangle on noise."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
    colour = [int(c) for c in rng.integers(0, 255, 3)]
    cv2.rectangle(image, (10, 10), (size[1] // 2, size[0] // 2), colour, -1)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


@pytest.fixture(scope="module")
def server():
    instance = FaultServer().start()
    for i in range(60):
        instance.add_image(f"p{i}.jpg", make_jpeg(i))
    instance.add_image("same.jpg", make_jpeg(1000))
    yield instance
    instance.stop()


def key_of(url: str) -> str:
    """The key the merge stage gives ``url``."""
    return url_key(normalise_url(url))


def write_products(path: Path, rows: list[tuple[str, str]], keys: list[str] | None = None) -> Path:
    """Write a products table of (url, label) pairs as the merge and relabel stages do."""
    keys = keys or [key_of(url) for url, _ in rows]
    table = pa.table(
        {
            "key": keys,
            "image_url": [normalise_url(url) for url, _ in rows],
            "label": [label for _, label in rows],
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def options_for(processed: Path, **overrides) -> FetchOptions:
    base = FetchOptions(
        processed_dir=processed,
        input_path=processed / "products.parquet",
        http=LOCAL_HTTP,
        image=ImageCheckConfig(),
    )
    return replace(base, **overrides)


def manifest_frame(processed: Path, name: str = "manifest.parquet") -> pd.DataFrame:
    return pd.read_parquet(processed / name).set_index("key")


def test_fetch_outcomes_and_manifest(server, tmp_path):
    html = server.url("/html")
    rows = [
        (server.url("/img/p0.jpg"), "fashion"),
        (server.url("/img/p1.jpg"), "stores"),
        (server.url("/status/404"), "fashion"),
        (html, "fashion"),
        (server.url("/fake-jpeg"), "fashion"),
        (server.url("/big/300000"), "fashion"),
        (server.url("/robots/noai/p2.jpg"), "fashion"),
        (server.url("/img/same.jpg"), "fashion"),
        (server.url("/redirect-chain/1/same.jpg"), "stores"),
        (server.url(f"/redirect-to?target=http://[::1]:{server.port}/img/p3.jpg"), "fashion"),
        (server.url("/trickle/0.4/p4.jpg"), "fashion"),
    ]
    write_products(tmp_path / "products.parquet", rows)
    http = replace(LOCAL_HTTP, max_bytes=200_000, request_timeout=1.0, max_attempts=1)

    stats = run_fetch(options_for(tmp_path, http=http))
    manifest = manifest_frame(tmp_path)
    status_of = {url: manifest.loc[key_of(url), "status"] for url, _ in rows}

    assert status_of[rows[0][0]] == "ok"
    assert status_of[rows[1][0]] == "ok"
    assert status_of[rows[2][0]] == "http_error"
    assert status_of[html] == "not_an_image"
    assert status_of[rows[4][0]] == "not_an_image"
    assert status_of[rows[5][0]] == "too_large"
    assert status_of[rows[6][0]] == "robots_disallowed"
    assert sorted([status_of[rows[7][0]], status_of[rows[8][0]]]) == ["duplicate", "ok"]
    assert status_of[rows[9][0]] == "address_refused"
    assert status_of[rows[10][0]] == "timeout"
    assert len(manifest) == len(rows)
    assert sum(stats["status_counts"].values()) == len(rows)
    assert stats["duplicate_label_conflicts"] == 1


def test_fetch_stores_decodable_jpegs_per_label(server, tmp_path):
    rows = [(server.url(f"/img/p{i}.jpg"), "fashion" if i % 2 else "stores") for i in range(6)]
    write_products(tmp_path / "products.parquet", rows)

    run_fetch(options_for(tmp_path))
    manifest = manifest_frame(tmp_path)

    for url, label in rows:
        row = manifest.loc[key_of(url)]
        path = tmp_path / row["path"]
        assert row["path"] == f"images/{label}/{key_of(url)}.jpg"
        assert path.exists()
        image = cv2.imread(str(path))
        assert image.shape == (96, 128, 3)
        assert row["width"] == 128
        assert row["height"] == 96
        assert row["bytes"] > 0
        assert len(row["sha256"]) == 64
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["fashion", "stores"]


def test_fetch_duplicate_goes_to_smallest_key(server, tmp_path):
    urls = [server.url(f"/redirect-chain/{hops}/same.jpg") for hops in range(4)]
    write_products(tmp_path / "products.parquet", [(u, "fashion") for u in urls])

    run_fetch(options_for(tmp_path))
    manifest = manifest_frame(tmp_path)
    keys = sorted(key_of(u) for u in urls)

    assert manifest.loc[keys[0], "status"] == "ok"
    assert (manifest.loc[keys[1:], "status"] == "duplicate").all()
    assert (manifest.loc[keys[1:], "duplicate_of"] == keys[0]).all()
    assert len(list((tmp_path / "images" / "fashion").iterdir())) == 1


def test_fetch_resize_mode_and_size(server, tmp_path):
    rows = [(server.url("/img/p5.jpg"), "fashion")]
    write_products(tmp_path / "products.parquet", rows)
    image = ImageCheckConfig(image_size=64, resize_mode="centre-crop")

    run_fetch(options_for(tmp_path, image=image))
    row = manifest_frame(tmp_path).iloc[0]

    assert (row["width"], row["height"]) == (64, 64)
    assert (row["original_width"], row["original_height"]) == (128, 96)
    assert cv2.imread(str(tmp_path / row["path"])).shape == (64, 64, 3)


def test_fetch_rejects_unsafe_label_and_key(server, tmp_path):
    url = server.url("/img/p6.jpg")
    rows = [(url, "../../escape"), (server.url("/img/p7.jpg"), "fashion")]
    keys = [key_of(url), "../../etc/passwd"]
    write_products(tmp_path / "products.parquet", rows, keys)

    run_fetch(options_for(tmp_path))
    manifest = pd.read_parquet(tmp_path / "manifest.parquet")

    assert manifest["status"].tolist().count("invalid_input") == 2
    assert not (tmp_path.parent / "escape").exists()
    assert list(tmp_path.rglob("*.jpg")) == []


def test_fetch_rerun_skips_done_urls(server, tmp_path):
    rows = [(server.url(f"/img/p{i}.jpg"), "fashion") for i in range(10, 20)]
    write_products(tmp_path / "products.parquet", rows)
    run_fetch(options_for(tmp_path, limit=4))
    before = len(server.requests)

    stats = run_fetch(options_for(tmp_path))

    assert stats["run"]["urls"] == 6
    assert len(server.requests) - before == 6
    assert stats["status_counts"] == {"ok": 10}


def test_fetch_rerun_retries_transient_failures(server, tmp_path):
    url = server.url("/retry-after/none/1/p20.jpg")
    write_products(tmp_path / "products.parquet", [(url, "fashion")])
    http = replace(LOCAL_HTTP, max_attempts=1)

    first = run_fetch(options_for(tmp_path, http=http))
    second = run_fetch(options_for(tmp_path, http=http))

    assert first["status_counts"] == {"http_error": 1}
    assert second["status_counts"] == {"ok": 1}


def test_fetch_shards_split_and_merge(server, tmp_path):
    rows = [(server.url(f"/img/p{i}.jpg"), "fashion") for i in range(20, 32)]
    write_products(tmp_path / "products.parquet", rows)

    counts = []
    for index in range(2):
        stats = run_fetch(options_for(tmp_path, shard=(index, 2)))
        counts.append(stats["run"]["urls"])
    result = fetch.merge_shard_manifests(tmp_path)
    manifest = manifest_frame(tmp_path)

    assert sum(counts) == len(rows)
    assert min(counts) > 0
    assert result["rows"] == len(rows)
    assert set(manifest.index) == {key_of(url) for url, _ in rows}
    assert (manifest["status"] == "ok").all()


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), ("", None), ("0/1", (0, 1)), ("3/4", (3, 4))]
)
def test_parse_shard_valid(value, expected):
    assert parse_shard(value) == expected


@pytest.mark.parametrize("value", ["4/4", "-1/2", "1", "a/b", "1/0"])
def test_parse_shard_invalid(value):
    with pytest.raises(ValueError, match="SHARD"):
        parse_shard(value)


def test_fetch_bad_settings_fail_before_requests(server, tmp_path):
    write_products(tmp_path / "products.parquet", [(server.url("/img/p0.jpg"), "fashion")])
    before = len(server.requests)

    with pytest.raises(ValueError, match="concurrency"):
        run_fetch(options_for(tmp_path, http=replace(LOCAL_HTTP, concurrency=0)))
    with pytest.raises(ValueError, match="resize_mode"):
        run_fetch(options_for(tmp_path, image=ImageCheckConfig(resize_mode="stretch")))

    assert len(server.requests) == before
    assert not (tmp_path / "manifest.parquet").exists()


def test_fetch_missing_input_names_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="make prepare"):
        run_fetch(options_for(tmp_path))


# ---- interruption: SIGKILL and SIGTERM on a real subprocess ----


def fetch_command(processed: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "data.scripts.fetch",
        "--processed-dir",
        str(processed),
        "--allow-network",
        "127.0.0.1/32",
        "--concurrency",
        "4",
        "--per-host",
        "4",
        "--manifest-flush-rows",
        "3",
        *extra,
    ]


def start_fetch(processed: Path) -> subprocess.Popen:
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        fetch_command(processed),
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_for_images(processed: Path, count: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if len(list((processed / "images").rglob("*.jpg"))) >= count:
            return
        if process.poll() is not None:
            return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} images after 60 s")


def manifest_rows(processed: Path) -> pd.DataFrame:
    frame = pd.read_parquet(processed / "manifest.parquet")
    return frame[COMPARED].sort_values("key").reset_index(drop=True)


def stored_files(processed: Path) -> dict[str, bytes]:
    return {
        p.relative_to(processed).as_posix(): p.read_bytes()
        for p in sorted((processed / "images").rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_fetch_killed_at_several_points_matches_clean_run(server, tmp_path):
    rows = [(server.url(f"/slow/60/p{i}.jpg"), "fashion" if i % 3 else "stores") for i in range(40)]
    rows += [(server.url("/slow/60/same.jpg"), "stores"), (server.url("/img/same.jpg"), "fashion")]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for folder in (clean, killed):
        write_products(folder / "products.parquet", rows)

    subprocess.run(
        fetch_command(clean), cwd=REPO_ROOT, check=True, capture_output=True, timeout=120
    )
    for stored in (5, 15, 30):
        process = start_fetch(killed)
        wait_for_images(killed, stored, process)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    partial = read_manifest(killed / "manifest.parquet")
    assert 0 < partial.num_rows < len(rows)  # the kills did land in the middle of the run
    subprocess.run(
        fetch_command(killed), cwd=REPO_ROOT, check=True, capture_output=True, timeout=120
    )

    pd.testing.assert_frame_equal(manifest_rows(killed), manifest_rows(clean))
    assert stored_files(killed) == stored_files(clean)
    assert not list(killed.glob("*.parts"))


@pytest.mark.slow
def test_fetch_sigterm_flushes_and_resumes(server, tmp_path):
    rows = [(server.url(f"/slow/100/p{i}.jpg"), "fashion") for i in range(40, 60)]
    write_products(tmp_path / "products.parquet", rows)

    process = start_fetch(tmp_path)
    wait_for_images(tmp_path, 6, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    flushed = read_manifest(tmp_path / "manifest.parquet")

    assert process.returncode == 130
    assert b"run the same command again" in stderr
    assert flushed.num_rows >= 3
    assert not list(tmp_path.rglob(".*.tmp"))

    before = len(server.requests)
    subprocess.run(
        fetch_command(tmp_path), cwd=REPO_ROOT, check=True, capture_output=True, timeout=120
    )
    assert (manifest_rows(tmp_path)["status"] == "ok").all()
    assert len(server.requests) - before <= len(rows) - flushed.num_rows


# ---- inputs found by trying to break the stage ----


def test_fetch_second_run_on_same_folder_refused(server, tmp_path):
    write_products(tmp_path / "products.parquet", [(server.url("/img/p0.jpg"), "fashion")])

    with fetch.run_lock(tmp_path / "manifest.parquet"):
        with pytest.raises(RuntimeError, match="another fetch"):
            run_fetch(options_for(tmp_path))


def test_merge_shards_refuses_mixed_splits(server, tmp_path):
    rows = [(server.url(f"/img/p{i}.jpg"), "fashion") for i in range(4)]
    write_products(tmp_path / "products.parquet", rows)
    run_fetch(options_for(tmp_path, shard=(0, 2)))
    run_fetch(options_for(tmp_path, shard=(0, 3)))

    with pytest.raises(ValueError, match="split \\[2, 3\\] ways"):
        fetch.merge_shard_manifests(tmp_path)


def test_fetch_held_host_does_not_stall_others(server, tmp_path):
    held = server.url("/retry-after/seconds:2/1/p33.jpg")
    others = [f"http://localhost:{server.port}/img/p{i}.jpg" for i in range(34, 46)]
    rows = [(held, "fashion")] + [(url, "stores") for url in others]
    write_products(tmp_path / "products.parquet", rows)
    http = replace(LOCAL_HTTP, concurrency=2, per_host=2)

    run_fetch(options_for(tmp_path, http=http))
    manifest = manifest_frame(tmp_path)

    assert (manifest["status"] == "ok").all()
    held_at = manifest.loc[key_of(held), "fetched_at"]
    assert (manifest.loc[[key_of(u) for u in others], "fetched_at"] < held_at).all()


def test_fetch_blocked_host_gets_few_requests(server, tmp_path):
    rows = [(server.url(f"/status/403?n={i}"), "fashion") for i in range(120)]
    write_products(tmp_path / "products.parquet", rows)
    http = replace(LOCAL_HTTP, concurrency=8, per_host=8, blocked_host_threshold=10)
    before = len(server.requests)

    stats = run_fetch(options_for(tmp_path, http=http))

    assert len(server.requests) - before <= 10 + 8
    assert stats["status_counts"]["blocked"] >= 120 - 18


def test_fetch_relabel_and_new_settings_fetch_again(server, tmp_path):
    url = server.url("/img/p46.jpg")
    write_products(tmp_path / "products.parquet", [(url, "fashion")])
    run_fetch(options_for(tmp_path))

    write_products(tmp_path / "products.parquet", [(url, "stores")])
    moved = run_fetch(options_for(tmp_path))
    resized = run_fetch(options_for(tmp_path, image=ImageCheckConfig(image_size=48)))
    row = manifest_frame(tmp_path).loc[key_of(url)]

    assert moved["run"]["urls"] == 1
    assert resized["run"]["urls"] == 1
    assert row["path"] == f"images/stores/{key_of(url)}.jpg"
    assert not (tmp_path / "images" / "fashion" / f"{key_of(url)}.jpg").exists()
    assert max(row["width"], row["height"]) == 48


def test_fetch_input_rows_checked(server, tmp_path):
    good = normalise_url(server.url("/img/p47.jpg"))
    secret = f"http://alice:Secret123@127.0.0.1:{server.port}/img/p48.jpg"
    table = pa.table(
        {
            "key": [url_key(good), url_key(secret), "0123456789abcdef", url_key(good) + "\n"],
            "image_url": [good, secret, good.replace("p47", "p49"), good],
            "label": ["fashion", "fashion", "fashion", "fashion\n"],
        }
    )
    pq.write_table(table, tmp_path / "products.parquet")

    run_fetch(options_for(tmp_path))
    manifest = pd.read_parquet(tmp_path / "manifest.parquet")

    assert manifest["status"].tolist().count("invalid_input") == 3
    assert manifest["status"].tolist().count("ok") == 1
    assert "Secret123" not in manifest.to_csv()
    assert not list((tmp_path / "images").glob("*\n*"))


def test_fetch_unwritable_images_folder_exits_cleanly(server, tmp_path, caplog):
    write_products(tmp_path / "products.parquet", [(server.url("/img/p50.jpg"), "fashion")])
    (tmp_path / "images").write_text("a file where the images folder should be")

    code = fetch.main(
        ["--processed-dir", str(tmp_path), "--allow-network", "127.0.0.1/32", "--max-attempts", "1"]
    )

    assert code == 1
    assert "cannot write" in caplog.text
    assert "PROCESSED_DIR" in caplog.text


def test_fetch_logs_progress_without_terminal(server, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(fetch, "LOG_EVERY_SECONDS", 0.0)
    caplog.set_level("INFO")
    write_products(tmp_path / "products.parquet", [(server.url("/img/p51.jpg"), "fashion")])

    run_fetch(options_for(tmp_path))

    assert "fetch: 1/1 URLs (100.0%)" in caplog.text


def test_clean_header_and_retry_after_odd_values():
    assert httpclient.clean_header("image/jpeg\udcff") == "image/jpeg\ufffd"
    assert httpclient.parse_retry_after("\u00b2") is None
    assert httpclient.parse_retry_after("1" * 400) is None
