"""The retrain task's logic, run in this process against a real job store and engine."""

import json
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from poets.engine.settings import Settings
from poets.engine.store.jobs import JobStore
from tests.worker import helpers
from worker import tasks

SMALL = {"how_many_training_steps": 50}


@pytest.fixture(scope="module")
def module_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One POETS_HOME per module so the bottleneck cache is shared by its tests."""
    return tmp_path_factory.mktemp("worker-home")


@pytest.fixture
def settings(module_home: Path, backbone_dir: Path) -> Settings:
    return Settings.from_env({"POETS_HOME": str(module_home), "POETS_BACKBONE_DIR": str(backbone_dir)})


@pytest.fixture
def jobs(settings: Settings) -> JobStore:
    return JobStore(settings.jobs_db)


def _store(settings: Settings):  # type: ignore[no-untyped-def]
    from poets.engine.store.models import ModelStore

    return ModelStore(settings.store_dir)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_writes_are_throttled_but_keep_phase_changes_and_ends(jobs: JobStore) -> None:
    job = jobs.create("m", {})
    clock = FakeClock()
    writer = tasks.ProgressWriter(jobs, job.id, min_interval_s=0.2, clock=clock)
    writer({"phase": "scanning"})
    for done in range(0, 101):
        clock.now += 0.001
        writer({"phase": "bottlenecks", "done": done, "total": 100})
    assert jobs.get(job.id).progress == {"done": 100, "total": 100}
    for step in range(10, 1001, 10):
        clock.now += 0.001
        writer({"phase": "training", "step": step, "steps": 1000, "train_accuracy": 0.5})
        if step == 500:
            assert jobs.get(job.id).progress["step"] == 10  # throttled
    record = jobs.get(job.id)
    assert record.phase == "training" and record.progress["step"] == 1000
    # scanning, first+last bottleneck event, first+last training event.
    assert writer.writes == 5
    clock.now += 1.0
    writer({"phase": "training", "step": 1000, "steps": 1000})
    writer({"phase": "evaluating"})
    assert jobs.get(job.id).phase == "evaluating"


def test_progress_flushes_the_last_event_of_a_phase(jobs: JobStore) -> None:
    job = jobs.create("m", {})
    clock = FakeClock()
    writer = tasks.ProgressWriter(jobs, job.id, min_interval_s=10.0, clock=clock)
    writer({"phase": "bottlenecks", "done": 0, "total": 10})
    writer({"phase": "bottlenecks", "done": 7, "total": 10})
    writer.flush()
    assert jobs.get(job.id).progress == {"done": 7, "total": 10}


def test_cancel_check_reads_the_record_at_most_every_interval(jobs: JobStore) -> None:
    job = jobs.create("m", {})
    jobs.start(job.id)
    clock = FakeClock()
    check = tasks.CancelCheck(jobs, job.id, interval_s=0.3, clock=clock)
    assert check() is False
    jobs.request_cancel(job.id)
    assert check() is False  # no time has passed: the cached answer
    clock.now += 0.29
    assert check() is False  # still within the interval
    clock.now += 0.01
    assert check() is True  # the interval is over: the record is read again
    assert check() is True


def test_job_succeeds_records_progress_logs_and_result(
    settings: Settings, jobs: JobStore, small_dataset: Path
) -> None:
    job = jobs.create("small", {})
    phases: List[str] = []
    original = tasks.ProgressWriter._write

    def spy(self: tasks.ProgressWriter, phase: Optional[str], event: Dict[str, Any]) -> None:
        if not phases or phases[-1] != phase:
            phases.append(str(phase))
        original(self, phase, event)

    tasks.ProgressWriter._write = spy  # type: ignore[method-assign,assignment]
    try:
        out = tasks.run_job(settings, job.id, str(small_dataset), "small", dict(SMALL))
    finally:
        tasks.ProgressWriter._write = original  # type: ignore[method-assign]
    record = jobs.get(job.id)
    assert out["state"] == "succeeded" and record.state == "succeeded", record.error
    assert record.version == out["version"] == _store(settings).current("small")
    assert record.attempts == 1 and record.finished is not None
    assert record.result is not None and record.result["labels"] == ["daisy", "roses", "tulips"]
    assert record.result["metrics"]["images"]["training"] > 0
    json.dumps(record.result)
    assert phases[:2] == ["scanning", "bottlenecks"] and "training" in phases
    assert phases[-2:] == ["exporting", "published"]
    assert list((settings.logs_dir / "small" / job.id).rglob("events.out.tfevents.*"))


def test_redelivered_job_publishes_one_version(
    settings: Settings, jobs: JobStore, small_dataset: Path
) -> None:
    job = jobs.create("redelivered", {})
    first = tasks.run_job(settings, job.id, str(small_dataset), "redelivered", dict(SMALL))
    # What a worker killed after publishing but before acknowledging leaves behind.
    jobs.update(job.id, state="running", finished=None)
    second = tasks.run_job(settings, job.id, str(small_dataset), "redelivered", dict(SMALL))
    assert first["version"] == second["version"]
    assert _store(settings).versions("redelivered") == [first["version"]]
    record = jobs.get(job.id)
    assert record.state == "succeeded" and record.attempts == 2


def test_finished_job_is_not_run_again(settings: Settings, jobs: JobStore, small_dataset: Path) -> None:
    job = jobs.create("again", {})
    tasks.run_job(settings, job.id, str(small_dataset), "again", dict(SMALL))
    out = tasks.run_job(settings, job.id, str(small_dataset), "again", dict(SMALL))
    assert out["skipped"] is True
    assert jobs.get(job.id).attempts == 1


def test_job_cancelled_while_queued_is_skipped(
    settings: Settings, jobs: JobStore, small_dataset: Path
) -> None:
    job = jobs.create("queued-cancel", {})
    jobs.request_cancel(job.id)
    out = tasks.run_job(settings, job.id, str(small_dataset), "queued-cancel", dict(SMALL))
    assert out == {"job_id": job.id, "state": "cancelled", "skipped": True}
    record = jobs.get(job.id)
    assert record.state == "cancelled" and record.attempts == 0
    assert _store(settings).versions("queued-cancel") == []


def test_cancel_during_training_publishes_nothing(
    settings: Settings, jobs: JobStore, small_dataset: Path
) -> None:
    job = jobs.create("cancel", {})

    def cancel_when_training() -> None:
        helpers.wait_job(jobs, job.id, timeout=120, phase="training")
        jobs.request_cancel(job.id)

    thread = threading.Thread(target=cancel_when_training)
    thread.start()
    out = tasks.run_job(settings, job.id, str(small_dataset), "cancel", {"how_many_training_steps": 100000})
    thread.join()
    assert out["state"] == "cancelled"
    record = jobs.get(job.id)
    assert record.state == "cancelled" and record.error is None and record.version is None
    assert _store(settings).versions("cancel") == []


@pytest.mark.parametrize(
    "config, words",
    [
        ({"how_many_training_steps": 0}, "how_many_training_steps"),
        ({"learning_rat": 0.1}, "Unknown option"),
        ({"how_many_training_steps": 10**9}, "how_many_training_steps"),
    ],
)
def test_bad_parameters_fail_the_job(
    settings: Settings, jobs: JobStore, small_dataset: Path, config: dict, words: str
) -> None:
    job = jobs.create("bad", {})
    out = tasks.run_job(settings, job.id, str(small_dataset), "bad", config)
    record = jobs.get(job.id)
    assert out["state"] == record.state == "failed"
    assert record.error is not None and words in record.error
    assert record.attempts == 1


def test_bad_dataset_fails_the_job(settings: Settings, jobs: JobStore, tmp_path: Path) -> None:
    (tmp_path / "only" / "one").mkdir(parents=True)
    job = jobs.create("bad", {})
    out = tasks.run_job(settings, job.id, str(tmp_path / "only"), "bad", dict(SMALL))
    assert out["state"] == "failed"
    assert jobs.get(job.id).error


@pytest.mark.parametrize("source", ["image_dir", "upload"])
def test_a_class_folder_linked_out_after_submit_fails_the_job_clearly(
    module_home: Path,
    backbone_dir: Path,
    small_dataset: Path,
    tmp_path_factory: pytest.TempPathFactory,
    source: str,
) -> None:
    """The API checked the links at submit; the worker checks again, as the folder may change."""
    import shutil

    outside = tmp_path_factory.mktemp("outside")
    shutil.copytree(str(small_dataset / "roses"), str(outside / "roses"))
    settings = Settings.from_env(
        {
            "POETS_HOME": str(module_home),
            "POETS_BACKBONE_DIR": str(backbone_dir),
            "POETS_DATA_ROOT": str(small_dataset.parent),
        }
    )
    jobs = JobStore(settings.jobs_db)
    job = jobs.create("linked", {})
    dataset = small_dataset
    if source == "upload":  # the job's own extracted folder
        dataset = settings.uploads_dir / job.id / "small"
        shutil.copytree(str(small_dataset), str(dataset))
    shutil.rmtree(str(dataset / "roses"))
    (dataset / "roses").symlink_to(outside / "roses", target_is_directory=True)
    out = tasks.run_job(settings, job.id, str(dataset), "linked", dict(SMALL))
    record = jobs.get(job.id)
    assert out["state"] == record.state == "failed"
    assert record.error is not None and "Internal error" not in record.error
    assert "symbolic link" in record.error and "roses" in record.error, record.error
    assert str(outside) not in record.error  # named relative to the data root or upload
    assert (outside / "roses").is_dir() and not (settings.uploads_dir / job.id).exists()


def test_unexpected_error_fails_the_job_without_raising(
    settings: Settings, jobs: JobStore, small_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import poets.engine.retrain

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(poets.engine.retrain, "retrain", broken)
    job = jobs.create("broken", {})
    out = tasks.run_job(settings, job.id, str(small_dataset), "broken", dict(SMALL))
    record = jobs.get(job.id)
    assert out["state"] == record.state == "failed"
    assert record.error is not None and "RuntimeError: disk on fire" in record.error


def test_job_without_a_record_gets_one(settings: Settings, jobs: JobStore, small_dataset: Path) -> None:
    out = tasks.run_job(settings, "made-by-hand", str(small_dataset), "byhand", dict(SMALL))
    assert out["state"] == "succeeded"
    assert jobs.get("made-by-hand").version == out["version"]
