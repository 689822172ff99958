"""Smoke test of a served model: start the server, send one image, check the answer, stop.

``python -m deploy.smoke --run RUN [--image FILE]`` (or ``make serve-check RUN=...``)
starts ``python -m deploy.serve`` on a free port of 127.0.0.1, the same command that
``make serve`` runs, waits until ``/healthz`` reports ready, and sends one image twice:
to the upload endpoint ``/predict`` and, base64-encoded, to TensorFlow Serving's
``:predict`` API. Both answers must name the same class with the same probability. The
server is then stopped with SIGTERM, as systemd stops it, and must exit with status 0.

The image defaults to the first test image of the run's ``splits.csv``. The answer is
printed as ``PREDICTION=<class>`` and ``PROBABILITY=<p>`` lines.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from data.scripts.common import PROJECT_ROOT, setup_logging

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
MODEL_NAME = "product_classifier"
READY_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0


class SmokeTestError(RuntimeError):
    """The server did not start, returned a wrong response, or did not stop cleanly."""


def free_port() -> int:
    """Return a port of 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def first_test_image(run: Path) -> Path:
    """Return the first test image of a run folder's ``splits.csv``."""
    try:
        config = json.loads((run / "config.json").read_text())
        with open(run / "splits.csv", newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.DictReader(handle) if row["split"] == "test"]
    except (OSError, ValueError, KeyError) as exc:
        raise SmokeTestError(
            f"cannot read the test split of {run} ({exc}); pass an image with --image"
        ) from exc
    if not rows:
        raise SmokeTestError(f"{run} has no test images; pass an image with --image")
    return Path(config["dataset_root"]) / rows[0]["path"]


def request_json(url: str, body: bytes | None = None, content_type: str = "") -> Any:
    """Send a GET (no body) or POST and return the decoded JSON response."""
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:500]
        raise SmokeTestError(f"{url} returned HTTP {exc.code}: {detail}") from exc


def wait_until_ready(base_url: str, server: subprocess.Popen) -> float:
    """Poll ``/healthz`` until it answers 200; return the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < READY_TIMEOUT_S:
        if server.poll() is not None:
            raise SmokeTestError(
                f"the server exited with status {server.returncode} before it was ready; "
                "its log is above"
            )
        try:
            with urllib.request.urlopen(f"{base_url}/healthz", timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise SmokeTestError(f"the server was not ready within {READY_TIMEOUT_S:.0f} s")


def check_answers(base_url: str, image: bytes) -> dict[str, Any]:
    """Send ``image`` to both endpoints; return the upload answer once they agree."""
    upload = request_json(f"{base_url}/predict", image, "application/octet-stream")
    body = json.dumps({"instances": [{"b64": base64.b64encode(image).decode("ascii")}]})
    served = request_json(
        f"{base_url}/v1/models/{MODEL_NAME}:predict", body.encode(), "application/json"
    )
    prediction = served["predictions"][0]
    probabilities = dict(zip(prediction["class_names"], prediction["probabilities"]))
    top = max(probabilities, key=probabilities.get)
    if top != upload["top_class"] or abs(probabilities[top] - upload["probability"]) > 1e-5:
        raise SmokeTestError(
            f"the endpoints disagree: /predict returned {upload['top_class']} "
            f"({upload['probability']:.6f}), :predict returned {top} ({probabilities[top]:.6f})"
        )
    return upload


def stop_server(server: subprocess.Popen) -> int:
    """Send SIGTERM and wait for the exit status; kill the server if it hangs."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            raise SmokeTestError(f"the server did not stop within {STOP_TIMEOUT_S:.0f} s")
    return server.returncode


def smoke_test(run: Path, image_path: Path | None = None) -> dict[str, Any]:
    """Serve ``run``'s export, send one image and stop the server; return the answer."""
    image_path = image_path or first_test_image(run)
    if not image_path.is_file():
        raise SmokeTestError(f"image {image_path} not found; pass an image file with IMAGE=...")
    image = image_path.read_bytes()
    port = free_port()
    base_url = f"http://{HOST}:{port}"
    command = [
        sys.executable,
        "-m",
        "deploy.serve",
        "--run",
        str(run),
        "--host",
        HOST,
        "--port",
        str(port),
        "--model-name",
        MODEL_NAME,
    ]
    logger.info("smoke test started: serving %s on %s", run, base_url)
    server = subprocess.Popen(command, cwd=PROJECT_ROOT, env=dict(os.environ))
    try:
        seconds = wait_until_ready(base_url, server)
        answer = check_answers(base_url, image)
    finally:
        status = stop_server(server)
    if status != 0:
        raise SmokeTestError(f"the server exited with status {status} after SIGTERM, not 0")
    logger.info(
        "smoke test finished: ready in %.1f s, %s is %s (%.3f), clean stop",
        seconds,
        image_path.name,
        answer["top_class"],
        answer["probability"],
    )
    return answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.smoke", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--run", type=Path, required=True, help="run folder with export/")
    parser.add_argument(
        "--image", type=Path, help="image file to send (default: the run's first test image)"
    )
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        answer = smoke_test(args.run, args.image)
    except (SmokeTestError, OSError) as exc:
        logger.error("smoke test failed: %s", exc)
        return 1
    except KeyboardInterrupt:
        logger.error("smoke test interrupted; the server was stopped")
        return 130
    print(f"PREDICTION={answer['top_class']}")
    print(f"PROBABILITY={answer['probability']:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
