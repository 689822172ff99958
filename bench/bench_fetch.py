"""Benchmark: our fetch stage against img2dataset on one local server, and the bare limit.

Usage::

    .venv/bin/python -m bench.bench_fetch [--images 3000] [--rounds 3] [--concurrency 16 32 64]
    .venv/bin/python -m bench.bench_fetch --quick   # 200 images, 1 round: a smoke test

Steps:

1. **Images.** N distinct photo-like JPEGs (smooth gradient, filled shapes, Gaussian
   noise), 300-600 px a side, 20-80 KB each, generated from ``--seed`` into a
   temporary folder. The script prints their size distribution.
2. **Server.** ``--server-processes`` aiohttp processes serve the folder with
   ``web.static`` on one port of 127.0.0.1 (``SO_REUSEPORT`` spreads the connections).
   They are separate processes, so their CPU time is measured apart from the downloaders'.
3. **Ours.** ``python -m data.scripts.fetch --image-size 256 --resize-mode keep-ratio``
   on a ``products.parquet`` of those URLs, into a new folder each run. Every row of
   the manifest must be ``ok``.
4. **img2dataset.** Its CLI, from its own virtualenv (it pins OpenCV < 5 and
   pandas < 3, which the project's environment does not meet), created on first use
   in ``--img2dataset-venv``. Settings match ours: longer side 256 (its
   ``keep_ratio_largest``, because its ``keep_ratio`` scales the *shorter* side to 256),
   INTER_AREA, JPEG quality 90, SHA-256 of each body, no EXIF extraction, one process
   per core. With ``output_format files`` it also writes a JSON file per image and a
   Parquet file per shard, which cannot be turned off. Every URL must count as a
   success in its ``*_stats.json`` files.
5. **Bare limit.** In one thread of a fresh process, over the same files: (a) full
   ``cv2.imdecode`` + INTER_AREA resize to a longer side of 256 + ``cv2.imencode`` at
   quality 90. (b) Our ``process_image`` with the fetch settings. (c) Pipeline (a)
   plus writing each result to a new file. Throughput is taken from the thread's CPU
   time and multiplied by ``os.cpu_count()``. (a) and (b) leave out HTTP, the server,
   hashing and file writes, so no downloader can reach them.

A warm-up run of each downloader comes first and is not counted. Then each round runs
ours (once per ``--concurrency`` value) and img2dataset, in an order that swaps every
round, and the bare measurement. Reported numbers are medians over rounds.
Wall time is end to end, interpreter start-up included. CPU time is user + system of
the downloader process and its waited-for children (``RUSAGE_CHILDREN`` deltas); the
server's CPU time is read from ``/proc/<pid>/stat``. The whole machine's busy time
from ``/proc/stat``, less those two, is the load from other processes. Because that
load slows wall time, the table also gives each downloader's CPU-bound ceiling:
cores / (its CPU ms + the server's CPU ms per image).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.bench_prepare import machine
from data.scripts.common import PROJECT_ROOT, setup_logging
from data.scripts.merge import url_key

logger = logging.getLogger(__name__)

IMAGE_SIZE = 256
JPEG_QUALITY = 90  # the default of ImageCheckConfig.jpeg_quality, and img2dataset gets the same
LABELS = ("books", "kitchen", "shoes", "toys")
MIN_SIDE, MAX_SIDE = 300, 600  # pixels, drawn uniformly per side
MIN_BYTES, MAX_BYTES = 20 * 1024, 80 * 1024
IMG2DATASET_VERSION = "1.47.0"
IMG2DATASET_VENV = PROJECT_ROOT / "bench" / ".cache" / "img2dataset-venv"  # git-ignored
SERVER_CPU_SATURATED = 0.9  # CPU seconds per wall second of one server process

SERVER = """
import functools, sys
from aiohttp import web
app = web.Application()
app.router.add_static("/img/", sys.argv[1])
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), reuse_port=True,
            access_log=None, print=functools.partial(print, flush=True))
"""

BARE = """
import json, sys, time
from pathlib import Path
import cv2
import numpy as np
from data.scripts.images import ImageCheckConfig, process_image
cv2.setNumThreads(1)
bodies = [p.read_bytes() for p in sorted(Path(sys.argv[1]).glob("*.jpg"))]
size, quality, out = int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
config = ImageCheckConfig(image_size=size, resize_mode="keep-ratio", jpeg_quality=quality)

def cv2_pipeline(body):
    image = cv2.imdecode(np.frombuffer(body, dtype=np.uint8), cv2.IMREAD_COLOR)
    height, width = image.shape[:2]
    scale = size / max(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = cv2.resize(image, new_size, interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1]

def ours(body):
    return process_image(body, config)

def cv2_and_file(body):
    global written
    written += 1
    (out / f"{written:06d}.jpg").write_bytes(cv2_pipeline(body))

written = 0
result = {}
for name, function in (("cv2", cv2_pipeline), ("process_image", ours), ("cv2_file", cv2_and_file)):
    for body in bodies[:20]:
        function(body)
    started_cpu, started = time.thread_time(), time.perf_counter()
    for body in bodies:
        function(body)
    result[name] = {"cpu_seconds": time.thread_time() - started_cpu,
                    "wall_seconds": time.perf_counter() - started, "images": len(bodies)}
print(json.dumps(result))
"""


# ---- the image set ----


def make_photo(seed: int, index: int) -> bytes:
    """Return one photo-like JPEG, usually 20-80 KB, the same for the same ``(seed, index)``."""
    rng = np.random.default_rng([seed, index])
    height, width = (int(side) for side in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))

    # a smooth two-colour gradient at a random angle, as a studio backdrop
    start, end = (rng.uniform(40, 220, 3).astype(np.float32) for _ in range(2))
    angle = rng.uniform(0, np.pi)
    ramp = np.add.outer(
        np.arange(height, dtype=np.float32) * np.sin(angle),
        np.arange(width, dtype=np.float32) * np.cos(angle),
    )
    ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-6)
    image = (start + (end - start) * ramp[..., None]).astype(np.uint8)

    # filled shapes with soft edges, then sensor-like noise
    for _ in range(int(rng.integers(3, 9))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            radius = int(rng.integers(10, min(width, height) // 3))
            cv2.circle(image, centre, radius, colour, -1, cv2.LINE_AA)
        else:
            corners = rng.integers(0, [width, height], size=(2, 2))
            cv2.rectangle(
                image, tuple(map(int, corners[0])), tuple(map(int, corners[1])), colour, -1
            )
    image = cv2.GaussianBlur(image, (0, 0), 1.5)
    noise = rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(4, 9)
    image = cv2.add(image, noise, dtype=cv2.CV_8U)
    return _encode_within(image)


def _encode_within(image: np.ndarray) -> bytes:
    """Encode as JPEG, stepping the quality until the file is 20-80 KB (or the steps run out)."""
    quality = 90
    for _ in range(8):
        encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1]
        if encoded.size > MAX_BYTES - 2048 and quality > 50:
            quality -= 6
        elif encoded.size < MIN_BYTES + 2048 and quality < 98:
            quality += 3
        else:
            break
    return encoded.tobytes()


def _write_photo(folder: Path, seed: int, index: int) -> int:
    data = make_photo(seed, index)
    (folder / f"{index:06d}.jpg").write_bytes(data)
    return len(data)


def make_image_set(folder: Path, count: int, seed: int) -> list[int]:
    """Write ``count`` JPEGs (``000000.jpg``...) to ``folder`` and return their sizes in bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        return list(
            pool.map(_write_photo, [folder] * count, [seed] * count, range(count), chunksize=50)
        )


def describe_sizes(sizes: list[int]) -> str:
    kib = np.array(sizes) / 1024
    low, p5, median, p95, high = np.percentile(kib, [0, 5, 50, 95, 100])
    return (
        f"{len(sizes):,} JPEGs, {MIN_SIDE}-{MAX_SIDE} px a side, file size min {low:.1f} KiB, "
        f"p5 {p5:.1f}, median {median:.1f}, p95 {p95:.1f}, max {high:.1f} KiB, "
        f"total {kib.sum() / 1024:.1f} MiB"
    )


# ---- the server ----


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_servers(folder: Path, port: int, count: int) -> list[subprocess.Popen]:
    """Start ``count`` aiohttp processes on 127.0.0.1:``port`` and return once all listen."""
    servers = []
    for _ in range(count):
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(folder), str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        servers.append(server)
        # run_app prints its "Running on" line once the socket listens
        line = server.stdout.readline()
        if "Running on" not in line:
            stop_servers(servers)
            raise RuntimeError(f"image server failed to start, and its first output was {line!r}")
    return servers


def stop_servers(servers: list[subprocess.Popen]) -> None:
    for server in servers:
        server.terminate()
    for server in servers:
        server.wait(timeout=10)


def process_cpu_seconds(pid: int) -> float:
    """Return user + system CPU seconds of a running process, from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """Return the CPU seconds that all cores have spent busy since boot (``/proc/stat``)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle and iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# ---- one timed downloader run ----


@dataclass
class Run:
    """Wall and CPU seconds of one downloader run, and of the servers during it."""

    wall_seconds: float
    cpu_seconds: float
    server_cpu_seconds: list[float]  # one entry per server process
    machine_busy_seconds: float
    images: int

    @property
    def images_per_second(self) -> float:
        return self.images / self.wall_seconds

    @property
    def cpu_ms_per_image(self) -> float:
        return 1000 * self.cpu_seconds / self.images


def timed_run(command: list[str], env: dict[str, str], servers: list[subprocess.Popen]) -> Run:
    """Run ``command`` and measure it. The caller fills in ``images``.

    Raises CalledProcessError, after printing the end of the command's output, if it fails.
    """
    server_before = [process_cpu_seconds(s.pid) for s in servers]
    busy_before = machine_busy_seconds()
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()

    completed = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)

    wall = time.perf_counter() - started
    usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy = machine_busy_seconds() - busy_before
    server = [process_cpu_seconds(s.pid) - b for s, b in zip(servers, server_before)]
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout[-4000:] + completed.stderr[-4000:])
        completed.check_returncode()
    cpu = (usage_after.ru_utime - usage_before.ru_utime) + (
        usage_after.ru_stime - usage_before.ru_stime
    )
    return Run(wall, cpu, server, busy, images=0)


# ---- the two downloaders ----


def write_products(processed: Path, urls: list[str]) -> None:
    processed.mkdir(parents=True)
    table = pa.table(
        {
            "key": [url_key(url) for url in urls],
            "image_url": urls,
            "label": [LABELS[i % len(LABELS)] for i in range(len(urls))],
        }
    )
    pq.write_table(table, processed / "products.parquet")


def run_ours(work: Path, products: Path, concurrency: int, servers: list[subprocess.Popen]) -> Run:
    """Fetch every URL of ``products`` into a new folder, and raise if any row is not ok."""
    processed = Path(tempfile.mkdtemp(prefix="ours-", dir=work))
    shutil.copy(products, processed / "products.parquet")
    command = [
        sys.executable,
        "-m",
        "data.scripts.fetch",
        *("--processed-dir", str(processed), "--allow-network", "127.0.0.1/32"),
        *("--image-size", str(IMAGE_SIZE), "--resize-mode", "keep-ratio"),
        *("--jpeg-quality", str(JPEG_QUALITY)),
        *("--concurrency", str(concurrency), "--per-host", str(concurrency)),
    ]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TQDM_DISABLE": "1"}
    run = timed_run(command, env, servers)

    statuses = pq.read_table(processed / "manifest.parquet", columns=["status"]).column("status")
    counts = statuses.value_counts().to_pylist()
    run.images = sum(c["counts"] for c in counts if c["values"] == "ok")
    if run.images != len(statuses):
        raise RuntimeError(f"our fetch stored {run.images} of {len(statuses)} images: {counts}")
    check_longer_side(sorted((processed / "images").rglob("*.jpg")), "ours")
    shutil.rmtree(processed)
    return run


def run_img2dataset(
    work: Path, urls_file: Path, count: int, args: argparse.Namespace, servers: list
) -> Run:
    """Download every URL of ``urls_file`` with img2dataset, and raise if any one failed."""
    output = Path(tempfile.mkdtemp(prefix="img2dataset-", dir=work)) / "out"
    processes = os.cpu_count() or 1
    command = [
        str(args.img2dataset_venv / "bin" / "img2dataset"),
        *(f"--url_list={urls_file}", "--input_format=txt", f"--output_folder={output}"),
        *("--output_format=files", "--encode_format=jpg", f"--encode_quality={JPEG_QUALITY}"),
        *(f"--image_size={IMAGE_SIZE}", "--resize_mode=keep_ratio_largest"),
        *(f"--processes_count={processes}", f"--thread_count={args.img2dataset_threads}"),
        # two shards per process, so that every process has work and none waits on the last
        f"--number_sample_per_shard={max(1, -(-count // (2 * processes)))}",
        *("--extract_exif=False", "--compute_hash=sha256"),
        *("--timeout=10", "--retries=0", "--enable_wandb=False"),
    ]
    env = {
        **{k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "NO_PROXY": "127.0.0.1",
    }
    run = timed_run(command, env, servers)

    stats = [json.loads(p.read_text()) for p in output.glob("*_stats.json")]
    run.images = sum(s["successes"] for s in stats)
    if run.images != count:
        errors = [s.get("status_dict") for s in stats]
        raise RuntimeError(f"img2dataset stored {run.images} of {count} images: {errors}")
    check_longer_side(sorted(output.rglob("*.jpg")), "img2dataset")
    shutil.rmtree(output.parent)
    return run


def check_longer_side(paths: list[Path], name: str) -> None:
    """Raise unless a sample of the stored images has a longer side of IMAGE_SIZE."""
    for path in paths[:: max(1, len(paths) // 10)]:
        height, width = cv2.imread(str(path)).shape[:2]
        if max(width, height) != IMAGE_SIZE:
            raise RuntimeError(f"{name} stored {path} at {width}x{height}, expected {IMAGE_SIZE}")


def ensure_img2dataset(venv: Path) -> None:
    """Create img2dataset's own virtualenv in ``venv`` unless it exists."""
    if (venv / "bin" / "img2dataset").exists():
        return
    logger.info("installing img2dataset %s into %s", IMG2DATASET_VERSION, venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "--quiet"]
    subprocess.run([*pip, f"img2dataset=={IMG2DATASET_VERSION}"], check=True)


def measure_bare(work: Path, images: Path) -> dict[str, dict[str, float]]:
    """Run BARE in a fresh process and return the CPU and wall seconds of each pipeline."""
    out = Path(tempfile.mkdtemp(prefix="bare-", dir=work))
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    command = [sys.executable, "-c", BARE, str(images), str(IMAGE_SIZE), str(JPEG_QUALITY)]
    completed = subprocess.run(
        [*command, str(out)], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, check=True
    )
    shutil.rmtree(out)
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ---- the rounds ----


def run_rounds(args: argparse.Namespace, work: Path, images: Path, servers: list) -> dict:
    """Warm up, then alternate the downloaders for ``args.rounds`` rounds and return every run."""
    port = args.port
    urls = [f"http://127.0.0.1:{port}/img/{i:06d}.jpg" for i in range(args.images)]
    products = work / "products" / "products.parquet"
    write_products(products.parent, urls)
    urls_file = work / "urls.txt"
    urls_file.write_text("\n".join(urls) + "\n")

    def ours(concurrency: int) -> Run:
        return run_ours(work, products, concurrency, servers)

    def theirs() -> Run:
        return run_img2dataset(work, urls_file, args.images, args, servers)

    ours(args.concurrency[0])
    theirs()
    runs: dict = {"ours": {c: [] for c in args.concurrency}, "img2dataset": [], "bare": []}
    for round_number in range(args.rounds):
        steps = [("ours", c) for c in args.concurrency] + [("img2dataset", None)]
        if round_number % 2:
            steps.reverse()
        for name, concurrency in steps:
            if name == "ours":
                runs["ours"][concurrency].append(run := ours(concurrency))
            else:
                runs["img2dataset"].append(run := theirs())
            log_run(round_number, name if concurrency is None else f"ours c={concurrency}", run)
        runs["bare"].append(measure_bare(work, images))
    return runs


def log_run(round_number: int, name: str, run: Run) -> None:
    server_share = sum(run.server_cpu_seconds) / run.wall_seconds
    other = run.machine_busy_seconds - run.cpu_seconds - sum(run.server_cpu_seconds)
    logger.info(
        "round %d, %s: %.1f images/s, %.2f CPU ms per image, server %.2f cores, "
        "other load %.1f CPU s",
        round_number + 1,
        name,
        run.images_per_second,
        run.cpu_ms_per_image,
        server_share,
        other,
    )


# ---- the report ----


def median_run(runs: list[Run]) -> dict[str, float]:
    """Medians of one downloader's runs, with the server's and other processes' CPU share."""
    server_share = [sum(r.server_cpu_seconds) / r.wall_seconds for r in runs]
    busiest = [max(r.server_cpu_seconds) / r.wall_seconds for r in runs]
    other = [
        (r.machine_busy_seconds - r.cpu_seconds - sum(r.server_cpu_seconds)) / r.wall_seconds
        for r in runs
    ]
    return {
        "images_per_second": statistics.median(r.images_per_second for r in runs),
        "cpu_ms_per_image": statistics.median(r.cpu_ms_per_image for r in runs),
        "server_cores": statistics.median(server_share),
        "busiest_server_core": max(busiest),
        "server_cpu_ms_per_image": statistics.median(
            1000 * sum(r.server_cpu_seconds) / r.images for r in runs
        ),
        "other_cores": statistics.median(other),
    }


def bare_limits(bare: list[dict]) -> dict[str, dict[str, float]]:
    """Per-core and all-core images/s of each bare pipeline, medians over rounds."""
    cores = os.cpu_count() or 1
    limits = {}
    for name in ("cv2", "process_image", "cv2_file"):
        per_core = statistics.median(m[name]["images"] / m[name]["cpu_seconds"] for m in bare)
        limits[name] = {"per_core": per_core, "all_cores": per_core * cores}
    return limits


def print_report(args: argparse.Namespace, sizes: list[int], runs: dict, load: str) -> None:
    cores = os.cpu_count() or 1
    theirs = median_run(runs["img2dataset"])
    limits = bare_limits(runs["bare"])
    print(f"\nMachine: {machine()}; load average before and after: {load}")
    print(f"Images: {describe_sizes(sizes)}; median of {args.rounds} rounds after a warm-up.")
    print(
        f"Settings: longer side {IMAGE_SIZE} px, INTER_AREA, JPEG quality {JPEG_QUALITY}; "
        f"{args.server_processes} aiohttp server process(es) on 127.0.0.1; img2dataset "
        f"{IMG2DATASET_VERSION} with {cores} processes x {args.img2dataset_threads} threads, "
        "keep_ratio_largest, output_format files, extract_exif False.\n"
    )
    # The ceiling is what the CPU time allows when the downloader and the server have
    # every core to themselves, so it does not move with the load from other processes.
    print(
        "| downloader | images/s | ours / img2dataset | CPU ms per image | server CPU ms "
        "per image | CPU-bound ceiling, images/s | other processes, cores |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = {"img2dataset": theirs}
    ours_by_concurrency = {c: median_run(r) for c, r in runs["ours"].items()}
    for concurrency, ours in ours_by_concurrency.items():
        rows[f"ours, concurrency {concurrency}"] = ours
    for name, row in rows.items():
        ratio = row["images_per_second"] / theirs["images_per_second"]
        ceiling = 1000 * cores / (row["cpu_ms_per_image"] + row["server_cpu_ms_per_image"])
        print(
            f"| {name} | {row['images_per_second']:.0f} | {ratio:.2f}x "
            f"| {row['cpu_ms_per_image']:.2f} | {row['server_cpu_ms_per_image']:.2f} "
            f"| {ceiling:.0f} | {row['other_cores']:.2f} |"
        )

    best = max(ours_by_concurrency, key=lambda c: ours_by_concurrency[c]["images_per_second"])
    best_rate = ours_by_concurrency[best]["images_per_second"]
    print(f"\n| bare limit ({cores} cores) | images/s | per core | limit / ours (c={best}) |")
    print("| --- | --- | --- | --- |")
    labels = {
        "cv2": "cv2 decode + INTER_AREA resize + encode",
        "process_image": "`process_image`, same settings",
        "cv2_file": "cv2 pipeline + writing each result to a new file",
    }
    for name, limit in limits.items():
        print(
            f"| {labels[name]} | {limit['all_cores']:.0f} | {limit['per_core']:.0f} "
            f"| {limit['all_cores'] / best_rate:.2f}x |"
        )
    print_notes(theirs, ours_by_concurrency, best, limits)


def print_notes(theirs: dict, ours_by_concurrency: dict, best: int, limits: dict) -> None:
    """Print the goal check, the server's share and the load from other processes."""
    ours = ours_by_concurrency[best]
    ratio = ours["images_per_second"] / theirs["images_per_second"]
    to_limit = limits["cv2"]["all_cores"] / ours["images_per_second"]
    print(
        f"\nGoal: ours >= 1.5x img2dataset ({ratio:.2f}x, "
        f"{'met' if ratio >= 1.5 else 'not met'}) and within 1.5x of the cv2 bare limit "
        f"({to_limit:.2f}x, {'met' if to_limit <= 1.5 else 'not met'})."
    )

    cores = os.cpu_count() or 1
    ceiling_ratio = (theirs["cpu_ms_per_image"] + theirs["server_cpu_ms_per_image"]) / (
        ours["cpu_ms_per_image"] + ours["server_cpu_ms_per_image"]
    )
    print(
        f"Ratio of the CPU-bound ceilings, ours (c={best}) / img2dataset: "
        f"{ceiling_ratio:.2f}x. It is the better guide when other processes took CPU."
    )
    everything = [theirs, *ours_by_concurrency.values()]
    busiest = max(r["busiest_server_core"] for r in everything)
    if busiest >= SERVER_CPU_SATURATED:
        print(
            f"WARNING: one server process used {busiest:.2f} of a core, so the server may "
            "be the bottleneck. Rerun with more --server-processes."
        )
    else:
        print(f"The busiest server process used {busiest:.2f} of a core, so it was no bottleneck.")

    # A downloader that spent no CPU beyond the bare pipeline and one file write per
    # image would still share the cores with the server.
    floor_ms = 1000 / limits["cv2_file"]["per_core"] + ours["server_cpu_ms_per_image"]
    print(
        f"Estimated ceiling with the server on the same cores: {cores} cores / "
        f"({floor_ms:.2f} CPU ms per image for cv2 + file write + server) = "
        f"{1000 * cores / floor_ms:.0f} images/s."
    )

    other = max(r["other_cores"] for r in everything)
    print(
        f"Other processes on the machine used up to {other:.2f} cores during the runs "
        "(median over rounds, for the downloader setting where it was highest)."
    )


# ---- command line ----


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_fetch",
        description="Compare the fetch stage with img2dataset on a local server.",
    )
    parser.add_argument("--images", type=int, default=3000, help="images served (default: 3000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="image generator seed (default: 0)")
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[32],
        help="our --concurrency and --per-host; several values are each run (default: 32)",
    )
    parser.add_argument(
        "--img2dataset-threads",
        type=int,
        default=32,
        help="img2dataset thread_count, per process (default: 32)",
    )
    parser.add_argument(
        "--img2dataset-venv",
        type=Path,
        default=IMG2DATASET_VENV,
        help="img2dataset's virtualenv, created when missing "
        "(default: bench/.cache/img2dataset-venv)",
    )
    parser.add_argument(
        "--server-processes",
        type=int,
        default=2,
        help="aiohttp processes serving the images (default: 2)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 200 images and 1 round")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder with the images"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.rounds = 200, 1
    for name in ("images", "rounds", "server_processes", "img2dataset_threads"):
        if getattr(args, name) < 1:
            option = "--" + name.replace("_", "-")
            parser.error(f"{option} must be 1 or more, received {getattr(args, name)}")
    if min(args.concurrency) < 1:
        parser.error(f"--concurrency values must be 1 or more, received {args.concurrency}")
    setup_logging()
    ensure_img2dataset(args.img2dataset_venv)
    load_before = Path("/proc/loadavg").read_text().split()[:3]

    work = Path(tempfile.mkdtemp(prefix="bench-fetch-"))
    images = work / "images"
    servers = []
    try:
        started = time.perf_counter()
        sizes = make_image_set(images, args.images, args.seed)
        logger.info("generated in %.1f s: %s", time.perf_counter() - started, describe_sizes(sizes))
        args.port = free_port()
        servers = start_servers(images, args.port, args.server_processes)
        runs = run_rounds(args, work, images, servers)
    finally:
        stop_servers(servers)
        if args.keep:
            logger.info("kept %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)

    load_after = Path("/proc/loadavg").read_text().split()[:3]
    print_report(args, sizes, runs, f"{' '.join(load_before)} / {' '.join(load_after)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
