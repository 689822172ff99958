"""Run pipeline stages in order as Make targets, skipping those whose inputs did not change.

``make demo`` (``data.scripts.demo``) and ``make all`` (this module's command line) run
the same chain of Make targets that a user runs one at a time. Each :class:`Step` names a
target and its variables. A line ``NAME=value`` that a step prints (train prints
``RUN=<run folder>``) is kept as ``{name}`` for the variables of later steps.

A step with ``outputs`` is skipped when they exist and its ``inputs`` and Make variables
have the same SHA-256 digests as when it last succeeded (``state.json``). The stages
rewrite their files on every run, so modification times cannot tell this. Steps without
``outputs`` always run, because their stages resume by themselves (extract reads only
changed files, fetch only URLs not done yet).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from data.scripts.common import PROJECT_ROOT, write_json

logger = logging.getLogger(__name__)

PRINTED_VALUE_RE = re.compile(r"^([A-Z][A-Z0-9_]*)=(\S.*)$")
INTERRUPT_GRACE_S = 30.0


@dataclasses.dataclass(frozen=True)
class Step:
    """One stage of the demo: a Make target run with the demo's variables.

    ``variables``, ``outputs``, ``inputs`` and the paths in ``shows`` are templates filled
    from the context: ``{raw_dir}``, ``{processed_dir}``, ``{runs_dir}``, ``{review_dir}``,
    and ``{name}`` for every ``NAME=value`` line an earlier step printed (``{run}``).
    A step with ``outputs`` is skipped when they exist and its inputs and variables are
    unchanged since it last succeeded. ``shows`` lists (what, path) for the closing lines.
    """

    name: str
    target: str
    variables: Mapping[str, str] = dataclasses.field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    shows: tuple[tuple[str, str], ...] = ()
    # The Make variables the skip check compares, besides ``variables``; None compares all.
    uses: tuple[str, ...] | None = None


class StepFailed(RuntimeError):
    """A step's Make target ended with a non-zero exit code."""

    def __init__(self, step: str, returncode: int) -> None:
        super().__init__(f"step {step} failed with exit code {returncode}")
        self.step = step
        self.returncode = returncode


def fill(template: str, context: Mapping[str, str], step: Step) -> str:
    try:
        return template.format(**context)
    except KeyError as exc:
        raise RuntimeError(
            f"step {step.name} needs {{{exc.args[0]}}}, which no earlier step printed as "
            f"{exc.args[0].upper()}=<value>; check the order of STEPS"
        ) from None


def file_digest(path: Path) -> str | None:
    """SHA-256 of a file's bytes, or None when it does not exist."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def step_fingerprint(step: Step, context: Mapping[str, str], variables: Mapping[str, str]) -> str:
    """Digest of a step's variables and the bytes of its inputs."""
    if step.uses is not None:
        variables = {
            name: value
            for name, value in variables.items()
            if name in step.uses or name in step.variables
        }
    parts: dict[str, Any] = {"variables": dict(variables)}
    for template in step.inputs:
        path = Path(fill(template, context, step))
        parts[str(path)] = file_digest(PROJECT_ROOT / path)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def is_up_to_date(
    step: Step, context: Mapping[str, str], variables: Mapping[str, str], state: dict
) -> bool:
    """Return True when the step has outputs, they exist, and its fingerprint is unchanged."""
    entry = state.get(step.name)
    if not step.outputs or not isinstance(entry, dict):
        return False
    try:
        fingerprint = step_fingerprint(step, context, variables)
        outputs = [PROJECT_ROOT / fill(path, context, step) for path in step.outputs]
    except RuntimeError:  # a value that no step has printed yet
        return False
    return entry.get("fingerprint") == fingerprint and all(path.exists() for path in outputs)


def run_make(
    make: str, target: str, variables: Mapping[str, str], env: Mapping[str, str]
) -> tuple[int, dict[str, str]]:
    """Run ``make target VAR=value ...`` in the project root, echoing its output.

    Returns the exit code and every ``NAME=value`` line of its standard output. On Ctrl-C
    the child gets SIGINT (then SIGKILL after ``INTERRUPT_GRACE_S``) before this re-raises.
    """
    command = [make, target, *(f"{name}={value}" for name, value in variables.items())]
    printed: dict[str, str] = {}
    process = subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=dict(env), stdout=subprocess.PIPE, text=True, bufsize=1
    )
    try:
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            match = PRINTED_VALUE_RE.match(line.rstrip("\n"))
            if match:
                printed[match.group(1).lower()] = match.group(2).strip()
        return process.wait(), printed
    except BaseException:
        stop_child(process)
        raise
    finally:
        process.stdout.close()


def stop_child(process: subprocess.Popen) -> None:
    """Interrupt a child Make (it passes SIGINT on to its stage), then kill it if it hangs."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(INTERRUPT_GRACE_S)
    except subprocess.TimeoutExpired:
        logger.warning(
            "make %s did not stop within %.0f s; killing it",
            process.args[1],
            INTERRUPT_GRACE_S,
        )
        process.kill()
        process.wait()


def run_steps(
    steps: tuple[Step, ...],
    context: dict[str, str],
    variables: Mapping[str, str],
    record: dict[str, Any],
    *,
    state_path: Path,
    make: str = "make",
) -> None:
    """Run ``steps`` in order, appending each one's result to ``record["steps"]``.

    ``state_path`` keeps the fingerprint of every step that succeeded, for the skip check of
    the next run. Raises StepFailed at the first failing step; the steps after it do not run.
    """
    state = read_json(state_path) or {}
    # Weights & Biases writes offline unless the caller sets WANDB_MODE, so no login is needed.
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    for number, step in enumerate(steps, 1):
        step_variables = {
            **variables,
            **{k: fill(v, context, step) for k, v in step.variables.items()},
        }
        # A skipped step's printed values (train's RUN=) are what its outputs are named by.
        known = {**context, **(state.get(step.name) or {}).get("printed", {})}
        result: dict[str, Any] = {"name": step.name, "target": step.target}
        record["steps"].append(result)
        if is_up_to_date(step, known, step_variables, state):
            logger.info("step %d/%d %s is up to date; skipped", number, len(steps), step.name)
            result.update(status="skipped", seconds=0.0)
            context.update(state[step.name].get("printed", {}))
            continue

        logger.info("step %d/%d %s: make %s", number, len(steps), step.name, step.target)
        started = time.perf_counter()
        returncode, printed = run_make(make, step.target, step_variables, env)
        result.update(seconds=round(time.perf_counter() - started, 1), returncode=returncode)
        if returncode != 0:
            result["status"] = "failed"
            raise StepFailed(step.name, returncode)
        result["status"] = "ran"
        context.update(printed)
        if step.outputs:
            # The fingerprint again, because a step may print a value its inputs depend on.
            # The printed values are kept for later steps when a rerun skips this step.
            fingerprint = step_fingerprint(step, context, step_variables)
            state[step.name] = {"fingerprint": fingerprint, "printed": printed}
            write_json(state_path, state)
        logger.info("step %s done in %.1f s", step.name, result["seconds"])


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ---- make all: the chain on the real dataset ----

# The Make variables that `make all` passes to every step, and that its skip check compares.
ALL_VARIABLES = (
    "DATA_VERSION",
    "RAW_DIR",
    "PROCESSED_DIR",
    "MAPPING",
    "UNKNOWN_LABEL",
    "KAGGLE_DATASET",
    "IMAGE_SIZE",
    "RESIZE_MODE",
    "CONCURRENCY",
    "PER_HOST",
    "FETCH_ARGS",
    "MODEL",
    "WEIGHTS",
    "EPOCHS",
    "FINE_TUNE_EPOCHS",
    "BATCH_SIZE",
    "RUNS_DIR",
    "TRAIN_ARGS",
    "REVIEW_DIR",
    "FOLDS",
    "REPORT_DIR",
)

# What train and find-label-issues read, so that a change to CONCURRENCY reruns neither.
TRAIN_VARIABLES = (
    "PROCESSED_DIR",
    "MODEL",
    "WEIGHTS",
    "IMAGE_SIZE",
    "EPOCHS",
    "FINE_TUNE_EPOCHS",
    "BATCH_SIZE",
    "RUNS_DIR",
    "TRAIN_ARGS",
)
LABEL_ISSUE_VARIABLES = (
    "PROCESSED_DIR",
    "MODEL",
    "WEIGHTS",
    "IMAGE_SIZE",
    "FOLDS",
    "BATCH_SIZE",
    "REVIEW_DIR",
)
ALL_STEPS: tuple[Step, ...] = (
    Step("download", "download"),
    Step("extract", "extract"),
    Step("merge", "merge"),
    Step("fetch", "fetch"),
    Step(
        "train",
        "train",
        outputs=("{run}/model.keras",),
        inputs=("{processed_dir}/manifest.parquet",),
        shows=(("run folder", "{run}"),),
        uses=TRAIN_VARIABLES,
    ),
    Step(
        "evaluate",
        "evaluate",
        variables={"RUN": "{run}"},
        outputs=("{run}/evaluation/metrics.json",),
        inputs=("{run}/model.keras", "{run}/splits.csv"),
        shows=(("evaluation", "{run}/evaluation"),),
        uses=(),
    ),
    Step(
        "find-label-issues",
        "find-label-issues",
        outputs=("{review_dir}/candidates.csv",),
        inputs=("{processed_dir}/manifest.parquet",),
        shows=(("label issues", "{review_dir}/candidates.csv"),),
        uses=LABEL_ISSUE_VARIABLES,
    ),
    Step(
        "export",
        "export",
        variables={"RUN": "{run}"},
        outputs=("{run}/export/export.json",),
        inputs=("{run}/model.keras",),
        shows=(("exported model", "{run}/export"),),
        uses=(),
    ),
    Step(
        "serve",
        "serve-check",
        variables={"RUN": "{run}"},
        shows=(("served answer", "{prediction} (probability {probability})"),),
    ),
    Step(
        "report",
        "report",
        variables={"RUN": "{run}"},
        shows=(("report", "{report_dir}/index.html"),),
    ),
)


def check_settings(variables: Mapping[str, str]) -> None:
    """Raise ValueError naming every invalid Make variable, before any stage runs.

    The stages check their own options too, but only when they start: a typo in EPOCHS
    would otherwise surface after hours of fetching.
    """
    from data.scripts.images import RESIZE_MODES
    from train.models import MODELS

    problems = []
    minimums = {"EPOCHS": 1, "BATCH_SIZE": 1, "CONCURRENCY": 1, "PER_HOST": 1, "FOLDS": 2}
    minimums["FINE_TUNE_EPOCHS"] = 0
    for name, minimum in minimums.items():
        value = variables[name]
        if not value.isdigit() or int(value) < minimum:
            problems.append(f"{name}={value!r} must be a whole number of at least {minimum}")
    size = variables["IMAGE_SIZE"]
    if size and (not size.isdigit() or int(size) < 32):
        problems.append(f"IMAGE_SIZE={size!r} must be empty or a whole number of at least 32")
    if variables["MODEL"] not in MODELS:
        problems.append(f"MODEL={variables['MODEL']!r} must be one of {', '.join(MODELS)}")
    weights = variables["WEIGHTS"]
    if weights not in ("imagenet", "none") and not Path(weights).is_file():
        problems.append(f"WEIGHTS={weights!r} must be imagenet, none or an existing file")
    if variables["RESIZE_MODE"] not in RESIZE_MODES:
        problems.append(
            f"RESIZE_MODE={variables['RESIZE_MODE']!r} must be one of {', '.join(RESIZE_MODES)}"
        )
    if problems:
        raise ValueError("invalid settings, nothing was run: " + "; ".join(problems))


def downloaded_elsewhere(raw_dir: Path) -> int:
    """Return how many CSV files ``raw_dir`` holds that ``make download`` did not write.

    ``make download`` records what it wrote in ``SOURCE.json``; CSV files without it were put
    there by hand, and ``make all`` uses them as they are instead of asking Kaggle.
    """
    if (raw_dir / "SOURCE.json").exists() or not raw_dir.is_dir():
        return 0
    return sum(1 for _ in raw_dir.rglob("*.csv"))


def print_where(steps: tuple[Step, ...], context: Mapping[str, str], seconds: float) -> None:
    """Print the paths that the steps' ``shows`` name, once every value is known."""
    lines = [f"Pipeline finished in {seconds:.0f} s"]
    for step in steps:
        for what, template in step.shows:
            try:
                lines.append(f"  {what + ':':<16}{template.format(**context)}")
            except KeyError:
                continue
    print("\n".join(lines), flush=True)


def run_all(
    variables: Mapping[str, str], *, make: str = "make", state_dir: Path | None = None
) -> dict[str, Any]:
    """Run ``ALL_STEPS`` with ``variables``; return the record, also in ``state_dir``.

    ``state_dir`` (default ``develop/artifacts/pipeline/<DATA_VERSION>``) keeps
    ``state.json`` for the skip check and ``summary.json``.
    """
    check_settings(variables)
    started = time.perf_counter()
    context = {
        "raw_dir": variables["RAW_DIR"],
        "processed_dir": variables["PROCESSED_DIR"],
        "runs_dir": variables["RUNS_DIR"],
        "review_dir": variables["REVIEW_DIR"],
        "report_dir": variables["REPORT_DIR"],
    }
    steps = ALL_STEPS
    found = downloaded_elsewhere(PROJECT_ROOT / variables["RAW_DIR"])
    if found:
        logger.info(
            "%s holds %d CSV files but no SOURCE.json from make download; using them as they "
            "are and skipping the download",
            variables["RAW_DIR"],
            found,
        )
        steps = tuple(step for step in steps if step.name != "download")
    if state_dir is None:
        state_dir = PROJECT_ROOT / "develop" / "artifacts" / "pipeline" / variables["DATA_VERSION"]
    record: dict[str, Any] = {"status": "running", "variables": dict(variables), "steps": []}
    logger.info("make all started: %d steps on %s", len(steps), variables["RAW_DIR"])
    try:
        run_steps(steps, context, variables, record, state_path=state_dir / "state.json", make=make)
        record["status"] = "finished"
    except BaseException as exc:
        record["status"] = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        if isinstance(exc, StepFailed):
            record["failed_step"] = exc.step
        raise
    finally:
        record["seconds"] = round(time.perf_counter() - started, 1)
        record["run"] = context.get("run")
        write_json(state_dir / "summary.json", record)
    ran = sum(1 for step in record["steps"] if step.get("status") == "ran")
    logger.info("make all finished: %d steps ran, %d skipped", ran, len(steps) - ran)
    print_where(steps, context, record["seconds"])
    return record


def parse_variables(values: list[str]) -> dict[str, str]:
    """Return ``{NAME: value}`` from ``NAME=value`` arguments; every ALL_VARIABLES name needed."""
    variables: dict[str, str] = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
            raise ValueError(f"invalid variable {value!r}; expected NAME=value")
        variables[name] = setting
    missing = [name for name in ALL_VARIABLES if name not in variables]
    if missing:
        raise ValueError(f"missing variables {missing}; run this through make all")
    return variables


def main(argv: list[str] | None = None) -> int:
    import argparse

    from data.scripts.common import setup_logging

    parser = argparse.ArgumentParser(
        prog="python -m data.scripts.pipeline",
        description="Run every stage on the real dataset (make all), skipping finished ones.",
    )
    parser.add_argument("variables", nargs="*", help="Make variables as NAME=value")
    parser.add_argument("--make", default="make", help="the make program (default: make)")
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        run_all(parse_variables(args.variables), make=args.make)
    except StepFailed as exc:
        logger.error("%s; its log is above. Fix it and run make all again to resume", exc)
        return 1
    except (ValueError, RuntimeError) as exc:
        logger.error("make all: %s", exc)
        return 2
    except KeyboardInterrupt:
        logger.error("make all: interrupted; run make all again to resume")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
