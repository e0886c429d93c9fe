"""Drift: how far what the cameras see now is from what a version was tested on.

At export a version records its test set's distribution (:func:`reference`): the top score's
histogram over :data:`BINS` equal bins of [0, 1] and each label's share of the top answers. While
it serves, a :class:`DriftMonitor` keeps the same two distributions over the last ``window``
answers and compares them with the population stability index,

    PSI = sum over bins of (recent - reference) * ln(recent / reference),

the measure Vertex AI and SageMaker Model Monitor report for such shifts. PSI, rather than a KS
test: it needs only the binned reference that fits in ``poets.json`` (no raw scores kept), it
updates in O(1) per answer, it applies to the labels' shares (categorical) as well as to the
scores, and its conventional reading (under 0.1 stable, 0.1 to 0.25 moderate, over 0.25 a real
shift) does not change with traffic volume, where a KS p-value shrinks towards zero on any busy
camera. The drift figure is the larger of the two PSIs.
"""

import math
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

BINS = 10
# Shares are floored at this before the logarithm: an empty bin on either side is "rare", not infinite.
_FLOOR = 1e-4
TIMELINE_BUCKET_S = 60.0
TIMELINE_BUCKETS = 120


def _bin(score: float) -> int:
    return min(BINS - 1, max(0, int(score * BINS)))


def reference(
    top_scores: Sequence[float], top_labels: Sequence[str], labels: Sequence[str]
) -> Dict[str, Any]:
    """A version's test-set distribution, as recorded in ``poets.json`` (``drift_reference``)."""
    bins = [0] * BINS
    for score in top_scores:
        bins[_bin(score)] += 1
    counts = {label: 0 for label in labels}
    for label in top_labels:
        counts[label] = counts.get(label, 0) + 1
    return {"n": len(top_scores), "top_score_bins": bins, "label_counts": counts}


def psi(recent: Sequence[float], expected: Sequence[float]) -> float:
    """Population stability index between two count vectors over the same bins."""
    total_recent, total_expected = float(sum(recent)), float(sum(expected))
    if not total_recent or not total_expected:
        return 0.0
    value = 0.0
    for r, e in zip(recent, expected):
        a = max(r / total_recent, _FLOOR)
        b = max(e / total_expected, _FLOOR)
        value += (a - b) * math.log(a / b)
    return value


class _Window:
    """The last ``size`` answers of one version: binned counts, label counts and a timeline."""

    def __init__(self, size: int, ref: Optional[Dict[str, Any]]) -> None:
        self.size = size
        self.reference = ref
        self.answers: Deque[Tuple[int, str]] = deque()
        self.bins = [0] * BINS
        self.labels: Dict[str, int] = {}
        self.timeline: Deque[Dict[str, Any]] = deque(maxlen=TIMELINE_BUCKETS)
        self.alerting = False

    def add(self, label: str, score: float, now: float) -> None:
        entry = (_bin(score), label)
        self.answers.append(entry)
        self.bins[entry[0]] += 1
        self.labels[label] = self.labels.get(label, 0) + 1
        if len(self.answers) > self.size:
            old_bin, old_label = self.answers.popleft()
            self.bins[old_bin] -= 1
            self.labels[old_label] -= 1
        start = now - now % TIMELINE_BUCKET_S
        if not self.timeline or self.timeline[-1]["start"] != start:
            self.timeline.append({"start": start, "n": 0, "score_sum": 0.0, "labels": {}})
        bucket = self.timeline[-1]
        bucket["n"] += 1
        bucket["score_sum"] += score
        bucket["labels"][label] = bucket["labels"].get(label, 0) + 1


class DriftMonitor:
    """Recent answers per (model, version) against each version's recorded reference.

    ``on_alert(model, version, figures)`` is called once when a version's drift rises over
    ``alert_psi`` with at least ``min_answers`` answers in its window, and armed again when it
    falls back under.
    """

    def __init__(
        self,
        window: int = 1000,
        min_answers: int = 100,
        alert_psi: float = 0.25,
        on_alert: Optional[Callable[[str, int, Dict[str, Any]], None]] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window = window
        self.min_answers = min_answers
        self.alert_psi = alert_psi
        self.on_alert = on_alert
        self.clock = clock
        self._windows: Dict[Tuple[str, int], _Window] = {}
        self._lock = threading.Lock()

    def observe(
        self, model: str, version: int, label: str, score: float, ref: Optional[Dict[str, Any]]
    ) -> None:
        """Count one answer (its top label and score); ``ref`` is the version's recorded reference."""
        with self._lock:
            window = self._windows.get((model, version))
            if window is None:
                window = self._windows[(model, version)] = _Window(self.window, ref)
            window.add(label, score, self.clock())
            value = self._drift(window)
            alert = value is not None and value > self.alert_psi
            crossed = alert and not window.alerting
            window.alerting = alert
            figures = self._figures(window) if crossed else None
        if figures is not None and self.on_alert is not None:
            self.on_alert(model, version, figures)

    def forget(self, model: str, version: int) -> None:
        """Drop a version's window (it was unloaded)."""
        with self._lock:
            self._windows.pop((model, version), None)

    def figures(self, model: str, version: int) -> Optional[Dict[str, Any]]:
        """What ``GET /models/{name}`` shows: None when the version has answered nothing yet."""
        with self._lock:
            window = self._windows.get((model, version))
            return None if window is None else self._figures(window)

    def gauges(self) -> List[Tuple[str, int, float]]:
        """(model, version, drift) for every version with enough answers: the /metrics gauge."""
        with self._lock:
            found = [(key, self._drift(w)) for key, w in self._windows.items()]
        return [(model, version, value) for (model, version), value in found if value is not None]

    def _psis(self, window: _Window) -> Optional[Tuple[float, float]]:
        """(PSI of the top score, PSI of the labels' shares), or None before enough answers."""
        ref = window.reference
        if ref is None or len(window.answers) < self.min_answers or not ref.get("n"):
            return None
        names = sorted(set(ref["label_counts"]) | set(window.labels))
        scores = psi(window.bins, ref["top_score_bins"])
        labels = psi([window.labels.get(x, 0) for x in names], [ref["label_counts"].get(x, 0) for x in names])
        return scores, labels

    def _drift(self, window: _Window) -> Optional[float]:
        found = self._psis(window)
        return None if found is None else max(found)

    def _figures(self, window: _Window) -> Dict[str, Any]:
        figures: Dict[str, Any] = {
            "window": len(window.answers),
            "recent": {"top_score_bins": list(window.bins), "label_counts": dict(window.labels)},
            "reference": window.reference,
            "psi_top_score": None,
            "psi_labels": None,
            "drift": None,
            "alert": False,
            "alert_psi": self.alert_psi,
            "timeline": [
                {
                    "start": b["start"],
                    "n": b["n"],
                    "mean_top_score": b["score_sum"] / b["n"],
                    "labels": dict(b["labels"]),
                }
                for b in window.timeline
            ],
        }
        found = self._psis(window)
        if found is not None:
            scores, labels = found
            drift = max(scores, labels)
            figures.update(psi_top_score=scores, psi_labels=labels, drift=drift, alert=drift > self.alert_psi)
        return figures
