"""Tests for data.scripts.kaggle_push: metadata rules, packing, dry run and the upload.

Every test builds a processed folder in tmp_path with real JPEG files, a real manifest
and labels.json. The upload tests run the real kaggle 2.2.5 client against a stand-in of
Kaggle's API: an aiohttp server on 127.0.0.1 that records every call. kagglesdk 0.1.38
reads no endpoint variable. Its KAGGLE_API_ENVIRONMENT picks one of a fixed set of
Kaggle hosts and localhost ports, and kaggle 2.2.5 ignores even that, because KaggleApi
passes the environment to the client itself. The tests therefore point kagglesdk's
table entry for the production endpoint at the stand-in, and send every other host to
a closed port on 127.0.0.1 through a proxy setting.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import threading
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web

from data.scripts import kaggle_push
from data.scripts.kaggle_push import (
    METADATA_FILE,
    MetadataError,
    PushSettings,
    build_metadata,
    load_collected_dataset,
    pack_dataset,
    validate_metadata,
)
from data.scripts.manifest import MANIFEST_SCHEMA, image_path
from tests.helpers import REPO_ROOT

OWNER = "alice"
DATASET_ID = f"{OWNER}/amazon-product-images"
FAKE_KEY = "fake-key-0123456789abcdef"
LABELS = [
    ("fashion", "Fashion"),
    ("household_essentials", "Household Essentials"),
    ("stores", "Stores"),
]
IMAGES_PER_LABEL = {"fashion": 3, "household_essentials": 2, "stores": 0}


# ---------------------------------------------------------------------------
# A processed folder as `make fetch` leaves it
# ---------------------------------------------------------------------------


def jpeg_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", pixels)
    assert ok
    return encoded.tobytes()


def manifest_row(key: str, label: str, status: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {name: None for name in MANIFEST_SCHEMA.names}
    row.update(key=key, url=f"https://images.example/{key}.jpg", label=label, status=status)
    row.update(values)
    return row


def make_collected(folder: Path) -> Path:
    """Write labels.json, images and manifest.parquet: 5 ok rows, a duplicate, an error."""
    rows = []
    seed = 0
    for label, count in IMAGES_PER_LABEL.items():
        for _ in range(count):
            seed += 1
            key = f"{seed * 0x1111:016x}"
            relative = image_path(label, key)
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            body = jpeg_bytes(seed)
            (folder / relative).write_bytes(body)
            rows.append(
                manifest_row(
                    key,
                    label,
                    "ok",
                    path=relative,
                    bytes=len(body),
                    sha256=hashlib.sha256(body).hexdigest(),
                    image_settings="size=64;mode=keep-ratio",
                )
            )
    rows.append(manifest_row("f" * 16, "fashion", "duplicate", duplicate_of=rows[0]["key"]))
    rows.append(manifest_row("e" * 16, "stores", "http_error", http_status=404, error="HTTP 404"))
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), folder / "manifest.parquet")
    labels = [{"label": label, "name": name, "rows": 1} for label, name in LABELS]
    (folder / "labels.json").write_text(json.dumps(labels, indent=2))
    return folder


@pytest.fixture
def collected(tmp_path: Path) -> Path:
    return make_collected(tmp_path / "processed")


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty HOME with no KAGGLE_* or XDG_CONFIG_HOME variables set."""
    home_dir = tmp_path / "home"
    home_dir.mkdir()
    monkeypatch.setenv("HOME", str(home_dir))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    for name in list(os.environ):
        if name.startswith("KAGGLE_"):
            monkeypatch.delenv(name)
    return home_dir


def settings_for(folder: Path, **overrides: Any) -> PushSettings:
    values: dict[str, Any] = {
        "processed_dir": folder,
        "staging_dir": folder.parent / "staging",
        "data_version": "v1",
        "dataset_id": DATASET_ID,
    }
    values.update(overrides)
    return PushSettings(**values)


def valid_metadata(folder: Path) -> dict[str, Any]:
    dataset = load_collected_dataset(folder)
    return build_metadata(dataset, settings_for(folder), dataset_id=DATASET_ID, commit="abc123")


def file_digests(folder: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.iterdir())
    }


def forget_kaggle_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove kaggle and kagglesdk from sys.modules for this test, so an import shows."""
    for name in list(sys.modules):
        if name.split(".")[0] in ("kaggle", "kagglesdk"):
            monkeypatch.delitem(sys.modules, name)


# ---------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------


def test_built_metadata_is_valid(collected: Path) -> None:
    metadata = valid_metadata(collected)
    dataset = load_collected_dataset(collected)

    validate_metadata(metadata)
    assert metadata["id"] == DATASET_ID
    assert metadata["licenses"] == [{"name": "copyright-authors"}]
    assert "| Fashion | `fashion` | 3 |" in metadata["description"]
    assert "| Household Essentials | `household_essentials` | 2 |" in metadata["description"]
    assert "| Stores | `stores` | 0 |" in metadata["description"]
    assert dataset.manifest_sha256 in metadata["description"]
    assert "`abc123`" in metadata["description"]
    assert "`v1`" in metadata["description"]
    manifest_resource = next(r for r in metadata["resources"] if r["path"] == "manifest.parquet")
    columns = [column["name"] for column in manifest_resource["schema"]["fields"]]
    assert columns == MANIFEST_SCHEMA.names
    assert all(column["description"] for column in manifest_resource["schema"]["fields"])
    paths = [resource["path"] for resource in metadata["resources"]]
    assert paths == [
        "images-fashion.zip",
        "images-household_essentials.zip",
        "manifest.parquet",
        "labels.json",
    ]


@pytest.mark.parametrize(
    ("dataset_id", "rule"),
    [
        ("alice/my dataset", "only lowercase letters, digits and hyphens"),
        ("alice/MyDataset", "only lowercase letters, digits and hyphens"),
        ("alice/my_dataset", "only lowercase letters, digits and hyphens"),
        ("alice/-my-dataset", "start and end with a letter or digit"),
        ("alice/short", "has 5 characters; it must have 6 to 50"),
        ("alice/" + "a" * 51, "has 51 characters; it must have 6 to 50"),
        ("alice", "the form '<owner>/<slug>'"),
        ("alice/my-dataset/2", "the form '<owner>/<slug>'"),
        ("/my-dataset", "has no owner"),
        ("al ice/my-dataset", "must be a Kaggle user name or organisation slug"),
    ],
)
def test_metadata_rejects_bad_dataset_id(collected: Path, dataset_id: str, rule: str) -> None:
    metadata = valid_metadata(collected) | {"id": dataset_id}

    with pytest.raises(MetadataError) as error:
        validate_metadata(metadata)

    assert rule in str(error.value)
    assert dataset_id.split("/")[-1] in str(error.value)
    assert "KAGGLE_PUSH_ID" in str(error.value)


def test_slug_error_suggests_fix(collected: Path) -> None:
    metadata = valid_metadata(collected) | {"id": "alice/My Product_Images"}

    with pytest.raises(MetadataError, match="for example 'my-product-images'"):
        validate_metadata(metadata)


@pytest.mark.parametrize(
    ("licenses", "rule"),
    [
        (None, "'licenses' is missing"),
        ([], "exactly one licence"),
        ([{"name": "CC0-1.0"}, {"name": "CC-BY-4.0"}], "exactly one licence"),
        ([{}], "has no 'name'"),
        ([{"name": "CC0"}], "'CC0' is not a licence name Kaggle accepts"),
        ([{"name": "MIT"}], "'MIT' is not a licence name Kaggle accepts"),
    ],
)
def test_metadata_rejects_bad_licence(collected: Path, licenses: Any, rule: str) -> None:
    metadata = valid_metadata(collected)
    if licenses is None:
        del metadata["licenses"]
    else:
        metadata["licenses"] = licenses

    with pytest.raises(MetadataError) as error:
        validate_metadata(metadata)

    assert rule in str(error.value)
    assert "KAGGLE_LICENSE" in str(error.value) or licenses is None


@pytest.mark.parametrize("license_name", ["CC0-1.0", "CC-BY-4.0", "other", "copyright-authors"])
def test_metadata_accepts_known_licence(collected: Path, license_name: str) -> None:
    validate_metadata(valid_metadata(collected) | {"licenses": [{"name": license_name}]})


@pytest.mark.parametrize(
    ("title", "rule"),
    [
        (None, "'title' is missing"),
        ("", "'title' must be a non-empty string"),
        ("Short", "has 5 characters; it must have 6 to 50"),
        ("T" * 51, "has 51 characters; it must have 6 to 50"),
    ],
)
def test_metadata_rejects_bad_title(collected: Path, title: str | None, rule: str) -> None:
    metadata = valid_metadata(collected)
    if title is None:
        del metadata["title"]
    else:
        metadata["title"] = title

    with pytest.raises(MetadataError) as error:
        validate_metadata(metadata)

    assert rule in str(error.value)


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"subtitle": "Too short"}, "subtitle 'Too short' has 9 characters; it must have 20 to 80"),
        ({"subtitle": "S" * 81}, "has 81 characters; it must have 20 to 80"),
        ({"keywords": "images"}, "'keywords' must be a list of non-empty strings"),
        ({"description": 42}, "'description' must be a string"),
        ({"resources": [{"path": "images/a.zip"}]}, "without a folder part"),
        ({"resources": [{"path": "a.zip"}, {"path": "a.zip"}]}, "'a.zip' is listed twice"),
        (
            {"resources": [{"path": "m.parquet", "schema": {"fields": [{"name": "x"}, {}]}}]},
            "a column of resource 'm.parquet' has no name",
        ),
        (
            {
                "resources": [
                    {"path": "m.parquet", "schema": {"fields": [{"name": "x", "type": "float64"}]}}
                ]
            },
            "column 'x' of resource 'm.parquet' has type 'float64'",
        ),
    ],
)
def test_metadata_rejects_other_invalid_values(
    collected: Path, change: dict[str, Any], rule: str
) -> None:
    with pytest.raises(MetadataError) as error:
        validate_metadata(valid_metadata(collected) | change)

    assert rule in str(error.value)


def test_metadata_error_lists_every_problem(collected: Path) -> None:
    metadata = valid_metadata(collected) | {"id": "Alice/My Data", "licenses": [{"name": "CC0"}]}
    del metadata["title"]

    with pytest.raises(MetadataError) as error:
        validate_metadata(metadata)

    message = str(error.value)
    assert message.startswith(f"{METADATA_FILE} is invalid:")
    assert "'title' is missing" in message
    assert "slug 'My Data'" in message
    assert "licence 'CC0'" in message


# ---------------------------------------------------------------------------
# Reading the processed folder
# ---------------------------------------------------------------------------


def test_load_counts_ok_images_per_label(collected: Path) -> None:
    dataset = load_collected_dataset(collected)

    counts = {label.label: len(label.images) for label in dataset.labels}
    assert counts == IMAGES_PER_LABEL
    assert dataset.manifest_rows == 7
    assert dataset.status_counts == {"duplicate": 1, "http_error": 1, "ok": 5}
    assert [label.zip_name for label in dataset.labels] == [
        "images-fashion.zip",
        "images-household_essentials.zip",
        None,
    ]


def test_load_rejects_missing_image(collected: Path) -> None:
    missing = next((collected / "images" / "fashion").iterdir())
    missing.unlink()

    with pytest.raises(kaggle_push.InvalidInputError, match="1 images of 'ok' manifest rows"):
        load_collected_dataset(collected)


def test_load_rejects_uncompacted_manifest(collected: Path) -> None:
    parts = collected / "manifest.parts"
    parts.mkdir()
    (parts / "part-1.parquet").write_bytes(b"")

    with pytest.raises(kaggle_push.InvalidInputError, match="not yet compacted"):
        load_collected_dataset(collected)


def test_load_rejects_corrupt_manifest(collected: Path) -> None:
    (collected / "manifest.parquet").write_bytes(b"not parquet")

    with pytest.raises(kaggle_push.InvalidInputError, match="cannot be read as Parquet"):
        load_collected_dataset(collected)


def test_load_rejects_path_outside_label(collected: Path) -> None:
    table = pq.read_table(collected / "manifest.parquet")
    paths = table.column("path").to_pylist()
    paths[0] = "images/household_essentials/" + paths[0].split("/")[-1]
    table = table.set_column(table.schema.get_field_index("path"), "path", pa.array(paths))
    pq.write_table(table, collected / "manifest.parquet")

    with pytest.raises(kaggle_push.InvalidInputError, match="expected 'images/fashion/"):
        load_collected_dataset(collected)


# ---------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------


def pack(folder: Path, staging: Path) -> list[kaggle_push.StagedFile]:
    return pack_dataset(load_collected_dataset(folder), staging / "files", staging / "state.json")


def test_pack_keeps_every_label_folder(collected: Path, tmp_path: Path) -> None:
    staged = pack(collected, tmp_path / "staging")
    upload_dir = tmp_path / "staging" / "files"

    assert [item.name for item in staged] == [
        "images-fashion.zip",
        "images-household_essentials.zip",
        "manifest.parquet",
        "labels.json",
    ]
    assert sorted(path.name for path in upload_dir.iterdir()) == sorted(i.name for i in staged)
    for item in staged:
        assert item.size == (upload_dir / item.name).stat().st_size

    ok_paths = sorted(
        row["path"]
        for row in pq.read_table(collected / "manifest.parquet").to_pylist()
        if row["status"] == "ok"
    )
    extracted = tmp_path / "extracted"
    names = []
    for label in ("fashion", "household_essentials"):
        with zipfile.ZipFile(upload_dir / f"images-{label}.zip") as archive:
            assert all(name.startswith(f"images/{label}/") for name in archive.namelist())
            names += archive.namelist()
            archive.extractall(extracted)
    assert sorted(names) == ok_paths
    for relative in ok_paths:
        assert (extracted / relative).read_bytes() == (collected / relative).read_bytes()
    assert (upload_dir / "manifest.parquet").read_bytes() == (
        collected / "manifest.parquet"
    ).read_bytes()


def test_pack_is_deterministic(collected: Path, tmp_path: Path) -> None:
    pack(collected, tmp_path / "first")
    # New modification times on every image must not change a single archive byte.
    for path in (collected / "images").rglob("*.jpg"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
    pack(collected, tmp_path / "second")

    first = file_digests(tmp_path / "first" / "files")
    second = file_digests(tmp_path / "second" / "files")
    assert first == second
    with zipfile.ZipFile(tmp_path / "first" / "files" / "images-fashion.zip") as archive:
        infos = archive.infolist()
    assert [info.filename for info in infos] == sorted(info.filename for info in infos)
    assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {info.compress_type for info in infos} == {zipfile.ZIP_STORED}


def test_pack_rewrites_only_changed_archive(collected: Path, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    pack(collected, staging)
    before = {path.name: path.stat().st_mtime_ns for path in (staging / "files").iterdir()}
    changed = sorted((collected / "images" / "fashion").iterdir())[0]
    changed.write_bytes(jpeg_bytes(99))

    pack(collected, staging)

    after = {path.name: path.stat().st_mtime_ns for path in (staging / "files").iterdir()}
    assert after["images-household_essentials.zip"] == before["images-household_essentials.zip"]
    assert after["manifest.parquet"] == before["manifest.parquet"]
    assert after["images-fashion.zip"] != before["images-fashion.zip"]
    with zipfile.ZipFile(staging / "files" / "images-fashion.zip") as archive:
        assert archive.read(f"images/fashion/{changed.name}") == jpeg_bytes(99)


def test_pack_cleans_interrupted_run(collected: Path, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    upload_dir = staging / "files"
    upload_dir.mkdir(parents=True)
    (upload_dir / ".images-fashion.zip.x1y2.tmp").write_bytes(b"partial")
    (upload_dir / "images-old_label.zip").write_bytes(b"stale")
    (upload_dir / "images-fashion.zip").write_bytes(b"not the archive")
    (staging / "state.json").write_text("{not json")

    pack(collected, staging)

    assert sorted(path.name for path in upload_dir.iterdir()) == [
        "images-fashion.zip",
        "images-household_essentials.zip",
        "labels.json",
        "manifest.parquet",
    ]
    with zipfile.ZipFile(upload_dir / "images-fashion.zip") as archive:
        assert archive.testzip() is None
        assert len(archive.namelist()) == 3


@pytest.mark.parametrize("entry", ["notes.txt", "subfolder"])
def test_pack_rejects_foreign_entry(collected: Path, tmp_path: Path, entry: str) -> None:
    upload_dir = tmp_path / "staging" / "files"
    upload_dir.mkdir(parents=True)
    if entry == "subfolder":
        (upload_dir / entry).mkdir()
    else:
        (upload_dir / entry).write_text("mine")

    with pytest.raises(kaggle_push.InvalidInputError, match=f"{entry}' is not a file this stage"):
        pack(collected, tmp_path / "staging")


# ---------------------------------------------------------------------------
# Dry run
# ---------------------------------------------------------------------------


def dry_run_output(text: str) -> tuple[str, dict[str, Any]]:
    """Split the dry run's output into the listing and the parsed metadata JSON."""
    listing, _, metadata_json = text.partition(f"\n{METADATA_FILE}:\n")
    return listing, json.loads(metadata_json)


def test_dry_run_lists_labels_and_sizes(
    collected: Path, tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    staging = tmp_path / "staging"
    code = kaggle_push.main(
        [
            "--processed-dir",
            str(collected),
            "--staging-dir",
            str(staging),
            "--dataset-id",
            DATASET_ID,
            "--dry-run",
        ]
    )

    assert code == 0
    listing, metadata = dry_run_output(capsys.readouterr().out)
    assert re.search(r"images/fashion/\s+3 images  -> images-fashion\.zip", listing)
    assert re.search(
        r"images/household_essentials/\s+2 images  -> images-household_essentials\.zip", listing
    )
    assert re.search(r"images/stores/\s+0 images  -> no images, so no archive", listing)
    for path in (staging / "files").iterdir():
        assert f"{path.stat().st_size:>15,} bytes  {path.name}" in listing
    assert metadata == json.loads((staging / "files" / METADATA_FILE).read_text())
    assert metadata["id"] == DATASET_ID
    assert "Dry run: nothing was uploaded" in listing


def test_dry_run_id_from_kaggle_username(
    collected: Path, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", "bob")
    settings = settings_for(collected, dataset_id=None, dry_run=True)

    assert kaggle_push.run(settings) == 0

    _, metadata = dry_run_output(capsys.readouterr().out)
    assert metadata["id"] == "bob/amazon-product-images"


def test_dry_run_without_id_or_username(
    collected: Path, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(collected, dataset_id=None, dry_run=True)

    assert kaggle_push.run(settings) == 2

    assert "Set KAGGLE_PUSH_ID=<owner>/<slug>" in caplog.text
    assert not settings.staging_dir.exists()


# An audit hook for the child process. Every socket creation and name lookup fails,
# so the dry run has no network at all. Name lookups, connections and kaggle imports are
# also written to AUDIT_LOG. Creating a socket is not logged, because urllib3 probes for
# IPv6 support at import by binding a socket to ::1.
SITECUSTOMIZE = textwrap.dedent("""
    import os
    import sys

    _LOG = os.environ["AUDIT_LOG"]
    _LOGGED = {"socket.connect", "socket.getaddrinfo", "socket.gethostbyname",
               "socket.gethostbyaddr", "socket.sendto"}
    _BLOCKED = _LOGGED | {"socket.__new__"}

    def _hook(event, args):
        if event in _LOGGED:
            with open(_LOG, "a") as log:
                log.write(f"{event} {args!r}\\n")
        if event in _BLOCKED:
            raise OSError(f"network disabled by the test: {event}")
        if event == "import" and str(args[0]).split(".")[0] in ("kaggle", "kagglesdk"):
            with open(_LOG, "a") as log:
                log.write(f"import {args[0]}\\n")

    sys.addaudithook(_hook)
    """)


def make_command(*variables: str) -> str:
    """Return the kaggle-push command line that `make -n` prints for ``variables``."""
    completed = subprocess.run(
        ["make", "--no-print-directory", "-n", "kaggle-push", *variables],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    joined = completed.stdout.replace("\\\n", " ")
    commands = [line for line in joined.splitlines() if "data.scripts.kaggle_push" in line]
    assert len(commands) == 1, completed.stdout
    return commands[0]


def test_make_dry_run_calls_nothing(collected: Path, tmp_path: Path) -> None:
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    audit_log = tmp_path / "audit.log"
    audit_log.touch()
    home_dir = tmp_path / "home"
    home_dir.mkdir()
    staging = tmp_path / "staging"
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("KAGGLE_") and name not in ("PYTHONPATH", "XDG_CONFIG_HOME")
    }
    env.update(HOME=str(home_dir), PYTHONPATH=str(hook_dir), AUDIT_LOG=str(audit_log))
    command = make_command(
        "DRY_RUN=1",
        f"PROCESSED_DIR={collected}",
        f"KAGGLE_STAGING_DIR={staging}",
        f"KAGGLE_PUSH_ID={DATASET_ID}",
        "KAGGLE_TITLE=Product photos for a test",
    )

    completed = subprocess.run(
        ["bash", "-c", command], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )

    assert completed.returncode == 0, completed.stderr
    assert audit_log.read_text() == ""
    listing, metadata = dry_run_output(completed.stdout)
    assert "images-fashion.zip" in listing
    assert metadata["title"] == "Product photos for a test"
    assert metadata["licenses"] == [{"name": "copyright-authors"}]
    assert "(private if created)" in listing
    assert not (home_dir / ".kaggle").exists()


def test_make_maps_variables_to_options() -> None:
    command = make_command(
        "DRY_RUN=1", "PUBLIC=1", "KAGGLE_PUSH_ID=bob/some-images", "KAGGLE_LICENSE=CC-BY-4.0"
    )

    assert "--dry-run" in command
    assert "--public" in command
    assert '--dataset-id "bob/some-images"' in command
    assert '--license "CC-BY-4.0"' in command
    bare = make_command()
    assert "--dry-run" not in bare
    assert "--public" not in bare
    assert "--dataset-id" not in bare
    assert "--license" not in bare
    assert "--staging-dir" not in bare


# ---------------------------------------------------------------------------
# Credentials
# ---------------------------------------------------------------------------


def test_missing_credentials_stop_before_packing(
    collected: Path,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    forget_kaggle_modules(monkeypatch)
    settings = settings_for(collected)

    assert kaggle_push.run(settings) == 2

    assert "No usable Kaggle credentials found" in caplog.text
    assert "KAGGLE_API_TOKEN" in caplog.text
    assert not settings.staging_dir.exists()
    assert "kaggle" not in sys.modules


# ---------------------------------------------------------------------------
# Upload against a stand-in of Kaggle's API
# ---------------------------------------------------------------------------


class KaggleStandIn:
    """The Kaggle API calls that kaggle 2.2.5 makes to publish a dataset, on 127.0.0.1.

    It records every request in ``calls`` and every uploaded body in ``uploads`` by
    file name. ``responses`` replaces the JSON body and status of one API method's response.
    """

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.uploads: dict[str, bytes] = {}
        self.datasets: set[str] = set()
        self.responses: dict[str, tuple[int, dict[str, Any]]] = {}
        self.port = 0
        self._blob_names: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def methods(self) -> list[str]:
        return [call["method"] for call in self.calls]

    def body_of(self, method: str) -> dict[str, Any]:
        (body,) = [call["body"] for call in self.calls if call["method"] == method]
        return body

    def start(self) -> KaggleStandIn:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def serve() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start_app())
            ready.set()
            self._loop.run_forever()

        threading.Thread(target=serve, name="kaggle-stand-in", daemon=True).start()
        if not ready.wait(10):
            raise RuntimeError("the Kaggle stand-in did not start within 10 s")
        return self

    def stop(self) -> None:
        assert self._loop is not None and self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _start_app(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/{service}/{method}", self._api)
        app.router.add_put("/upload/{token}", self._upload)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        body = await request.json()
        self.calls.append(
            {"method": method, "body": body, "auth": request.headers.get("Authorization")}
        )
        if method in self.responses:
            status, replacement = self.responses[method]
            return web.json_response(replacement, status=status)
        handlers = {
            "GetDatasetStatus": self._dataset_status,
            "StartBlobUpload": self._start_blob_upload,
            "CreateDataset": self._create_dataset,
            "CreateDatasetVersion": self._create_version,
        }
        handler = handlers.get(method)
        if handler is None:
            return web.json_response({"code": 404, "message": f"no {method}"}, status=404)
        return handler(body)

    def _dataset_status(self, body: dict[str, Any]) -> web.Response:
        if f"{body['ownerSlug']}/{body['datasetSlug']}" in self.datasets:
            return web.json_response({"status": "READY"})
        return web.json_response({"code": 404, "message": "Not found"}, status=404)

    def _start_blob_upload(self, body: dict[str, Any]) -> web.Response:
        token = f"blob-{len(self._blob_names) + 1}"
        self._blob_names[token] = body["name"]
        return web.json_response({"token": token, "createUrl": self.url(f"/upload/{token}")})

    def _create_dataset(self, body: dict[str, Any]) -> web.Response:
        ref = f"{body['ownerSlug']}/{body['slug']}"
        self.datasets.add(ref)
        return self._created(ref)

    def _create_version(self, body: dict[str, Any]) -> web.Response:
        return self._created(f"{body['ownerSlug']}/{body['datasetSlug']}")

    def _created(self, ref: str) -> web.Response:
        url = f"https://www.kaggle.com/datasets/{ref}"
        return web.json_response({"ref": ref, "url": url, "status": "ok"})

    async def _upload(self, request: web.Request) -> web.Response:
        name = self._blob_names[request.match_info["token"]]
        self.uploads[name] = await request.read()
        self.calls.append({"method": "PUT", "body": name, "auth": None})
        return web.json_response({})

    def tokens_of(self, names: list[str]) -> list[str]:
        by_name = {name: token for token, name in self._blob_names.items()}
        return [by_name[name] for name in names]


@pytest.fixture
def stand_in(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A started stand-in, with kagglesdk pointed at it and legacy credentials set."""
    server = KaggleStandIn().start()
    forget_kaggle_modules(monkeypatch)
    from kagglesdk import kaggle_env

    monkeypatch.setitem(kaggle_env._env_to_endpoint, kaggle_env.KaggleEnv.PROD, server.url())
    assert kaggle_env.get_endpoint(kaggle_env.KaggleEnv.PROD).startswith("http://127.0.0.1:")
    # Any request to another host goes to a closed port on 127.0.0.1 and fails there.
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("KAGGLE_USERNAME", OWNER)
    monkeypatch.setenv("KAGGLE_KEY", FAKE_KEY)
    # kaggle keeps its resumable-upload state in the system temporary folder.
    upload_state = tmp_path / "tmp"
    upload_state.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(upload_state))
    yield server
    server.stop()


@pytest.mark.network_local
def test_push_creates_then_adds_version(
    stand_in: KaggleStandIn,
    collected: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = settings_for(collected, dataset_id=None)
    upload_dir = settings.upload_dir
    data_files = [
        "images-fashion.zip",
        "images-household_essentials.zip",
        "labels.json",
        "manifest.parquet",
    ]

    assert kaggle_push.run(settings) == 0

    assert stand_in.methods()[0] == "GetDatasetStatus"
    assert stand_in.methods()[-1] == "CreateDataset"
    assert stand_in.methods().count("StartBlobUpload") == len(data_files)
    assert sorted(stand_in.uploads) == data_files
    for name in data_files:
        assert stand_in.uploads[name] == (upload_dir / name).read_bytes()
    created = stand_in.body_of("CreateDataset")
    assert created["ownerSlug"] == OWNER
    assert created["slug"] == "amazon-product-images"
    assert created["title"] == kaggle_push.DEFAULT_TITLE
    assert created["licenseName"] == "copyright-authors"
    assert created["isPrivate"] is True
    assert sorted(f["token"] for f in created["files"]) == sorted(stand_in.tokens_of(data_files))
    basic = base64.b64encode(f"{OWNER}:{FAKE_KEY}".encode()).decode()
    assert stand_in.calls[0]["auth"] == f"Basic {basic}"
    stats = json.loads((collected / "stats" / "kaggle_push.json").read_text())
    assert stats["action"] == "create"
    assert stats["id"] == DATASET_ID

    stand_in.calls.clear()
    assert kaggle_push.run(settings) == 0

    assert "CreateDataset" not in stand_in.methods()
    assert stand_in.methods()[-1] == "CreateDatasetVersion"
    version = stand_in.body_of("CreateDatasetVersion")
    assert (version["ownerSlug"], version["datasetSlug"]) == (OWNER, "amazon-product-images")
    dataset = load_collected_dataset(collected)
    notes = version["body"]["versionNotes"]
    assert kaggle_push.git_commit().removesuffix("-dirty") in notes
    assert dataset.manifest_sha256 in notes
    assert "Data version v1" in notes
    assert len(version["body"]["files"]) == len(data_files)
    output = capsys.readouterr()
    assert FAKE_KEY not in caplog.text + output.out + output.err


@pytest.mark.network_local
@pytest.mark.parametrize(
    ("method", "status", "response_body", "code", "message"),
    [
        ("GetDatasetStatus", 401, {"code": 401, "message": "Unauthenticated"}, 2, "HTTP 401"),
        ("GetDatasetStatus", 500, {"code": 500, "message": "Internal"}, 1, "HTTP 500"),
        (
            "CreateDataset",
            200,
            {"status": "error", "error": "The slug is already in use"},
            1,
            "The slug is already in use",
        ),
    ],
)
def test_push_reports_kaggle_error(
    stand_in: KaggleStandIn,
    collected: Path,
    caplog: pytest.LogCaptureFixture,
    method: str,
    status: int,
    response_body: dict[str, Any],
    code: int,
    message: str,
) -> None:
    stand_in.responses[method] = (status, response_body)

    assert kaggle_push.run(settings_for(collected)) == code

    assert message in caplog.text
    assert not (collected / "stats" / "kaggle_push.json").exists()
