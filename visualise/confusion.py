"""Confusion-matrix figure shared by training (TensorBoard images) and evaluation (PNG).

Rows are true classes and columns predicted classes, as scikit-learn's
``confusion_matrix`` returns them. Cells show the row-normalised share (the recall of
each class on the diagonal) with the count under it, so a class with few images reads
as clearly as a large one.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only; a headless VM has no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from visualise.style import configure_fonts  # noqa: E402


def confusion_matrix_png(
    matrix: np.ndarray, class_names: list[str], title: str = "Confusion matrix"
) -> bytes:
    """Render ``matrix`` (K x K counts, rows true, columns predicted) as PNG bytes.

    Raises ValueError when the matrix is not square or does not match ``class_names``.
    """
    matrix = np.asarray(matrix)
    count = len(class_names)
    if matrix.shape != (count, count):
        raise ValueError(
            f"the confusion matrix must be {count}x{count} for {count} class names, "
            f"received shape {matrix.shape}"
        )

    configure_fonts()  # class names in CJK scripts need a fallback font
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape, float), where=totals > 0)
    side = max(4.0, 0.9 * count + 2.0)
    figure, axes = plt.subplots(figsize=(side + 1.5, side))
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of true class")

    axes.set_xticks(range(count), class_names, rotation=45, ha="right")
    axes.set_yticks(range(count), class_names)
    axes.set_xlabel("predicted label")
    axes.set_ylabel("true label")
    axes.set_title(title)
    axes.grid(False)  # grid lines would cross the cells
    for row in range(count):
        for column in range(count):
            colour = "white" if shares[row, column] > 0.5 else "black"
            axes.text(
                column,
                row,
                f"{shares[row, column]:.0%}\n{int(matrix[row, column])}",
                ha="center",
                va="center",
                color=colour,
                fontsize=8,
            )

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
