"""Real Celery worker processes running jobs sent by task name, as the API sends them.

Embedded SQLite broker and Redis; the job store is read the way the API reads it.
"""

import json
import signal
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from poets.engine.settings import Settings
from poets.engine.store.jobs import RETRAIN_TASK, JobStore
from poets.engine.store.redis_jobs import RedisJobStore
from poets.engine.workspace import Workspace
from tests.worker import helpers


@pytest.fixture(scope="module")
def module_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker-process-home")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, flowers_dir: Path) -> Path:
    return helpers.copy_dataset(
        flowers_dir, tmp_path_factory.mktemp("data") / "flowers", ("daisy", "roses", "tulips"), 15
    )


def _send(settings: Settings, name: str, image_dir: Path, config: Dict[str, Any]) -> str:
    """What POST /retrain does: a job record, then the task by name with task_id = job id."""
    from worker.celery_app import create_app

    job = Workspace(settings).jobs.create(name, {"image_dir": str(image_dir), "config": config})
    sender = create_app(settings)
    sender.send_task(
        RETRAIN_TASK,
        kwargs={"job_id": job.id, "image_dir": str(image_dir), "name": name, "config": config},
        task_id=job.id,
    )
    return job.id


class Worker:
    """A worker process for one broker, restartable."""

    def __init__(
        self, home: Path, backbone_dir: Path, broker_url: Optional[str], log: Path, **extra: str
    ) -> None:
        self.env = helpers.service_env(home, backbone_dir, broker_url, **extra)
        self.settings = Settings.from_env(self.env)
        self.log = log
        self.process = helpers.start_worker(self.env, log)

    def restart(self) -> None:
        self.process = helpers.start_worker(self.env, self.log)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        return helpers.stop(self.process, sig)


@pytest.fixture(scope="module")
def embedded(module_home: Path, backbone_dir: Path) -> Iterator[Worker]:
    worker = Worker(module_home, backbone_dir, None, module_home / "worker-embedded.log")
    yield worker
    assert worker.stop() == 0


def test_embedded_broker_runs_a_job_to_a_published_version(embedded: Worker, dataset: Path) -> None:
    from poets.engine.store.models import ModelStore

    settings = embedded.settings
    assert settings.broker_url is None
    job_id = _send(settings, "embedded", dataset, {"how_many_training_steps": 200})
    phases: List[str] = []
    job = helpers.wait_job(JobStore(settings.jobs_db), job_id, phases=phases)
    assert job.state == "succeeded", job.error
    assert job.version == 1 and ModelStore(settings.store_dir).current("embedded") == 1
    assert job.result is not None and job.result["metrics"]["test_n"] > 0
    assert "bottlenecks" in phases and "training" in phases and phases[-1] == "published"
    assert (settings.home / "broker" / "broker.sqlite3").is_file()


def test_embedded_broker_cancels_a_running_job(embedded: Worker, dataset: Path) -> None:
    from poets.engine.store.models import ModelStore

    settings = embedded.settings
    jobs = JobStore(settings.jobs_db)
    job_id = _send(settings, "cancelled", dataset, {"how_many_training_steps": 100000})
    helpers.wait_job(jobs, job_id, phase="training")
    jobs.request_cancel(job_id)
    job = helpers.wait_job(jobs, job_id, timeout=60)
    assert job.state == "cancelled" and job.version is None
    assert ModelStore(settings.store_dir).versions("cancelled") == []


def test_job_cancelled_in_the_queue_never_runs(embedded: Worker, dataset: Path) -> None:
    settings = embedded.settings
    jobs = JobStore(settings.jobs_db)
    running = _send(settings, "busy", dataset, {"how_many_training_steps": 100000})
    helpers.wait_job(jobs, running, phase="training")
    queued = _send(settings, "never", dataset, {"how_many_training_steps": 10})
    assert jobs.request_cancel(queued).state == "cancelled"
    jobs.request_cancel(running)
    helpers.wait_job(jobs, running)
    # The worker takes the cancelled message next, and skips it.
    helpers.wait_for_log(
        embedded.log,
        "Task {}[{}] ended, job cancelled".format(RETRAIN_TASK, queued),
        embedded.process,
        timeout=30,
    )
    assert jobs.get(queued).attempts == 0


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from helpers.redis_server(tmp_path_factory.mktemp("redis"))


def test_redis_job_survives_a_killed_worker_and_publishes_once(
    redis_url: str, module_home: Path, backbone_dir: Path, dataset: Path
) -> None:
    """kill -9 during training: the message is redelivered to the next worker, one version."""
    import redis

    from poets.engine.store.events import EVENTS_CHANNEL
    from poets.engine.store.models import ModelStore

    # A short visibility timeout so the unacknowledged message comes back within the test.
    worker = Worker(
        module_home,
        backbone_dir,
        redis_url,
        module_home / "worker-redis.log",
        POETS_JOB_VISIBILITY_TIMEOUT_S="3",
    )
    settings = worker.settings
    jobs = Workspace(settings).jobs  # with a Redis broker, the records are in Redis
    assert isinstance(jobs, RedisJobStore)
    events = redis.Redis.from_url(redis_url).pubsub()
    events.subscribe(EVENTS_CHANNEL)
    try:
        job_id = _send(settings, "redelivered", dataset, {"how_many_training_steps": 1500})
        helpers.wait_job(jobs, job_id, phase="training")
        assert worker.stop(signal.SIGKILL) == -signal.SIGKILL
        assert jobs.get(job_id).state == "running"
        time.sleep(3.5)  # past the visibility timeout
        worker.restart()
        job = helpers.wait_job(jobs, job_id, timeout=180)
        assert job.state == "succeeded", job.error
        # At least the redelivery; this test's 3 s visibility timeout can hand the message out
        # once more while a loaded machine is still on the second delivery. Either way: one version.
        assert job.attempts >= 2
        assert ModelStore(settings.store_dir).versions("redelivered") == [job.version]
        # Every delivery this worker took has ended once it stops (a warm shutdown finishes
        # the task it runs), so every notice it would send is sent. Ours comes after them
        # (Redis keeps a channel's order), so everything before it is all there is.
        assert worker.stop() == 0
        end = {"name": "end-of-test", "version": 0}
        redis.Redis.from_url(redis_url).publish(EVENTS_CHANNEL, json.dumps(end))
        notices: List[Dict[str, Any]] = []
        while not notices or notices[-1] != end:
            message = events.get_message(timeout=60)
            assert message is not None, "no end-of-test notice after {}".format(notices)
            if message["type"] == "message":
                notices.append(json.loads(message["data"]))
        assert notices == [{"name": "redelivered", "version": job.version}, end]
    finally:
        events.close()
        worker.stop()


def test_embedded_job_survives_a_killed_worker_and_publishes_once(
    module_home: Path, backbone_dir: Path, dataset: Path
) -> None:
    """kill -9 during training on the SQLite broker: the next worker requeues the orphan."""
    from poets.engine.store.models import ModelStore

    home = module_home / "orphans"
    worker = Worker(home, backbone_dir, None, home / "worker.log")
    settings = worker.settings
    jobs = JobStore(settings.jobs_db)
    job_id = _send(settings, "orphan", dataset, {"how_many_training_steps": 1500})
    helpers.wait_job(jobs, job_id, phase="training")
    assert worker.stop(signal.SIGKILL) == -signal.SIGKILL
    assert jobs.get(job_id).state == "running"
    worker.restart()
    try:
        job = helpers.wait_job(jobs, job_id, timeout=180)
        assert job.state == "succeeded", job.error
        assert job.attempts == 2
        assert ModelStore(settings.store_dir).versions("orphan") == [job.version]
        helpers.wait_for_log(worker.log, "requeued job {}".format(job_id), worker.process, timeout=5)
    finally:
        assert worker.stop() == 0
