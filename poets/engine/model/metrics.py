"""Honest accuracy figures: every accuracy comes with its N and a 95% Wilson interval.

Plain Python and numpy (no TensorFlow), so the API, the CLI and the benches can use
it. The Wilson score interval is used rather than "p ± 1.96·SE" because test sets
here are small and accuracies near 1: the normal approximation then gives
intervals that pass 100% or have zero width.
"""

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

Z95 = 1.959963984540054
Labels = Union[Sequence[int], np.ndarray]


def wilson_interval(correct: int, n: int, z: float = Z95) -> Tuple[Optional[float], Optional[float]]:
    """The Wilson score interval of a proportion ``correct / n`` (None, None when n is 0)."""
    if n <= 0:
        return None, None
    p = correct / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # At p = 0 or 1 the bound equals p; clamp the rounding error so it never misses it.
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def accuracy_entry(correct: int, n: int) -> Dict[str, Any]:
    """``{"accuracy", "n", "correct", "interval": [low, high]}`` (accuracy None when n is 0)."""
    low, high = wilson_interval(correct, n)
    return {
        "accuracy": correct / n if n else None,
        "n": n,
        "correct": correct,
        "interval": [low, high] if n else None,
    }


def confusion_matrix(truth: Labels, predicted: Labels, classes: int) -> np.ndarray:
    """Counts, rows: true class, columns: predicted class."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    for t, p in zip(truth, predicted):
        matrix[int(t), int(p)] += 1
    return matrix


def per_class(matrix: np.ndarray, label_names: Sequence[str]) -> List[Dict[str, Any]]:
    """Precision and recall of each class from a confusion matrix, with their N and intervals.

    Precision's N is how often the class was predicted, recall's how often it was the
    truth; a rate over zero images is None.
    """
    rows = []
    for i, name in enumerate(label_names):
        hits = int(matrix[i, i])
        predicted = int(matrix[:, i].sum())
        support = int(matrix[i, :].sum())
        precision = accuracy_entry(hits, predicted)
        recall = accuracy_entry(hits, support)
        rows.append(
            {
                "label": name,
                "support": support,
                "precision": precision["accuracy"],
                "precision_n": predicted,
                "precision_interval": precision["interval"],
                "recall": recall["accuracy"],
                "recall_n": support,
                "recall_interval": recall["interval"],
            }
        )
    return rows


def format_accuracy(accuracy: Optional[float], n: int, interval: Optional[Sequence[Optional[float]]]) -> str:
    """``91.0% (95% CI 87.7-93.5%, N=379)``, or ``n/a (N=0)``."""
    if accuracy is None or not n:
        return "n/a (N=0)"
    if not interval or interval[0] is None or interval[1] is None:
        return "{:.1f}% (N={})".format(100 * accuracy, n)
    return "{:.1f}% (95% CI {:.1f}-{:.1f}%, N={})".format(
        100 * accuracy, 100 * interval[0], 100 * interval[1], n
    )
