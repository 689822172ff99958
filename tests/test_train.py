"""End-to-end tests of the train, evaluate and compare stages on small generated images."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.helpers import REPO_ROOT

COLOURS = {"blue": (255, 0, 0), "green": (0, 255, 0), "red": (0, 0, 255)}


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> Path:
    """A processed folder with images/<label>/ of three colour-coded classes, 40 each."""
    folder = tmp_path_factory.mktemp("processed") / "v1"
    rng = np.random.default_rng(0)
    for label, colour in COLOURS.items():
        (folder / "images" / label).mkdir(parents=True)
        for i in range(40):
            image = rng.integers(0, 60, (40, 40, 3), dtype=np.uint8)
            x, y = (int(v) for v in rng.integers(0, 16, 2))
            cv2.rectangle(image, (x, y), (x + 22, y + 22), colour, -1)
            cv2.imwrite(str(folder / "images" / label / f"{label}-{i:03d}.jpg"), image)
    return folder


def train_command(processed: Path, runs: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "train.train",
        "--processed-dir",
        str(processed),
        "--runs-dir",
        str(runs),
        "--weights",
        "none",
        "--image-size",
        "32",
        "--batch-size",
        "16",
        *extra,
    ]


def run_train(processed: Path, runs: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        train_command(processed, runs, *extra),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def run_folder(result: subprocess.CompletedProcess) -> Path:
    line = next(line for line in result.stdout.splitlines() if line.startswith("RUN="))
    return Path(line.removeprefix("RUN="))


def history(run: Path, phase: str = "head") -> list[dict[str, str]]:
    with open(run / f"history-{phase}.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_train_writes_run_folder(processed, tmp_path):
    result = run_train(processed, tmp_path, "--epochs", "2")
    run = run_folder(result)

    assert result.returncode == 0, result.stderr[-2000:]
    config = json.loads((run / "config.json").read_text())
    assert config["class_names"] == ["blue", "green", "red"]
    assert config["seed"] == 0
    assert len(config["dataset_fingerprint"]) >= 16
    assert json.loads((run / "class_names.json").read_text()) == ["blue", "green", "red"]
    assert (run / "splits.csv").exists()
    assert (run / "model.keras").exists()
    assert len(history(run)) == 2
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2


@pytest.mark.slow
def test_train_evaluate_and_compare(processed, tmp_path):
    run = run_folder(run_train(processed, tmp_path, "--epochs", "1"))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

    evaluated = subprocess.run(
        [sys.executable, "-m", "train.evaluate", "--run", str(run)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    compared = subprocess.run(
        [sys.executable, "-m", "train.compare", "--runs-dir", str(tmp_path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert metrics["images"] == sum(
        1 for row in csv.DictReader(open(run / "splits.csv")) if row["split"] == "test"
    )
    for name in ("confusion_matrix.csv", "confusion_matrix.png", "predictions.csv"):
        assert (run / "evaluation" / name).exists()
    assert compared.returncode == 0
    assert run.name in compared.stdout
    assert f"{metrics['accuracy']:.3f}" in compared.stdout


@pytest.mark.slow
def test_train_killed_run_resumes_at_next_epoch(processed, tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = train_command(processed, tmp_path, "--epochs", "6", "--no-cached-features")
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    runs = []
    while time.monotonic() < deadline and process.poll() is None:
        runs = list(tmp_path.glob("*/history-head.csv"))
        if runs and len(runs[0].read_text().splitlines()) >= 3:  # header and 2 epochs
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    killed_after = len(history(runs[0].parent))

    result = run_train(processed, tmp_path, "--epochs", "6", "--no-cached-features")
    epochs = [int(row["epoch"]) for row in history(run_folder(result))]

    assert result.returncode == 0, result.stderr[-2000:]
    assert 2 <= killed_after < 6
    assert epochs == list(range(6))


@pytest.mark.slow
def test_train_nan_loss_stops_without_model(processed, tmp_path):
    result = run_train(processed, tmp_path, "--epochs", "2", "--learning-rate", "1e30")

    assert result.returncode == 1
    assert "NaN" in result.stderr
    assert not list(tmp_path.glob("*/model.keras"))


def test_train_rejects_unknown_model(processed, tmp_path):
    from train.train import TrainConfig

    with pytest.raises(ValueError, match="MODEL must be one of"):
        TrainConfig(processed_dir=processed, model="resnet9000").validate()
    with pytest.raises(ValueError, match="is not a file"):
        TrainConfig(processed_dir=processed, weights=str(tmp_path / "missing.h5")).validate()


def test_run_name_stable_and_settings_sensitive(processed):
    from train.train import TrainConfig

    first = TrainConfig(processed_dir=processed, epochs=3).resolved_run_name()
    more_epochs = TrainConfig(processed_dir=processed, epochs=9).resolved_run_name()
    other_rate = TrainConfig(processed_dir=processed, learning_rate=0.1).resolved_run_name()

    assert first == more_epochs
    assert first != other_rate
    assert first.startswith("resnet50v2_pool-v1-224px-")


@pytest.mark.slow
@pytest.mark.parametrize(
    "model", ["resnet50v2_pool", "resnet50v2_dense", "vgg19_pool", "vgg19_dense"]
)
def test_every_model_trains_and_evaluates(processed, tmp_path, model):
    result = run_train(processed, tmp_path, "--model", model, "--epochs", "2")
    run = run_folder(result)
    evaluated = subprocess.run(
        [sys.executable, "-m", "train.evaluate", "--run", str(run)],
        cwd=REPO_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["model"] == model
    assert (run / "evaluation" / "metrics.json").exists()


@pytest.mark.slow
def test_weights_of_one_run_start_another(processed, tmp_path):
    first = run_folder(run_train(processed, tmp_path / "a", "--epochs", "2"))
    weights = first / "model.weights.h5"

    second = run_train(processed, tmp_path / "b", "--epochs", "1", "--weights", str(weights))
    config = json.loads((run_folder(second) / "config.json").read_text())

    assert second.returncode == 0, second.stderr[-2000:]
    assert weights.exists()
    assert config["weights"] == str(weights)


@pytest.mark.parametrize("name", ["../victim", ".", "..", "/tmp/x", "a/b", ".hidden"])
def test_run_name_must_be_plain(processed, name):
    from train.train import TrainConfig

    with pytest.raises(ValueError, match="--run-name"):
        TrainConfig(processed_dir=processed, run_name=name).validate()


@pytest.mark.parametrize("layers", [-0.5, 1.5, 5000.5])
def test_fine_tune_layers_checked_early(processed, layers):
    from train.train import TrainConfig

    with pytest.raises(ValueError, match="--fine-tune-layers"):
        TrainConfig(processed_dir=processed, fine_tune_layers=layers).validate()


def test_best_so_far_reads_history(tmp_path):
    from train.train import best_so_far

    history_path = tmp_path / "history-head.csv"
    history_path.write_text("epoch,val_accuracy\n0,0.5\n1,0.75\n2,0.6\n")

    assert best_so_far(history_path, "val_accuracy") == 0.75
    assert best_so_far(tmp_path / "missing.csv", "val_accuracy") is None


def test_compare_skips_unreadable_runs(tmp_path):
    from train.compare import read_runs

    good = tmp_path / "good-run"
    good.mkdir()
    (good / "summary.json").write_text(json.dumps({"run": "old-name", "model": "m"}))
    broken = tmp_path / "broken-run"
    broken.mkdir()
    (broken / "summary.json").write_text("{not json")

    records = read_runs(tmp_path)

    assert [record["run"] for record in records] == ["good-run"]


def test_macro_f1_ignores_classes_without_test_images():
    from train.metrics import classification_metrics

    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.05, 0.05]] * 2 + [[0.05, 0.9, 0.05]] * 2)

    metrics = classification_metrics(labels, probabilities, ["a", "b", "c"])

    assert metrics["macro_f1"] == 1.0
    assert metrics["classes_without_test_images"] == ["c"]


def test_same_run_twice_at_once_refused(processed, tmp_path):
    from data.scripts.common import exclusive_lock
    from train.train import TrainConfig, train

    config = TrainConfig(
        processed_dir=processed, weights="none", image_size=32, epochs=1, runs_dir=tmp_path
    )
    lock = tmp_path / f".{config.resolved_run_name()}.lock"

    with exclusive_lock(lock, "a test"):
        with pytest.raises(RuntimeError, match="another process"):
            train(config)


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["image size", "weights file"])
def test_late_setting_error_leaves_no_folder(processed, tmp_path, setting):
    runs = tmp_path / "runs"
    if setting == "image size":
        extra = ["--image-size", "8", "--model", "resnet50v2_pool"]
    else:
        bad = tmp_path / "bad.weights.h5"
        bad.write_bytes(b"not an HDF5 file")
        extra = ["--weights", str(bad)]

    result = run_train(processed, runs, "--epochs", "1", *extra)

    assert result.returncode != 0
    assert "removed the new run folder" in result.stderr
    assert [path for path in runs.iterdir() if path.is_dir()] == []
