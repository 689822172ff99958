"""Tests for the demo: the catalogue generator, its image server and the ``make demo`` driver."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from data.scripts import demo, extract, merge, pipeline, relabel
from data.scripts.demo_catalogue import (
    CLASS_STYLES,
    COLUMNS,
    HEADER_ONLY_FILES,
    STAMP_FILE,
    CatalogueSettings,
    format_rupees,
    generate_catalogue,
    read_stamp,
)
from data.scripts.demo_server import DemoServer, PortInUseError, resolve_site_path
from data.scripts.relabel import DEFAULT_MAPPING, load_mapping
from tests.helpers import REPO_ROOT

PER_LABEL = 20
BASE_URL = "http://127.0.0.1:8799"


def folder_digest(*folders: Path) -> str:
    """SHA-256 over the relative path and bytes of every file under ``folders``."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Return True when nothing listens on ``port``; connections in TIME_WAIT do not count."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def http_get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def raw_request(port: int, path: str) -> int:
    """Send a request line with ``path`` exactly as given; return the status code."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        head = sock.recv(1024).decode("latin-1")
    return int(head.split()[1])


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("catalogue")
    settings = CatalogueSettings(base_url=BASE_URL, per_label=PER_LABEL)
    stamp = generate_catalogue(root / "raw", root / "site", settings)
    return root / "raw", root / "site", stamp


@pytest.fixture(scope="module")
def prepared(catalogue: tuple[Path, Path, dict], tmp_path_factory) -> tuple[Path, dict]:
    """The catalogue through the real extract, merge and relabel stages."""
    raw, _, _ = catalogue
    out = tmp_path_factory.mktemp("processed") / "demo"
    stats = {
        "extract": extract.run_extract(raw, out),
        "merge": merge.run_merge(out),
        "relabel": relabel.run_relabel(out, DEFAULT_MAPPING),
    }
    return out, stats


def read_rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


# ---- the catalogue ----


def test_catalogue_same_seed_same_bytes(catalogue, tmp_path):
    raw, site, _ = catalogue
    settings = CatalogueSettings(base_url=BASE_URL, per_label=PER_LABEL)
    generate_catalogue(tmp_path / "raw", tmp_path / "site", settings)

    assert folder_digest(tmp_path / "raw", tmp_path / "site") == folder_digest(raw, site)


def test_catalogue_other_seed_other_bytes(catalogue, tmp_path):
    raw, site, _ = catalogue
    settings = CatalogueSettings(seed=1, base_url=BASE_URL, per_label=PER_LABEL)
    generate_catalogue(tmp_path / "raw", tmp_path / "site", settings)

    assert folder_digest(tmp_path / "site") != folder_digest(site)
    assert folder_digest(tmp_path / "raw") != folder_digest(raw)


def test_catalogue_reused_for_same_settings(tmp_path):
    settings = CatalogueSettings(base_url=BASE_URL, per_label=10)
    first = generate_catalogue(tmp_path / "raw", tmp_path / "site", settings)
    csv_file = tmp_path / "raw" / "Yoga.csv"
    mtime = csv_file.stat().st_mtime_ns

    second = generate_catalogue(tmp_path / "raw", tmp_path / "site", settings)

    assert first["reused"] is False
    assert second["reused"] is True
    assert csv_file.stat().st_mtime_ns == mtime


def test_catalogue_new_port_regenerates(tmp_path):
    generate_catalogue(
        tmp_path / "raw", tmp_path / "site", CatalogueSettings(base_url=BASE_URL, per_label=10)
    )
    other = CatalogueSettings(base_url="http://127.0.0.1:9123", per_label=10)

    stamp = generate_catalogue(tmp_path / "raw", tmp_path / "site", other)

    assert stamp["reused"] is False
    text = (tmp_path / "raw" / "Yoga.csv").read_text(encoding="utf-8")
    assert "http://127.0.0.1:9123/images/I/" in text
    assert BASE_URL not in text
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_catalogue_invalid_settings_rejected(tmp_path):
    with pytest.raises(ValueError, match="per_label"):
        generate_catalogue(tmp_path / "raw", tmp_path / "site", CatalogueSettings(per_label=3))
    with pytest.raises(ValueError, match="base_url"):
        generate_catalogue(tmp_path / "raw", tmp_path / "site", CatalogueSettings(base_url="x/"))
    assert not (tmp_path / "raw").exists()


def test_catalogue_csv_format(catalogue):
    raw, _, stamp = catalogue
    files = sorted(p.name for p in raw.glob("*.csv"))

    assert files == sorted(stamp["files"])
    assert len(files) >= 15
    for name in files:
        data = (raw / name).read_bytes()
        assert data.startswith((",".join(COLUMNS) + "\r\n").encode())
        assert data.count(b"\n") == data.count(b"\r\n")
        data.decode("utf-8")
    for name in HEADER_ONLY_FILES:
        assert (raw / name).read_bytes() == (",".join(COLUMNS) + "\r\n").encode()


def test_catalogue_values_look_real(catalogue):
    raw, _, _ = catalogue
    rows = [row for path in raw.glob("*.csv") for row in read_rows(path)[1:]]
    well_formed = [row for row in rows if len(row) == len(COLUMNS)]
    prices = [row[8] for row in well_formed]
    links = [row[4] for row in well_formed]

    assert all(price.startswith("₹") for price in prices)
    assert any("," in price for price in prices)
    assert all(link.startswith("https://www.amazon.in/") for link in links)
    assert {"Get"} <= {row[5] for row in well_formed}
    assert any(row[5] == "" for row in well_formed)
    assert any(len(row[0]) == 125 and row[0].endswith("...") for row in well_formed)
    assert {row[1] for row in well_formed} >= {"home, kitchen, pets", "tv, audio & cameras"}


@pytest.mark.parametrize(
    "amount, text",
    [(99.0, "₹99"), (1499.0, "₹1,499"), (126189.0, "₹1,26,189"), (12345678.5, "₹1,23,45,678.50")],
)
def test_format_rupees_indian_grouping(amount, text):
    assert format_rupees(amount) == text


def test_catalogue_bad_rows_present(catalogue):
    raw, _, stamp = catalogue
    text = "".join(p.read_text(encoding="utf-8") for p in raw.glob("*.csv"))
    rows = [row for path in raw.glob("*.csv") for row in read_rows(path)[1:]]
    images = [row[3] for row in rows if len(row) == len(COLUMNS)]
    planted = [entry["planted"] for entry in stamp["planted"]]

    assert images.count("") == 2
    assert sum(1 for image in images if image and not image.startswith(("http", "HTTP"))) == 2
    assert any(len(row) > len(COLUMNS) for row in rows)  # the unquoted name
    assert text.count("Ã©") == 3  # mojibake of "é"
    assert any(image.startswith("HTTP://") for image in images)
    assert sum(p.startswith("mislabelled") for p in planted) == 7 * round(0.03 * PER_LABEL)
    assert {"fetch: http_404", "fetch: not_an_image", "fetch: too_small"} <= set(planted)


def test_catalogue_duplicate_urls(catalogue):
    raw, _, _ = catalogue
    seen: dict[str, set[str]] = {}
    for path in raw.glob("*.csv"):
        for row in read_rows(path)[1:]:
            if len(row) == len(COLUMNS) and row[3].startswith("http://"):
                seen.setdefault(row[3], set()).add(row[1])
    repeated = {url: categories for url, categories in seen.items() if len(categories) > 1}
    mapping = load_mapping(DEFAULT_MAPPING)
    labels = {url: {mapping.label_of[c] for c in cats} for url, cats in repeated.items()}

    assert len(repeated) >= 3
    assert sum(1 for found in labels.values() if len(found) > 1) == 1


def test_catalogue_through_real_stages(prepared, catalogue):
    out, stats = prepared
    products = pd.read_parquet(out / "products.parquet")
    mapping = load_mapping(DEFAULT_MAPPING)

    assert set(products["label"]) == set(mapping.labels)
    assert set(products["label"]) == set(CLASS_STYLES)
    assert products["label"].value_counts().min() >= PER_LABEL - 1  # a URL under two labels
    assert stats["extract"]["rows_rejected"] == 0
    assert stats["extract"]["header_only_files"] == list(HEADER_ONLY_FILES)
    assert stats["extract"]["counters"]["mojibake_repaired"] == 3
    assert stats["extract"]["counters"]["rows_repaired_unquoted_commas"] == 1
    assert stats["extract"]["rows_written"] == stats["extract"]["rows_read"]
    assert stats["merge"]["rows_dropped_by_reason"]["missing_url"] == 2
    assert stats["merge"]["rows_dropped_by_reason"]["relative_url"] == 2
    assert stats["merge"]["duplicate_rows_dropped"] == 5
    assert stats["relabel"]["urls_with_label_conflict"] == 1
    assert not products["name"].str.contains("Ã").any()
    assert products["name"].str.contains('43" Display').sum() == 1


def _image_statistics(site: Path, products: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list]:
    """Hue histograms of saturated pixels and border brightness per product image."""
    histograms, borders, labels = [], [], []
    for url, label in zip(products["image_url"], products["label"]):
        image = cv2.imread(str(site / url.split("/", 3)[3]), cv2.IMREAD_COLOR)
        if image is None or min(image.shape[:2]) < 32:
            continue  # the planted HTML page and the 20-pixel image
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        mask = ((hsv[..., 1] > 120) & (hsv[..., 2] > 100)).astype(np.uint8)
        histogram = cv2.calcHist([hsv], [0], mask, [18], [0, 180]).ravel()
        histograms.append(histogram / max(histogram.sum(), 1.0))
        borders.append(np.concatenate([hsv[0, :, 2], hsv[-1, :, 2]]).mean())
        labels.append(label)
    return np.array(histograms), np.array(borders), labels


def test_catalogue_images_decodable(catalogue, prepared):
    raw, site, stamp = catalogue
    files = [p for p in (site / "images" / "I").iterdir()]
    decoded = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in files]
    sizes = [image.shape[:2] for image in decoded if image is not None]

    assert sum(image is None for image in decoded) == stamp["images"]["not_an_image"]
    assert sum(min(size) == 20 for size in sizes) == 1
    assert all(min(size) >= 57 and max(size) <= 128 for size in sizes if min(size) != 20)
    assert {p.suffix for p in files} == {".jpg", ".png", ".webp"}
    assert len(files) == sum(stamp["images"].values()) - stamp["images"]["missing"]


def test_catalogue_classes_distinguishable(catalogue, prepared):
    _, site, _ = catalogue
    out, _ = prepared
    histograms, borders, labels = _image_statistics(site, pd.read_parquet(out / "products.parquet"))
    labels = np.array(labels)
    names = sorted(CLASS_STYLES)
    fit = np.arange(len(labels)) % 2 == 0
    centroids = np.stack([histograms[fit & (labels == name)].mean(0) for name in names])
    distances = ((histograms[~fit][:, None] - centroids[None]) ** 2).sum(-1)
    accuracy = (np.array(names)[distances.argmin(1)] == labels[~fit]).mean()
    dark = [name for name, style in CLASS_STYLES.items() if style.background == "dark"]

    assert accuracy > 0.5  # 1/7 by chance
    assert accuracy < 0.95  # colour alone does not solve it
    assert borders[np.isin(labels, dark)].mean() < borders[~np.isin(labels, dark)].mean() - 40


def test_catalogue_stamp_hidden_from_extract(catalogue):
    raw, site, stamp = catalogue

    assert read_stamp(raw) == read_stamp(site)
    assert (raw / STAMP_FILE).name.startswith(".")
    assert stamp["settings"]["base_url"] == BASE_URL


# ---- the server ----


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    folder = tmp_path / "site"
    (folder / "images" / "I").mkdir(parents=True)
    ok, buffer = cv2.imencode(".jpg", np.full((40, 40, 3), 200, np.uint8))
    (folder / "images" / "I" / "a.jpg").write_bytes(buffer.tobytes())
    (folder / "images" / "I" / "b.webp").write_bytes(b"RIFF0000WEBP")
    (folder / ".hidden.json").write_text("{}")
    (tmp_path / "secret.txt").write_text("outside the site")
    (folder / "images" / "link.txt").symlink_to(tmp_path / "secret.txt")
    return folder


@pytest.mark.network_local
def test_server_serves_files(site):
    with DemoServer(site) as server:
        status, headers, body = http_get(server.url("images/I/a.jpg"))
        head_status, head_headers, head_body = http_get(server.url("images/I/a.jpg"), "HEAD")
        _, webp_headers, _ = http_get(server.url("images/I/b.webp"))

    assert status == 200
    assert body == (site / "images" / "I" / "a.jpg").read_bytes()
    assert headers["Content-Type"] == "image/jpeg"
    assert head_status == 200
    assert head_body == b""
    assert int(head_headers["Content-Length"]) == len(body)
    assert webp_headers["Content-Type"] == "image/webp"


@pytest.mark.network_local
@pytest.mark.parametrize("path", ["/images/I/missing.jpg", "/.hidden.json", "/images", "/"])
def test_server_missing_and_hidden_404(site, path):
    with DemoServer(site) as server:
        assert raw_request(server.port, path) == 404


@pytest.mark.network_local
@pytest.mark.parametrize(
    "path", ["/../secret.txt", "/images/../../secret.txt", "/%2e%2e/secret.txt", "/images/link.txt"]
)
def test_server_rejects_traversal(site, path):
    with DemoServer(site) as server:
        status = raw_request(server.port, path)

    assert status in (403, 404)
    assert status != 200


def test_resolve_site_path_rejects_outside(site):
    root = site.resolve()

    with pytest.raises(PermissionError):
        resolve_site_path(root, "/../secret.txt")
    with pytest.raises(PermissionError):
        resolve_site_path(root, "/images/link.txt")
    assert resolve_site_path(root, "/.hidden.json") is None
    assert resolve_site_path(root, "/images/I/a.jpg") == root / "images" / "I" / "a.jpg"


@pytest.mark.network_local
def test_server_port_in_use(site):
    with DemoServer(site) as first:
        with pytest.raises(PortInUseError) as caught:
            DemoServer(site, first.port).start()

    assert caught.value.port == first.port


@pytest.mark.network_local
def test_server_stops_on_exception(site):
    with pytest.raises(RuntimeError, match="boom"):
        with DemoServer(site) as server:
            port = server.port
            raise RuntimeError("boom")

    assert port_is_free(port)


@pytest.mark.network_local
def test_server_restarts_on_same_port(site):
    with DemoServer(site) as server:
        port = server.port
        first, _, _ = http_get(server.url("images/I/a.jpg"))
    with DemoServer(site, port) as again:
        second, _, _ = http_get(again.url("images/I/a.jpg"))

    assert first == 200
    assert second == 200


@pytest.mark.network_local
def test_server_command_line_prints_port(site):
    process = subprocess.Popen(
        [sys.executable, "-m", "data.scripts.demo_server", "--site", str(site), "--port", "0"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        port = int(process.stdout.readline().strip().removeprefix("PORT="))
        status, _, _ = http_get(f"http://127.0.0.1:{port}/images/I/a.jpg")
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(20)

    assert status == 200
    assert returncode == 0
    assert port_is_free(port)


# ---- the driver ----


def test_demo_steps_in_pipeline_order():
    names = [step.name for step in demo.STEPS]

    assert names == [
        "extract",
        "merge",
        "validate",
        "fetch",
        "train",
        "evaluate",
        "find-label-issues",
        "export",
        "serve",
        "report",
    ]
    assert demo.STEPS[names.index("evaluate")].variables == {"RUN": "{run}"}


def test_demo_make_variables():
    config = demo.DemoConfig()
    variables = demo.make_variables(config, "run-a")

    assert variables["DATA_VERSION"] == "demo"
    assert variables["RAW_DIR"] == "data/raw/demo"
    assert variables["PROCESSED_DIR"] == "data/processed/demo"
    assert variables["ALLOW_PRIVATE_ADDRESSES"] == "1"
    assert variables["WEIGHTS"] == "none"
    assert variables["REVIEW_DIR"] == "label/reviews/demo"
    assert variables["FOLDS"] == "3"
    assert variables["TRAIN_ARGS"] == "--run-name run-a"


def test_demo_run_name_follows_catalogue():
    config = demo.DemoConfig()

    assert demo.run_name_for(config, "a" * 64) == demo.run_name_for(config, "a" * 64)
    assert demo.run_name_for(config, "a" * 64) != demo.run_name_for(config, "b" * 64)
    assert demo.run_name_for(config, "a" * 64).startswith(f"{config.model}-demo-64px-")


def test_demo_processed_dir_reset_on_new_catalogue(tmp_path):
    config = demo.DemoConfig(processed_dir=tmp_path / "demo")
    demo.prepare_processed_dir(config, "first")
    (tmp_path / "demo" / "products.parquet").write_text("old")

    kept = demo.prepare_processed_dir(config, "first")
    removed = demo.prepare_processed_dir(config, "second")

    assert kept is False
    assert removed is True
    assert not (tmp_path / "demo" / "products.parquet").exists()


def test_demo_processed_dir_foreign_data_kept(tmp_path):
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "products.parquet").write_text("real data")

    with pytest.raises(RuntimeError, match="did not write"):
        demo.prepare_processed_dir(demo.DemoConfig(processed_dir=tmp_path / "v1"), "digest")
    assert (tmp_path / "v1" / "products.parquet").read_text() == "real data"


def test_demo_printed_values_parsed():
    pattern = pipeline.PRINTED_VALUE_RE

    assert pattern.match("RUN=develop/artifacts/runs/x").groups() == (
        "RUN",
        "develop/artifacts/runs/x",
    )
    assert pattern.match(".venv/bin/python -m train.train --x=1") is None
    assert pattern.match("RUN=") is None


@pytest.fixture()
def fake_make(tmp_path: Path) -> Path:
    """A stand-in for make: logs its arguments, prints RUN=..., fails on the target 'bad'."""
    script = tmp_path / "fake-make"
    script.write_text(
        "#!/bin/sh\n"
        f'RUN_DIR="{tmp_path}/run"\n'
        f'echo "$@" >> "{tmp_path}/calls.txt"\n'
        'if [ "$1" = bad ]; then exit 3; fi\n'
        f'if [ "$1" = first ]; then echo "RUN={tmp_path}/run"; fi\n'
        'if [ "$1" = second ]; then mkdir -p "$RUN_DIR" && echo out > "$RUN_DIR/out"; fi\n'
        'if [ "$1" = second ]; then echo "OUT=$RUN_DIR/out"; fi\n'
    )
    script.chmod(0o755)
    (tmp_path / "input.txt").write_text("one")
    return script


def _fake_steps(tmp_path: Path) -> tuple[demo.Step, ...]:
    return (
        demo.Step("first", "first"),
        demo.Step(
            "second",
            "second",
            variables={"RUN": "{run}"},
            outputs=("{run}/out",),
            inputs=(str(tmp_path / "input.txt"),),
        ),
        demo.Step("third", "third", variables={"OUT": "{out}"}),
    )


def _run_fake(tmp_path: Path, fake_make: Path, steps: tuple[demo.Step, ...]) -> dict:
    config = demo.DemoConfig(artifacts_dir=tmp_path / "artifacts", make=str(fake_make))
    record: dict = {"steps": []}
    context = {"processed_dir": str(tmp_path)}
    demo.run_steps(config, steps, context, {"A": "1"}, record)
    return {"record": record, "context": context}


def test_demo_steps_pass_printed_values(tmp_path, fake_make):
    result = _run_fake(tmp_path, fake_make, _fake_steps(tmp_path))
    calls = (tmp_path / "calls.txt").read_text().splitlines()

    assert result["context"]["run"] == f"{tmp_path}/run"
    assert calls == [
        "first A=1",
        f"second A=1 RUN={tmp_path}/run",
        f"third A=1 OUT={tmp_path}/run/out",
    ]
    assert [step["status"] for step in result["record"]["steps"]] == ["ran", "ran", "ran"]


def test_demo_steps_skip_until_input_changes(tmp_path, fake_make):
    _run_fake(tmp_path, fake_make, _fake_steps(tmp_path))
    again = _run_fake(tmp_path, fake_make, _fake_steps(tmp_path))
    (tmp_path / "input.txt").write_text("two")
    changed = _run_fake(tmp_path, fake_make, _fake_steps(tmp_path))

    calls = (tmp_path / "calls.txt").read_text().splitlines()

    assert [step["status"] for step in again["record"]["steps"]] == ["ran", "skipped", "ran"]
    assert again["context"]["out"] == f"{tmp_path}/run/out"  # printed by the skipped step
    assert calls.count(f"third A=1 OUT={tmp_path}/run/out") == 3
    assert [step["status"] for step in changed["record"]["steps"]] == ["ran", "ran", "ran"]


def test_demo_failing_step_stops_the_rest(tmp_path, fake_make):
    steps = (demo.Step("first", "first"), demo.Step("bad", "bad"), demo.Step("last", "second"))

    with pytest.raises(demo.StepFailed) as caught:
        _run_fake(tmp_path, fake_make, steps)
    calls = (tmp_path / "calls.txt").read_text().splitlines()

    assert caught.value.step == "bad"
    assert caught.value.returncode == 3
    assert [call.split()[0] for call in calls] == ["first", "bad"]


def test_demo_missing_value_names_it(tmp_path, fake_make):
    steps = (demo.Step("second", "second", variables={"RUN": "{run}"}),)

    with pytest.raises(RuntimeError, match=r"needs \{run\}.*RUN=<value>"):
        _run_fake(tmp_path, fake_make, steps)


def _demo_args(tmp_path: Path, port: int) -> list[str]:
    return [
        "--port",
        str(port),
        "--raw-dir",
        str(tmp_path / "raw"),
        "--site-dir",
        str(tmp_path / "site"),
        "--processed-dir",
        str(tmp_path / "processed" / "demo"),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--review-dir",
        str(tmp_path / "reviews"),
        "--artifacts-dir",
        str(tmp_path / "artifacts"),
    ]


@pytest.mark.network_local
def test_demo_port_in_use_fails_before_work(tmp_path, caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = demo.main(_demo_args(tmp_path, port))

    assert code == 2
    assert f"port {port}" in caplog.text
    assert "DEMO_PORT" in caplog.text
    assert list(tmp_path.iterdir()) == []


# ---- end to end ----


def _run_demo(tmp_path: Path, port: int, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "data.scripts.demo", *_demo_args(tmp_path, port), *extra],
        cwd=REPO_ROOT,
        env={**os.environ, "WANDB_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    return completed, time.monotonic() - started


SMALL_DEMO = ("--per-label", "30", "--image-size", "32", "--epochs", "2", "--folds", "2")


@pytest.mark.slow
@pytest.mark.network_local
def test_demo_end_to_end_and_rerun(tmp_path):
    port = free_port()
    first, first_seconds = _run_demo(tmp_path, port, *SMALL_DEMO)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((tmp_path / "artifacts" / "summary.json").read_text())
    second, second_seconds = _run_demo(tmp_path, port, *SMALL_DEMO)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((tmp_path / "artifacts" / "summary.json").read_text())

    assert summary["status"] == "finished"
    assert [step["status"] for step in summary["steps"]] == ["ran"] * 10
    assert summary["run"].startswith(str(tmp_path / "runs"))
    assert 0 <= summary["test"]["accuracy"] <= 1
    assert summary["counts"]["fetch_status"]["ok"] >= 7 * 30
    assert summary["counts"]["fetch_status"]["http_error"] == 2
    assert summary["counts"]["fetch_status"]["not_an_image"] == 2
    assert summary["counts"]["fetch_status"]["too_small"] == 1
    assert len(summary["counts"]["products_per_label"]) == 7
    assert (Path(summary["run"]) / "evaluation" / "metrics.json").exists()
    assert (tmp_path / "reviews" / "candidates.csv").exists()
    assert f"run folder:     {summary['run']}" in first.stdout
    assert "PREDICTION=" in first.stdout
    assert (tmp_path / "artifacts" / "report" / "index.html").exists()
    assert (Path(summary["run"]) / "export" / "saved_model" / "1").is_dir()
    assert "make tensorboard" in first.stdout
    assert port_is_free(port)

    assert again["run"] == summary["run"]
    assert again["catalogue"]["reused"] is True
    statuses = {step["name"]: step["status"] for step in again["steps"]}
    for name in ("train", "evaluate", "find-label-issues", "export"):
        assert statuses[name] == "skipped", name
    assert statuses["serve"] == statuses["report"] == "ran"
    assert second_seconds < 0.7 * first_seconds
    assert port_is_free(port)

    # a failing stage: an unknown model stops train, and the server still stops
    failed, _ = _run_demo(tmp_path, port, *SMALL_DEMO[:-2], "--model", "no_such_model")
    record = json.loads((tmp_path / "artifacts" / "summary.json").read_text())

    assert failed.returncode == 1
    assert record["status"] == "failed"
    assert record["failed_step"] == "train"
    assert [step["name"] for step in record["steps"]][-1] == "train"
    assert "step train failed" in failed.stderr
    assert port_is_free(port)


@pytest.mark.slow
@pytest.mark.network_local
def test_demo_ctrl_c_stops_server(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "data.scripts.demo", *_demo_args(tmp_path, port), *SMALL_DEMO],
        cwd=REPO_ROOT,
        env={**os.environ, "WANDB_MODE": "disabled"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = io.StringIO()
    try:
        for line in process.stderr:
            log.write(line)
            if "step 4/10 fetch" in line:
                break
        process.send_signal(signal.SIGINT)
        log.write(process.stderr.read())
        returncode = process.wait(120)
    finally:
        if process.poll() is None:
            process.kill()

    record = json.loads((tmp_path / "artifacts" / "summary.json").read_text())
    assert returncode == 130, log.getvalue()[-3000:]
    assert record["status"] == "interrupted"
    assert "interrupted" in log.getvalue()
    assert port_is_free(port)
