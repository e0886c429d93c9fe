"""A real ``poets worker`` (prefork, one child) replaces its job process after N jobs or
over a memory limit, and every job still succeeds; Celery's "succeeded" line never
stands for a job that failed."""

from pathlib import Path
from typing import List

import pytest

from poets.engine.store.jobs import JobStore
from tests.worker import helpers
from tests.worker.test_worker_process import Worker, _send

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, flowers_dir: Path) -> Path:
    return helpers.copy_dataset(
        flowers_dir, tmp_path_factory.mktemp("data") / "flowers", ("daisy", "roses", "tulips"), 12
    )


def _pid(worker_field: str) -> int:
    return int(worker_field.split(":")[-2])


def _children(pid: int) -> List[int]:
    found: List[int] = []
    for path in Path("/proc/{}/task".format(pid)).glob("*/children"):
        found += [int(p) for p in path.read_text().split()]
    return found


def test_child_is_replaced_after_n_jobs_and_every_job_succeeds(
    tmp_path: Path, backbone_dir: Path, dataset: Path
) -> None:
    worker = Worker(
        tmp_path / "home",
        backbone_dir,
        None,
        tmp_path / "worker.log",
        POETS_WORKER_MAX_TASKS_PER_CHILD="2",
        POETS_WORKER_MAX_MEMORY_MB="0",
    )
    try:
        jobs = JobStore(worker.settings.jobs_db)
        ids = [_send(worker.settings, "recycled", dataset, {"how_many_training_steps": 20}) for _ in range(4)]
        finished = [helpers.wait_job(jobs, job_id, timeout=240) for job_id in ids]
        assert [job.state for job in finished] == ["succeeded"] * 4, [j.error for j in finished]
        assert [job.version for job in finished] == [1, 2, 3, 4]
        runners = [_pid(job.worker or "") for job in finished]
        # Two jobs per child, each child a new process; the main process never runs a job.
        assert runners[0] == runners[1] and runners[2] == runners[3], runners
        assert runners[1] != runners[2], runners
        assert worker.process.pid not in runners
        assert len({job.worker for job in finished}) == 2
        assert worker.process.poll() is None
        assert len(_children(worker.process.pid)) == 1  # a fresh child waits for the next job
    finally:
        assert worker.stop() == 0


def test_child_over_the_memory_limit_is_replaced_after_its_job(
    tmp_path: Path, backbone_dir: Path, dataset: Path
) -> None:
    worker = Worker(
        tmp_path / "home",
        backbone_dir,
        None,
        tmp_path / "worker.log",
        POETS_WORKER_MAX_TASKS_PER_CHILD="0",
        POETS_WORKER_MAX_MEMORY_MB="1",
    )
    try:
        jobs = JobStore(worker.settings.jobs_db)
        good = _send(worker.settings, "memory", dataset, {"how_many_training_steps": 20})
        bad = _send(worker.settings, "memory", dataset.parent / "missing", {})
        first, second = (helpers.wait_job(jobs, job_id, timeout=240) for job_id in (good, bad))
        assert first.state == "succeeded", first.error
        assert second.state == "failed" and second.error
        assert _pid(first.worker or "") != _pid(second.worker or "")  # 1 MiB: over after any job
        helpers.wait_for_log(
            worker.log, "Task poets.retrain[{}] ended, job failed".format(bad), worker.process, timeout=30
        )
        text = worker.log.read_text()
        assert "Task poets.retrain[{}] succeeded".format(good) in text
        assert "Task poets.retrain[{}] succeeded".format(bad) not in text
    finally:
        assert worker.stop() == 0
