"""Classification metrics for a test split, in one place for evaluation and comparison.

Notation: N images, K classes; ``labels`` are class ids in ``[0, K)`` and
``probabilities`` is an N x K array whose column k belongs to ``class_names[k]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)


def check_predictions(
    labels: np.ndarray, probabilities: np.ndarray, class_names: list[str]
) -> None:
    """Raise ValueError unless labels and probabilities line up with ``class_names``."""
    count = len(class_names)
    if probabilities.ndim != 2 or probabilities.shape[1] != count:
        raise ValueError(
            f"probabilities must have one column per class ({count}), "
            f"received shape {probabilities.shape}"
        )
    if len(labels) != len(probabilities):
        raise ValueError(
            f"{len(labels)} labels but {len(probabilities)} rows of probabilities; "
            "the test split must be read in the same order for both"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= count):
        raise ValueError(
            f"labels must be class ids in [0, {count}), received values from "
            f"{labels.min()} to {labels.max()}"
        )


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """Return accuracy, macro F1, top-2 accuracy, per-class scores and the confusion matrix."""
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    check_predictions(labels, probabilities, class_names)
    ids = list(range(len(class_names)))
    predicted = probabilities.argmax(axis=1)

    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=ids, zero_division=0
    )
    # Macro F1 over the classes that have test images: a class absent from the test split
    # would count as F1 = 0 and pull the mean down for no fault of the model.
    present = [i for i in ids if support[i] > 0]
    top2 = (
        top_k_accuracy_score(labels, probabilities, k=2, labels=ids)
        if len(class_names) > 2
        else 1.0
    )
    return {
        "images": int(len(labels)),
        "accuracy": float((predicted == labels).mean()) if len(labels) else 0.0,
        "macro_f1": float(
            f1_score(labels, predicted, labels=present or ids, average="macro", zero_division=0)
        ),
        "classes_without_test_images": [class_names[i] for i in ids if support[i] == 0],
        "top2_accuracy": float(top2),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(labels, predicted, labels=ids).tolist(),
    }
