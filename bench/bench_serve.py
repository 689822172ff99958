"""Benchmark: the prediction server with batching against one prediction per request.

Usage::

    .venv/bin/python -m bench.bench_serve [--model resnet50v2_pool] [--image-size 224]
        [--clients 1 8 32] [--seconds 20] [--rounds 2] [--batch-timeout-ms 5]
    .venv/bin/python -m bench.bench_serve --quick   # mobilenetv3_pool at 64 px: a smoke test

Steps:

1. **Model.** ``--model`` with random weights (``weights="none"``: the same operations, so
   the same time, as ImageNet weights) exported with ``deploy.export.export_saved_model``
   into a temporary folder.
2. **Images.** 32 photo-like JPEGs of 400 to 600 px a side, quality 90, as product photos
   arrive. Every request carries one of them as ``{"instances": [{"b64": ...}]}``; the
   bodies are encoded once, before any timing.
3. **Servers.** ``python -m deploy.serve`` in a subprocess on 127.0.0.1, once with
   ``--max-batch-size 32`` (batching) and once with ``--max-batch-size 1`` (one model
   call per request, the baseline). Each round starts both anew; the order alternates
   between rounds.
4. **Load.** For each number of clients, that many concurrent aiohttp clients in this
   process send requests back to back: ``--warm-up-seconds`` untimed, then ``--seconds``
   timed. Throughput is requests completed in the timed window per second; p50 and p99
   are the latencies of those requests. The mean batch size comes from the server's
   ``/metrics``. Numbers are medians over rounds.
5. **Bare model.** The signature called directly in this process on batches of 1 and of
   32 images: the most that batching can gain on this machine, with no HTTP around it.
6. **Request encoding.** One more generated JPEG sent as base64, against the same image as
   a JSON list of floats. The list is the model's S x S x 3 input, decoded and resized as
   training does, which a client must send when the graph does not decode images. The server
   does not accept pixel lists, so the float list is posted to a plain aiohttp handler
   inside this script that parses the JSON into a float32 array (the base64 form: decodes
   and resizes the JPEG, as the graph does). For both forms the client's encode time,
   that handler's parse time and the end-to-end time are medians of 20 requests; the
   base64 request is also timed against the real server.

The client runs on the same cores as the server, as it does when the load comes from
one machine. The load average before and after is printed, so that other jobs show.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import cv2
import numpy as np
from aiohttp import web

from bench.bench_prepare import machine
from data.scripts.common import PROJECT_ROOT, setup_logging

logger = logging.getLogger(__name__)

PREDICT_PATH = "v1/models/product_classifier:predict"
NUM_CLASSES = 7
SEED = 0
IMAGES = 32
MIN_SIDE, MAX_SIDE = 400, 600  # pixels of the generated photos
JPEG_QUALITY = 90
ENCODING_REPEATS = 20
BATCHED, BASELINE = "batching", "one per request"
GOAL_THROUGHPUT = 3.0  # batching / baseline throughput at the most clients, at least
GOAL_P99 = 1.2  # batching / baseline p99 latency at one client, at most
READY_SECONDS = 600
QUICK = {"model": "mobilenetv3_pool", "image_size": 64, "seconds": 5.0, "rounds": 1}


@dataclass(frozen=True)
class LoadResult:
    """One mode at one number of clients in one round."""

    throughput: float  # completed requests per second
    p50: float  # seconds
    p99: float  # seconds
    mean_batch: float  # images per model call, from /metrics
    cpu_per_request: float  # server CPU seconds (user + system) per completed request
    errors: int  # responses other than 200


# ---- set-up ----


def export_model(model_name: str, image_size: int, out_dir: Path) -> Path:
    """Build ``model_name`` with random weights and export it; return the versions folder."""
    import keras

    from deploy.export import export_saved_model
    from train.models import build_model

    keras.utils.set_random_seed(SEED)
    model = build_model(
        model_name, num_classes=NUM_CLASSES, image_size=image_size, weights="none", seed=SEED
    )
    class_names = [f"class_{index}" for index in range(NUM_CLASSES)]
    export_saved_model(model, class_names, image_size, out_dir / "1")
    return out_dir


def photo(rng: np.random.Generator) -> bytes:
    """Encode a photo-like JPEG: a smooth gradient of random colours with sensor-like noise."""
    width, height = rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2)
    grid = rng.integers(0, 256, size=(5, 5, 3), dtype=np.uint8)
    image = cv2.resize(grid, (int(width), int(height)), interpolation=cv2.INTER_CUBIC)
    noise = rng.normal(0, 6, size=image.shape)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes()


def request_body(image: bytes) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(image).decode("ascii")}]}).encode()


class Server:
    """``python -m deploy.serve`` in a subprocess, logging to a file; stopped with SIGTERM."""

    def __init__(self, model_dir: Path, max_batch_size: int, timeout_ms: float, log: Path):
        self.log = log
        command = [
            sys.executable,
            "-m",
            "deploy.serve",
            "--model-dir",
            str(model_dir),
            "--port",
            "0",
            "--max-batch-size",
            str(max_batch_size),
            "--batch-timeout-ms",
            str(timeout_ms),
            "--max-queue-images",
            "4096",
        ]
        with log.open("w") as stream:
            self.process = subprocess.Popen(
                command, cwd=PROJECT_ROOT, stdout=stream, stderr=subprocess.STDOUT
            )
        self.url = self._wait_until_ready()

    def _wait_until_ready(self) -> str:
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            match = re.search(r"ready on (http://\S+/)", self.log.read_text())
            if match:
                return match.group(1)
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited early; its log:\n{self.log.read_text()}")
            time.sleep(0.2)
        raise RuntimeError(f"the server was not ready within {READY_SECONDS} s")

    def cpu_seconds(self) -> float:
        """Return the server process's user + system CPU seconds so far (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # After the command name: state is field 3 of stat(5), utime 14 and stime 15.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        if self.process.wait(timeout=120) != 0:
            logger.warning("the server exited with %d; log %s", self.process.returncode, self.log)


# ---- load ----


async def batch_counts(session: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    """Return the server's (model calls, images in them) so far, from /metrics."""
    async with session.get(url + "metrics") as response:
        text = await response.text()
    values = {}
    for name in ("serve_batch_size_count", "serve_batch_size_sum"):
        match = re.search(rf"^{name} (\S+)$", text, flags=re.MULTILINE)
        values[name] = float(match.group(1)) if match else 0.0
    return values["serve_batch_size_count"], values["serve_batch_size_sum"]


async def run_load(
    server: Server, bodies: list[bytes], clients: int, warm_up: float, seconds: float
) -> LoadResult:
    """Send requests from ``clients`` concurrent clients; time the ``seconds`` after warm-up."""
    url = server.url
    connector = aiohttp.TCPConnector(limit=clients + 1)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        latencies: list[float] = []
        errors = 0
        loop = asyncio.get_running_loop()
        start = loop.time()
        timed_from, timed_to = start + warm_up, start + warm_up + seconds
        counts_before: tuple[float, float] | None = None
        cpu: list[float] = []  # server CPU seconds at the window's start and end

        async def client(number: int) -> None:
            nonlocal errors
            turn = number
            while loop.time() < timed_to:
                body = bodies[turn % len(bodies)]
                turn += clients
                sent = loop.time()
                async with session.post(
                    url + PREDICT_PATH, data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    await response.read()
                    ok = response.status == 200
                answered = loop.time()
                # Every response inside the timed window counts, whenever its request was
                # sent, so requests that straddle the window's edges bias neither number.
                if timed_from <= answered <= timed_to:
                    latencies.append(answered - sent)
                    errors += 0 if ok else 1

        async def snapshot() -> None:
            nonlocal counts_before
            await asyncio.sleep(warm_up)
            counts_before = await batch_counts(session, url)
            cpu.append(server.cpu_seconds())
            await asyncio.sleep(max(0.0, timed_to - loop.time()))
            cpu.append(server.cpu_seconds())

        await asyncio.gather(snapshot(), *(client(number) for number in range(clients)))
        calls, images = await batch_counts(session, url)

    assert counts_before is not None
    calls -= counts_before[0]
    images -= counts_before[1]
    return LoadResult(
        throughput=len(latencies) / seconds,
        p50=float(np.percentile(latencies, 50)) if latencies else float("nan"),
        p99=float(np.percentile(latencies, 99)) if latencies else float("nan"),
        mean_batch=images / calls if calls else float("nan"),
        cpu_per_request=(cpu[1] - cpu[0]) / len(latencies) if latencies else float("nan"),
        errors=errors,
    )


def measure_modes(args: argparse.Namespace, model_dir: Path, bodies: list[bytes], work: Path):
    """Return {mode: {clients: [LoadResult per round]}}."""
    modes = {BATCHED: args.max_batch_size, BASELINE: 1}
    results: dict[str, dict[int, list[LoadResult]]] = {
        mode: {clients: [] for clients in args.clients} for mode in modes
    }
    for round_number in range(args.rounds):
        order = list(modes) if round_number % 2 == 0 else list(reversed(modes))
        for mode in order:
            log = work / f"server-{round_number}-{modes[mode]}.log"
            server = Server(model_dir, modes[mode], args.batch_timeout_ms, log)
            try:
                for clients in args.clients:
                    result = asyncio.run(
                        run_load(server, bodies, clients, args.warm_up_seconds, args.seconds)
                    )
                    logger.info(
                        "round %d, %s, %d clients: %.2f requests/s, p50 %.0f ms, p99 %.0f ms, "
                        "mean batch %.1f, server CPU %.0f ms per request, %d errors",
                        round_number + 1,
                        mode,
                        clients,
                        result.throughput,
                        result.p50 * 1000,
                        result.p99 * 1000,
                        result.mean_batch,
                        result.cpu_per_request * 1000,
                        result.errors,
                    )
                    results[mode][clients].append(result)
            finally:
                server.stop()
    return results


def bare_model(
    model_dir: Path, images: list[bytes], sizes: list[int], rounds: int = 3
) -> dict[int, tuple[float, float]]:
    """Return (images per second, CPU seconds per image) of the signature called directly.

    Each batch size runs on 2 x ``max(sizes)`` images per round, after one untimed call.
    The sizes take turns within each round, and the medians over rounds are returned.
    CPU time is this process's user + system time, which other jobs on the machine
    disturb far less than wall time.
    """
    import tensorflow as tf

    from deploy.export import load_serving

    signature = load_serving(model_dir / "1")
    batches = {size: tf.constant([images[i % len(images)] for i in range(size)]) for size in sizes}
    for batch in batches.values():
        signature(image_bytes=batch)
    measured: dict[int, list[tuple[float, float]]] = {size: [] for size in sizes}
    for _ in range(rounds):
        for size, batch in batches.items():
            repeats = 2 * max(sizes) // size
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(repeats):
                signature(image_bytes=batch)
            count = size * repeats
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            measured[size].append((count / wall, cpu / count))
    return {
        size: (
            statistics.median(rate for rate, _ in values),
            statistics.median(cpu for _, cpu in values),
        )
        for size, values in measured.items()
    }


# ---- request encoding: base64 JPEG against a list of floats ----


@dataclass(frozen=True)
class EncodingResult:
    """Median seconds over repeats, and the request size, of one request form."""

    name: str
    request_bytes: int
    client_encode: float
    server_parse: float
    end_to_end_plain: float  # posted to the plain handler of this script
    end_to_end_server: float | None  # posted to deploy.serve; None where it cannot be


async def measure_encoding(image: bytes, image_size: int, server_url: str) -> list[EncodingResult]:
    """Time both request forms against a plain handler, and base64 against the server too."""
    import tensorflow as tf

    from train.dataset import decode_image

    pixels = decode_image(tf.constant(image), image_size).numpy()
    parse_seconds: list[float] = []

    async def plain_handler(request: web.Request) -> web.Response:
        body = await request.read()
        start = time.perf_counter()
        instance = json.loads(body)["instances"][0]
        if isinstance(instance, dict):
            array = decode_image(tf.constant(base64.b64decode(instance["b64"])), image_size)
        else:
            array = np.asarray(instance, dtype=np.float32)
        parse_seconds.append(time.perf_counter() - start)
        return web.json_response({"shape": list(array.shape)})

    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_post("/parse", plain_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    plain_url = f"http://127.0.0.1:{runner.addresses[0][1]}/parse"

    def encode_b64() -> bytes:
        return request_body(image)

    def encode_floats() -> bytes:
        return json.dumps({"instances": [pixels.astype(np.float32).tolist()]}).encode()

    results = []
    try:
        async with aiohttp.ClientSession() as session:
            for name, encode, to_server in (
                ("base64 JPEG", encode_b64, True),
                ("JSON list of floats", encode_floats, False),
            ):
                parse_seconds.clear()
                encode_times, plain_times, server_times = [], [], []
                for _ in range(ENCODING_REPEATS):
                    start = time.perf_counter()
                    body = encode()
                    encode_times.append(time.perf_counter() - start)
                    plain_times.append(await _post_seconds(session, plain_url, body))
                    if to_server:
                        server_times.append(
                            await _post_seconds(session, server_url + PREDICT_PATH, body)
                        )
                results.append(
                    EncodingResult(
                        name=name,
                        request_bytes=len(body),
                        client_encode=statistics.median(encode_times),
                        server_parse=statistics.median(parse_seconds),
                        end_to_end_plain=statistics.median(plain_times),
                        end_to_end_server=statistics.median(server_times) if to_server else None,
                    )
                )
    finally:
        await runner.cleanup()
    return results


async def _post_seconds(session: aiohttp.ClientSession, url: str, body: bytes) -> float:
    start = time.perf_counter()
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"{url} returned {r.status}: {await r.text()}")
    return time.perf_counter() - start


# ---- report ----


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def median_result(results: list[LoadResult]) -> LoadResult:
    return LoadResult(
        throughput=statistics.median(result.throughput for result in results),
        p50=statistics.median(result.p50 for result in results),
        p99=statistics.median(result.p99 for result in results),
        mean_batch=statistics.median(result.mean_batch for result in results),
        cpu_per_request=statistics.median(result.cpu_per_request for result in results),
        errors=sum(result.errors for result in results),
    )


def print_report(args, results, bare, encoding, loads) -> None:
    print()
    print(f"Machine: {machine()}. Load average before: {loads[0]}; after: {loads[1]}.")
    print(
        f"Model: {args.model} at {args.image_size} px, random weights. Batching: "
        f"--max-batch-size {args.max_batch_size} --batch-timeout-ms {args.batch_timeout_ms:g}. "
        f"{args.seconds:g} s timed per cell after {args.warm_up_seconds:g} s warm-up, "
        f"median of {args.rounds} rounds."
    )
    medians = {mode: {c: median_result(r) for c, r in per.items()} for mode, per in results.items()}
    print_load_table(args.clients, medians)
    print_goals(args, medians, bare)
    print_encoding_table(encoding)


def print_load_table(clients_list: list[int], medians: dict[str, dict[int, LoadResult]]) -> None:
    print()
    print(
        "| clients | mode | requests/s | p50 | p99 | mean batch | server CPU per request | errors |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for clients in clients_list:
        for mode in (BATCHED, BASELINE):
            m = medians[mode][clients]
            print(
                f"| {clients} | {mode} | {m.throughput:.2f} | {m.p50 * 1000:.0f} ms "
                f"| {m.p99 * 1000:.0f} ms | {m.mean_batch:.1f} "
                f"| {m.cpu_per_request * 1000:.0f} ms | {m.errors} |"
            )
    print()
    print(
        "| clients | throughput, batching / baseline | p99, batching / baseline "
        "| server CPU per request, baseline / batching |"
    )
    print("| --- | --- | --- | --- |")
    for clients in clients_list:
        on, off = medians[BATCHED][clients], medians[BASELINE][clients]
        print(
            f"| {clients} | {on.throughput / off.throughput:.2f}x | {on.p99 / off.p99:.2f}x "
            f"| {off.cpu_per_request / on.cpu_per_request:.2f}x |"
        )


def print_goals(
    args, medians: dict[str, dict[int, LoadResult]], bare: dict[int, tuple[float, float]]
) -> None:
    most, fewest = max(args.clients), min(args.clients)
    throughput_ratio = medians[BATCHED][most].throughput / medians[BASELINE][most].throughput
    p99_ratio = medians[BATCHED][fewest].p99 / medians[BASELINE][fewest].p99
    throughput_met = "met" if throughput_ratio >= GOAL_THROUGHPUT else "not met"
    p99_met = "met" if p99_ratio <= GOAL_P99 else "not met"
    print()
    print(
        f"- Throughput at {most} clients: {throughput_ratio:.2f}x "
        f"(goal >= {GOAL_THROUGHPUT:g}x: {throughput_met})."
    )
    print(f"- p99 at {fewest} client(s): {p99_ratio:.2f}x (goal <= {GOAL_P99:g}x: {p99_met}).")
    (single_rate, single_cpu), (batch_rate, batch_cpu) = bare[1], bare[args.max_batch_size]
    print(
        f"- Bare model in this process: {single_rate:.2f} images/s and "
        f"{single_cpu * 1000:.0f} ms CPU per image in batches of 1, {batch_rate:.2f} images/s "
        f"and {batch_cpu * 1000:.0f} ms in batches of {args.max_batch_size} "
        f"({batch_rate / single_rate:.2f}x the rate, {single_cpu / batch_cpu:.2f}x less CPU)."
    )


def print_encoding_table(encoding: list[EncodingResult]) -> None:
    print()
    print(
        "| request form | request size | client encode | server parse | end to end, plain "
        "handler | end to end, deploy.serve |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for result in encoding:
        server = (
            f"{result.end_to_end_server * 1000:.1f} ms"
            if result.end_to_end_server is not None
            else "not accepted"
        )
        print(
            f"| {result.name} | {result.request_bytes / 1024:.1f} KiB "
            f"| {result.client_encode * 1000:.2f} ms | {result.server_parse * 1000:.2f} ms "
            f"| {result.end_to_end_plain * 1000:.1f} ms | {server} |"
        )


# ---- command line ----


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_serve", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--model", default="resnet50v2_pool", help="default: %(default)s")
    parser.add_argument("--image-size", type=int, default=224, help="pixels (default: 224)")
    parser.add_argument(
        "--clients",
        type=int,
        nargs="+",
        default=[1, 8, 32],
        help="numbers of concurrent clients (default: 1 8 32)",
    )
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="timed seconds per cell (default: 20)"
    )
    parser.add_argument(
        "--warm-up-seconds",
        type=float,
        default=3.0,
        help="untimed seconds before each cell (default: 3)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of both modes (default: 2)")
    parser.add_argument(
        "--max-batch-size", type=int, default=32, help="batching mode's batch (default: 32)"
    )
    parser.add_argument(
        "--batch-timeout-ms",
        type=float,
        default=5.0,
        help="batching mode's --batch-timeout-ms (default: 5)",
    )
    parser.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    if args.rounds < 1 or args.seconds <= 0 or min(args.clients) < 1:
        raise SystemExit("--rounds, --seconds and every --clients value must be positive")
    setup_logging()

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        logger.info("exporting %s at %d px", args.model, args.image_size)
        model_dir = export_model(args.model, args.image_size, work / "saved_model")
        rng = np.random.default_rng(SEED)
        images = [photo(rng) for _ in range(IMAGES)]
        bodies = [request_body(image) for image in images]

        before = load_average()
        results = measure_modes(args, model_dir, bodies, work)
        bare = bare_model(model_dir, images, sorted({1, args.max_batch_size}))
        encoding_image = photo(np.random.default_rng(SEED + 1))
        server = Server(model_dir, args.max_batch_size, args.batch_timeout_ms, work / "enc.log")
        try:
            encoding = asyncio.run(measure_encoding(encoding_image, args.image_size, server.url))
        finally:
            server.stop()
        print_report(args, results, bare, encoding, (before, load_average()))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
