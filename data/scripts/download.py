"""Download a Kaggle dataset as a zip and extract it into the raw data folder.

``make download`` runs ``python -m data.scripts.download --dataset
lokeshparab/amazon-products-dataset --out-dir data/raw/v1``. The stage keeps the zip
exactly as Kaggle served it, extracts its files next to it, makes both read-only and
records the dataset slug, download time, sizes and SHA-256 digests in
``<out-dir>/SOURCE.json``. Later stages are meant to only read these files.

A rerun finds the complete download (every file listed in ``SOURCE.json`` present with
its recorded size) and skips it, so ``make download`` is idempotent. ``--force``
downloads again.

Credentials are checked before the ``kaggle`` package is imported, because importing
any part of it runs ``KaggleApi.authenticate()``. In kaggle 2.2.5 that call prints a
long help text and raises ``SystemExit`` when it finds no credentials.

Exit codes: 0 on success or skip, 1 when the download fails (network, Kaggle API,
invalid zip, file system), 2 for invalid input (dataset slug, credentials, an output
folder that contains another dataset).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import traceback
import zipfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

# requests is not a direct dependency. kaggle and its kagglesdk use it for every HTTP call
# and raise its exceptions, so this module catches them by type.
import requests

from data.scripts.common import raw_dir, setup_logging, write_json

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "lokeshparab/amazon-products-dataset"
MANIFEST_NAME = "SOURCE.json"
STAGING_PREFIX = ".download-"
KAGGLE_TOKEN_URL = "https://www.kaggle.com/settings/api"
EXIT_DOWNLOAD_FAILED = 1
EXIT_INVALID_INPUT = 2

# NOTE: Kaggle publishes no formal rule for slugs. Kaggle generates dataset slugs from
# lowercase letters, digits and hyphens (at most 50 characters, per the kaggle 2.2.5
# upload check). This pattern accepts that set plus upper case and underscores, and
# rejects everything that could change a URL or a file path ("/", "..", spaces).
_SLUG_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,48}[A-Za-z0-9])?"
_DATASET_SLUG_RE = re.compile(rf"^(?P<owner>{_SLUG_PART})/(?P<name>{_SLUG_PART})$")
_WINDOWS_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_REDACTED = "<redacted>"
_MIN_SECRET_LENGTH = 4
_COPY_CHUNK_BYTES = 1 << 20


class InvalidInputError(Exception):
    """An input that the user must fix before the stage can run (exit code 2)."""


class InvalidSlugError(InvalidInputError, ValueError):
    """A dataset slug that is not of the form ``owner/name``."""


class CredentialsError(InvalidInputError):
    """Kaggle credentials that are missing, invalid or rejected by Kaggle."""


class DownloadError(Exception):
    """A download that failed in the network, Kaggle API, zip or file system (exit code 1)."""


class UnsafeZipError(DownloadError, ValueError):
    """A zip member whose name would be written outside the extraction folder."""


class DatasetDownloader(Protocol):
    """The one ``KaggleApi`` method this stage calls, so that tests can pass a fake object."""

    def dataset_download_files(
        self,
        dataset: str,
        path: str | None = None,
        force: bool = False,
        quiet: bool = True,
        unzip: bool = False,
    ) -> None: ...


@dataclass(frozen=True)
class CredentialSource:
    """Method and location of the credentials kaggle 2.2.5 will use, without any secret."""

    method: str
    location: str


# ---------------------------------------------------------------------------
# Dataset slug
# ---------------------------------------------------------------------------


def validate_dataset_slug(dataset: str) -> str:
    """Return ``dataset`` unchanged, or raise InvalidSlugError naming the value and the rule."""
    if _DATASET_SLUG_RE.match(dataset) is None:
        raise InvalidSlugError(
            f"Invalid Kaggle dataset slug {dataset!r}: expected 'owner/name', where each part "
            "has 1 to 50 letters, digits, hyphens or underscores and starts and ends with a "
            "letter or digit. Copy it from the dataset URL "
            "https://www.kaggle.com/datasets/<owner>/<name>, for example "
            f"--dataset {DEFAULT_DATASET}."
        )
    return dataset


# ---------------------------------------------------------------------------
# Credentials, looked up the way kaggle 2.2.5 and kagglesdk look them up
# ---------------------------------------------------------------------------


def kaggle_config_dir() -> Path:
    """Return the folder where kaggle 2.2.5 reads ``kaggle.json``.

    The rule copies ``KaggleApi.config_dir``: ``$KAGGLE_CONFIG_DIR`` if set, else
    ``~/.kaggle``. On Linux, when ``~/.kaggle`` does not exist, the folder is
    ``$XDG_CONFIG_HOME/kaggle`` (``~/.config/kaggle`` by default).
    """
    configured = os.environ.get("KAGGLE_CONFIG_DIR")
    if configured:
        return Path(configured)
    legacy_dir = Path.home() / ".kaggle"
    if sys.platform.startswith("linux") and not legacy_dir.exists():
        xdg_config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(xdg_config_home) / "kaggle"
    return legacy_dir


def find_credentials() -> CredentialSource:
    """Find the Kaggle credentials without importing kaggle, or raise CredentialsError.

    The order is the one ``KaggleApi.authenticate()`` tries in kaggle 2.2.5: an API
    token, then the legacy username and key (``kaggle.json`` with ``KAGGLE_USERNAME``
    and ``KAGGLE_KEY`` overriding its fields), then the OAuth cache that ``kaggle auth
    login`` writes. A ``kaggle.json`` that is invalid or lacks a field is an error when
    no other source supplies credentials, and a warning otherwise. Log lines name
    files and variables only, never their values.
    """
    problems: list[str] = []
    token_source = _find_access_token(problems)
    config_path = kaggle_config_dir() / "kaggle.json"
    legacy_source, legacy_problem = _find_legacy_credentials(config_path)
    oauth_source = _find_oauth_credentials()

    if config_path.is_file():
        _warn_if_readable_by_others(config_path)

    if token_source is not None:
        source = token_source
    elif legacy_source is not None:
        source = legacy_source
    elif oauth_source is not None:
        source = oauth_source
    else:
        if legacy_problem is not None:
            problems.append(legacy_problem)
        raise CredentialsError(_missing_credentials_message(config_path, problems))

    if legacy_problem is not None:
        logger.warning(
            "%s The file is ignored because the credentials from %s are used.",
            legacy_problem,
            source.location,
        )
    logger.info("Using Kaggle credentials: %s from %s", source.method, source.location)
    return source


def _find_access_token(problems: list[str]) -> CredentialSource | None:
    """Return the API token source that kagglesdk's ``get_access_token_from_env`` picks.

    Appends a sentence to ``problems`` for a token file that is named but unusable.
    """
    in_kaggle_notebook = (
        os.environ.get("KAGGLE_KERNEL_RUN_TYPE") is not None
        and os.environ.get("KAGGLE_DATA_PROXY_URL") is not None
    )
    notebook_token_file = os.environ.get("KAGGLE_API_V1_TOKEN")
    if in_kaggle_notebook and notebook_token_file:
        if _read_token_file(Path(notebook_token_file), problems):
            return CredentialSource("API token", "the file named by KAGGLE_API_V1_TOKEN")

    token_variable = os.environ.get("KAGGLE_API_TOKEN")
    if token_variable:
        if _is_existing_path(token_variable):
            token_file = Path(token_variable)
            if _read_token_file(token_file, problems):
                return CredentialSource("API token", f"{token_file} (named by KAGGLE_API_TOKEN)")
            # kagglesdk also stops here, so a KAGGLE_API_TOKEN that names an empty file
            # hides ~/.kaggle/access_token.
            return None
        return CredentialSource("API token", "environment variable KAGGLE_API_TOKEN")

    for file_name in ("access_token", "access_token.txt"):
        token_file = Path.home() / ".kaggle" / file_name
        if _read_token_file(token_file, problems):
            _warn_if_readable_by_others(token_file)
            return CredentialSource("API token", str(token_file))
    return None


def _is_existing_path(value: str) -> bool:
    try:
        return Path(value).exists()
    except OSError:  # a token longer than the file name limit, for example
        return False


def _read_token_file(path: Path, problems: list[str]) -> bool:
    """Return whether ``path`` exists and contains a token, as kagglesdk 2.2.5 decides."""
    if not path.exists():
        return False
    try:
        has_token = bool(path.read_text().strip())
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"The token file {path} cannot be read: {exc.__class__.__name__}.")
        return False
    if not has_token:
        problems.append(f"The token file {path} is empty.")
    return has_token


def _find_legacy_credentials(config_path: Path) -> tuple[CredentialSource | None, str | None]:
    """Return the legacy username and key source, and a sentence on what is wrong, if any."""
    file_fields: dict[str, Any] = {}
    problem: str | None = None
    if config_path.is_file():
        file_fields, problem = _read_kaggle_json(config_path)

    username_in_env = bool(os.environ.get("KAGGLE_USERNAME"))
    key_in_env = bool(os.environ.get("KAGGLE_KEY"))
    username_in_file = _is_nonempty_string(file_fields.get("username"))
    key_in_file = _is_nonempty_string(file_fields.get("key"))

    if problem is None and config_path.is_file():
        missing = [
            field
            for field, present in (
                ("username", username_in_file or username_in_env),
                ("key", key_in_file or key_in_env),
            )
            if not present
        ]
        if missing:
            problem = (
                f"The Kaggle config file {config_path} has no non-empty "
                f"{' or '.join(repr(field) for field in missing)} field. It needs both "
                '"username" and "key", as in the kaggle.json that Kaggle generates.'
            )

    if not (username_in_env or username_in_file) or not (key_in_env or key_in_file):
        return None, problem
    if username_in_env and key_in_env:
        return CredentialSource("username and key", "KAGGLE_USERNAME and KAGGLE_KEY"), problem
    if username_in_file and key_in_file and not (username_in_env or key_in_env):
        return CredentialSource("username and key", str(config_path)), problem
    return CredentialSource("username and key", f"{config_path} and the environment"), problem


def _read_kaggle_json(path: Path) -> tuple[dict[str, Any], str | None]:
    """Return the fields of ``kaggle.json`` and a sentence on why it is unusable, if it is.

    kaggle 2.2.5 silently ignores a file that is not valid JSON, and raises TypeError on a
    JSON list when any KAGGLE_* variable is set, so both are reported here with the path.
    """
    fix = (
        "Download a new one from "
        f"{KAGGLE_TOKEN_URL} or write it as "
        '{"username": "<your username>", "key": "<your key>"}.'
    )
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return {}, f"The Kaggle config file {path} cannot be read: {exc.__class__.__name__}."
    except json.JSONDecodeError as exc:
        # The message names the line and column only, so it shows none of the file's text.
        return {}, (
            f"The Kaggle config file {path} is not valid JSON ({exc.msg} at line "
            f"{exc.lineno} column {exc.colno}). {fix}"
        )
    if not isinstance(fields, dict):
        return {}, (
            f"The Kaggle config file {path} contains a JSON {type(fields).__name__}, "
            f"expected an object. {fix}"
        )
    return fields, None


def _find_oauth_credentials() -> CredentialSource | None:
    """Return the OAuth cache that ``kaggle auth login`` writes, if it has a refresh token."""
    path = Path.home() / ".kaggle" / "credentials.json"
    if not path.is_file():
        return None
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(cache, dict) and _is_nonempty_string(cache.get("refresh_token")):
        return CredentialSource("OAuth login", str(path))
    return None


def _is_nonempty_string(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _warn_if_readable_by_others(path: Path) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    if os.name != "nt" and mode & (stat.S_IRGRP | stat.S_IROTH):
        logger.warning(
            "The Kaggle credentials file %s is readable by other users (mode %s). "
            "Run 'chmod 600 %s' so only you can read it.",
            path,
            oct(mode),
            path,
        )


def _missing_credentials_message(config_path: Path, problems: list[str]) -> str:
    lines = ["No usable Kaggle credentials found."]
    lines += [f"  {problem}" for problem in problems]
    lines += [
        "The kaggle package accepts either of these. Create the token or key at "
        f"{KAGGLE_TOKEN_URL} (section API).",
        "  1. API token: set the environment variable KAGGLE_API_TOKEN to the token, "
        "or save the token in the file ~/.kaggle/access_token.",
        '  2. Legacy kaggle.json with "username" and "key": save it as '
        "~/.kaggle/kaggle.json or $KAGGLE_CONFIG_DIR/kaggle.json "
        f"(on this machine: {config_path}) and run 'chmod 600' on it, "
        "or set the environment variables KAGGLE_USERNAME and KAGGLE_KEY.",
        "An OAuth login ('kaggle auth login', cached in ~/.kaggle/credentials.json) works too.",
    ]
    return "\n".join(lines)


def _known_secret_values() -> set[str]:
    """Collect the credential values this process could leak, so that output can hide them."""
    candidates = [os.environ.get("KAGGLE_API_TOKEN"), os.environ.get("KAGGLE_KEY")]
    token_files = [
        Path.home() / ".kaggle" / "access_token",
        Path.home() / ".kaggle" / "access_token.txt",
    ]
    for variable in ("KAGGLE_API_TOKEN", "KAGGLE_API_V1_TOKEN"):
        value = os.environ.get(variable)
        if value and _is_existing_path(value):
            token_files.append(Path(value))
    for path in token_files:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            candidates.append(path.read_text().strip())

    json_files = [kaggle_config_dir() / "kaggle.json", Path.home() / ".kaggle" / "credentials.json"]
    for path in json_files:
        with contextlib.suppress(OSError, UnicodeDecodeError, json.JSONDecodeError):
            fields = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(fields, dict):
                candidates += [
                    fields.get(name) for name in ("key", "refresh_token", "access_token")
                ]

    return {
        value.strip()
        for value in candidates
        if isinstance(value, str) and len(value.strip()) >= _MIN_SECRET_LENGTH
    }


def redact_secrets(text: str) -> str:
    """Replace every known Kaggle credential value in ``text`` with ``<redacted>``."""
    for secret in sorted(_known_secret_values(), key=len, reverse=True):
        text = text.replace(secret, _REDACTED)
    return text


# ---------------------------------------------------------------------------
# Kaggle API
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _kaggle_output_logged() -> Iterator[None]:
    """Capture what the kaggle package prints to stdout and log it at DEBUG, redacted."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        for line in buffer.getvalue().splitlines():
            if line.strip():
                logger.debug("kaggle: %s", redact_secrets(line))


def connect_kaggle_api(source: CredentialSource) -> DatasetDownloader:
    """Import kaggle, then return a ``KaggleApi`` that ``authenticate()`` has accepted.

    With an API token, ``authenticate()`` checks the token with Kaggle over the network,
    so this call already needs network access. Importing kaggle 2.2.5 also creates its
    config folder (see ``kaggle_config_dir``) when that folder is missing.
    """
    try:
        with _kaggle_output_logged():
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except ImportError as exc:
        raise InvalidInputError(
            f"The kaggle package cannot be imported ({exc}). Run 'make install' to install it."
        ) from exc
    except SystemExit as exc:
        # authenticate() calls exit(1) when no method works, for example when Kaggle
        # reports the API token as invalid or expired.
        raise CredentialsError(
            f"Kaggle rejected the credentials ({source.method} from {source.location}). "
            f"Create a new token at {KAGGLE_TOKEN_URL} and store it as described there."
        ) from exc
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise CredentialsError(
                f"Kaggle rejected the credentials ({source.method} from {source.location}, "
                f"HTTP {status}). Create a new token at {KAGGLE_TOKEN_URL} and store it as "
                "described there."
            ) from exc
        raise DownloadError(
            f"Checking the Kaggle credentials ({source.method} from {source.location}) "
            f"failed with HTTP {status}: {redact_secrets(str(exc))}. Kaggle may be down; "
            "rerun later."
        ) from exc
    except requests.RequestException as exc:
        raise DownloadError(
            f"Checking the Kaggle credentials ({source.method} from {source.location}) "
            f"failed: {redact_secrets(str(exc))}. This machine needs network access to "
            "kaggle.com. Check the connection or proxy, then rerun."
        ) from exc
    return api


def _fetch_zip(api: DatasetDownloader, dataset: str, staging_dir: Path) -> Path:
    """Download the dataset zip into ``staging_dir`` and return its path."""
    try:
        with _kaggle_output_logged():
            api.dataset_download_files(
                dataset, path=str(staging_dir), force=True, quiet=True, unzip=False
            )
    except requests.HTTPError as exc:
        raise DownloadError(_describe_http_error(dataset, exc)) from exc
    except requests.RequestException as exc:
        raise DownloadError(
            f"Downloading Kaggle dataset {dataset} failed: {redact_secrets(str(exc))}. "
            "This machine needs network access to kaggle.com. Check the connection or "
            "proxy, then rerun."
        ) from exc
    except OSError as exc:
        raise DownloadError(
            f"Writing Kaggle dataset {dataset} to {staging_dir} failed: {exc}. "
            "Check the free space and permissions of the output folder."
        ) from exc

    zip_files = sorted(staging_dir.glob("*.zip"))
    if len(zip_files) != 1:
        names = sorted(path.name for path in staging_dir.iterdir())
        raise DownloadError(
            f"Expected one zip file in {staging_dir} after downloading Kaggle dataset "
            f"{dataset}, found {names}. Rerun with --verbose to see what the kaggle "
            "package reported."
        )
    return zip_files[0]


def _describe_http_error(dataset: str, exc: requests.HTTPError) -> str:
    status = exc.response.status_code if exc.response is not None else None
    detail = redact_secrets(str(exc))
    if status in (401, 403):
        return (
            f"Kaggle refused the download of dataset {dataset} (HTTP {status}: {detail}). "
            "The credentials may be invalid or expired, or the dataset may require "
            f"accepting its rules on kaggle.com. Create a new token at {KAGGLE_TOKEN_URL}."
        )
    if status == 404:
        return (
            f"Kaggle dataset {dataset} not found (HTTP 404: {detail}). Check the slug at "
            f"https://www.kaggle.com/datasets/{dataset}."
        )
    if status is not None and status >= 500:
        return (
            f"Downloading Kaggle dataset {dataset} failed: Kaggle answered HTTP {status} "
            f"({detail}). The service may be down; rerun later."
        )
    return (
        f"Downloading Kaggle dataset {dataset} failed (HTTP {status}: {detail}). "
        "Rerun with --verbose for the traceback."
    )


# ---------------------------------------------------------------------------
# Zip extraction
# ---------------------------------------------------------------------------


def validate_member_name(name: str) -> PurePosixPath:
    """Return the relative path of a zip member, or raise UnsafeZipError.

    Rejected: empty names, absolute paths, Windows drive letters, backslashes, NUL
    characters and any ``..`` component. ``.`` components are dropped.
    """
    if not name or "\x00" in name:
        raise UnsafeZipError(f"Zip member name {name!r} is empty or contains a NUL character.")
    if "\\" in name:
        raise UnsafeZipError(
            f"Zip member name {name!r} contains a backslash, which Windows reads as a "
            "folder separator."
        )
    if name.startswith("/") or _WINDOWS_DRIVE_RE.match(name):
        raise UnsafeZipError(f"Zip member name {name!r} is an absolute path.")
    parts = [part for part in PurePosixPath(name).parts if part != "."]
    if ".." in parts:
        raise UnsafeZipError(
            f"Zip member name {name!r} contains '..', which would write outside the "
            "extraction folder."
        )
    if not parts:
        raise UnsafeZipError(f"Zip member name {name!r} names no file.")
    return PurePosixPath(*parts)


def extract_zip_safely(
    zip_path: Path, dest_dir: Path, *, reserved_names: Collection[str] = ()
) -> list[dict[str, Any]]:
    """Extract every file of ``zip_path`` into ``dest_dir`` and return path, size and SHA-256.

    All member names are checked before the first byte is written, so a rejected zip
    leaves ``dest_dir`` empty. Besides the names ``validate_member_name`` rejects,
    duplicate names and top-level names in ``reserved_names`` raise UnsafeZipError.
    A corrupt zip or a CRC mismatch raises ``zipfile.BadZipFile``.
    """
    with zipfile.ZipFile(zip_path) as archive:
        members: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        seen: set[PurePosixPath] = set()
        for info in archive.infolist():
            relative = validate_member_name(info.filename)
            if relative.parts[0] in reserved_names or relative.parts[0].startswith(STAGING_PREFIX):
                raise UnsafeZipError(
                    f"Zip member name {info.filename!r} would replace {relative.parts[0]}, "
                    "which this stage writes itself."
                )
            if relative in seen:
                raise UnsafeZipError(f"Zip member name {info.filename!r} occurs twice.")
            seen.add(relative)
            if not info.is_dir():
                members.append((info, relative))

        dest_dir.mkdir(parents=True, exist_ok=True)
        dest_root = dest_dir.resolve()
        records = []
        for info, relative in members:
            target = dest_dir.joinpath(*relative.parts)
            if not target.resolve().is_relative_to(dest_root):
                raise UnsafeZipError(f"Zip member {info.filename!r} resolves outside {dest_dir}.")
            target.parent.mkdir(parents=True, exist_ok=True)
            size, digest = _copy_and_hash(archive, info, target)
            records.append({"path": relative.as_posix(), "size": size, "sha256": digest})
    return records


def _copy_and_hash(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path
) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with archive.open(info) as source, target.open("xb") as sink:
        while chunk := source.read(_COPY_CHUNK_BYTES):
            digest.update(chunk)
            sink.write(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


# ---------------------------------------------------------------------------
# SOURCE.json and the skip check
# ---------------------------------------------------------------------------


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """Return the parsed ``SOURCE.json`` of ``out_dir``, or None when it is missing or invalid.

    An invalid file is logged as a warning and treated as missing, so the stage
    downloads again.
    """
    path = out_dir / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        _validate_manifest(manifest)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        logger.warning("Ignoring %s, which is invalid: %s. Downloading again.", path, exc)
        return None
    return manifest


def _validate_manifest(manifest: Any) -> None:
    """Raise ValueError unless ``manifest`` has the fields and safe paths this stage writes."""
    if not isinstance(manifest, dict):
        raise ValueError(f"expected a JSON object, found {type(manifest).__name__}")
    if not isinstance(manifest.get("dataset"), str):
        raise ValueError("missing string field 'dataset'")
    entries = manifest.get("files")
    if not isinstance(manifest.get("zip"), dict) or not isinstance(entries, list):
        raise ValueError("missing object field 'zip' or list field 'files'")
    for entry in [manifest["zip"], *entries]:
        if not isinstance(entry, dict) or not isinstance(entry.get("size"), int):
            raise ValueError(f"entry {entry!r} has no integer 'size'")
        name = entry.get("path", entry.get("name"))
        if not isinstance(name, str):
            raise ValueError(f"entry {entry!r} has no string 'path' or 'name'")
        # Raises UnsafeZipError, a ValueError, for a path that leaves the output folder.
        validate_member_name(name)


def _manifest_entries(manifest: dict[str, Any]) -> list[tuple[str, int]]:
    """Return (relative path, size) for the zip and every extracted file in ``manifest``."""
    entries = [(manifest["zip"]["name"], manifest["zip"]["size"])]
    entries += [(entry["path"], entry["size"]) for entry in manifest["files"]]
    return entries


def find_changed_files(out_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """Return the files listed in ``manifest`` that are missing or differ in size.

    Sizes are compared and digests are not, so that the check stays fast on a large
    dataset. A file edited in place with its size unchanged passes.
    """
    changed = []
    for relative, expected_size in _manifest_entries(manifest):
        path = out_dir / relative
        if not path.is_file() or path.stat().st_size != expected_size:
            changed.append(relative)
    return changed


def _build_manifest(
    dataset: str, zip_path: Path, files: list[dict[str, Any]], kaggle_version: str | None
) -> dict[str, Any]:
    with zip_path.open("rb") as handle:
        zip_digest = hashlib.file_digest(handle, "sha256").hexdigest()
    manifest: dict[str, Any] = {
        "dataset": dataset,
        "url": f"https://www.kaggle.com/datasets/{dataset}",
        "downloaded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if kaggle_version is not None:
        manifest["kaggle_package_version"] = kaggle_version
    manifest["zip"] = {"name": zip_path.name, "size": zip_path.stat().st_size, "sha256": zip_digest}
    manifest["file_count"] = len(files)
    manifest["total_bytes"] = sum(entry["size"] for entry in files)
    manifest["files"] = sorted(files, key=lambda entry: entry["path"])
    return manifest


# ---------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------


def download_dataset(
    dataset: str,
    out_dir: str | os.PathLike[str],
    *,
    force: bool = False,
    api: DatasetDownloader | None = None,
) -> dict[str, Any]:
    """Download ``dataset`` into ``out_dir`` and return the SOURCE.json contents.

    When ``out_dir`` already contains a complete download of ``dataset`` and ``force`` is
    off, nothing is downloaded and the existing SOURCE.json contents are returned.

    ``api`` is the object whose ``dataset_download_files`` fetches the zip. When it is
    None, the credentials are checked and a real ``KaggleApi`` is built. Raises
    InvalidInputError (slug, credentials, another dataset in ``out_dir``) or
    DownloadError.
    """
    validate_dataset_slug(dataset)
    out_path = Path(out_dir)
    logger.info("Download of Kaggle dataset %s into %s started", dataset, out_path)

    previous = read_manifest(out_path)
    if previous is not None and not force:
        if previous["dataset"] != dataset:
            raise InvalidInputError(
                f"{out_path / MANIFEST_NAME} records dataset {previous['dataset']}, not "
                f"{dataset}. Choose another --out-dir, or pass --force to replace it."
            )
        changed = find_changed_files(out_path, previous)
        if not changed:
            logger.info(
                "Skipped: %s already contains a complete download of %s (%d files, %d bytes). "
                "Pass --force to download again.",
                out_path,
                dataset,
                previous.get("file_count", len(previous["files"])),
                previous.get("total_bytes", 0),
            )
            return previous
        logger.warning(
            "%s lists %d files that are missing or changed in size (first: %s). Downloading again.",
            out_path / MANIFEST_NAME,
            len(changed),
            changed[0],
        )

    kaggle_version = None
    if api is None:
        source = find_credentials()
        api = connect_kaggle_api(source)
        kaggle_version = _installed_kaggle_version()

    manifest = _download_into(api, dataset, out_path, previous, kaggle_version)
    logger.info(
        "Download of %s finished: %d files, %d bytes extracted from %s (%d bytes) into %s",
        dataset,
        manifest["file_count"],
        manifest["total_bytes"],
        manifest["zip"]["name"],
        manifest["zip"]["size"],
        out_path,
    )
    return manifest


def _installed_kaggle_version() -> str | None:
    try:
        return importlib.metadata.version("kaggle")
    except importlib.metadata.PackageNotFoundError:
        return None


def _download_into(
    api: DatasetDownloader,
    dataset: str,
    out_path: Path,
    previous: dict[str, Any] | None,
    kaggle_version: str | None,
) -> dict[str, Any]:
    """Download and extract in a staging folder inside ``out_path``, then move into place."""
    try:
        out_path.mkdir(parents=True, exist_ok=True)
        for leftover in out_path.glob(STAGING_PREFIX + "*"):
            logger.info("Removing %s, left by an interrupted download", leftover)
            _remove_staging_dir(leftover)
        staging_dir = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_path))
    except OSError as exc:
        raise DownloadError(f"Creating the output folder {out_path} failed: {exc}.") from exc

    try:
        zip_path = _fetch_zip(api, dataset, staging_dir)
        extracted_dir = staging_dir / "extracted"
        try:
            files = extract_zip_safely(
                zip_path, extracted_dir, reserved_names={MANIFEST_NAME, zip_path.name}
            )
        except zipfile.BadZipFile as exc:
            raise DownloadError(
                f"The file {zip_path.name} downloaded for Kaggle dataset {dataset} is not a "
                f"valid zip ({exc}). Rerun to download it again."
            ) from exc
        if not files:
            raise DownloadError(
                f"The zip {zip_path.name} downloaded for Kaggle dataset {dataset} holds no "
                "files. Check the dataset on kaggle.com, then rerun."
            )
        manifest = _build_manifest(dataset, zip_path, files, kaggle_version)
        _install_files(zip_path, extracted_dir, out_path, manifest, previous)
    except OSError as exc:
        raise DownloadError(
            f"Writing Kaggle dataset {dataset} into {out_path} failed: {exc}. Check the free "
            "space and permissions of the output folder."
        ) from exc
    finally:
        _remove_staging_dir(staging_dir)
    return manifest


def _install_files(
    zip_path: Path,
    extracted_dir: Path,
    out_path: Path,
    manifest: dict[str, Any],
    previous: dict[str, Any] | None,
) -> None:
    """Move the zip and extracted files into ``out_path``, read-only, then write SOURCE.json.

    Each move is an ``os.replace`` on one file system, so no file is ever seen half
    written. The set of files is not swapped in one step. Instead, SOURCE.json is removed
    first and written last, so a run that stops in between leaves no SOURCE.json and the next
    run downloads again.
    """
    manifest_path = out_path / MANIFEST_NAME
    manifest_path.unlink(missing_ok=True)
    if previous is not None:
        _remove_stale_files(out_path, previous, manifest)

    for entry in manifest["files"]:
        source = extracted_dir / entry["path"]
        target = out_path / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        _make_read_only(target)

    zip_target = out_path / zip_path.name
    os.replace(zip_path, zip_target)
    _make_read_only(zip_target)

    write_json(manifest_path, manifest)


def _remove_stale_files(out_path: Path, previous: dict[str, Any], manifest: dict[str, Any]) -> None:
    """Delete files of the previous download that the new one does not contain."""
    kept = {relative for relative, _ in _manifest_entries(manifest)}
    for relative, _ in _manifest_entries(previous):
        if relative not in kept:
            (out_path / relative).unlink(missing_ok=True)
            logger.info("Removed %s, which the new download does not contain", relative)


def _make_read_only(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _remove_staging_dir(staging_dir: Path) -> None:
    try:
        shutil.rmtree(staging_dir)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning(
            "Removing the staging folder %s failed: %s. Delete it by hand.", staging_dir, exc
        )


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def run(
    dataset: str,
    out_dir: str | os.PathLike[str],
    *,
    force: bool = False,
    api: DatasetDownloader | None = None,
) -> int:
    """Run ``download_dataset`` and turn its errors into a log line and an exit code.

    The traceback is logged at DEBUG level, so it shows only with ``--verbose``.
    """
    try:
        download_dataset(dataset, out_dir, force=force, api=api)
    except InvalidInputError as exc:
        logger.error("%s", exc)
        return EXIT_INVALID_INPUT
    except DownloadError as exc:
        logger.error("%s", exc)
        logger.debug("Traceback:\n%s", redact_secrets("".join(traceback.format_exception(exc))))
        return EXIT_DOWNLOAD_FAILED
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m data.scripts.download",
        description=(
            "Download a Kaggle dataset with the kaggle package, keep the zip as downloaded, "
            "extract it next to the zip and record sizes and SHA-256 digests in SOURCE.json."
        ),
    )
    parser.add_argument(
        "--dataset",
        default=DEFAULT_DATASET,
        help=f"Kaggle dataset slug, 'owner/name' (default: {DEFAULT_DATASET})",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=raw_dir(),
        help="folder for the zip, the extracted files and SOURCE.json "
        "(default: data/raw/v1 under the project root)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="download again even if --out-dir contains a complete download (default: off)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="log DEBUG lines, the kaggle package's output and tracebacks (default: off)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    return run(args.dataset, args.out_dir, force=args.force)


if __name__ == "__main__":
    sys.exit(main())
