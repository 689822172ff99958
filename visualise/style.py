"""What every report figure shares: the matplotlib set-up, fonts, colours and the ``Plot`` record.

Each plot function of ``visualise`` takes the paths a stage wrote and an output folder,
and returns a :class:`Plot`. The record names the PNG it wrote, or carries a note that
explains why it wrote none: a stage that has not run yet ("missing: run `make fetch`
first ...") or nothing to draw. Plot functions never raise for a missing input, so a
report can be built after any stage.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; a headless VM has no display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from data.scripts.common import atomic_path  # noqa: E402

logger = logging.getLogger(__name__)

DPI = 100
# Families with Chinese, Japanese and Korean glyphs, in order of preference. DejaVu Sans,
# matplotlib's default, has none, so CJK class names would be drawn as empty boxes.
CJK_FONT_FAMILIES = (
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "Noto Sans CJK TC",
    "Noto Sans CJK KR",
    "Source Han Sans",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "Droid Sans Fallback",
    "IPAGothic",
    "IPAexGothic",
    "Unifont",
)
# Green for stored, grey for a copy of a stored image, a distinct warm or dark colour for
# each failure, so that stacked bars of several failures stay apart.
STATUS_COLOURS = {
    "ok": "#2e7d32",
    "duplicate": "#9e9e9e",
    "http_error": "#c62828",
    "timeout": "#ef6c00",
    "connection_error": "#f9a825",
    "blocked": "#6a1b9a",
    "robots_disallowed": "#283593",
    "address_refused": "#4e342e",
    "not_an_image": "#ad1457",
    "corrupt": "#d84315",
    "too_small": "#00838f",
    "too_large": "#558b2f",
    "invalid_input": "#37474f",
    "internal_error": "#000000",
    "removed_by_review": "#6d4c41",
}
FAILURE_COLOUR = "#c62828"
NEUTRAL_COLOUR = "#78909c"


@dataclass(frozen=True)
class Plot:
    """One figure of the report: the PNG that was written, or a note saying why none was.

    ``name`` is the file stem (``<out>/<name>.png``); ``path`` is None exactly when
    ``note`` explains the absence.
    """

    name: str
    title: str
    caption: str = ""
    path: Path | None = None
    note: str | None = None

    @property
    def missing(self) -> bool:
        """True when a stage this figure needs has not run yet."""
        return self.path is None and (self.note or "").startswith("missing:")


def missing_plot(name: str, title: str, target: str, needed: Path) -> Plot:
    """Return the record of a figure whose input ``needed`` does not exist yet."""
    return Plot(name, title, note=missing_note(target, needed))


def missing_note(target: str, needed: Path) -> str:
    """Return the note for a missing input: which ``make`` target writes it."""
    return f"missing: run `make {target}` first ({needed} not found)"


@functools.lru_cache(maxsize=1)
def cjk_font_family() -> str | None:
    """Return the first installed family of ``CJK_FONT_FAMILIES``, or None."""
    installed = {entry.name for entry in font_manager.fontManager.ttflist}
    return next((family for family in CJK_FONT_FAMILIES if family in installed), None)


def configure_fonts() -> None:
    """Add an installed CJK font as a fallback after matplotlib's default sans-serif font.

    matplotlib (3.6 and later) looks a missing glyph up in the next family of the list,
    so Latin text keeps DejaVu Sans and only CJK characters come from the fallback.
    """
    # NOTE: the fallback has not been checked on a machine with a CJK font installed.
    # Without such a font, CJK class names are drawn as empty boxes. On Debian, install
    # one with `apt-get install fonts-noto-cjk`.
    family = cjk_font_family()
    fonts = list(matplotlib.rcParams["font.sans-serif"])
    if family is not None and family not in fonts:
        insert_at = 1 if fonts and fonts[0] == "DejaVu Sans" else 0
        matplotlib.rcParams["font.sans-serif"] = [*fonts[:insert_at], family, *fonts[insert_at:]]


def use_report_style() -> None:
    """Set the rcParams of report figures: sizes that read well on a laptop screen."""
    configure_fonts()
    matplotlib.rcParams.update(
        {
            "figure.dpi": DPI,
            "savefig.dpi": DPI,
            "font.size": 11,
            "axes.titlesize": 13,
            "axes.titleweight": "bold",
            "axes.labelsize": 11,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "legend.fontsize": 10,
            "legend.frameon": False,
            "figure.titlesize": 15,
            "figure.titleweight": "bold",
        }
    )


def new_figure(width: float, height: float, **subplot_args: Any) -> tuple[Figure, Any]:
    """Return ``plt.subplots`` with the report style applied and a constrained layout."""
    use_report_style()
    return plt.subplots(figsize=(width, height), layout="constrained", **subplot_args)


def save_figure(figure: Figure, out_dir: Path, name: str) -> Path:
    """Write ``figure`` to ``<out_dir>/<name>.png`` atomically, close it, return the path."""
    path = Path(out_dir) / f"{name}.png"
    try:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    finally:
        plt.close(figure)
    return path


def label_colours(labels: list[str]) -> dict[str, Any]:
    """Return one colour per label, stable for a given label order (tab10, then tab20)."""
    palette = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20").colors
    return {label: palette[i % len(palette)] for i, label in enumerate(labels)}


def status_colour(status: str) -> str:
    """Return the colour of a manifest status; red for a status this module does not know."""
    return STATUS_COLOURS.get(status, FAILURE_COLOUR)


def read_json(path: Path) -> Any:
    """Return the parsed JSON file at ``path``, or None when it does not exist.

    Raises ValueError naming the file when it is not valid JSON.
    """
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); run its stage again") from None


def use_thousands_separators(axis: Any) -> None:
    """Label the ticks of a count axis as 100,000 rather than 100000 or 1e5."""
    axis.set_major_formatter(lambda value, _: f"{value:,.0f}")


def annotate_bars(axes: Any, bars: Any, labels: list[str], inside_share: float = 0.0) -> None:
    """Write ``labels`` at the end of horizontal ``bars``, inside the longest ones."""
    longest = max((bar.get_width() for bar in bars), default=0) or 1
    for bar, text in zip(bars, labels):
        width = bar.get_width()
        inside = inside_share and width > inside_share * longest
        axes.text(
            width - 0.01 * longest if inside else width + 0.01 * longest,
            bar.get_y() + bar.get_height() / 2,
            text,
            ha="right" if inside else "left",
            va="center",
            fontsize=10,
            color="white" if inside else "black",
        )
