"""Job heartbeats: which running jobs have lost their worker, requeueing them once, and
cancelling a job whose worker is gone (on both stores: SQLite and Redis)."""

import time

import pytest

from poets.engine.store.jobs import JobRecords
from tests.engine.store.conftest import MakeRecords

pytestmark = pytest.mark.unit


def _running(jobs: JobRecords, worker: str, beat_age_s: float) -> str:
    job = jobs.create("m", {"image_dir": "/data/m"})
    jobs.start(job.id, worker)
    jobs.update(job.id, heartbeat=time.time() - beat_age_s)
    return job.id


def test_lost_jobs_are_those_whose_heartbeat_stopped(make_records: MakeRecords) -> None:
    jobs = make_records()
    alive = _running(jobs, "host:1:aaaa", 1)
    gone = _running(jobs, "host:1:bbbb", 60)  # the same host and pid: only the beat tells
    assert [job.id for job in jobs.lost(20)] == [gone]
    assert jobs.beat(alive, "host:1:aaaa")
    assert not jobs.beat(alive, "host:1:other")  # not its job
    # Requeued once: a second worker seeing it lost at the same moment gets False.
    assert jobs.requeue(gone, 20) and not jobs.requeue(gone, 20)
    assert jobs.get(gone).state == "queued" and jobs.get(gone).worker is None
    # A job that sent a beat since it was seen as lost is not requeued.
    late = _running(jobs, "host:1:cccc", 60)
    assert jobs.beat(late, "host:1:cccc")
    assert not jobs.requeue(late, 20)


def test_cancel_of_a_job_whose_worker_is_gone_takes_effect_at_once(make_records: MakeRecords) -> None:
    jobs = make_records()
    alive = _running(jobs, "host:1:aaaa", 1)
    gone = _running(jobs, "host:2:bbbb", 60)
    assert jobs.request_cancel(alive, 20).state == "running"  # its worker stops it at a step
    assert jobs.get(alive).cancel_requested
    cancelled = jobs.request_cancel(gone, 20)
    assert cancelled.state == "cancelled" and cancelled.finished is not None
    assert "worker had stopped" in (cancelled.error or "")
    assert not jobs.beat(gone, "host:2:bbbb")  # a worker that comes back learns it lost the job
