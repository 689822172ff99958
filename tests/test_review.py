"""Tests for label.review: the JSON API, the decision log, shutdown and a headless browser."""

from __future__ import annotations

import asyncio
import csv
import http.client
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from label import review

pytestmark = pytest.mark.network_local

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LABELS = ["fashion", "electronics", "household_essentials"]
KEYS = ["00000000000000a1", "00000000000000b2", "00000000000000c3", "00000000000000d4"]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_HINT = "install it with: apt-get install -y chromium chromium-driver"


@pytest.fixture
def review_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """Return (candidates.csv, processed folder) with three images and one bad path."""
    processed = tmp_path / "processed" / "v1"
    (processed / "labels.json").parent.mkdir(parents=True)
    labels_payload = [{"label": label, "name": label.title(), "rows": 1} for label in LABELS]
    (processed / "labels.json").write_text(json.dumps(labels_payload))
    (processed / "images" / "toys").mkdir(parents=True)  # a label folder not in labels.json
    given = ["fashion", "electronics", "fashion"]
    rows = []
    for key, label in zip(KEYS[:3], given):
        path = processed / "images" / label / f"{key}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\xff\xd8 image of " + key.encode())
        rows.append([key, f"images/{label}/{key}.jpg", label, "household_essentials", "0.1", "r"])
    (tmp_path / "secret.jpg").write_bytes(b"outside")
    rows.append([KEYS[3], "../../secret.jpg", "fashion", "electronics", "0.9", "traversal"])

    candidates = tmp_path / "reviews" / "v1" / "candidates.csv"
    candidates.parent.mkdir(parents=True)
    with candidates.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(review.CANDIDATE_COLUMNS)
        writer.writerows(rows)
    return candidates, processed


class ThreadServer:
    """Runs the review application on 127.0.0.1 with a free port in a background thread."""

    def __init__(self, candidates: Path, processed: Path) -> None:
        items = review.load_candidates(candidates)
        self.log = review.DecisionLog(candidates.parent / review.DECISIONS_FILE)
        app = review.create_app(items, review.load_labels(items, processed), processed, self.log)
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app, access_log=None)
        self.port = 0
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        assert started.wait(10), "review server did not start within 10 s"

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, review.HOST, 0).start())
        self.port = self.runner.addresses[0][1]
        started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def server(review_dirs: tuple[Path, Path]) -> Iterator[ThreadServer]:
    running = ThreadServer(*review_dirs)
    yield running
    running.stop()


def call(
    port: int,
    method: str,
    path: str,
    body: object = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """Send one request to 127.0.0.1 and return (status, body)."""
    connection = http.client.HTTPConnection(review.HOST, port, timeout=10)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    try:
        connection.request(method, path, body=data, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def decide(port: int, key: str, decision: str, new_label: str | None = None) -> dict:
    status, body = call(
        port, "POST", "/api/decisions", {"key": key, "decision": decision, "new_label": new_label}
    )
    assert status == 200, body
    return json.loads(body)


def listing(port: int) -> dict:
    status, body = call(port, "GET", "/api/candidates")
    assert status == 200, body
    return json.loads(body)


# the JSON API


def test_candidates_listed_in_file_order(server):
    data = listing(server.port)

    assert [c["key"] for c in data["candidates"]] == KEYS
    assert data["total"] == 4
    assert data["left"] == 4
    assert data["labels"] == LABELS + ["toys"]
    assert data["candidates"][0]["image_url"] == f"/images/{KEYS[0]}"
    assert data["candidates"][0]["decision"] is None


def test_page_served(server):
    status, body = call(server.port, "GET", "/")

    assert status == 200
    assert b"/api/decisions" in body


@pytest.mark.parametrize(
    "decision, new_label, expected",
    [
        ("accept", None, "household_essentials"),
        ("keep", "toys", "fashion"),
        ("relabel", "toys", "toys"),
        ("remove", None, None),
    ],
)
def test_decision_saved_at_once(server, review_dirs, decision, new_label, expected):
    result = decide(server.port, KEYS[0], decision, new_label)

    lines = (review_dirs[0].parent / "decisions.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["key"] == KEYS[0]
    assert record["decision"] == decision
    assert record["new_label"] == expected
    assert record["given_label"] == "fashion"
    assert "time" in record
    assert result["left"] == 3
    assert listing(server.port)["candidates"][0]["decision"]["decision"] == decision


def test_latest_decision_wins(server, review_dirs):
    decide(server.port, KEYS[1], "keep")
    decide(server.port, KEYS[1], "relabel", "toys")
    decide(server.port, KEYS[2], "remove")

    data = listing(server.port)
    decisions_path = review_dirs[0].parent / "decisions.jsonl"
    assert len(decisions_path.read_text().splitlines()) == 3
    assert data["left"] == 2
    assert data["candidates"][1]["decision"]["new_label"] == "toys"
    assert review.read_decisions(decisions_path)[KEYS[1]]["decision"] == "relabel"


def test_restart_continues_from_log(review_dirs):
    first = ThreadServer(*review_dirs)
    decide(first.port, KEYS[0], "accept")
    first.stop()

    second = ThreadServer(*review_dirs)
    try:
        data = listing(second.port)
    finally:
        second.stop()
    assert data["left"] == 3
    assert data["candidates"][0]["decision"]["decision"] == "accept"


@pytest.mark.parametrize(
    "body, message",
    [
        ({"key": "ffffffffffffffff", "decision": "keep"}, b"not in the candidates file"),
        ({"key": KEYS[0], "decision": "delete"}, b"decision must be one of"),
        ({"key": KEYS[0], "decision": "relabel", "new_label": "cars"}, b"new_label for 'relabel'"),
        ({"key": KEYS[0], "decision": "relabel"}, b"received None"),
        (b"not json", b"JSON object"),
        ([KEYS[0], "keep"], b"JSON object"),
        ({"key": [], "decision": "keep"}, b"key must be a string"),
        ({"key": {}, "decision": "keep"}, b"key must be a string"),
        (b"[" * 30000 + b"]" * 30000, b"JSON object"),
    ],
)
def test_invalid_decision_rejected(server, review_dirs, body, message):
    status, text = call(server.port, "POST", "/api/decisions", body)

    assert status == 400
    assert message in text
    assert not (review_dirs[0].parent / "decisions.jsonl").exists()


def test_image_served_by_key(server):
    status, body = call(server.port, "GET", f"/images/{KEYS[0]}")

    assert status == 200
    assert body == b"\xff\xd8 image of " + KEYS[0].encode()


@pytest.mark.parametrize(
    "path",
    [
        "/images/..%2F..%2F..%2Fsecret.jpg",
        "/images/../../secret.jpg",
        "/images/%2e%2e/secret.jpg",
        "/images/ffffffffffffffff",
        "/images/images%2Ffashion%2F00000000000000a1.jpg",
        "/secret.jpg",
    ],
)
def test_image_paths_outside_keys_not_found(server, path):
    status, body = call(server.port, "GET", path)

    assert status == 404
    assert b"outside" not in body


def test_image_path_leaving_folder_forbidden(server):
    status, body = call(server.port, "GET", f"/images/{KEYS[3]}")

    assert status == 403
    assert b"outside" in body  # the message, not the file's bytes
    assert body != b"outside"


def test_image_symlink_leaving_folder_forbidden(server, review_dirs):
    image = review_dirs[1] / "images" / "fashion" / f"{KEYS[0]}.jpg"
    image.unlink()
    image.symlink_to(review_dirs[0].parents[2] / "secret.jpg")

    status, body = call(server.port, "GET", f"/images/{KEYS[0]}")

    assert status == 403
    assert body != b"outside"


@pytest.mark.parametrize(
    "headers",
    [{"Host": "evil.example"}, {"Host": "evil.example:8765"}, {"Host": "10.0.0.1"}],
)
def test_other_host_names_rejected(server, headers):
    status, _ = call(server.port, "GET", "/api/candidates", headers=headers)

    assert status == 403


def test_cross_origin_post_rejected(server, review_dirs):
    headers = {"Origin": "http://evil.example", "Content-Type": "application/json"}
    status, _ = call(
        server.port, "POST", "/api/decisions", {"key": KEYS[0], "decision": "keep"}, headers
    )

    assert status == 403
    assert not (review_dirs[0].parent / "decisions.jsonl").exists()


# the decision log


def test_read_decisions_skips_torn_last_line(tmp_path):
    path = tmp_path / "decisions.jsonl"
    first = {"key": "a", "decision": "keep", "new_label": "x"}
    path.write_text(json.dumps(first) + "\n" + '{"key": "b", "deci')

    assert review.read_decisions(path) == {"a": first}


def test_read_decisions_rejects_bad_middle_line(tmp_path):
    path = tmp_path / "decisions.jsonl"
    path.write_text('{"key": "a"\n{"key": "b", "decision": "keep"}\n')

    with pytest.raises(review.ReviewInputError, match="line 1 is not valid JSON"):
        review.read_decisions(path)


def test_load_candidates_merges_reasons_of_one_key(tmp_path):
    path = tmp_path / "candidates.csv"
    header = ",".join(review.CANDIDATE_COLUMNS)
    path.write_text(f"{header}\nk1,p,a,b,0.1,label_issue\nk1,p,a,b,0.2,duplicate_conflict:k2\n")

    candidates = review.load_candidates(path)

    assert [c.key for c in candidates] == ["k1"]
    assert candidates[0].reason == "label_issue; duplicate_conflict:k2"
    assert candidates[0].quality_score == 0.1


def test_load_candidates_rejects_conflicting_rows(tmp_path):
    path = tmp_path / "candidates.csv"
    header = ",".join(review.CANDIDATE_COLUMNS)
    path.write_text(f"{header}\nk1,p,a,b,0.1,r\nk1,q,a,b,0.2,r\n")

    with pytest.raises(review.ReviewInputError, match="'k1' occurs twice"):
        review.load_candidates(path)


def test_load_candidates_names_missing_columns(tmp_path):
    path = tmp_path / "candidates.csv"
    path.write_text("key,path\nk1,p\n")

    with pytest.raises(review.ReviewInputError, match="given_label"):
        review.load_candidates(path)


def test_main_missing_candidates_exits_2(tmp_path):
    code = review.main(["--candidates", str(tmp_path / "no.csv"), "--processed-dir", str(tmp_path)])

    assert code == 2


# the command: a real process, killed and stopped


class ReviewProcess:
    """``python -m label.review --port 0`` with the bound port read from its log."""

    def __init__(self, candidates: Path, processed: Path) -> None:
        command = [sys.executable, "-m", "label.review", "--port", "0"]
        command += ["--candidates", str(candidates), "--processed-dir", str(processed)]
        self.process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.port = self._wait_for_port()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + 30
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            seen.append(line)
            match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
            if match:
                return int(match.group(1))
        self.process.kill()
        raise AssertionError(f"review server printed no address; output: {''.join(seen)}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def test_killed_server_keeps_both_decisions(review_dirs):
    first = ReviewProcess(*review_dirs)
    decide(first.port, KEYS[0], "accept")
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait(10)

    second = ReviewProcess(*review_dirs)
    try:
        decide(second.port, KEYS[1], "relabel", "toys")
        os.kill(second.process.pid, signal.SIGKILL)
        second.process.wait(10)
    finally:
        second.stop()

    decisions = review.read_decisions(review_dirs[0].parent / "decisions.jsonl")
    assert decisions[KEYS[0]]["new_label"] == "household_essentials"
    assert decisions[KEYS[1]]["new_label"] == "toys"
    assert len(decisions) == 2


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_server_cleanly(review_dirs, signum):
    running = ReviewProcess(*review_dirs)
    try:
        running.process.send_signal(signum)
        code = running.process.wait(15)
    finally:
        running.stop()

    assert code == 0


# a real browser


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason=f"selenium missing; {CHROMIUM_HINT}"
    )
    if not CHROMIUM.is_file() or not CHROMEDRIVER.is_file():
        pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} not found; {CHROMIUM_HINT}")

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]:
        options.add_argument(argument)
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def wait_for(driver: object, script: str, expected: object, seconds: float = 10) -> None:
    """Poll a JavaScript expression until it returns ``expected``."""
    deadline = time.monotonic() + seconds
    value = None
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {script};")  # type: ignore[attr-defined]
        if value == expected:
            return
        time.sleep(0.1)
    raise AssertionError(f"{script} returned {value!r}, expected {expected!r}")


def test_browser_accept_relabel_reload(browser, server, review_dirs):
    from selenium.webdriver.common.by import By

    browser.get(f"http://127.0.0.1:{server.port}/")
    wait_for(browser, "document.body.dataset.ready", "true")
    count = "document.getElementById('count').textContent"
    wait_for(browser, count, "4 left of 4")

    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys("a")
    wait_for(browser, count, "3 left of 4")
    body.send_keys("5")  # no fifth label: ignored
    body.send_keys("4")  # the fourth label, "toys", for the second card
    wait_for(browser, count, "2 left of 4")

    decisions = review.read_decisions(review_dirs[0].parent / "decisions.jsonl")
    assert decisions[KEYS[0]]["decision"] == "accept"
    assert decisions[KEYS[0]]["new_label"] == "household_essentials"
    assert decisions[KEYS[1]]["decision"] == "relabel"
    assert decisions[KEYS[1]]["new_label"] == "toys"
    assert len(decisions) == 2

    browser.refresh()
    wait_for(browser, "document.body.dataset.ready", "true")
    wait_for(browser, count, "2 left of 4")
    decided = browser.find_elements(By.CSS_SELECTOR, ".card.decided")
    assert [card.get_attribute("data-key") for card in decided] == KEYS[:2]
    current = browser.find_element(By.CSS_SELECTOR, ".card.current")
    assert current.get_attribute("data-key") == KEYS[2]
    assert "toys" in decided[1].get_attribute("textContent")


def test_torn_line_cut_before_next_decision(tmp_path):
    path = tmp_path / "decisions.jsonl"
    path.write_text('{"key": "a", "decision": "keep"}\n{"key": "b", "decision": "rel')

    log = review.DecisionLog(path)
    log.append({"key": "b", "decision": "remove", "new_label": None})

    assert path.read_text().splitlines()[-1].startswith('{"key": "b", "decision": "remove"')
    assert set(review.read_decisions(path)) == {"a", "b"}
