"""Drift: PSI of the top score and of the labels' shares, over a window, against a version's reference."""

import math
from typing import Any, Dict, List, Tuple

import pytest

from poets.engine.drift import BINS, DriftMonitor, psi, reference

pytestmark = pytest.mark.unit

LABELS = ["daisy", "roses"]
# The test set: confident answers, both labels about as often.
REF = reference([0.95] * 80 + [0.65] * 20, ["daisy"] * 50 + ["roses"] * 50, LABELS)


def test_reference_bins_and_counts() -> None:
    assert REF["n"] == 100
    assert (
        REF["top_score_bins"][9] == 80
        and REF["top_score_bins"][6] == 20
        and sum(REF["top_score_bins"]) == 100
    )
    assert REF["label_counts"] == {"daisy": 50, "roses": 50}
    assert (
        reference([1.0, 0.0], ["daisy", "tulips"], LABELS)["top_score_bins"][BINS - 1] == 1
    )  # 1.0 in the last bin


def test_psi_is_zero_for_the_same_distribution_and_grows_with_the_shift() -> None:
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    small = psi([45, 55], [50, 50])
    large = psi([10, 90], [50, 50])
    assert 0 < small < 0.1
    assert large > 0.25
    expected = (0.1 - 0.5) * math.log(0.1 / 0.5) + (0.9 - 0.5) * math.log(0.9 / 0.5)
    assert large == pytest.approx(expected)
    assert psi([], []) == 0.0


def _feed(monitor: DriftMonitor, answers: List[Tuple[str, float]]) -> None:
    for label, score in answers:
        monitor.observe("cams", 3, label, score, REF)


def test_traffic_like_the_test_set_is_stable_and_a_changed_world_alerts_once() -> None:
    alerts: List[Dict[str, Any]] = []
    monitor = DriftMonitor(
        window=200, min_answers=100, on_alert=lambda m, v, f: alerts.append(dict(f, model=m, version=v))
    )
    like = [("daisy", 0.95), ("roses", 0.95), ("daisy", 0.95), ("roses", 0.95), ("daisy", 0.65)] * 40
    _feed(monitor, like)
    stable = monitor.figures("cams", 3)
    assert stable is not None and stable["window"] == 200
    assert stable["drift"] < 0.1 and not stable["alert"] and alerts == []

    # Something new in front of the camera: unsure answers, nearly all "roses".
    _feed(monitor, [("roses", 0.35)] * 150)
    shifted = monitor.figures("cams", 3)
    assert shifted is not None and shifted["alert"] and shifted["drift"] > 0.25
    assert shifted["drift"] == max(shifted["psi_top_score"], shifted["psi_labels"])
    assert [(a["model"], a["version"]) for a in alerts] == [("cams", 3)]  # once, not per answer
    _feed(monitor, [("roses", 0.35)] * 50)
    assert len(alerts) == 1

    _feed(monitor, like)  # back to normal: the alert is armed again
    assert not monitor.figures("cams", 3)["alert"]  # type: ignore[index]
    _feed(monitor, [("roses", 0.35)] * 200)
    assert len(alerts) == 2
    assert monitor.gauges() == [("cams", 3, monitor.figures("cams", 3)["drift"])]  # type: ignore[index]


def test_no_figure_before_enough_answers_or_without_a_reference() -> None:
    monitor = DriftMonitor(window=50, min_answers=20)
    assert monitor.figures("cams", 1) is None
    for _ in range(19):
        monitor.observe("cams", 1, "daisy", 0.9, REF)
    assert monitor.figures("cams", 1)["drift"] is None  # type: ignore[index]
    for _ in range(30):
        monitor.observe("old", 1, "daisy", 0.9, None)  # a version exported before references
    assert monitor.figures("old", 1)["drift"] is None and monitor.gauges() == []  # type: ignore[index]
    monitor.forget("old", 1)
    assert monitor.figures("old", 1) is None


def test_the_timeline_buckets_answers_by_minute() -> None:
    now = [1000.0 * 60]
    monitor = DriftMonitor(clock=lambda: now[0])
    monitor.observe("cams", 1, "daisy", 0.9, REF)
    monitor.observe("cams", 1, "roses", 0.5, REF)
    now[0] += 61
    monitor.observe("cams", 1, "roses", 0.4, REF)
    timeline = monitor.figures("cams", 1)["timeline"]  # type: ignore[index]
    assert [b["n"] for b in timeline] == [2, 1]
    assert timeline[0]["mean_top_score"] == pytest.approx(0.7)
    assert timeline[0]["labels"] == {"daisy": 1, "roses": 1} and timeline[1]["labels"] == {"roses": 1}
