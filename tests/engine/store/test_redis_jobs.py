"""Job records: the same behaviour from SQLite (the embedded broker) and Redis (a Redis broker),
the bounded history of both, races between threads, and Redis out of reach."""

import logging
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import pytest

from app.metrics import Metrics
from poets.engine.errors import Conflict, NotFound, StoreUnavailable
from poets.engine.jobs.progress import CancelCheck, Heartbeat, ProgressWriter
from poets.engine.jobs.run import patiently
from poets.engine.settings import Settings
from poets.engine.store.jobs import FINISHED, Job, JobRecords, JobStore
from poets.engine.store.redis_jobs import RedisJobStore, describe_url
from poets.engine.workspace import Workspace
from tests.engine.store.conftest import MakeRecords
from tests.net import free_port
from tests.waiting import wait_until
from tests.worker import helpers

pytestmark = pytest.mark.unit

THREADS = 8


def _race(action: Callable[[int], Any], threads: int = THREADS) -> List[Any]:
    """``action(i)`` on ``threads`` threads released at once; their results, in order."""
    barrier = threading.Barrier(threads)
    results: List[Any] = [None] * threads
    errors: List[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = action(i)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not errors, errors
    return results


def _finished(jobs: JobRecords, count: int, state: str = "succeeded") -> List[str]:
    ids = []
    for _ in range(count):
        job = jobs.create("m", {})
        jobs.finish(job.id, state)
        ids.append(job.id)
    return ids


# -- the same behaviour on both stores -------------------------------------------------------------


def test_a_job_from_queued_to_succeeded(make_records: MakeRecords) -> None:
    jobs = make_records()
    job = jobs.create("m", {"image_dir": "/data/m", "config": {"steps": 10}}, trigger="console")
    assert job.state == "queued" and job.trigger == "console" and job.created > 0
    assert jobs.get(job.id) == job
    assert jobs.active("m") and not jobs.active("other")
    assert jobs.last_created("m", "console") == job.created and jobs.last_created("m", "api") is None
    with pytest.raises(Conflict):
        jobs.create("m", {}, job_id=job.id)
    with pytest.raises(NotFound):
        jobs.get("nope")

    started = jobs.start(job.id, "host:1:aaaa")
    assert started.state == "running" and started.attempts == 1 and started.worker == "host:1:aaaa"
    assert started.started is not None and started.heartbeat is not None
    assert [j.id for j in jobs.running()] == [job.id]
    again = jobs.start(job.id, "host:2:bbbb")  # a redelivery: counted, the first start kept
    assert again.attempts == 2 and again.started == started.started and again.worker == "host:2:bbbb"
    progress = {"done": 3, "total": 9, "history": [{"step": 1, "loss": 0.5}]}
    jobs.update(job.id, phase="bottlenecks", progress=progress)
    assert jobs.get(job.id).progress == progress and jobs.get(job.id).phase == "bottlenecks"
    jobs.update(job.id, phase=None)  # None clears
    assert jobs.get(job.id).phase is None
    jobs.update("nope", phase="x")  # an unknown job: nothing happens, as an UPDATE of no row

    result = {"name": "m", "version": 3, "metrics": {"test_accuracy": 0.9}}
    jobs.finish(job.id, "succeeded", version=3, result=result, error=None)
    done = jobs.get(job.id)
    assert (done.state, done.version, done.result, done.error) == ("succeeded", 3, result, None)
    assert done.finished is not None and done.finished >= done.created
    assert not jobs.active("m") and jobs.running() == []
    assert not jobs.beat(job.id, "host:2:bbbb")  # finished: no longer anybody's
    assert jobs.start(job.id, "host:3:cccc").state == "succeeded"  # a late redelivery changes nothing
    assert jobs.get(job.id).attempts == 2


def test_list_is_newest_first_and_stats_count_each_state(make_records: MakeRecords) -> None:
    jobs = make_records()
    made = [jobs.create("m{}".format(i), {}) for i in range(5)]
    for job, state in zip(made[:3], ("succeeded", "failed", "cancelled")):
        jobs.update(job.id, started=100.0)
        jobs.finish(job.id, state)
        jobs.update(job.id, finished=112.5)  # a 12.5 s job
    jobs.start(made[3].id, "w")
    assert [job.id for job in jobs.list()] == [job.id for job in reversed(made)]
    assert [job.id for job in jobs.list(2)] == [made[4].id, made[3].id]
    assert jobs.all_ids() == [job.id for job in made]
    stats = jobs.stats()
    assert set(stats) == {"succeeded", "failed", "cancelled", "running", "queued"}
    for state in ("succeeded", "failed", "cancelled"):
        assert stats[state][0] == 1 and stats[state][1] == pytest.approx(12.5)
    assert stats["running"] == (1, 0.0) and stats["queued"] == (1, 0.0)


def test_cancel_a_queued_job_at_once_and_a_running_one_at_its_next_step(make_records: MakeRecords) -> None:
    jobs = make_records()
    queued, running = jobs.create("m", {}), jobs.create("m", {})
    jobs.start(running.id, "w")
    cancelled = jobs.request_cancel(queued.id)
    assert cancelled.state == "cancelled" and cancelled.cancel_requested and cancelled.finished is not None
    asked = jobs.request_cancel(running.id, lost_after_s=60)  # its worker beats: it stops itself
    assert asked.state == "running" and jobs.cancel_requested(running.id)
    with pytest.raises(Conflict):
        jobs.request_cancel(queued.id)
    with pytest.raises(NotFound):
        jobs.request_cancel("nope")
    assert not jobs.cancel_requested("nope")


def test_claims_let_one_holder_decide_until_they_expire(make_records: MakeRecords) -> None:
    one, other = make_records(), make_records()
    assert one.claim("tick", "a", ttl_s=60) and one.claim("tick", "a", ttl_s=60)  # its own: again
    assert not other.claim("tick", "b", ttl_s=60)
    other.release("tick", "b")  # not its claim: nothing happens
    assert not other.claim("tick", "b", ttl_s=60)
    one.release("tick", "a")
    assert other.claim("tick", "b", ttl_s=-1)  # taken, and already expired
    assert one.claim("tick", "a", ttl_s=60)


def test_put_record_stores_a_complete_job_once(make_records: MakeRecords) -> None:
    jobs = make_records()
    job = Job(
        id="copied",
        name="m",
        state="succeeded",
        phase="published",
        progress={"step": 10, "steps": 10},
        params={"image_dir": "/data/m"},
        result={"version": 2},
        error=None,
        version=2,
        attempts=2,
        cancel_requested=True,
        worker="host:1:aaaa",
        heartbeat=1000.5,
        created=990.25,
        started=991.0,
        finished=1001.0,
        trigger="policy",
    )
    assert jobs.put_record(job)
    assert not jobs.put_record(Job(id="copied", name="other", state="queued"))  # there already
    assert jobs.get("copied") == job
    assert jobs.all_ids() == ["copied"] and jobs.last_created("m", "policy") == 990.25
    assert jobs.stats()["succeeded"] == (1, pytest.approx(10.0))
    bare = Job(id="bare", name="m", state="queued", created=995.0)
    assert jobs.put_record(bare) and jobs.get("bare") == bare and jobs.active("m")


# -- races between threads (as between workers) ----------------------------------------------------


def test_racing_claims_give_the_lease_to_one(make_records: MakeRecords) -> None:
    stores = [make_records() for _ in range(THREADS)]
    won = _race(lambda i: stores[i].claim("tick", "holder-{}".format(i), ttl_s=60))
    assert sum(won) == 1


def test_racing_starts_count_every_attempt_and_racing_requeues_win_once(make_records: MakeRecords) -> None:
    jobs = make_records()
    job = jobs.create("m", {})
    _race(lambda i: jobs.start(job.id, "host:{}".format(i)))
    started = jobs.get(job.id)
    assert started.state == "running" and started.attempts == THREADS
    jobs.update(job.id, heartbeat=time.time() - 60)
    assert sum(_race(lambda i: jobs.requeue(job.id, 20))) == 1
    assert jobs.get(job.id).state == "queued"
    # Cancels racing a start: whichever comes first, the flag is set and the job ends cancelled
    # or stays running with the flag for its worker to see.
    _race(lambda i: jobs.request_cancel(job.id) if i % 2 else jobs.start(job.id, "w"), threads=2)
    after = jobs.get(job.id)
    assert after.cancel_requested and after.state in ("cancelled", "running")


def test_racing_finishes_keep_exactly_the_history(make_records: MakeRecords) -> None:
    history = 5
    jobs = make_records(history=history)
    queued = jobs.create("m", {})
    made = [jobs.create("m", {}) for _ in range(THREADS * 2)]
    _race(lambda i: [jobs.finish(job.id, "succeeded") for job in made[i::THREADS]])
    assert jobs.stats()["succeeded"][0] == history
    assert jobs.deleted_records() == THREADS * 2 - history
    assert len(jobs.all_ids()) == history + 1 and jobs.get(queued.id).state == "queued"


# -- the bounded history ---------------------------------------------------------------------------


def test_history_deletes_the_earliest_finished_and_never_queued_or_running(
    make_records: MakeRecords, caplog: pytest.LogCaptureFixture
) -> None:
    jobs = make_records(history=3)
    late = jobs.create("m", {})  # the oldest job, finished last: it stays
    queued, running = jobs.create("m", {}), jobs.create("m", {})
    jobs.start(running.id, "w")
    first = _finished(jobs, 3, "failed")
    assert jobs.deleted_records() == 0
    with caplog.at_level(logging.INFO, logger="poets.engine.store.jobs"):
        then = [*_finished(jobs, 1), jobs.request_cancel(late.id).id]  # a cancel finishes too
    assert jobs.deleted_records() == 2
    lines = [r.getMessage() for r in caplog.records if "POETS_JOB_HISTORY" in r.getMessage()]
    assert lines and all("deleted the 1 earliest" in line for line in lines), lines
    kept = set(jobs.all_ids())
    assert kept == {queued.id, running.id, first[2], *then}
    for gone in first[:2]:
        with pytest.raises(NotFound):
            jobs.get(gone)
    assert {state: count for state, (count, _) in jobs.stats().items()} == {
        "queued": 1,
        "running": 1,
        "failed": 1,
        "succeeded": 1,
        "cancelled": 1,
    }
    assert [job.id for job in jobs.list()] == [j for j in reversed(jobs.all_ids())]
    # Unbounded (history None): nothing is ever deleted.
    unbounded = make_records()
    _finished(unbounded, 2)
    assert unbounded.deleted_records() == 2 and len(unbounded.all_ids()) == 7


def test_a_lower_history_trims_at_the_next_finish_in_one_line(
    make_records: MakeRecords, caplog: pytest.LogCaptureFixture
) -> None:
    _finished(make_records(), 12)
    jobs = make_records(history=4)
    with caplog.at_level(logging.INFO, logger="poets.engine.store.jobs"):
        _finished(jobs, 1)
    lines = [r.getMessage() for r in caplog.records if "POETS_JOB_HISTORY" in r.getMessage()]
    assert len(lines) == 1 and "deleted the 9 earliest" in lines[0], lines
    assert len(jobs.all_ids()) == 4 and jobs.deleted_records() == 9


def test_metrics_export_the_deleted_records(make_records: MakeRecords) -> None:
    jobs = make_records(history=2)
    _finished(jobs, 3)
    metrics = Metrics()
    metrics.watch_jobs(jobs.stats, jobs.deleted_records)
    text = metrics.render().decode()
    assert "poets_job_records_deleted_total 1.0" in text
    assert 'poets_jobs{state="succeeded"} 2.0' in text


# -- which store, and Redis out of reach -----------------------------------------------------------


def test_the_workspace_keeps_records_in_redis_when_the_broker_is_redis(tmp_path: Path) -> None:
    redis_broker = Settings(home=tmp_path, broker_url="redis://127.0.0.1:6379/0", job_history=50)
    records = Workspace(redis_broker).jobs
    assert isinstance(records, RedisJobStore) and records.history == 50
    assert records.prefix == "poets:" and records.url == "redis://127.0.0.1:6379/0"
    embedded = Workspace(Settings(home=tmp_path)).jobs
    assert isinstance(embedded, JobStore) and embedded.path == tmp_path / "jobs.sqlite3"
    assert embedded.history == Settings().job_history


def test_every_call_to_an_unreachable_redis_raises_store_unavailable() -> None:
    port = free_port()
    jobs = RedisJobStore("redis://:secret@127.0.0.1:{}/0".format(port), prefix="poets-test-down:")
    calls: List[Callable[[], Any]] = [
        lambda: jobs.create("m", {}),
        lambda: jobs.put_record(Job(id="x", name="m", state="queued")),
        jobs.all_ids,
        lambda: jobs.active("m"),
        lambda: jobs.last_created("m", "api"),
        lambda: jobs.claim("tick", "a", 60),
        lambda: jobs.release("tick", "a"),
        lambda: jobs.get("x"),
        jobs.list,
        lambda: jobs.update("x", phase="p"),
        lambda: jobs.start("x", "w"),
        lambda: jobs.beat("x", "w"),
        jobs.running,
        lambda: jobs.lost(20),
        lambda: jobs.requeue("x", 20),
        lambda: jobs.finish("x", "failed"),
        lambda: jobs.request_cancel("x"),
        jobs.stats,
        lambda: jobs.cancel_requested("x"),
        jobs.deleted_records,
    ]
    for call in calls:
        with pytest.raises(StoreUnavailable) as raised:
            call()
        detail = raised.value.detail
        assert "redis://***@127.0.0.1:{}/0".format(port) in detail and "secret" not in detail, detail
        assert "POETS_BROKER_URL" in detail and "Redis is running" in detail, detail
    assert describe_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert describe_url("rediss://user:pw@cache:6380/1") == "rediss://***@cache:6380/1"


class _OwnRedis:
    """A redis-server with AOF on (as the README asks of deployments), to stop and start again."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "these tests need redis-server (apt-get install redis-server)"
        self.command = [binary, "--port", str(free_port()), "--bind", "127.0.0.1", "--dir", str(folder)]
        self.command += ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"]
        self.command += ["--logfile", str(folder / "redis.log")]
        self.port = int(self.command[2])
        self.url = "redis://127.0.0.1:{}/0".format(self.port)
        self.process: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: helpers._answers(self.port), 15, "redis-server answering")

    def stop(self) -> None:
        if self.process is not None:
            helpers.stop(self.process)
            self.process = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[_OwnRedis]:
    server = _OwnRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_redis_stopped_and_started_again(own_redis: _OwnRedis, caplog: pytest.LogCaptureFixture) -> None:
    """Records persist across a Redis restart (AOF); meanwhile every call says StoreUnavailable,
    a running job's progress, cancel check and heartbeat carry on without raising, and the
    writes a job cannot do without wait for Redis (patiently)."""
    jobs = RedisJobStore(own_redis.url, history=10)
    job = jobs.create("m", {"image_dir": "/data/m"})
    jobs.start(job.id, "w")
    progress = ProgressWriter(jobs, job.id, min_interval_s=0.0)
    should_stop = CancelCheck(jobs, job.id, interval_s=0.0)
    with Heartbeat(jobs, job.id, "w", interval_s=0.05) as heartbeat:
        own_redis.stop()
        with pytest.raises(StoreUnavailable):
            jobs.list()
        progress({"phase": "training", "step": 1, "steps": 10})  # no exception: training goes on
        assert not should_stop() and progress.unwritten == 1
        wait_until(lambda: "heartbeat not written" in caplog.text, 30, "the heartbeat's warning")

        restart = threading.Timer(0.5, own_redis.start)
        restart.start()
        try:
            # The job's outcome waits for Redis to come back.
            patiently(job.id, "its outcome", lambda: jobs.update(job.id, phase="evaluating"), 60.0)
        finally:
            restart.join()
        progress({"phase": "training", "step": 2, "steps": 10})
        assert progress.unwritten == 0 and jobs.get(job.id).progress["step"] == 2
        jobs.request_cancel(job.id)
        wait_until(should_stop, 30, "the cancel flag read again")
        assert not heartbeat.lost
    assert jobs.get(job.id).state == "running" and jobs.all_ids() == [job.id]  # AOF kept it
    jobs.finish(job.id, "cancelled")
    assert jobs.get(job.id).state in FINISHED
    with pytest.raises(StoreUnavailable):
        patiently(job.id, "its outcome", lambda: RedisJobStore(_unreachable()).get(job.id), 0.2)


def _unreachable() -> str:
    return "redis://127.0.0.1:{}/0".format(free_port())
