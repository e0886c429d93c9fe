"""poets.engine.model.metrics: Wilson intervals, per-class precision and recall, the printed form."""

import numpy as np
import pytest

from poets.engine.model.metrics import (
    accuracy_entry,
    confusion_matrix,
    format_accuracy,
    per_class,
    wilson_interval,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "correct, n, low, high",
    [
        (50, 100, 0.4038, 0.5962),  # textbook value
        (0, 10, 0.0, 0.2775),  # never 0 wide at the ends, unlike p ± 1.96 SE
        (10, 10, 0.7225, 1.0),
        (129, 161, 0.7329, 0.8555),  # the 80.1% (N=161)
    ],
)
def test_wilson_interval_matches_known_values(correct: int, n: int, low: float, high: float) -> None:
    got = wilson_interval(correct, n)
    assert got[0] == pytest.approx(low, abs=1e-4) and got[1] == pytest.approx(high, abs=1e-4)
    assert 0.0 <= got[0] <= correct / n <= got[1] <= 1.0


def test_interval_narrows_with_n_and_is_empty_without_images() -> None:
    widths = [np.subtract(*wilson_interval(9 * n // 10, n)[::-1]) for n in (40, 400, 4000)]
    assert widths[0] > widths[1] > widths[2]
    assert wilson_interval(0, 0) == (None, None)
    assert accuracy_entry(0, 0) == {"accuracy": None, "n": 0, "correct": 0, "interval": None}
    entry = accuracy_entry(3, 4)
    assert entry["accuracy"] == 0.75 and entry["n"] == 4 and len(entry["interval"]) == 2


def test_per_class_precision_and_recall_come_from_the_confusion_matrix() -> None:
    truth = [0, 0, 0, 0, 1, 1, 2]
    guess = [0, 0, 0, 1, 1, 0, 0]
    matrix = confusion_matrix(truth, guess, 3)
    assert matrix.tolist() == [[3, 1, 0], [1, 1, 0], [1, 0, 0]]
    rows = per_class(matrix, ["a", "b", "c"])
    assert [r["label"] for r in rows] == ["a", "b", "c"]
    a, b, c = rows
    assert (a["precision"], a["precision_n"], a["recall"], a["recall_n"]) == (0.6, 5, 0.75, 4)
    assert (b["precision"], b["recall"]) == (0.5, 0.5)
    # Never predicted: no precision to report, rather than a made-up 0.
    assert c["precision"] is None and c["precision_interval"] is None and c["recall"] == 0.0
    assert c["support"] == 1 and c["recall_interval"][1] > 0.5


def test_format_accuracy_prints_n_and_the_interval() -> None:
    low, high = wilson_interval(129, 161)
    assert format_accuracy(129 / 161, 161, [low, high]) == "80.1% (95% CI 73.3-85.6%, N=161)"
    assert format_accuracy(None, 0, None) == "n/a (N=0)"
    assert format_accuracy(0.5, 2, None) == "50.0% (N=2)"
