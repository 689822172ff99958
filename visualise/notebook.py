"""Display helpers for the notebooks under ``develop/notebooks``.

The notebooks only call the project's modules; these two functions put a figure record
or a table of counts on screen. IPython is imported when a figure is shown, so the rest
of ``visualise`` runs without it.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from visualise.style import Plot


def show(plot: Plot) -> None:
    """Display the figure's PNG and caption in Jupyter, or its note when it was not drawn."""
    from IPython.display import Image, Markdown, display

    if plot.path is None:
        display(Markdown(f"**{plot.title}**: {plot.note}"))
        return
    display(Image(filename=str(plot.path)))
    display(Markdown(f"**{plot.title}.** {plot.caption}"))


def table(rows: list[tuple[str, Any]]) -> pd.DataFrame:
    """Return (quantity, value) rows, as the ``summary_rows`` functions give them, as a frame."""
    return pd.DataFrame(rows, columns=["quantity", "value"]).set_index("quantity")
