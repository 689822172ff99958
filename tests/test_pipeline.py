"""Tests of the step runner behind `make all`, with a stand-in make that writes each output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data.scripts import pipeline


@pytest.fixture()
def fake_make(tmp_path: Path) -> Path:
    """A stand-in for make: logs each target and writes the file the real target would write."""
    script = tmp_path / "fake-make"
    run = tmp_path / "runs" / "run-1"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$1" >> "{tmp_path}/calls.txt"\n'
        f'mkdir -p "{run}/evaluation" "{run}/export" "{tmp_path}/review"\n'
        'case "$1" in\n'
        f'  train) echo model > "{run}/model.keras"; echo split > "{run}/splits.csv";'
        f' echo "RUN={run}";;\n'
        f'  evaluate) echo "{{}}" > "{run}/evaluation/metrics.json";;\n'
        f'  find-label-issues) echo key > "{tmp_path}/review/candidates.csv";;\n'
        f'  export) echo "{{}}" > "{run}/export/export.json";;\n'
        '  fetch) [ -n "$FAIL_FETCH" ] && exit 4;;\n'
        "esac\n"
        "exit 0\n"
    )
    script.chmod(0o755)
    return script


def variables(tmp_path: Path, **changes: str) -> dict[str, str]:
    values = {name: "" for name in pipeline.ALL_VARIABLES}
    values.update(
        DATA_VERSION="v1",
        RAW_DIR=str(tmp_path / "raw"),
        PROCESSED_DIR=str(tmp_path / "processed"),
        RUNS_DIR=str(tmp_path / "runs"),
        REVIEW_DIR=str(tmp_path / "review"),
        REPORT_DIR=str(tmp_path / "report"),
        EPOCHS="10",
        FINE_TUNE_EPOCHS="0",
        BATCH_SIZE="32",
        CONCURRENCY="64",
        PER_HOST="16",
        FOLDS="5",
        MODEL="resnet50v2_pool",
        WEIGHTS="imagenet",
        RESIZE_MODE="keep-ratio",
    )
    (tmp_path / "processed").mkdir(exist_ok=True)
    (tmp_path / "processed" / "manifest.parquet").write_text("manifest one")
    values.update(changes)
    return values


def calls(tmp_path: Path) -> list[str]:
    lines = (tmp_path / "calls.txt").read_text().split()
    (tmp_path / "calls.txt").unlink()
    return lines


def test_all_runs_every_stage_in_order(tmp_path, fake_make):
    record = pipeline.run_all(
        variables(tmp_path), make=str(fake_make), state_dir=tmp_path / "state"
    )

    assert calls(tmp_path) == [step.target for step in pipeline.ALL_STEPS]
    assert record["status"] == "finished"
    assert record["run"] == str(tmp_path / "runs" / "run-1")
    summary = json.loads((tmp_path / "state" / "summary.json").read_text())
    assert summary["status"] == "finished"


def test_all_second_run_skips_finished_stages(tmp_path, fake_make):
    state = tmp_path / "state"
    pipeline.run_all(variables(tmp_path), make=str(fake_make), state_dir=state)
    calls(tmp_path)

    record = pipeline.run_all(variables(tmp_path), make=str(fake_make), state_dir=state)

    # The stages that resume by themselves still run; the heavy ones are skipped.
    assert calls(tmp_path) == ["download", "extract", "merge", "fetch", "serve-check", "report"]
    skipped = [step["name"] for step in record["steps"] if step["status"] == "skipped"]
    assert skipped == ["train", "evaluate", "find-label-issues", "export"]
    assert record["run"] == str(tmp_path / "runs" / "run-1")


def test_all_changed_setting_reruns_training(tmp_path, fake_make):
    state = tmp_path / "state"
    pipeline.run_all(variables(tmp_path), make=str(fake_make), state_dir=state)
    calls(tmp_path)

    pipeline.run_all(variables(tmp_path, EPOCHS="20"), make=str(fake_make), state_dir=state)

    assert "train" in calls(tmp_path)


def test_all_changed_manifest_reruns_training(tmp_path, fake_make):
    state = tmp_path / "state"
    pipeline.run_all(variables(tmp_path), make=str(fake_make), state_dir=state)
    calls(tmp_path)
    settings = variables(tmp_path)
    (tmp_path / "processed" / "manifest.parquet").write_text("manifest two")

    pipeline.run_all(settings, make=str(fake_make), state_dir=state)

    ran = calls(tmp_path)
    assert "train" in ran
    assert "find-label-issues" in ran


def test_all_uses_csv_files_put_there_by_hand(tmp_path, fake_make):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "Yoga.csv").write_text("name,main_category\n")

    pipeline.run_all(variables(tmp_path), make=str(fake_make), state_dir=tmp_path / "state")

    assert calls(tmp_path)[0] == "extract"


def test_all_failing_stage_stops_chain(tmp_path, fake_make, monkeypatch):
    monkeypatch.setenv("FAIL_FETCH", "1")

    with pytest.raises(pipeline.StepFailed) as raised:
        pipeline.run_all(variables(tmp_path), make=str(fake_make), state_dir=tmp_path / "state")

    assert raised.value.step == "fetch"
    assert calls(tmp_path)[-1] == "fetch"
    summary = json.loads((tmp_path / "state" / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["failed_step"] == "fetch"


def test_all_command_line_needs_every_variable():
    assert pipeline.main(["DATA_VERSION=v1"]) == 2
    assert pipeline.main(["not a variable"]) == 2


def test_all_changed_concurrency_skips_training(tmp_path, fake_make):
    state = tmp_path / "state"
    pipeline.run_all(variables(tmp_path), make=str(fake_make), state_dir=state)
    calls(tmp_path)

    pipeline.run_all(variables(tmp_path, CONCURRENCY="8"), make=str(fake_make), state_dir=state)

    ran = calls(tmp_path)
    assert "fetch" in ran
    assert "train" not in ran
    assert "find-label-issues" not in ran


def test_all_epochs_change_skips_label_issues(tmp_path, fake_make):
    state = tmp_path / "state"
    pipeline.run_all(variables(tmp_path), make=str(fake_make), state_dir=state)
    calls(tmp_path)

    pipeline.run_all(variables(tmp_path, EPOCHS="20"), make=str(fake_make), state_dir=state)

    ran = calls(tmp_path)
    assert "train" in ran
    assert "find-label-issues" not in ran


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MODEL", "resnet51"),
        ("EPOCHS", "-1"),
        ("EPOCHS", "abc"),
        ("IMAGE_SIZE", "abc"),
        ("IMAGE_SIZE", "16"),
        ("FOLDS", "1"),
        ("WEIGHTS", "/no/such/file.h5"),
        ("RESIZE_MODE", "stretch"),
        ("CONCURRENCY", "0"),
    ],
)
def test_all_invalid_setting_stops_before_work(tmp_path, fake_make, name, value):
    with pytest.raises(ValueError, match=f"{name}={value!r}"):
        pipeline.run_all(
            variables(tmp_path, **{name: value}),
            make=str(fake_make),
            state_dir=tmp_path / "state",
        )

    assert not (tmp_path / "calls.txt").exists()
