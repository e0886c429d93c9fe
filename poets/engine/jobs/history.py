"""Training curves for the job record: every evaluation point, evenly thinned to a cap.

The console draws loss and accuracy curves from ``progress.history`` of ``GET /jobs/{id}``.
A long job evaluates thousands of times; the record keeps at most ``limit`` points, evenly
spaced over the steps so far, plus always the latest one.
"""

from typing import Any, Dict, List, Optional

# Most curve points kept in a job record (each about 120 bytes of JSON).
HISTORY_POINTS = 200

FIELDS = ("step", "train_accuracy", "cross_entropy", "validation_accuracy", "validation_cross_entropy")


def _round(value: Any) -> Any:
    return round(value, 5) if isinstance(value, float) else value


class TrainingHistory:
    """Keeps every ``stride``-th evaluation point; doubles the stride when the cap is reached."""

    def __init__(self, limit: int = HISTORY_POINTS) -> None:
        if limit < 2:
            raise ValueError("a history needs room for at least two points")
        self.limit = limit
        self.stride = 1
        self._seen = 0
        self._kept: List[Dict[str, Any]] = []
        self._last: Optional[Dict[str, Any]] = None

    def add(self, entry: Dict[str, Any]) -> None:
        """One training progress event (step, accuracies, cross entropies)."""
        point = {key: _round(entry[key]) for key in FIELDS if key in entry}
        if self._seen % self.stride == 0:
            self._kept.append(point)
            if len(self._kept) > self.limit - 1:  # one place stays free for the latest point
                self._kept = self._kept[::2]
                self.stride *= 2
        self._seen += 1
        self._last = point

    def points(self) -> List[Dict[str, Any]]:
        """The kept points in step order, ending with the latest one."""
        if self._last is None:
            return []
        if self._kept and self._kept[-1] is self._last:
            return list(self._kept)
        return [*self._kept, self._last]

    def __len__(self) -> int:
        return len(self.points())
