"""Benchmark: extract + merge + relabel against a bare pyarrow parse of the same files.

Usage::

    .venv/bin/python -m bench.bench_prepare [--replica DIR] [--rounds 3] [--keep]

Makes a full-size replica of the Kaggle dataset with ``bench.make_replica`` (139 files,
551,585 rows, about 186 MB) unless ``--replica`` points at one, then alternates, for
each round, two measurements, each in a fresh Python process so that peak memory is
that measurement's own:

* **bare**: ``pyarrow.csv.read_csv`` of every file, all columns, nothing else. This is
  the lower bound: any pipeline has to parse the files at least once.
* **floor**: the least work that gives the same ``products.parquet`` for these
  well-formed files: parse the four needed columns, trim and check every URL against
  the canonical pattern, hash it, keep the first row of each hash, map the categories
  onto labels and write the table with the same Parquet settings. Two files at a time,
  as the pipeline does. No per-file outputs, statistics, repairs or checks.
* **pipeline**: ``run_extract``, ``run_merge`` and ``run_relabel`` into a new empty
  folder (so nothing is cached), in one process as ``make prepare`` runs them.

It prints the wall time and peak resident memory of each, their ratio, and the machine,
as a Markdown table for ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from data.scripts.common import PROJECT_ROOT, setup_logging

logger = logging.getLogger(__name__)

BARE = """
import json, resource, sys, time
from pathlib import Path
import pyarrow.csv as pacsv
started = time.perf_counter()
rows = 0
for path in sorted(Path(sys.argv[1]).glob("*.csv")):
    rows += pacsv.read_csv(path).num_rows
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "peak_bytes": peak, "rows": rows}))
"""

FLOOR = """
import json, resource, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import numpy as np, pandas as pd
import pyarrow as pa, pyarrow.compute as pc, pyarrow.csv as pacsv, pyarrow.parquet as pq
from data.scripts.relabel import DEFAULT_MAPPING, load_mapping, parquet_options
from data.scripts.urls import CANONICAL_URL_PATTERN, hex_keys, key_numbers
raw, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True)
mapping = load_mapping(DEFAULT_MAPPING)
started = time.perf_counter()
columns = ["name", "main_category", "sub_category", "image"]
options = pacsv.ConvertOptions(
    include_columns=columns, column_types={c: pa.string() for c in columns}
)
def read(path):
    table = pacsv.read_csv(path, convert_options=options)
    urls = pc.utf8_trim_whitespace(table.column("image"))
    canonical = pc.match_substring_regex(urls, CANONICAL_URL_PATTERN)
    urls = pc.if_else(canonical, urls, None).combine_chunks()
    rows = pa.array(np.arange(table.num_rows))
    return pa.table({
        "source_file": pa.repeat(pa.scalar(path.name), table.num_rows),
        "source_row": rows, "source_line": pc.add(rows, 2),
        "name": table.column("name"), "main_category": table.column("main_category"),
        "sub_category": table.column("sub_category"), "image_url": urls,
        "key_hash": pa.array(key_numbers(urls), pa.uint64()),
    })
with ThreadPoolExecutor(2) as pool:
    table = pa.concat_tables(pool.map(read, sorted(raw.glob("*.csv"))))
hashes = np.concatenate([c.to_numpy() for c in table.column("key_hash").chunks])
codes, uniques = pd.factorize(hashes)
seen = np.maximum.accumulate(codes)
first = np.ones(len(codes), dtype=bool)
first[1:] = seen[1:] > seen[:-1]
categories = pc.dictionary_encode(
    table.column("main_category").filter(pa.array(first)).combine_chunks()
)
folders = [mapping.label_of.get(c) for c in categories.dictionary.to_pylist()]
labels = pc.take(pa.array(folders, pa.string()), categories.indices)
keys = hex_keys(uniques)
source = table.drop_columns(["key_hash"])
schema = pa.schema([("key", pa.string()), *source.schema, ("label", pa.string())])
# Kept rows are filtered one file at a time and written in row groups of 64k rows, so
# memory is reused instead of holding a second copy of the table.
with pq.ParquetWriter(out / "products.parquet", schema, **parquet_options(schema.names)) as writer:
    start = done = 0
    pending = []
    for batch in source.to_batches():
        kept = batch.filter(pa.array(first[start : start + batch.num_rows]))
        start += batch.num_rows
        columns = [keys.slice(done, kept.num_rows), *kept.columns]
        columns.append(labels.slice(done, kept.num_rows))
        pending.append(pa.RecordBatch.from_arrays(columns, schema=schema))
        done += kept.num_rows
        if sum(b.num_rows for b in pending) >= 65536:
            writer.write_table(pa.Table.from_batches(pending))
            pending = []
    if pending:
        writer.write_table(pa.Table.from_batches(pending))
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "peak_bytes": peak, "rows": done}))
"""

PIPELINE = """
import json, logging, resource, sys, time
from pathlib import Path
from data.scripts.extract import run_extract
from data.scripts.merge import run_merge
from data.scripts.relabel import DEFAULT_MAPPING, run_relabel
logging.disable(logging.INFO)
raw, out = Path(sys.argv[1]), Path(sys.argv[2])
started = time.perf_counter()
extract = run_extract(raw, out)
after_extract = time.perf_counter()
merge = run_merge(out)
after_merge = time.perf_counter()
relabel = run_relabel(out, DEFAULT_MAPPING)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({
    "seconds": seconds,
    "extract_seconds": after_extract - started,
    "merge_seconds": after_merge - after_extract,
    "relabel_seconds": seconds - (after_merge - started),
    "peak_bytes": peak,
    "rows": extract["rows_written"],
    "unique_urls": relabel["rows"],
}))
"""


def measure(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh interpreter and return the JSON it prints."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TQDM_DISABLE": "1"}
    completed = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_prepare", description=__doc__)
    parser.add_argument("--replica", type=Path, default=None, help="existing replica folder")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: 3)")
    args = parser.parse_args(argv)
    setup_logging()

    work = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        replica = args.replica
        if replica is None:
            replica = work / "replica"
            subprocess.run(
                [sys.executable, "-m", "bench.make_replica", "--out", str(replica)],
                cwd=PROJECT_ROOT,
                check=True,
            )
        measure(BARE, str(replica))  # warm the page cache so both sides read from memory

        bare, floor, pipeline = [], [], []
        for round_number in range(args.rounds):
            bare.append(measure(BARE, str(replica)))
            out = work / f"floor-{round_number}"
            floor.append(measure(FLOOR, str(replica), str(out)))
            shutil.rmtree(out)
            out = work / f"out-{round_number}"
            pipeline.append(measure(PIPELINE, str(replica), str(out)))
            shutil.rmtree(out)
            logger.info(
                "round %d: bare %.2f s, floor %.2f s, pipeline %.2f s",
                round_number + 1,
                bare[-1]["seconds"],
                floor[-1]["seconds"],
                pipeline[-1]["seconds"],
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    bare_s = statistics.median(m["seconds"] for m in bare)
    floor_s = statistics.median(m["seconds"] for m in floor)
    pipe_s = statistics.median(m["seconds"] for m in pipeline)
    bare_mem = max(m["peak_bytes"] for m in bare)
    floor_mem = max(m["peak_bytes"] for m in floor)
    pipe_mem = max(m["peak_bytes"] for m in pipeline)
    stage = {
        name: statistics.median(m[f"{name}_seconds"] for m in pipeline)
        for name in ("extract", "merge", "relabel")
    }
    print(f"\nMachine: {machine()}; {pipeline[0]['rows']:,} rows, median of {args.rounds} rounds\n")
    print("| measurement | wall time | / bare | peak memory |")
    print("| --- | --- | --- | --- |")
    print(f"| bare `pyarrow.csv.read_csv` | {bare_s:.2f} s | 1.00x | {bare_mem / 2**20:.0f} MiB |")
    print(f"| floor | {floor_s:.2f} s | {floor_s / bare_s:.2f}x | {floor_mem / 2**20:.0f} MiB |")
    stages = ", ".join(f"{name} {seconds:.2f}" for name, seconds in stage.items())
    print(
        f"| extract + merge + relabel | {pipe_s:.2f} s ({stages}) | {pipe_s / bare_s:.2f}x "
        f"| {pipe_mem / 2**20:.0f} MiB |"
    )
    print(f"\nPipeline / floor: {pipe_s / floor_s:.2f}x time, {pipe_mem / floor_mem:.2f}x memory")
    print(f"\nUnique URLs kept: {pipeline[0]['unique_urls']:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
