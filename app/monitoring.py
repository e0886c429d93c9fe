"""What the cameras see: every answer's top label and score, per model and version.

``/metrics`` gets ``poets_label_top_score`` (a histogram per model and version),
``poets_label_predictions_total{model,version,label}`` and ``poets_model_drift{model,version}``
(:mod:`poets.engine.drift`: recent answers against the version's test set). A version whose drift
rises over ``POETS_DRIFT_ALERT_PSI`` sends one ``drift.alert`` webhook. Figures are per API
process: each keeps the window of the answers it gave.
"""

from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from app.metrics import Metrics
from poets.engine.drift import DriftMonitor
from poets.engine.settings import Settings

Ranked = Sequence[Tuple[str, float]]
_SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class LabelMonitor:
    """Counts answers and watches drift; :meth:`observer` gives a loaded version its callback."""

    def __init__(
        self, settings: Settings, metrics: Metrics, tell: Callable[[str, Dict[str, Any]], None]
    ) -> None:
        self.drift = DriftMonitor(
            settings.drift_window,
            settings.drift_min_answers,
            settings.drift_alert_psi,
            on_alert=lambda model, version, figures: tell("drift.alert", _alert(model, version, figures)),
        )
        r = metrics.registry
        self.top_score = Histogram(
            "poets_label_top_score",
            "Top score of each answer.",
            ["model", "version"],
            buckets=_SCORE_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "poets_label_predictions_total",
            "Answers by their top label.",
            ["model", "version", "label"],
            registry=r,
        )
        r.register(_DriftCollector(self.drift))

    def observer(
        self, name: str, version: int, reference: Optional[Dict[str, Any]]
    ) -> Callable[[List[Ranked]], None]:
        """The callback a served version calls with the ranked answers of each request."""
        scores = self.top_score.labels(name, str(version))
        drift = self.drift

        def observe(answers: List[Ranked]) -> None:
            for ranked in answers:
                if not ranked:
                    continue
                label, score = ranked[0]
                scores.observe(score)
                self.predictions.labels(name, str(version), label).inc()
                drift.observe(name, version, label, float(score), reference)

        return observe

    def figures(self, name: str, version: int) -> Optional[Dict[str, Any]]:
        return self.drift.figures(name, version)

    def forget(self, name: str, version: int) -> None:
        self.drift.forget(name, version)


def _alert(model: str, version: int, figures: Dict[str, Any]) -> Dict[str, Any]:
    keep = ("window", "psi_top_score", "psi_labels", "drift", "alert_psi", "recent")
    return dict({"name": model, "version": version}, **{k: figures[k] for k in keep})


class _DriftCollector:
    def __init__(self, drift: DriftMonitor) -> None:
        self._drift = drift

    def collect(self) -> Iterator[Any]:
        gauge = GaugeMetricFamily(
            "poets_model_drift",
            "Drift of recent answers from the version's test set (population stability index).",
            labels=["model", "version"],
        )
        for model, version, value in self._drift.gauges():
            gauge.add_metric([model, str(version)], value)
        yield gauge
