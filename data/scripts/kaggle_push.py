"""Publish the collected image dataset to Kaggle, as a new dataset or a new version of it.

``make kaggle-push`` runs ``python -m data.scripts.kaggle_push --processed-dir
data/processed/v1``. The stage reads what ``make fetch`` wrote (``manifest.parquet``,
``labels.json`` and ``images/<label>/<key>.jpg``) and stages the upload in
``<processed-dir>/kaggle-upload/files/``:

- ``images-<label>.zip`` for every label with images. It contains the files of the label's
  ``ok`` manifest rows under their manifest path ``images/<label>/<key>.jpg``, so
  unzipping every archive into one folder gives back the processed folder's layout.
- copies of ``manifest.parquet`` and ``labels.json``;
- ``dataset-metadata.json`` in Kaggle's format: title, id, licence, subtitle,
  description (images per label, data version, git commit, manifest SHA-256), keywords
  and ``resources``, which describe each file and the manifest's columns.

The stage builds the archives itself instead of using the kaggle client's ``dir_mode``.
In kaggle 2.2.5 the default mode ``skip`` drops every sub-folder without an error.
Mode ``zip`` rebuilds each folder's archive in a new temporary folder at every upload,
with the files' own timestamps. Such an archive gets a new path and modification time
on every run, so kaggle's resumable upload, which matches a file by path, size and
modification time, cannot resume it. The upload folder here contains plain files only,
which is checked right before the API call, and the call passes ``dir_mode="skip"``.

Packing is deterministic: entries are sorted by name and have fixed timestamps and
permissions. They are stored without compression because JPEG bytes do not shrink. It
is also resumable: every file is written to a temporary file and renamed, and
``pack-state.json`` records the inputs of each finished file. A rerun rewrites only the
archives whose images changed, so an unchanged archive keeps its modification time and
an interrupted upload of it can resume.

The metadata is validated before anything is packed, with an error that names each
invalid value and the rule it breaks. Without ``--dry-run`` the Kaggle credentials are
checked first (``data.scripts.download`` does the check), then the stage packs, asks
Kaggle whether the dataset exists, and creates it or adds a version whose message
names the git commit and the manifest's SHA-256. ``--dry-run`` packs and prints every
file with its size and the metadata. It never imports the kaggle package and opens no
network connection, so it also works without credentials.

Exit codes: 0 on success, 1 when the upload fails (network, Kaggle API, file system),
2 for invalid input (processed folder, metadata, credentials).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import traceback
import zipfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# requests is what kaggle 2.2.5 raises its HTTP errors with; see data.scripts.download.
import requests
from tqdm import tqdm

from data.scripts.common import (
    PROJECT_ROOT,
    atomic_path,
    processed_dir,
    setup_logging,
    write_json,
    write_stats,
)
from data.scripts.download import (
    DEFAULT_DATASET,
    CredentialsError,
    DownloadError,
    InvalidInputError,
    UnsafeZipError,
    _kaggle_output_logged,
    connect_kaggle_api,
    find_credentials,
    kaggle_config_dir,
    redact_secrets,
    validate_member_name,
)
from data.scripts.manifest import OK
from data.scripts.text import SAFE_NAME_RE

logger = logging.getLogger(__name__)

STAGE = "kaggle_push"
MANIFEST_FILE = "manifest.parquet"
LABELS_FILE = "labels.json"
# The file name kaggle 2.2.5 reads the metadata from (KaggleApi.DATASET_METADATA_FILE).
METADATA_FILE = "dataset-metadata.json"
STAGING_DIR_NAME = "kaggle-upload"
UPLOAD_DIR_NAME = "files"
STATE_FILE = "pack-state.json"
ZIP_PREFIX = "images-"

DEFAULT_SLUG = "amazon-product-images"
DEFAULT_TITLE = "Amazon Product Images by Store Category"
# The photos belong to the sellers who posted them, and the source dataset records no
# licence, so this project cannot grant more rights than "Data files (c) Original Authors".
DEFAULT_LICENSE = "copyright-authors"
# Kaggle adds only keywords that match one of its existing tags and returns the others
# as invalid, which the stage logs as a warning.
DEFAULT_KEYWORDS = ("computer vision", "image", "multiclass classification", "retail and shopping")

# Licence names that dataset-metadata.json accepts, from the "Licenses" list of Kaggle's
# metadata reference (docs/datasets_metadata.md in github.com/Kaggle/kaggle-api).
KNOWN_LICENSES = frozenset(
    {
        "CC0-1.0",
        "CC-BY-SA-3.0",
        "CC-BY-SA-4.0",
        "CC-BY-NC-SA-4.0",
        "GPL-2.0",
        "ODbL-1.0",
        "DbCL-1.0",
        "copyright-authors",
        "other",
        "unknown",
        "CC-BY-4.0",
        "CC-BY-NC-4.0",
        "PDDL",
        "CC-BY-3.0",
        "CC-BY-3.0-IGO",
        "US-Government-Works",
        "CC-BY-NC-SA-3.0-IGO",
        "CDLA-Permissive-1.0",
        "CDLA-Sharing-1.0",
        "CC-BY-ND-4.0",
        "CC-BY-NC-ND-4.0",
        "ODC-BY-1.0",
        "LGPL-3.0",
        "AGPL-3.0",
        "FDL-1.3",
        "EU-ODP-Legal-Notice",
        "apache-2.0",
        "GPL-3.0",
    }
)
# Column types of the same reference ("Data types"), plus the Data Package types that
# kaggle 2.2.5's process_column maps onto them.
KNOWN_FIELD_TYPES = frozenset(
    {
        "string",
        "boolean",
        "numeric",
        "datetime",
        "id",
        "uuid",
        "latitude",
        "longitude",
        "coordinates",
        "country",
        "province",
        "postalcode",
        "address",
        "email",
        "url",
        "integer",
        "decimal",
        "city",
        "number",
        "date",
        "time",
        "year",
        "yearmonth",
        "duration",
        "geopoint",
        "geojson",
    }
)
# Length limits (inclusive) that kaggle 2.2.5 checks in dataset_create_new. Kaggle's
# reference allows dataset slugs from 3 characters, but that client rejects them below 6.
TITLE_LENGTH = (6, 50)
SUBTITLE_LENGTH = (20, 80)
SLUG_LENGTH = (6, 50)
REQUIRED_FIELDS = ("title", "id", "licenses")
_SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
_OWNER_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?$")
_TEMP_FILE_RE = re.compile(r"^\..*\.tmp$")

# Every archive entry gets these attributes, so that the bytes do not depend on when or
# where the images were written. 1980-01-01 is the earliest date a zip entry can hold.
_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
_ZIP_ENTRY_MODE = stat.S_IFREG | 0o644
_ZIP_SYSTEM_UNIX = 3
# Part of every archive's input fingerprint: raise it when the archive layout changes,
# so that archives packed by an older version are rebuilt.
_PACK_FORMAT = 1
_COPY_CHUNK_BYTES = 1 << 20

EXIT_PUSH_FAILED = 1
EXIT_INVALID_INPUT = 2

COLUMN_DESCRIPTIONS = {
    "key": "16 hex digits of the XXH3-64 hash of the normalised image URL; the image file name",
    "url": "image URL after normalisation",
    "label": "label, which is also the image's folder name",
    "status": "outcome for the URL: ok, duplicate, http_error, timeout, connection_error, "
    "blocked, robots_disallowed, address_refused, not_an_image, corrupt, too_small, "
    "too_large, invalid_input or internal_error",
    "http_status": "HTTP status of the last response",
    "error": "error message when status is not ok",
    "attempts": "requests made for the URL",
    "bytes": "size of the downloaded body in bytes",
    "content_type": "Content-Type header of the response",
    "format": "image format detected from the bytes",
    "original_width": "width of the downloaded image in pixels",
    "original_height": "height of the downloaded image in pixels",
    "width": "width of the stored image in pixels",
    "height": "height of the stored image in pixels",
    "kept_original": "true when the stored file is the downloaded bytes unchanged",
    "sha256": "SHA-256 of the downloaded body",
    "path": "stored image, relative to the dataset root (images/<label>/<key>.jpg); "
    "set only where status is ok",
    "duplicate_of": "key of the row that kept an identical image",
    "elapsed_ms": "milliseconds spent on the URL",
    "image_settings": "resize and check settings the image was stored with",
    "fetched_at": "time of the download (UTC)",
    "original_label": "label before the label review",
    "label_source": "original, corrected or removed: what the label review did",
}


class MetadataError(InvalidInputError, ValueError):
    """Dataset metadata that breaks one of Kaggle's rules; the message lists every problem."""


class PushError(Exception):
    """An upload that failed in the network, the Kaggle API or the file system (exit code 1)."""


class DatasetPublisher(Protocol):
    """The ``KaggleApi`` methods this stage calls (kaggle 2.2.5)."""

    def get_config_value(self, name: str) -> str | None: ...

    def dataset_status(self, dataset: str) -> str: ...

    def dataset_create_new(
        self, folder: str, public: bool = False, quiet: bool = False, dir_mode: str = "skip"
    ) -> Any: ...

    def dataset_create_version(
        self, folder: str, version_notes: str, quiet: bool = False, dir_mode: str = "skip"
    ) -> Any: ...


@dataclass(frozen=True)
class ImageFile:
    """One stored image: its path in the archive (the manifest path) and its file."""

    arcname: str
    source: Path
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class LabelImages:
    """A label of labels.json with the images its ``ok`` manifest rows point to."""

    label: str
    name: str
    images: tuple[ImageFile, ...]

    @property
    def zip_name(self) -> str | None:
        """The archive name, or None for a label without images (no archive is made)."""
        return f"{ZIP_PREFIX}{self.label}.zip" if self.images else None


@dataclass(frozen=True)
class CollectedDataset:
    """Outputs of ``make fetch`` in a processed folder, checked and summarised."""

    processed_dir: Path
    manifest_sha256: str
    manifest_rows: int
    manifest_schema: pa.Schema
    status_counts: dict[str, int]
    image_settings: tuple[str, ...]
    labels: tuple[LabelImages, ...]

    @property
    def manifest_path(self) -> Path:
        return self.processed_dir / MANIFEST_FILE

    @property
    def labels_path(self) -> Path:
        return self.processed_dir / LABELS_FILE

    @property
    def image_count(self) -> int:
        return sum(len(label.images) for label in self.labels)


@dataclass(frozen=True)
class StagedFile:
    """A file in the upload folder, with its size in bytes and its description."""

    name: str
    path: Path
    size: int
    description: str


@dataclass(frozen=True)
class PushSettings:
    """The options of one run; see ``parse_args`` for their meaning and defaults."""

    processed_dir: Path
    staging_dir: Path
    data_version: str
    dataset_id: str | None = None
    title: str = DEFAULT_TITLE
    license_name: str = DEFAULT_LICENSE
    public: bool = False
    dry_run: bool = False
    keywords: tuple[str, ...] = DEFAULT_KEYWORDS

    @property
    def upload_dir(self) -> Path:
        return self.staging_dir / UPLOAD_DIR_NAME


# ---------------------------------------------------------------------------
# Reading the processed folder
# ---------------------------------------------------------------------------


def load_collected_dataset(folder: Path) -> CollectedDataset:
    """Read and check ``manifest.parquet``, ``labels.json`` and every ``ok`` row's image.

    Raises InvalidInputError when a file is missing, the manifest still has rows that are
    not compacted, a row's label or path is invalid, or an image file is missing.
    """
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise InvalidInputError(
            f"{str(manifest_path)!r} not found; run 'make fetch' on {str(folder)!r} first, "
            "or point --processed-dir (PROCESSED_DIR) at a collected folder"
        )
    parts_dir = manifest_path.with_name(manifest_path.stem + ".parts")
    if parts_dir.is_dir() and any(parts_dir.iterdir()):
        raise InvalidInputError(
            f"{str(parts_dir)!r} contains rows not yet compacted into {MANIFEST_FILE}; rerun "
            f"'make fetch' on {str(folder)!r} until it finishes, then push"
        )

    label_names = _read_labels(folder / LABELS_FILE)
    table = _read_manifest(manifest_path)
    images_by_label = _find_images(folder, table, label_names)
    _warn_about_unlisted_files(folder, images_by_label)

    ok_rows = table.filter(pc.equal(table.column("status"), OK))
    settings: set[str] = set()
    if "image_settings" in table.column_names:
        settings = {value for value in ok_rows.column("image_settings").to_pylist() if value}
    statuses = Counter(table.column("status").to_pylist())
    return CollectedDataset(
        processed_dir=folder,
        manifest_sha256=_file_sha256(manifest_path),
        manifest_rows=table.num_rows,
        manifest_schema=pq.read_schema(manifest_path),
        status_counts={str(status): count for status, count in sorted(statuses.items())},
        image_settings=tuple(sorted(settings)),
        labels=tuple(
            LabelImages(label, name, tuple(images_by_label.get(label, [])))
            for label, name in label_names.items()
        ),
    )


def _read_labels(path: Path) -> dict[str, str]:
    """Return ``{folder name: display name}`` from labels.json, in the file's order."""
    if not path.is_file():
        raise InvalidInputError(f"{str(path)!r} not found; run 'make relabel' first")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"{str(path)!r} cannot be read as JSON: {exc}") from exc

    labels: dict[str, str] = {}
    for entry in entries if isinstance(entries, list) else [entries]:
        label = entry.get("label") if isinstance(entry, dict) else None
        if not isinstance(label, str) or not SAFE_NAME_RE.match(label):
            raise InvalidInputError(
                f"{str(path)!r} has an invalid entry {entry!r}: expected a list of objects "
                "whose 'label' is a folder name of a-z, 0-9 and '_'; run 'make relabel' again"
            )
        name = entry.get("name")
        labels[label] = name if isinstance(name, str) and name.strip() else label
    if not labels:
        raise InvalidInputError(f"{str(path)!r} lists no labels; run 'make relabel' again")
    return labels


def _read_manifest(path: Path) -> pa.Table:
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InvalidInputError(
            f"{str(path)!r} cannot be read as Parquet ({exc}); rerun 'make fetch' to write it again"
        ) from exc
    missing = [name for name in ("key", "label", "status", "path") if name not in schema.names]
    if missing:
        raise InvalidInputError(
            f"{str(path)!r} has no column {', '.join(missing)}; it is not a manifest that "
            "'make fetch' wrote"
        )
    columns = ["key", "label", "status", "path"]
    if "image_settings" in schema.names:
        columns.append("image_settings")
    return pq.read_table(path, columns=columns)


def _find_images(
    folder: Path, table: pa.Table, label_names: dict[str, str]
) -> dict[str, list[ImageFile]]:
    """Return the image of every ``ok`` row per label, sorted by path; check each one."""
    ok_rows = table.filter(pc.equal(table.column("status"), OK))
    images: dict[str, list[ImageFile]] = {}
    missing: list[str] = []
    for row in ok_rows.select(["key", "label", "path"]).to_pylist():
        arcname = _checked_image_path(row, label_names)
        source = folder / arcname
        try:
            info = source.stat()
        except FileNotFoundError:
            missing.append(arcname)
            continue
        image = ImageFile(arcname, source, info.st_size, info.st_mtime_ns)
        images.setdefault(row["label"], []).append(image)

    if missing:
        raise InvalidInputError(
            f"{len(missing)} images of 'ok' manifest rows are missing in {str(folder)!r}, "
            f"for example {missing[:3]}; rerun 'make fetch' on that folder to fetch them again"
        )
    for label_images in images.values():
        label_images.sort(key=lambda image: image.arcname)
    return images


def _checked_image_path(row: dict[str, Any], label_names: dict[str, str]) -> str:
    """Return the row's ``path`` if it is ``images/<its label>/<file name>``, else raise."""
    label, path = row["label"], row["path"]
    if label not in label_names:
        raise InvalidInputError(
            f"manifest row {row['key']!r} has label {label!r}, which {LABELS_FILE} does not "
            f"list (it lists {sorted(label_names)}); run 'make relabel' and 'make fetch' again"
        )
    try:
        parts = validate_member_name(path).parts if isinstance(path, str) else ()
    except UnsafeZipError:
        parts = ()
    if len(parts) != 3 or parts[:2] != ("images", label):
        raise InvalidInputError(
            f"manifest row {row['key']!r} has status ok and path {path!r}; expected "
            f"'images/{label}/<file name>'. Rerun 'make fetch' to rewrite the manifest"
        )
    return PurePosixPath(*parts).as_posix()


def _warn_about_unlisted_files(folder: Path, images: dict[str, list[ImageFile]]) -> None:
    """Log the files under images/ that no ``ok`` row points to; they are not uploaded."""
    images_dir = folder / "images"
    if not images_dir.is_dir():
        return
    listed = {image.arcname for label_images in images.values() for image in label_images}
    unlisted = sorted(
        path.relative_to(folder).as_posix()
        for path in images_dir.rglob("*")
        if path.is_file() and path.relative_to(folder).as_posix() not in listed
    )
    if unlisted:
        logger.warning(
            "%d files under %s are not in the manifest as 'ok' and will not be uploaded, "
            "for example %s. A rerun of 'make fetch' removes files that no row points to.",
            len(unlisted),
            images_dir,
            unlisted[:3],
        )


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# ---------------------------------------------------------------------------
# Dataset id, git commit and metadata
# ---------------------------------------------------------------------------


def configured_username() -> str | None:
    """Return the Kaggle user name from ``KAGGLE_USERNAME`` or ``kaggle.json``, offline.

    An API token does not contain the user name, so kaggle 2.2.5 requests it from Kaggle
    while it checks the credentials. With only a token, this returns None.
    """
    name = os.environ.get("KAGGLE_USERNAME", "").strip()
    if name:
        return name
    try:
        fields = json.loads((kaggle_config_dir() / "kaggle.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    value = fields.get("username") if isinstance(fields, dict) else None
    return value.strip() if isinstance(value, str) and value.strip() else None


def resolve_dataset_id(explicit: str | None, username: str | None) -> str:
    """Return ``explicit``, else ``<username>/amazon-product-images``, else raise."""
    if explicit:
        return explicit
    if username:
        return f"{username}/{DEFAULT_SLUG}"
    raise InvalidInputError(
        "No Kaggle dataset id given, and no Kaggle user name found to derive one from. "
        f"Set KAGGLE_PUSH_ID=<owner>/<slug> (or --dataset-id), for example "
        f"KAGGLE_PUSH_ID=<your username>/{DEFAULT_SLUG}. The user name is read from "
        "KAGGLE_USERNAME or kaggle.json; with only an API token it is known after the "
        "credentials are checked, which a dry run does not do."
    )


def git_commit(root: Path = PROJECT_ROOT) -> str:
    """Return the commit checked out in ``root``, or ``unknown`` where git cannot tell.

    ``-dirty`` is appended when tracked files differ from that commit.
    """
    try:
        commit = _git(root, "rev-parse", "HEAD").strip()
        changes = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("The git commit of %s is unknown (%s); recording 'unknown'.", root, exc)
        return "unknown"
    return f"{commit}-dirty" if changes.strip() else commit


def _git(root: Path, *args: str) -> str:
    completed = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True, timeout=60
    )
    return completed.stdout


def version_notes(data_version: str, commit: str, manifest_sha256: str) -> str:
    """Return the message of a new Kaggle dataset version."""
    return (
        f"Data version {data_version}, git commit {commit}, "
        f"{MANIFEST_FILE} SHA-256 {manifest_sha256}"
    )


def build_metadata(
    dataset: CollectedDataset, settings: PushSettings, *, dataset_id: str, commit: str
) -> dict[str, Any]:
    """Return the contents of dataset-metadata.json, in Kaggle's metadata format."""
    return {
        "title": settings.title,
        "id": dataset_id,
        "subtitle": (
            f"Product photos in {len(dataset.labels)} store categories, "
            "from Amazon Products 2023"
        ),
        "description": describe_dataset(dataset, settings, commit=commit),
        "licenses": [{"name": settings.license_name}],
        "keywords": list(settings.keywords),
        "resources": describe_resources(dataset),
    }


def describe_dataset(dataset: CollectedDataset, settings: PushSettings, *, commit: str) -> str:
    """Return the Markdown description: images per label, files and provenance."""
    rows = [
        f"| {label.name} | `{label.label}` | {len(label.images):,} |" for label in dataset.labels
    ]
    settings_text = "; ".join(f"`{value}`" for value in dataset.image_settings) or "not recorded"
    lines = [
        f"Product photos from the image URLs of the Kaggle dataset [{DEFAULT_DATASET}]"
        f"(https://www.kaggle.com/datasets/{DEFAULT_DATASET}) (Amazon Products Dataset "
        f"2023), downloaded, checked and sorted into {len(dataset.labels)} store categories "
        "by the product-image-classifier pipeline.",
        "",
        "## Images per label",
        "",
        "| label | folder | images |",
        "| --- | --- | --- |",
        *rows,
        f"| **total** | | {dataset.image_count:,} |",
        "",
        "## Files",
        "",
        "- `images-<label>.zip`: the images of one label as `images/<label>/<key>.jpg`. "
        "Unzip every archive into one folder to get the layout the manifest's `path` "
        "column refers to.",
        f"- `{MANIFEST_FILE}`: one row per image URL ({dataset.manifest_rows:,} rows) with "
        "its label, download status, sizes and SHA-256. Rows with status `ok` have an "
        "image.",
        f"- `{LABELS_FILE}`: the labels in class order, with display names.",
        "",
        "## Provenance",
        "",
        f"- Data version: `{settings.data_version}`",
        f"- Git commit of the pipeline: `{commit}`",
        f"- SHA-256 of `{MANIFEST_FILE}`: `{dataset.manifest_sha256}`",
        f"- Image settings: {settings_text}",
        "",
        "## Licence",
        "",
        "The photos were published by the sellers of the listed products and remain the "
        "copyright of their authors. The source dataset records no licence.",
    ]
    return "\n".join(lines)


def describe_resources(dataset: CollectedDataset) -> list[dict[str, Any]]:
    """Return the ``resources`` list: every uploaded file, and the manifest's columns."""
    resources: list[dict[str, Any]] = []
    for label in dataset.labels:
        if label.zip_name is not None:
            resources.append(
                {
                    "path": label.zip_name,
                    "description": f"{len(label.images):,} images of label {label.name!r} "
                    f"as images/{label.label}/<key>.jpg",
                }
            )
    fields = [
        {
            "name": column.name,
            "description": COLUMN_DESCRIPTIONS.get(column.name, ""),
            "type": _kaggle_field_type(column.type),
        }
        for column in dataset.manifest_schema
    ]
    resources.append(
        {
            "path": MANIFEST_FILE,
            "description": "one row per image URL: label, download status, sizes, SHA-256",
            "schema": {"fields": fields},
        }
    )
    resources.append({"path": LABELS_FILE, "description": "labels in class order"})
    return resources


def _kaggle_field_type(data_type: pa.DataType) -> str:
    if pa.types.is_boolean(data_type):
        return "boolean"
    if pa.types.is_integer(data_type):
        return "integer"
    if pa.types.is_floating(data_type) or pa.types.is_decimal(data_type):
        return "numeric"
    if pa.types.is_timestamp(data_type) or pa.types.is_date(data_type):
        return "datetime"
    return "string"


# ---------------------------------------------------------------------------
# Metadata validation
# ---------------------------------------------------------------------------


def validate_metadata(metadata: dict[str, Any]) -> None:
    """Raise MetadataError listing every value of ``metadata`` that breaks a Kaggle rule.

    The rules come from Kaggle's metadata reference and kaggle 2.2.5's own checks. They
    cover the required fields, the id's form and slug, the title and subtitle lengths,
    and exactly one known licence. They also require keywords to be strings, and
    resource paths to be distinct plain file names whose columns have known types.
    Before it uploads, kaggle 2.2.5 checks only lengths and the number of licences, so
    Kaggle reports any other invalid value after every file has been uploaded.
    """
    problems = [
        f"'{name}' is missing; it is required to create a dataset"
        for name in REQUIRED_FIELDS
        if name not in metadata
    ]
    if "id" in metadata:
        problems += _dataset_id_problems(metadata["id"])
    if "title" in metadata:
        problems += _length_problems("title", metadata["title"], TITLE_LENGTH, "KAGGLE_TITLE")
    if metadata.get("subtitle") is not None:
        problems += _length_problems("subtitle", metadata["subtitle"], SUBTITLE_LENGTH, None)
    if not isinstance(metadata.get("description", ""), str):
        problems.append(f"'description' must be a string, received {metadata['description']!r}")
    if "licenses" in metadata:
        problems += _license_problems(metadata["licenses"])
    problems += _keyword_problems(metadata.get("keywords", []))
    problems += _resource_problems(metadata.get("resources", []))
    if problems:
        raise MetadataError(
            f"{METADATA_FILE} is invalid:\n" + "\n".join(f"  - {problem}" for problem in problems)
        )


def _dataset_id_problems(dataset_id: Any) -> list[str]:
    fix = "Set KAGGLE_PUSH_ID=<owner>/<slug> (or --dataset-id)"
    if not isinstance(dataset_id, str) or dataset_id.count("/") != 1:
        return [f"id {dataset_id!r} must have the form '<owner>/<slug>' with one '/'. {fix}."]
    owner, slug = dataset_id.split("/")
    problems = []
    if not owner:
        problems.append(f"id {dataset_id!r} has no owner before the '/'. {fix}.")
    elif not _OWNER_RE.match(owner):
        problems.append(
            f"owner {owner!r} of id {dataset_id!r} must be a Kaggle user name or organisation "
            "slug: letters, digits, hyphens and underscores, starting and ending with a "
            f"letter or digit. {fix}."
        )
    low, high = SLUG_LENGTH
    if not low <= len(slug) <= high:
        problems.append(
            f"slug {slug!r} of id {dataset_id!r} has {len(slug)} characters; it must have "
            f"{low} to {high}. {fix}."
        )
    if not _SLUG_RE.match(slug):
        suggestion = re.sub(r"[^a-z0-9]+", "-", slug.lower()).strip("-")
        problems.append(
            f"slug {slug!r} of id {dataset_id!r} may contain only lowercase letters, digits "
            "and hyphens, and must start and end with a letter or digit"
            + (f", for example {suggestion!r}" if suggestion else "")
            + f". {fix}."
        )
    return problems


def _length_problems(
    name: str, value: Any, limits: tuple[int, int], variable: str | None
) -> list[str]:
    low, high = limits
    fix = f" Set {variable} to change it." if variable else ""
    if not isinstance(value, str) or not value.strip():
        return [f"'{name}' must be a non-empty string, received {value!r}.{fix}"]
    if not low <= len(value) <= high:
        return [f"{name} {value!r} has {len(value)} characters; it must have {low} to {high}.{fix}"]
    return []


def _license_problems(licenses: Any) -> list[str]:
    fix = "Set KAGGLE_LICENSE to one of the names in Kaggle's list, for example CC0-1.0"
    if not isinstance(licenses, list) or len(licenses) != 1:
        return [f"'licenses' must list exactly one licence, received {licenses!r}. {fix}."]
    entry = licenses[0]
    name = entry.get("name") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not name:
        return [f"the licence entry {entry!r} has no 'name'. {fix}."]
    if name not in KNOWN_LICENSES:
        return [
            f"licence {name!r} is not a licence name Kaggle accepts; known names are "
            f"{', '.join(sorted(KNOWN_LICENSES, key=str.lower))}. {fix}."
        ]
    return []


def _keyword_problems(keywords: Any) -> list[str]:
    if isinstance(keywords, list) and all(isinstance(word, str) and word for word in keywords):
        return []
    return [f"'keywords' must be a list of non-empty strings, received {keywords!r}"]


def _resource_problems(resources: Any) -> list[str]:
    if not isinstance(resources, list):
        return [f"'resources' must be a list, received {type(resources).__name__}"]
    problems: list[str] = []
    seen: set[str] = set()
    for resource in resources:
        path = resource.get("path") if isinstance(resource, dict) else None
        if not isinstance(path, str) or not path or "/" in path or "\\" in path:
            problems.append(
                f"resource path {path!r} must be the name of a file in the upload folder, "
                "without a folder part (kaggle uploads the folder's top level only)"
            )
            continue
        if path in seen:
            problems.append(f"resource path {path!r} is listed twice")
        seen.add(path)
        schema = resource.get("schema", {})
        fields = schema.get("fields", []) if isinstance(schema, dict) else None
        if not isinstance(fields, list):
            problems.append(f"the schema of resource {path!r} must have a list 'fields'")
            continue
        for column in fields:
            problems += _field_problems(path, column)
    return problems


def _field_problems(path: str, column: Any) -> list[str]:
    name = column.get("name") if isinstance(column, dict) else None
    if not isinstance(name, str) or not name:
        return [f"a column of resource {path!r} has no name: {column!r}"]
    field_type = column.get("type", "string")
    if not isinstance(field_type, str) or field_type.lower() not in KNOWN_FIELD_TYPES:
        return [
            f"column {name!r} of resource {path!r} has type {field_type!r}; known types are "
            f"{', '.join(sorted(KNOWN_FIELD_TYPES))}"
        ]
    return []


# ---------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------


def pack_dataset(dataset: CollectedDataset, upload_dir: Path, state_path: Path) -> list[StagedFile]:
    """Write the archives and file copies into ``upload_dir``; return them in upload order.

    Each file is written to a temporary file and renamed. A file whose inputs match its
    record in ``state_path`` is kept as it is. Leftover temporary files and archives of
    labels that have no images any more are removed. Raises InvalidInputError when
    ``upload_dir`` contains a file this stage does not write.
    """
    upload_dir.mkdir(parents=True, exist_ok=True)
    _clean_upload_dir(upload_dir, dataset)
    state = _read_state(state_path)

    staged: list[StagedFile] = []
    rebuilt = 0
    with tqdm(total=dataset.image_count, desc="pack", unit="img", disable=None) as progress:
        for label in dataset.labels:
            if label.zip_name is None:
                continue
            target = upload_dir / label.zip_name
            inputs = _zip_fingerprint(label.images)
            if _is_current(target, state.get(label.zip_name), inputs):
                progress.update(len(label.images))
            else:
                _write_zip(target, label.images, progress)
                _record(state, state_path, target, inputs)
                rebuilt += 1
            description = f"{len(label.images):,} images of label {label.label!r}"
            staged.append(_staged(target, description))

    copies = [
        (dataset.manifest_path, dataset.manifest_sha256, "one row per image URL"),
        (dataset.labels_path, _file_sha256(dataset.labels_path), "labels in class order"),
    ]
    for source, digest, description in copies:
        target = upload_dir / source.name
        if not _is_current(target, state.get(source.name), digest):
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
            _record(state, state_path, target, digest)
        staged.append(_staged(target, description))

    archives = sum(1 for label in dataset.labels if label.zip_name is not None)
    logger.info(
        "Packed %d images into %d archives in %s (%d rewritten, %d unchanged)",
        dataset.image_count,
        archives,
        upload_dir,
        rebuilt,
        archives - rebuilt,
    )
    return staged


def _clean_upload_dir(upload_dir: Path, dataset: CollectedDataset) -> None:
    expected = {label.zip_name for label in dataset.labels if label.zip_name is not None}
    expected |= {MANIFEST_FILE, LABELS_FILE, METADATA_FILE}
    for entry in sorted(upload_dir.iterdir()):
        if entry.name in expected and entry.is_file() and not entry.is_symlink():
            continue
        if entry.is_file() and _TEMP_FILE_RE.match(entry.name):
            logger.info("Removing %s, left by an interrupted run", entry)
            entry.unlink()
        elif entry.is_file() and entry.name.startswith(ZIP_PREFIX) and entry.suffix == ".zip":
            logger.info("Removing %s: its label has no images in this version", entry)
            entry.unlink()
        else:
            raise InvalidInputError(
                f"{str(entry)!r} is not a file this stage writes, and the Kaggle API would "
                "upload it (or skip it without a word if it is a folder). Remove it, or "
                "choose another --staging-dir (KAGGLE_STAGING_DIR)."
            )


def _zip_fingerprint(images: Iterable[ImageFile]) -> str:
    digest = hashlib.sha256(f"format {_PACK_FORMAT}\n".encode())
    for image in images:
        digest.update(f"{image.arcname}\t{image.size}\t{image.mtime_ns}\n".encode())
    return digest.hexdigest()


def _write_zip(target: Path, images: Iterable[ImageFile], progress: tqdm) -> None:
    """Write the images into ``target`` atomically, stored, with fixed entry attributes."""
    with atomic_path(target) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            for image in images:
                info = zipfile.ZipInfo(image.arcname, date_time=_ZIP_DATE_TIME)
                info.create_system = _ZIP_SYSTEM_UNIX
                info.external_attr = _ZIP_ENTRY_MODE << 16
                info.compress_type = zipfile.ZIP_STORED
                info.file_size = image.size
                with image.source.open("rb") as source, archive.open(info, "w") as sink:
                    shutil.copyfileobj(source, sink, _COPY_CHUNK_BYTES)
                progress.update(1)


def _read_state(state_path: Path) -> dict[str, Any]:
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        logger.warning(
            "Ignoring %s, which cannot be read (%s); packing every file.", state_path, exc
        )
        return {}
    return state if isinstance(state, dict) else {}


def _is_current(target: Path, record: Any, inputs: str) -> bool:
    """Return whether ``target`` is the file written from ``inputs`` and left unchanged."""
    try:
        info = target.stat()
    except FileNotFoundError:
        return False
    return record == {"inputs": inputs, "size": info.st_size, "mtime_ns": info.st_mtime_ns}


def _record(state: dict[str, Any], state_path: Path, target: Path, inputs: str) -> None:
    info = target.stat()
    state[target.name] = {"inputs": inputs, "size": info.st_size, "mtime_ns": info.st_mtime_ns}
    write_json(state_path, state)


def _staged(path: Path, description: str) -> StagedFile:
    return StagedFile(path.name, path, path.stat().st_size, description)


def write_metadata(upload_dir: Path, metadata: dict[str, Any]) -> StagedFile:
    """Write dataset-metadata.json into ``upload_dir`` atomically and return it."""
    path = upload_dir / METADATA_FILE
    write_json(path, metadata)
    return _staged(path, "dataset metadata, read by the Kaggle API and not uploaded as a file")


def check_upload_dir(upload_dir: Path, staged: list[StagedFile]) -> None:
    """Raise PushError unless ``upload_dir`` contains exactly the staged files, no folder.

    The Kaggle API uploads every file at the folder's top level and, with
    ``dir_mode="skip"``, skips sub-folders silently, so this is checked right before the
    call.
    """
    expected = {item.name for item in staged}
    found = {entry.name for entry in upload_dir.iterdir()}
    folders = sorted(entry.name for entry in upload_dir.iterdir() if entry.is_dir())
    if found != expected or folders:
        raise PushError(
            f"{str(upload_dir)!r} changed after packing: expected the files {sorted(expected)}, "
            f"found {sorted(found)} (folders: {folders}). Rerun the stage."
        )


# ---------------------------------------------------------------------------
# Dry run and upload
# ---------------------------------------------------------------------------


def print_dry_run(
    dataset: CollectedDataset,
    staged: list[StagedFile],
    metadata_file: StagedFile,
    metadata: dict[str, Any],
    *,
    public: bool,
    notes: str,
) -> None:
    """Print the label folders, every file with its size, and the metadata JSON."""
    width = max(len(label.label) for label in dataset.labels)
    lines = [
        "Dry run: nothing was uploaded and the Kaggle API was not called.",
        f"Kaggle dataset: {metadata['id']} ({'public' if public else 'private'} if created)",
        "Action: create the dataset if it does not exist, otherwise add a version with the "
        "message:",
        f"  {notes}",
        "",
        "Label folders:",
    ]
    for label in dataset.labels:
        target = label.zip_name or "no images, so no archive"
        lines.append(
            f"  images/{label.label + '/':<{width + 1}} {len(label.images):>9,} images  -> {target}"
        )
    total = sum(item.size for item in staged)
    lines += ["", f"Files to upload from {metadata_file.path.parent}:"]
    lines += [f"  {item.size:>15,} bytes  {item.name}" for item in staged]
    lines += [
        f"  {total:>15,} bytes  in {len(staged)} files",
        f"  {metadata_file.size:>15,} bytes  {metadata_file.name} ({metadata_file.description})",
        "",
        f"{METADATA_FILE}:",
        json.dumps(metadata, indent=2, ensure_ascii=False),
    ]
    print("\n".join(lines))


def dataset_exists(api: DatasetPublisher, dataset_id: str) -> bool:
    """Ask Kaggle whether ``dataset_id`` exists; raise CredentialsError or PushError on failure."""
    try:
        with _kaggle_output_logged():
            status = api.dataset_status(dataset_id)
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else None
        # NOTE: HTTP 404 is assumed to mean "no such dataset", which was not verified
        # against kaggle.com. kaggle 2.2.5's own dataset_create_new takes every HTTP
        # error to mean that.
        if code == 404:
            return False
        if code in (401, 403):
            raise CredentialsError(
                f"Kaggle denied access to dataset {dataset_id} (HTTP {code}). The credentials "
                "may be invalid or expired, or the dataset belongs to an account they cannot "
                "edit; check KAGGLE_PUSH_ID and the credentials."
            ) from exc
        raise PushError(
            f"Requesting the status of dataset {dataset_id} failed with HTTP {code}: "
            f"{redact_secrets(str(exc))}. Kaggle may be down; rerun later."
        ) from exc
    except requests.RequestException as exc:
        raise PushError(
            f"Requesting the status of dataset {dataset_id} failed: {redact_secrets(str(exc))}. "
            "This machine needs network access to kaggle.com; check the connection, then rerun."
        ) from exc
    logger.info("Kaggle dataset %s exists (status %s): adding a new version", dataset_id, status)
    return True


def upload_dataset(
    api: DatasetPublisher,
    upload_dir: Path,
    *,
    dataset_id: str,
    exists: bool,
    public: bool,
    notes: str,
) -> dict[str, Any]:
    """Create the dataset, or add a version to it, from ``upload_dir``; return Kaggle's response.

    Raises CredentialsError on HTTP 401 or 403, PushError for any other failure.
    """
    try:
        with _kaggle_output_logged():
            if exists:
                response = api.dataset_create_version(
                    str(upload_dir), notes, quiet=False, dir_mode="skip"
                )
            else:
                response = api.dataset_create_new(
                    str(upload_dir), public=public, quiet=False, dir_mode="skip"
                )
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else None
        error_type = CredentialsError if code in (401, 403) else PushError
        raise error_type(
            f"Uploading dataset {dataset_id} failed with HTTP {code}: "
            f"{redact_secrets(str(exc))}. Rerun to resume the upload."
        ) from exc
    except requests.RequestException as exc:
        raise PushError(
            f"Uploading dataset {dataset_id} failed: {redact_secrets(str(exc))}. Check the "
            "connection to kaggle.com, then rerun to resume the upload."
        ) from exc
    except ValueError as exc:
        raise PushError(
            f"The kaggle package stopped the upload of dataset {dataset_id}: "
            f"{redact_secrets(str(exc))}. Rerun with --verbose to see its output."
        ) from exc
    return _check_response(response, dataset_id)


def _check_response(response: Any, dataset_id: str) -> dict[str, Any]:
    error = getattr(response, "error", None)
    status = str(getattr(response, "status", None) or "")
    if response is None or error or status.lower() != "ok":
        raise PushError(
            f"Kaggle did not accept dataset {dataset_id}: status {status or 'none'}, error "
            f"{redact_secrets(str(error))!r}. Fix what the error names, then rerun."
        )
    invalid_tags = list(getattr(response, "invalid_tags", None) or [])
    if invalid_tags:
        logger.warning("Kaggle ignored these keywords, which are not Kaggle tags: %s", invalid_tags)
    return {"ref": getattr(response, "ref", None), "url": getattr(response, "url", None)}


# ---------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------


def push(settings: PushSettings, *, api: DatasetPublisher | None = None) -> dict[str, Any]:
    """Check, pack and publish ``settings.processed_dir``; return what was done.

    ``api`` is the object that talks to Kaggle. When it is None and this is not a dry
    run, the credentials are checked and a real ``KaggleApi`` is built, before anything
    is packed. A dry run never uses ``api``. Raises InvalidInputError, PushError or
    data.scripts.download.DownloadError.
    """
    dataset = load_collected_dataset(settings.processed_dir)
    logger.info(
        "Kaggle push of %s started: %d images in %d labels, %d manifest rows%s",
        settings.processed_dir,
        dataset.image_count,
        len(dataset.labels),
        dataset.manifest_rows,
        " (dry run)" if settings.dry_run else "",
    )
    commit = git_commit()
    if settings.dataset_id:
        # An id given by hand is checked before the credentials, which may need the network.
        draft = build_metadata(dataset, settings, dataset_id=settings.dataset_id, commit=commit)
        validate_metadata(draft)

    if settings.dry_run:
        username = None if settings.dataset_id else configured_username()
        return _dry_run(dataset, settings, username=username, commit=commit)
    if api is None:
        api = cast(DatasetPublisher, connect_kaggle_api(find_credentials()))
    return _push_to_kaggle(api, dataset, settings, commit=commit)


def _stage(
    dataset: CollectedDataset, settings: PushSettings, *, username: str | None, commit: str
) -> tuple[dict[str, Any], list[StagedFile], StagedFile]:
    """Resolve the id, validate the metadata, then pack; return metadata and staged files."""
    dataset_id = resolve_dataset_id(settings.dataset_id, username)
    metadata = build_metadata(dataset, settings, dataset_id=dataset_id, commit=commit)
    validate_metadata(metadata)
    _warn_if_other_owner(dataset_id, username)
    staged = _pack(dataset, settings)
    return metadata, staged, write_metadata(settings.upload_dir, metadata)


def _dry_run(
    dataset: CollectedDataset, settings: PushSettings, *, username: str | None, commit: str
) -> dict[str, Any]:
    metadata, staged, metadata_file = _stage(dataset, settings, username=username, commit=commit)
    notes = version_notes(settings.data_version, commit, dataset.manifest_sha256)
    print_dry_run(dataset, staged, metadata_file, metadata, public=settings.public, notes=notes)
    logger.info("Dry run finished: %d files, %d bytes staged", len(staged), _total(staged))
    return {"action": "dry_run", "id": metadata["id"], "files": len(staged)}


def _push_to_kaggle(
    api: DatasetPublisher, dataset: CollectedDataset, settings: PushSettings, *, commit: str
) -> dict[str, Any]:
    username = api.get_config_value("username")
    metadata, staged, metadata_file = _stage(dataset, settings, username=username, commit=commit)
    dataset_id = metadata["id"]
    notes = version_notes(settings.data_version, commit, dataset.manifest_sha256)
    result = _publish(api, settings, staged, metadata_file, dataset_id=dataset_id, notes=notes)
    _write_push_stats(settings, dataset, result, staged, commit=commit, notes=notes)
    return result


def _pack(dataset: CollectedDataset, settings: PushSettings) -> list[StagedFile]:
    try:
        return pack_dataset(dataset, settings.upload_dir, settings.staging_dir / STATE_FILE)
    except OSError as exc:
        raise PushError(
            f"Packing into {str(settings.staging_dir)!r} failed: {exc}. Check its free space "
            "and permissions, or choose another --staging-dir (KAGGLE_STAGING_DIR)."
        ) from exc


def _publish(
    api: DatasetPublisher,
    settings: PushSettings,
    staged: list[StagedFile],
    metadata_file: StagedFile,
    *,
    dataset_id: str,
    notes: str,
) -> dict[str, Any]:
    check_upload_dir(settings.upload_dir, [*staged, metadata_file])
    exists = dataset_exists(api, dataset_id)
    if exists and settings.public:
        logger.warning(
            "PUBLIC applies when a dataset is created; %s exists, so its visibility stays as "
            "it is. Change it on kaggle.com.",
            dataset_id,
        )
    logger.info(
        "Uploading %d files (%d bytes) to Kaggle as %s of %s",
        len(staged),
        _total(staged),
        "a new version" if exists else "a new dataset",
        dataset_id,
    )
    response = upload_dataset(
        api,
        settings.upload_dir,
        dataset_id=dataset_id,
        exists=exists,
        public=settings.public,
        notes=notes,
    )
    result = {"action": "version" if exists else "create", "id": dataset_id, **response}
    logger.info(
        "Kaggle push finished: %s %s with %d files, %d bytes; Kaggle processes it at %s",
        "new version of" if exists else "created",
        dataset_id,
        len(staged),
        _total(staged),
        response.get("url") or f"https://www.kaggle.com/datasets/{dataset_id}",
    )
    return result


def _warn_if_other_owner(dataset_id: str, username: str | None) -> None:
    owner = dataset_id.split("/")[0]
    if username and owner.lower() != username.lower():
        logger.warning(
            "The dataset owner %r is not the Kaggle user %r of the credentials. Kaggle accepts "
            "this only for an organisation that user belongs to.",
            owner,
            username,
        )


def _total(staged: list[StagedFile]) -> int:
    return sum(item.size for item in staged)


def _write_push_stats(
    settings: PushSettings,
    dataset: CollectedDataset,
    result: dict[str, Any],
    staged: list[StagedFile],
    *,
    commit: str,
    notes: str,
) -> None:
    stats = {
        **result,
        "data_version": settings.data_version,
        "git_commit": commit,
        "manifest_sha256": dataset.manifest_sha256,
        "version_notes": notes,
        "images_per_label": {label.label: len(label.images) for label in dataset.labels},
        "files": {item.name: item.size for item in staged},
    }
    try:
        write_stats(settings.processed_dir, STAGE, stats)
    except OSError as exc:
        logger.warning(
            "Writing stats/%s.json failed (%s); the upload itself succeeded.", STAGE, exc
        )


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def run(settings: PushSettings, *, api: DatasetPublisher | None = None) -> int:
    """Run ``push`` and turn its errors into a log line and an exit code.

    The traceback is logged at DEBUG level, so it shows only with ``--verbose``.
    """
    try:
        push(settings, api=api)
    except InvalidInputError as exc:
        logger.error("%s", exc)
        return EXIT_INVALID_INPUT
    except (PushError, DownloadError) as exc:
        logger.error("%s", exc)
        logger.debug("Traceback:\n%s", redact_secrets("".join(traceback.format_exception(exc))))
        return EXIT_PUSH_FAILED
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m data.scripts.kaggle_push",
        description=(
            "Pack the collected images (one zip per label), the manifest and labels.json, "
            "write dataset-metadata.json, and create the Kaggle dataset or add a version."
        ),
    )
    parser.add_argument(
        "--processed-dir",
        type=Path,
        default=processed_dir(),
        help="folder that 'make fetch' wrote (default: data/processed/v1 under the project root)",
    )
    parser.add_argument(
        "--staging-dir",
        type=Path,
        help=f"folder for the upload files and the pack state "
        f"(default: <processed-dir>/{STAGING_DIR_NAME})",
    )
    parser.add_argument(
        "--data-version",
        help="data version named in the description and version message "
        "(default: the name of --processed-dir)",
    )
    parser.add_argument(
        "--dataset-id",
        help=f"Kaggle dataset '<owner>/<slug>' (default: <your Kaggle user name>/{DEFAULT_SLUG})",
    )
    parser.add_argument(
        "--title",
        default=DEFAULT_TITLE,
        help=f"dataset title, 6 to 50 characters; Kaggle uses it only when it creates the "
        f"dataset (default: {DEFAULT_TITLE!r})",
    )
    parser.add_argument(
        "--license",
        dest="license_name",
        default=DEFAULT_LICENSE,
        help="licence name from Kaggle's list, for example CC0-1.0 or CC-BY-4.0; Kaggle uses "
        f"it only when it creates the dataset (default: {DEFAULT_LICENSE})",
    )
    parser.add_argument(
        "--public",
        action="store_true",
        help="create the dataset as public (default: private); no effect on a new version",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="pack and print what would be uploaded, without credentials or network "
        "(default: off)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="log DEBUG lines, the kaggle package's output and tracebacks (default: off)",
    )
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> PushSettings:
    folder = args.processed_dir
    return PushSettings(
        processed_dir=folder,
        staging_dir=args.staging_dir or folder / STAGING_DIR_NAME,
        data_version=args.data_version or folder.resolve().name,
        dataset_id=args.dataset_id or None,
        title=args.title,
        license_name=args.license_name,
        public=args.public,
        dry_run=args.dry_run,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    return run(settings_from_args(args))


if __name__ == "__main__":
    sys.exit(main())
