"""Training curves in the job record: capped, evenly thinned, kept after training ends."""

from pathlib import Path

import pytest

from poets.engine.jobs.history import TrainingHistory
from poets.engine.jobs.progress import ProgressWriter
from poets.engine.store.jobs import JobStore

pytestmark = pytest.mark.unit


def test_history_keeps_every_point_under_the_cap() -> None:
    history = TrainingHistory(limit=10)
    for step in range(10, 91, 10):
        history.add({"step": step, "train_accuracy": 0.5, "steps": 90})
    points = history.points()
    assert [p["step"] for p in points] == list(range(10, 91, 10))
    assert set(points[0]) == {"step", "train_accuracy"}


def test_history_thins_evenly_and_ends_with_the_latest_point() -> None:
    history = TrainingHistory(limit=200)
    for step in range(1, 4001):
        history.add({"step": step, "cross_entropy": 1.0 / step, "validation_accuracy": None})
        assert len(history) <= 200
    steps = [p["step"] for p in history.points()]
    assert len(steps) > 100  # thinned to between half the cap and the cap
    assert steps[0] == 1 and steps[-1] == 4000
    gaps = {b - a for a, b in zip(steps[:-2], steps[1:-1])}
    assert len(gaps) == 1  # evenly spaced, but for the latest point
    assert history.points()[-1]["validation_accuracy"] is None


def test_progress_writer_records_a_capped_history_that_outlives_training(tmp_path: Path) -> None:
    jobs = JobStore(tmp_path / "jobs.db")
    job = jobs.create("m", {})
    writer = ProgressWriter(jobs, job.id, min_interval_s=0.0)
    writer({"phase": "bottlenecks", "done": 1, "total": 1})
    assert "history" not in jobs.get(job.id).progress
    for step in range(10, 5001, 10):
        writer(
            {
                "phase": "training",
                "step": step,
                "steps": 5000,
                "train_accuracy": 0.9,
                "cross_entropy": 0.25,
                "validation_accuracy": 0.8,
                "validation_cross_entropy": 0.5,
            }
        )
    history = jobs.get(job.id).progress["history"]
    assert 100 < len(history) <= TrainingHistory().limit
    assert history[-1] == {
        "step": 5000,
        "train_accuracy": 0.9,
        "cross_entropy": 0.25,
        "validation_accuracy": 0.8,
        "validation_cross_entropy": 0.5,
    }
    writer({"phase": "evaluating"})
    writer({"phase": "published", "version": 3})
    progress = jobs.get(job.id).progress
    assert progress["version"] == 3 and progress["history"] == history
