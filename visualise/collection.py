"""Figures and counts of image collection: download outcomes, image sizes, sample images.

Inputs, all under a processed folder: ``manifest.parquet`` (one row per URL, read with
``data.scripts.manifest.read_manifest`` so the parts of a running fetch count too),
``stats/fetch.json``, ``stats/validate.json`` and the images under ``images/<label>/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from data.scripts.common import stats_path
from data.scripts.manifest import OK, read_manifest
from visualise.style import (
    Plot,
    annotate_bars,
    missing_plot,
    new_figure,
    read_json,
    save_figure,
    status_colour,
    use_thousands_separators,
)

MANIFEST_FILE = "manifest.parquet"
MAX_HOSTS = 12
SCATTER_MAX_POINTS = 5_000  # above this, a hexbin reads better than overlapping dots
# Scheme, optional user information, then the host: a bracketed IPv6 address or a name.
HOST_PATTERN = r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(\[[^\]]*\]|[^/:?#]*)"
THUMBNAIL_SIDE = 112
IMAGES_PER_LABEL = 8
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def read_manifest_frame(
    processed_dir: Path, columns: list[str] | None = None
) -> pd.DataFrame | None:
    """Return the manifest (only ``columns``, when given) as a DataFrame, or None before fetch."""
    manifest = processed_dir / MANIFEST_FILE
    parts = manifest.with_name(manifest.stem + ".parts")
    if not manifest.is_file() and not parts.is_dir():
        return None
    table = read_manifest(manifest)
    return (table.select(columns) if columns else table).to_pandas()


def summary_rows(processed_dir: Path) -> list[tuple[str, Any]]:
    """Return the key counts of validate and fetch as (quantity, value) rows."""
    rows: list[tuple[str, Any]] = []
    survey = read_json(stats_path(processed_dir, "validate"))
    if survey:
        rows += [
            ("URLs surveyed (validate)", survey.get("urls")),
            ("reachable share (validate)", f"{survey.get('reachable_share', 0):.1%}"),
            ("bytes a full download takes (validate)", _size(survey.get("bytes_expected"))),
        ]
    fetch = read_json(stats_path(processed_dir, "fetch"))
    if fetch:
        run = fetch.get("run", {})
        rows += [
            ("manifest rows (URLs)", fetch.get("rows")),
            *((f"  status {status}", count) for status, count in fetch["status_counts"].items()),
            ("bytes downloaded in the last run", _size(run.get("bytes_downloaded"))),
            ("URLs per second in the last run", run.get("urls_per_second")),
            ("blocked hosts", len(fetch.get("blocked_hosts") or {})),
            ("identical images under two labels", fetch.get("duplicate_label_conflicts")),
        ]
        for error in run.get("top_errors", [])[:5]:
            rows.append((f"  error: {error['error']}", error["count"]))
    return rows


def _size(value: Any) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f} MiB"


def hosts_of(urls: pd.Series) -> pd.Series:
    """Return the lower-case host of each URL, ``(invalid)`` where none can be read."""
    return urls.str.extract(HOST_PATTERN, expand=False).str.lower().fillna("(invalid)")


def plot_download_outcomes(processed_dir: Path, out_dir: Path) -> Plot:
    """Draw the URLs per manifest status, and the statuses of the hosts with most URLs."""
    name, title = "download_outcomes", "Download outcomes"
    manifest = read_manifest_frame(processed_dir, ["status", "url"])
    if manifest is None:
        return missing_plot(name, title, "fetch", processed_dir / MANIFEST_FILE)
    if manifest.empty:
        return Plot(name, title, note="the manifest has no rows: products.parquet was empty")

    counts = manifest["status"].value_counts()
    hosts = hosts_of(manifest["url"])
    top_hosts = hosts.value_counts().head(MAX_HOSTS)
    per_host = pd.crosstab(hosts[hosts.isin(top_hosts.index)], manifest["status"])
    per_host = per_host.loc[top_hosts.index, [s for s in counts.index if s in per_host.columns]]

    height = max(4.5, 1.5 + 0.4 * max(len(counts), len(top_hosts)))
    figure, (left, right) = new_figure(14, height, ncols=2)
    positions = np.arange(len(counts))[::-1]
    bars = left.barh(positions, counts.values, color=[status_colour(s) for s in counts.index])
    total = int(counts.sum())
    annotate_bars(left, bars, [f"{n:,} ({n / total:.1%})" for n in counts.values])
    left.set_yticks(positions, counts.index)
    left.set_xlim(0, counts.max() * 1.3)
    left.set_xlabel("URLs")
    use_thousands_separators(left.xaxis)
    left.set_title(f"URLs per status ({total:,} in all)")
    left.grid(axis="y", visible=False)

    _draw_host_panel(right, per_host)
    caption = (
        "Left: every manifest row (one per URL) by status. Green is stored, grey is a copy "
        "of an image stored under another URL, and the other colours are failures. Right: "
        f"the statuses of the {len(top_hosts)} hosts with most URLs, as shares of each "
        "host's URLs."
    )
    return Plot(name, title, caption, save_figure(figure, out_dir, name))


def _draw_host_panel(axes: Any, per_host: pd.DataFrame) -> None:
    shares = per_host.div(per_host.sum(axis=1), axis=0)
    positions = np.arange(len(shares))[::-1]
    left_edge = np.zeros(len(shares))
    for status in shares.columns:
        axes.barh(
            positions,
            shares[status].values,
            left=left_edge,
            color=status_colour(status),
            label=status,
            edgecolor="white",
            linewidth=0.5,
        )
        left_edge += shares[status].values
    ticks = [f"{host} ({int(n):,})" for host, n in per_host.sum(axis=1).items()]
    axes.set_yticks(positions, ticks)
    axes.set_xlim(0, 1)
    axes.xaxis.set_major_formatter(lambda value, _: f"{value:.0%}")
    axes.set_xlabel("share of the host's URLs")
    axes.set_title("Statuses per host (URLs)")
    axes.grid(axis="y", visible=False)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=min(3, len(shares.columns)))


def plot_image_sizes(processed_dir: Path, out_dir: Path) -> Plot:
    """Draw the original width and height of the downloaded images and their bytes."""
    name, title = "image_sizes", "Image sizes"
    manifest = read_manifest_frame(
        processed_dir, ["original_width", "original_height", "width", "height", "bytes"]
    )
    if manifest is None:
        return missing_plot(name, title, "fetch", processed_dir / MANIFEST_FILE)
    sized = manifest.dropna(subset=["original_width", "original_height"])
    downloaded = manifest["bytes"].dropna()
    downloaded = downloaded[downloaded > 0]
    if sized.empty and downloaded.empty:
        return Plot(name, title, note="no image of the manifest was downloaded and read")

    figure, (scatter, widths, sizes) = new_figure(15, 4.8, ncols=3)
    width, height = sized["original_width"].astype(float), sized["original_height"].astype(float)
    if len(sized) <= SCATTER_MAX_POINTS:
        scatter.scatter(width, height, s=14, alpha=0.5, color="#1565c0", edgecolors="none")
    else:
        hexes = scatter.hexbin(width, height, gridsize=50, bins="log", mincnt=1, cmap="viridis")
        figure.colorbar(hexes, ax=scatter, label="images")
    scatter.set_xlabel("width (px)")
    scatter.set_ylabel("height (px)")
    scatter.set_title(f"Original size ({len(sized):,} images)")

    bins = np.histogram_bin_edges(np.concatenate([width, height]) if len(sized) else [0, 1], 30)
    widths.hist(width, bins=bins, histtype="step", linewidth=2, label="width")
    widths.hist(height, bins=bins, histtype="step", linewidth=2, label="height")
    stored = sized["width"].dropna()
    if not stored.empty:
        longest = np.maximum(sized["width"], sized["height"]).dropna()
        widths.axvline(
            longest.median(),
            color="black",
            linestyle=":",
            label=f"stored longest side, median {longest.median():.0f} px",
        )
    widths.set_xlabel("pixels")
    widths.set_ylabel("images")
    use_thousands_separators(widths.yaxis)
    widths.set_title("Original width and height")
    widths.legend(loc="best")

    _draw_bytes_panel(sizes, downloaded)
    caption = (
        "Left: original width against height of every image that was read. Middle: the "
        "same as histograms, with the median longest side of the stored files. Right: "
        "bytes downloaded per URL (log scale)."
    )
    return Plot(name, title, caption, save_figure(figure, out_dir, name))


def _draw_bytes_panel(axes: Any, downloaded: pd.Series) -> None:
    if downloaded.empty:
        axes.set_axis_off()
        return
    kib = downloaded.astype(float) / 1024
    low, high = max(kib.min(), 0.01), max(kib.max(), kib.min() * 1.01, 0.02)
    axes.hist(kib, bins=np.geomspace(low, high, 30), color="#6a1b9a", alpha=0.8)
    axes.axvline(
        kib.median(), color="black", linestyle=":", label=f"median {kib.median():,.0f} KiB"
    )
    axes.set_xscale("log")
    axes.set_xlabel("KiB downloaded")
    axes.set_ylabel("URLs")
    use_thousands_separators(axes.yaxis)
    axes.set_title(f"Download size ({len(kib):,} URLs)")
    axes.legend(loc="upper left")


def stored_images(processed_dir: Path) -> dict[str, list[Path]]:
    """Return the stored image files per label, sorted by file name (the key).

    The ``ok`` rows of the manifest decide when it exists. Without a manifest, the files
    under ``images/<label>/`` count, which is how a plain folder of images is laid out.
    """
    manifest = read_manifest_frame(processed_dir, ["status", "label", "path"])
    per_label: dict[str, list[Path]] = {}
    if manifest is not None:
        ok = manifest[(manifest["status"] == OK) & manifest["path"].notna()]
        for label, path in sorted(zip(ok["label"], ok["path"]), key=lambda row: row[1]):
            per_label.setdefault(label, []).append(processed_dir / path)
        return dict(sorted(per_label.items()))
    images = processed_dir / "images"
    if not images.is_dir():
        return {}
    for folder in sorted(p for p in images.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if files:
            per_label[folder.name] = files
    return per_label


def thumbnail(path: Path, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """Return the image at ``path`` as RGB, fit into a white ``side`` x ``side`` square.

    An unreadable file gives a grey square with a cross, so one bad file shows instead
    of stopping the sheet.
    """
    tile = np.full((side, side, 3), 255, np.uint8)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        tile[:] = 200
        cv2.line(tile, (8, 8), (side - 8, side - 8), (120, 120, 120), 2)
        cv2.line(tile, (8, side - 8), (side - 8, 8), (120, 120, 120), 2)
        return tile
    scale = side / max(image.shape[:2])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    top, left = (side - size[1]) // 2, (side - size[0]) // 2
    tile[top : top + size[1], left : left + size[0]] = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return tile


def plot_contact_sheet(
    processed_dir: Path, out_dir: Path, per_label: int = IMAGES_PER_LABEL
) -> Plot:
    """Draw ``per_label`` stored images of every label, one row per label.

    The sample is the images with the smallest keys. Keys are hashes of the URLs, so
    that is an arbitrary but deterministic choice, which changes only when images are
    added or removed.
    """
    name, title = "sample_images", "Sample images per label"
    images = stored_images(processed_dir)
    if not images:
        return missing_plot(name, title, "fetch", processed_dir / "images")

    gap = np.full((THUMBNAIL_SIDE, 6, 3), 255, np.uint8)
    figure, axes = new_figure(
        min(15, 1.5 + 1.2 * per_label), 0.3 + 1.35 * len(images), nrows=len(images), squeeze=False
    )
    for row, (label, files) in zip(axes[:, 0], images.items()):
        tiles = [thumbnail(path) for path in files[:per_label]]
        tiles += [np.full_like(tiles[0], 255)] * (per_label - len(tiles))
        strip = np.concatenate([part for tile in tiles for part in (tile, gap)][:-1], axis=1)
        row.imshow(strip)
        row.set_xticks([])
        row.set_yticks([])
        row.grid(False)
        for spine in row.spines.values():
            spine.set_visible(False)
        row.set_ylabel(f"{label}\n({len(files):,})", rotation=0, ha="right", va="center")
    figure.suptitle(title)
    caption = (
        f"Up to {per_label} stored images per label (the smallest keys, so the choice is "
        "fixed), with the number of images of each label."
    )
    return Plot(name, title, caption, save_figure(figure, out_dir, name))
