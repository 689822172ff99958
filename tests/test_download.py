"""Tests for data.scripts.download: credentials, slug, zip extraction, SOURCE.json, errors.

No test reaches the network or imports the kaggle package. The download tests pass a
fake API object that writes a zip built in the test, and everything else (files, zip,
permissions, logging) is real.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import stat
import sys
import zipfile
from pathlib import Path

import pytest
import requests

from data.scripts import download

DATASET = "lokeshparab/amazon-products-dataset"
FAKE_KEY = "fake-key-0123456789abcdef"
FAKE_TOKEN = "KGAT_fake-token-9876543210"
CSV_FILES = {
    "Amazon-Products.csv": b"name,main_category\nKettle,appliances\n",
    "categories/Air Conditioners.csv": b"name\nSplit AC\n",
}


class FakeKaggleApi:
    """Fake ``KaggleApi`` that writes ``zip_bytes`` where kaggle 2.2.5 writes the zip."""

    def __init__(self, zip_bytes: bytes = b"", error: Exception | None = None) -> None:
        self.zip_bytes = zip_bytes
        self.error = error
        self.calls: list[dict[str, object]] = []

    def dataset_download_files(
        self,
        dataset: str,
        path: str | None = None,
        force: bool = False,
        quiet: bool = True,
        unzip: bool = False,
    ) -> None:
        self.calls.append({"dataset": dataset, "path": path, "unzip": unzip})
        # kaggle 2.2.5 prints this line to stdout, which the stage must capture.
        print(f"Dataset URL: https://www.kaggle.com/datasets/{dataset}")
        if self.error is not None:
            raise self.error
        assert path is not None
        Path(path, dataset.split("/")[1] + ".zip").write_bytes(self.zip_bytes)


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


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


def write_kaggle_json(home_dir: Path, text: str, mode: int = 0o600) -> Path:
    config_dir = home_dir / ".kaggle"
    config_dir.mkdir(exist_ok=True)
    path = config_dir / "kaggle.json"
    path.write_text(text)
    path.chmod(mode)
    return path


def all_output(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    return caplog.text + captured.out + captured.err


# ---------------------------------------------------------------------------
# Credentials
# ---------------------------------------------------------------------------


def test_missing_credentials_names_both_ways(
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.delitem(sys.modules, "kaggle", raising=False)

    exit_code = download.main(["--dataset", DATASET, "--out-dir", str(tmp_path / "out")])

    output = all_output(caplog, capsys)
    assert exit_code == 2
    assert "No usable Kaggle credentials found" in output
    for expected in (
        "KAGGLE_API_TOKEN",
        "~/.kaggle/access_token",
        "~/.kaggle/kaggle.json",
        "$KAGGLE_CONFIG_DIR/kaggle.json",
        "KAGGLE_USERNAME",
        "KAGGLE_KEY",
        "https://www.kaggle.com/settings/api",
    ):
        assert expected in output, expected
    assert "Traceback" not in output
    assert "kaggle" not in sys.modules, "the kaggle package was imported before the check"
    assert not (tmp_path / "out").exists()


def test_incomplete_kaggle_json_hides_key(
    home: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    config_path = write_kaggle_json(home, json.dumps({"key": FAKE_KEY}), mode=0o644)

    with pytest.raises(download.CredentialsError) as raised:
        download.find_credentials()

    message = str(raised.value)
    assert str(config_path) in message
    assert "'username'" in message
    assert FAKE_KEY not in message
    assert FAKE_KEY not in all_output(caplog, capsys)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"username": "alice", "key": ', "is not valid JSON"),
        ('["alice"]', "contains a JSON list, expected an object"),
        ('{"username": "alice", "key": ""}', "no non-empty 'key' field"),
    ],
)
def test_invalid_kaggle_json_rejected(
    home: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    text: str,
    expected: str,
) -> None:
    caplog.set_level(logging.INFO)
    config_path = write_kaggle_json(home, text)

    exit_code = download.main(["--out-dir", str(tmp_path / "out")])

    output = all_output(caplog, capsys)
    assert exit_code == 2
    assert expected in output
    assert str(config_path) in output
    assert "Traceback" not in output


def test_invalid_kaggle_json_ignored_with_token(
    home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    write_kaggle_json(home, "{broken")
    monkeypatch.setenv("KAGGLE_API_TOKEN", FAKE_TOKEN)

    source = download.find_credentials()

    assert source.location == "environment variable KAGGLE_API_TOKEN"
    assert "is not valid JSON" in caplog.text
    assert "ignored" in caplog.text


def test_kaggle_json_key_never_logged(
    home: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    config_path = write_kaggle_json(
        home, json.dumps({"username": "alice", "key": FAKE_KEY}), mode=0o644
    )

    source = download.find_credentials()

    output = all_output(caplog, capsys)
    assert source == download.CredentialSource("username and key", str(config_path))
    assert f"chmod 600 {config_path}" in output
    assert FAKE_KEY not in output
    assert FAKE_KEY not in repr(source)


def test_private_kaggle_json_no_warning(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    write_kaggle_json(home, json.dumps({"username": "alice", "key": FAKE_KEY}), mode=0o600)

    download.find_credentials()

    assert "chmod 600" not in caplog.text


def _token_in_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("KAGGLE_API_TOKEN", FAKE_TOKEN)
    return "environment variable KAGGLE_API_TOKEN"


def _token_file_in_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    token_file = home / "token.txt"
    token_file.write_text(FAKE_TOKEN + "\n")
    monkeypatch.setenv("KAGGLE_API_TOKEN", str(token_file))
    return f"{token_file} (named by KAGGLE_API_TOKEN)"


def _token_file_in_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (home / ".kaggle").mkdir()
    (home / ".kaggle" / "access_token").write_text(FAKE_TOKEN)
    return str(home / ".kaggle" / "access_token")


def _username_and_key_in_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", FAKE_KEY)
    return "KAGGLE_USERNAME and KAGGLE_KEY"


def _kaggle_json_in_config_dir(home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    config_dir = home / "elsewhere"
    config_dir.mkdir()
    (config_dir / "kaggle.json").write_text(json.dumps({"username": "alice", "key": FAKE_KEY}))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config_dir))
    return str(config_dir / "kaggle.json")


def _kaggle_json_in_xdg_dir(home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    # kaggle 2.2.5 reads ~/.config/kaggle/kaggle.json on Linux when ~/.kaggle is missing.
    config_dir = home / ".config" / "kaggle"
    config_dir.mkdir(parents=True)
    (config_dir / "kaggle.json").write_text(json.dumps({"username": "alice", "key": FAKE_KEY}))
    return str(config_dir / "kaggle.json")


def _key_in_env_username_in_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    write_kaggle_json(home, json.dumps({"username": "alice"}))
    monkeypatch.setenv("KAGGLE_KEY", FAKE_KEY)
    return f"{home / '.kaggle' / 'kaggle.json'} and the environment"


def _oauth_cache(home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (home / ".kaggle").mkdir()
    (home / ".kaggle" / "credentials.json").write_text(json.dumps({"refresh_token": FAKE_TOKEN}))
    return str(home / ".kaggle" / "credentials.json")


@pytest.mark.parametrize(
    "set_up",
    [
        _token_in_env,
        _token_file_in_env,
        _token_file_in_home,
        _username_and_key_in_env,
        _kaggle_json_in_config_dir,
        _kaggle_json_in_xdg_dir,
        _key_in_env_username_in_file,
        _oauth_cache,
    ],
)
def test_credential_sources_found(
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    set_up,
) -> None:
    if sys.platform != "linux" and set_up is _kaggle_json_in_xdg_dir:
        pytest.skip("kaggle 2.2.5 uses the XDG folder on Linux only")
    caplog.set_level(logging.DEBUG)
    expected_location = set_up(home, monkeypatch)

    source = download.find_credentials()

    output = all_output(caplog, capsys)
    assert source.location == expected_location
    assert FAKE_KEY not in output
    assert FAKE_TOKEN not in output


def test_empty_token_file_reported(
    home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    token_file = tmp_path / "empty_token"
    token_file.write_text("\n")
    monkeypatch.setenv("KAGGLE_API_TOKEN", str(token_file))

    with pytest.raises(download.CredentialsError, match="is empty"):
        download.find_credentials()


# ---------------------------------------------------------------------------
# Dataset slug
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "slug",
    [
        "",
        "amazon-products-dataset",
        "lokeshparab/",
        "/amazon-products-dataset",
        "lokeshparab/amazon-products-dataset/3",
        "lokeshparab/../etc",
        "lokeshparab/amazon products",
        "lokeshparab/-leading-hyphen",
        "lokeshparab/trailing-hyphen-",
        "lokeshparab/amazon.products",
        "owner/" + "a" * 51,
        "https://www.kaggle.com/datasets/lokeshparab/amazon-products-dataset",
    ],
)
def test_invalid_slug_rejected(slug: str) -> None:
    with pytest.raises(download.InvalidSlugError, match="expected 'owner/name'"):
        download.validate_dataset_slug(slug)


@pytest.mark.parametrize("slug", [DATASET, "uciml/iris", "Some_User/data-2024", "a/b"])
def test_valid_slug_accepted(slug: str) -> None:
    assert download.validate_dataset_slug(slug) == slug


def test_main_rejects_bad_slug_first(
    home: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    exit_code = download.main(["--dataset", "not a slug", "--out-dir", str(tmp_path / "out")])

    assert exit_code == 2
    assert "Invalid Kaggle dataset slug 'not a slug'" in caplog.text
    # The slug check comes before the credential check, which would fail in this HOME.
    assert "credentials" not in caplog.text
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------
# Zip extraction
# ---------------------------------------------------------------------------


def test_extract_writes_files_and_digests(tmp_path: Path) -> None:
    zip_path = tmp_path / "data.zip"
    zip_path.write_bytes(make_zip({**CSV_FILES, "categories/": b""}))

    records = download.extract_zip_safely(zip_path, tmp_path / "out")

    assert sorted(record["path"] for record in records) == sorted(CSV_FILES)
    for record in records:
        data = CSV_FILES[record["path"]]
        assert (tmp_path / "out" / record["path"]).read_bytes() == data
        assert record["size"] == len(data)
        assert record["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    "unsafe_name",
    [
        "../evil.csv",
        "categories/../../evil.csv",
        "/tmp/evil.csv",
        "C:/evil.csv",
        "..\\evil.csv",
        "..",
    ],
)
def test_extract_rejects_traversal(tmp_path: Path, unsafe_name: str) -> None:
    zip_path = tmp_path / "data.zip"
    zip_path.write_bytes(make_zip({"good.csv": b"a\n", unsafe_name: b"pwned\n"}))
    dest_dir = tmp_path / "nested" / "out"

    with pytest.raises(download.UnsafeZipError, match="Zip member name"):
        download.extract_zip_safely(zip_path, dest_dir)

    # Names are checked before any write, so not even the safe member is extracted.
    assert not dest_dir.exists()
    assert not (tmp_path / "nested" / "evil.csv").exists()
    assert not (tmp_path / "evil.csv").exists()


def test_extract_rejects_reserved_and_duplicate(tmp_path: Path) -> None:
    reserved_zip = tmp_path / "reserved.zip"
    reserved_zip.write_bytes(make_zip({"SOURCE.json": b"{}"}))
    duplicate_zip = tmp_path / "duplicate.zip"
    with pytest.warns(UserWarning, match="Duplicate name"):
        duplicate_zip.write_bytes(_zip_with_duplicate())

    with pytest.raises(download.UnsafeZipError, match="which this stage writes itself"):
        download.extract_zip_safely(reserved_zip, tmp_path / "r", reserved_names={"SOURCE.json"})
    with pytest.raises(download.UnsafeZipError, match="occurs twice"):
        download.extract_zip_safely(duplicate_zip, tmp_path / "d")


def _zip_with_duplicate() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.csv", b"first")
        archive.writestr("a.csv", b"second")
    return buffer.getvalue()


# ---------------------------------------------------------------------------
# Download with a fake API
# ---------------------------------------------------------------------------


def test_download_writes_source_json(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO)
    zip_bytes = make_zip(CSV_FILES)
    api = FakeKaggleApi(zip_bytes)
    out_dir = tmp_path / "raw" / "v1"

    manifest = download.download_dataset(DATASET, out_dir, api=api)

    assert len(api.calls) == 1
    assert api.calls[0]["unzip"] is False
    staging = Path(str(api.calls[0]["path"]))
    assert staging.parent == out_dir
    assert staging.name.startswith(".download-")
    assert not staging.exists()

    zip_path = out_dir / "amazon-products-dataset.zip"
    assert zip_path.read_bytes() == zip_bytes
    source = json.loads((out_dir / "SOURCE.json").read_text())
    assert source == manifest
    assert source["dataset"] == DATASET
    assert source["downloaded_at"].endswith("+00:00")
    assert source["zip"] == {
        "name": zip_path.name,
        "size": len(zip_bytes),
        "sha256": hashlib.sha256(zip_bytes).hexdigest(),
    }
    assert source["file_count"] == 2
    assert source["total_bytes"] == sum(len(data) for data in CSV_FILES.values())
    assert [entry["path"] for entry in source["files"]] == sorted(CSV_FILES)
    for entry in source["files"]:
        path = out_dir / entry["path"]
        assert path.read_bytes() == CSV_FILES[entry["path"]]
        assert entry["sha256"] == hashlib.sha256(CSV_FILES[entry["path"]]).hexdigest()
        assert stat.S_IMODE(path.stat().st_mode) & 0o222 == 0, f"{path} is writable"
    assert stat.S_IMODE(zip_path.stat().st_mode) & 0o222 == 0
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        ["SOURCE.json", zip_path.name, "Amazon-Products.csv", "categories"]
    )

    assert "started" in caplog.text
    assert f"finished: 2 files, {source['total_bytes']} bytes extracted" in caplog.text
    assert capsys.readouterr().out == "", "the kaggle package's prints must go to the log"


def test_download_skips_complete_output(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    out_dir = tmp_path / "out"
    first = download.download_dataset(DATASET, out_dir, api=FakeKaggleApi(make_zip(CSV_FILES)))
    api = FakeKaggleApi(make_zip({"other.csv": b"x"}))

    second = download.download_dataset(DATASET, out_dir, api=api)

    assert api.calls == []
    assert second == first
    assert "already contains a complete download" in caplog.text

    # With no credentials in HOME, `make download` still succeeds on a complete folder.
    monkeypatch.delitem(sys.modules, "kaggle", raising=False)
    assert download.main(["--dataset", DATASET, "--out-dir", str(out_dir)]) == 0
    assert "kaggle" not in sys.modules


def test_download_repeats_when_file_changed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    out_dir = tmp_path / "out"
    download.download_dataset(DATASET, out_dir, api=FakeKaggleApi(make_zip(CSV_FILES)))
    changed = out_dir / "Amazon-Products.csv"
    changed.chmod(0o644)
    changed.write_bytes(b"truncated")
    api = FakeKaggleApi(make_zip(CSV_FILES))

    download.download_dataset(DATASET, out_dir, api=api)

    assert len(api.calls) == 1
    assert "missing or changed in size (first: Amazon-Products.csv)" in caplog.text
    assert changed.read_bytes() == CSV_FILES["Amazon-Products.csv"]


def test_force_replaces_and_removes_stale(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    download.download_dataset(DATASET, out_dir, api=FakeKaggleApi(make_zip(CSV_FILES)))
    new_files = {"Amazon-Products.csv": b"name\nToaster\n"}
    api = FakeKaggleApi(make_zip(new_files))

    manifest = download.download_dataset(DATASET, out_dir, force=True, api=api)

    assert len(api.calls) == 1
    assert [entry["path"] for entry in manifest["files"]] == ["Amazon-Products.csv"]
    assert (out_dir / "Amazon-Products.csv").read_bytes() == b"name\nToaster\n"
    assert not (out_dir / "categories" / "Air Conditioners.csv").exists()


def test_other_dataset_in_out_dir_rejected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    out_dir = tmp_path / "out"
    download.download_dataset(DATASET, out_dir, api=FakeKaggleApi(make_zip(CSV_FILES)))
    api = FakeKaggleApi(make_zip(CSV_FILES))

    exit_code = download.run("someone/other-dataset", out_dir, api=api)

    assert exit_code == 2
    assert api.calls == []
    assert f"records dataset {DATASET}, not someone/other-dataset" in caplog.text
    assert "--force" in caplog.text


def test_network_error_is_clear_and_redacted(
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KAGGLE_KEY", FAKE_KEY)
    error = requests.ConnectionError(
        f"Failed to resolve 'api.kaggle.com' (auth {FAKE_KEY}): Name or service not known"
    )
    out_dir = tmp_path / "out"

    caplog.set_level(logging.INFO)
    exit_code = download.run(DATASET, out_dir, api=FakeKaggleApi(error=error))

    output = all_output(caplog, capsys)
    assert exit_code == 1
    assert f"Downloading Kaggle dataset {DATASET} failed" in output
    assert "Name or service not known" in output
    assert "needs network access to kaggle.com" in output
    assert "Traceback" not in output
    assert FAKE_KEY not in output
    assert "<redacted>" in output
    assert list(out_dir.iterdir()) == [], "the staging folder was left behind"

    caplog.clear()
    caplog.set_level(logging.DEBUG)
    assert download.run(DATASET, out_dir, api=FakeKaggleApi(error=error)) == 1
    assert "Traceback" in caplog.text
    assert FAKE_KEY not in caplog.text


def test_http_404_names_dataset(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    response = requests.Response()
    response.status_code = 404
    error = requests.HTTPError("404 Client Error: Not Found", response=response)

    exit_code = download.run(DATASET, tmp_path / "out", api=FakeKaggleApi(error=error))

    assert exit_code == 1
    assert f"Kaggle dataset {DATASET} not found (HTTP 404" in caplog.text


def test_unsafe_zip_from_api_fails(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    out_dir = tmp_path / "out"
    api = FakeKaggleApi(make_zip({"good.csv": b"a\n", "../escaped.csv": b"pwned\n"}))

    exit_code = download.run(DATASET, out_dir, api=api)

    assert exit_code == 1
    assert "'../escaped.csv'" in caplog.text
    assert not (tmp_path / "escaped.csv").exists()
    assert not (out_dir / "SOURCE.json").exists()
    assert list(out_dir.iterdir()) == []


def test_corrupt_zip_from_api_fails(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    out_dir = tmp_path / "out"

    exit_code = download.run(DATASET, out_dir, api=FakeKaggleApi(b"<html>rate limited</html>"))

    assert exit_code == 1
    assert "is not a valid zip" in caplog.text
    assert list(out_dir.iterdir()) == []


def test_empty_zip_from_api_fails(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    out_dir = tmp_path / "out"

    exit_code = download.run(DATASET, out_dir, api=FakeKaggleApi(make_zip({})))

    assert exit_code == 1
    assert "holds no files" in caplog.text
    assert not (out_dir / "SOURCE.json").exists()


def test_http_500_says_service_not_network(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    response = requests.Response()
    response.status_code = 500
    error = requests.HTTPError("500 Server Error", response=response)

    exit_code = download.run(DATASET, tmp_path / "out", api=FakeKaggleApi(error=error))

    assert exit_code == 1
    assert "answered HTTP 500" in caplog.text
    assert "network access" not in caplog.text


def test_leftover_staging_folder_removed(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    leftover = out_dir / (download.STAGING_PREFIX + "killed")
    leftover.mkdir(parents=True)
    (leftover / "half.zip").write_bytes(b"PK")

    exit_code = download.run(DATASET, out_dir, api=FakeKaggleApi(make_zip(CSV_FILES)))

    assert exit_code == 0
    assert not leftover.exists()
