"""Faults on real processes: workers SIGKILLed mid-job, Redis stopped, the API restarted,
a broken version published. Never lose a job, never serve a half model.

One service (``poets serve`` + ``poets worker``) runs on a Redis of our own, which
the Redis test stops and starts again. Jobs read datasets from POETS_DATA_ROOT.
Redelivery on Redis: a message a killed worker had taken stays in Redis' "unacked"
set and goes back to the queue once it is older than the visibility timeout
(POETS_JOB_VISIBILITY_TIMEOUT_S, 4 s here); kombu checks when a worker starts
consuming (and then only every ~100 s), so the new worker is started once the
timeout has passed. The embedded SQLite broker never redelivers after a SIGKILL
(test_embedded_broker_never_redelivers_a_message_whose_consumer_was_killed); there
every worker requeues jobs whose heartbeat stopped (worker.celery_app.recover_orphans,
tested in tests/worker/test_worker_process.py and test_recovery_in_containers.py).
"""

import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from poets.engine.store.jobs import RETRAIN_TASK, Job
from poets.engine.store.models import ModelStore
from tests.integration import fault_helpers as fh
from tests.integration.test_service import NAME, make_home
from tests.worker import helpers

VISIBILITY_TIMEOUT_S = 4
LABELS = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
CACHED = "cached"  # a dataset folder under the data root whose bottlenecks are all cached


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[fh.RedisServer]:
    server = fh.RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: fh.RedisServer,
    backbone_dir: Path,
    flowers_dir: Path,
    trained: Any,
    session_home: Path,
) -> Iterator[fh.Cluster]:
    root = tmp_path_factory.mktemp("faults")
    home = make_home(root, trained, session_home / "bottlenecks")
    data = root / "data"
    helpers.copy_dataset(flowers_dir, data / CACHED, tuple(LABELS), per_label=30)
    env = helpers.service_env(
        home,
        backbone_dir,
        redis_server.url,
        POETS_DATA_ROOT=str(data),
        POETS_MODEL_POLL_S="0.5",
        POETS_JOB_VISIBILITY_TIMEOUT_S=str(VISIBILITY_TIMEOUT_S),
        POETS_DECODE_THREADS="2",
    )
    service = fh.Cluster(root, env)
    try:
        service.start_worker()
        service.start_api()
        yield service
    finally:
        service.close()


@pytest.fixture
def photo(flowers_dir: Path) -> Path:
    return sorted((flowers_dir / "daisy").glob("*.jpg"))[-1]


def restart_worker_for_redelivery(cluster: fh.Cluster, job: Job) -> None:
    """Start a new worker once the killed delivery is older than the visibility timeout."""
    assert job.started is not None
    wait_s = job.started + VISIBILITY_TIMEOUT_S + 1.5 - time.time()
    if wait_s > 0:
        time.sleep(wait_s)  # Redis' rule, not a guess about speed: redelivery needs this age
    cluster.start_worker()


def assert_published_once(cluster: fh.Cluster, job_id: str) -> Job:
    job = cluster.wait_finished(job_id)
    assert job.state == "succeeded", (job.error, cluster.logs())
    assert job.attempts == 2, job  # the killed delivery and the redelivered one
    assert fh.versions_of_job(cluster.store, NAME, job_id) == [job.version]
    assert fh.damaged_cache_entries(cluster.home / "bottlenecks") == []
    assert fh.visible_entries(cluster.store, NAME) == []
    return job


def test_a_process_killed_while_writing_a_version_leaves_nothing_visible(tmp_path: Path) -> None:
    """Store level: SIGKILL inside ``publish``'s write leaves only an orphan in .staging."""
    store = ModelStore(tmp_path / "models")

    def write(content: bytes) -> Callable[[Path], None]:
        def writer(folder: Path) -> None:
            (folder / "saved_model.pb").write_bytes(content)

        return writer

    store.publish("m", write(b"v1"))
    marker = tmp_path / "writing"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from poets.engine.store.models import ModelStore\n"
        "def write(folder):\n"
        "    (folder / 'saved_model.pb').write_bytes(b'half' * 100000)\n"
        "    Path(sys.argv[2]).write_text(str(folder))\n"
        "    time.sleep(600)\n"
        "ModelStore(Path(sys.argv[1])).publish('m', write, job_id='job-1')\n"
    )
    staged = Path(
        fh.kill_when_marked(script, [str(store.root), str(marker)], marker, "the writer inside publish()")
    )
    assert staged.parent == store.root / ".staging" and staged.is_dir()
    assert store.versions("m") == [1] and store.current("m") == 1
    assert fh.visible_entries(store, "m") == []
    assert store.find_job("m", "job-1") is None
    # The job's next delivery publishes normally; the orphan is swept later.
    version = store.publish("m", write(b"v2"), job_id="job-1")
    assert version == 2 and store.versions("m") == [1, 2]
    store.clean_staging(older_than_s=0)
    assert not staged.exists()


def test_embedded_broker_never_redelivers_a_message_whose_consumer_was_killed(tmp_path: Path) -> None:
    """How kombu's SQLAlchemy transport (the embedded broker) behaves on SIGKILL.

    Taking a message marks its row ``visible = 0`` in the same transaction; the ack
    only lives in the consumer's memory, and unacked messages are put back only by a
    clean shutdown (``restore_at_shutdown``). A consumer killed with SIGKILL (OOM
    killer, power cut) leaves the row invisible forever: no later worker gets it,
    and the job record stays ``running``. This pins that fact, which is why a
    starting worker recovers such jobs itself (see the module docstring).
    """
    import sqlite3

    from kombu import Connection

    url = "sqla+sqlite:///{}".format(tmp_path / "broker.sqlite3")
    with Connection(url) as connection:
        connection.SimpleQueue("poets").put({"job": "j1"})
    marker = tmp_path / "taken"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from kombu import Connection\n"
        "with Connection(sys.argv[1]) as connection:\n"
        "    message = connection.SimpleQueue('poets').get(timeout=30)\n"
        "    Path(sys.argv[2]).write_text(repr(message.payload))\n"
        "    time.sleep(600)\n"
    )
    assert "j1" in fh.kill_when_marked(script, [url, str(marker)], marker, "the consumer taking the message")
    with Connection(url) as connection:
        queue = connection.SimpleQueue("poets")
        with pytest.raises(queue.Empty):
            queue.get(timeout=2)
    db = sqlite3.connect(str(tmp_path / "broker.sqlite3"))
    try:
        assert db.execute("SELECT visible FROM kombu_message").fetchall() == [(0,)]
    finally:
        db.close()


def test_worker_killed_during_bottlenecks(cluster: fh.Cluster, flowers_dir: Path) -> None:
    # Photos with new bytes: their bottlenecks are not cached, so the phase lasts a while.
    fresh = "fresh-" + uuid.uuid4().hex[:8]
    fh.stamp_dataset(flowers_dir, cluster.home.parent / "data" / fresh, LABELS, 24, fresh)
    cache = cluster.home / "bottlenecks"
    job_id = cluster.retrain(NAME, fresh, 200)
    killed = cluster.kill_worker_when(
        job_id,
        lambda j: j.phase == "bottlenecks" and j.progress.get("done", 0) >= 10,
        "10 bottlenecks computed",
    )
    assert (killed.state, killed.phase) == ("running", "bottlenecks"), killed
    assert killed.progress["done"] < killed.progress["total"], killed
    assert fh.damaged_cache_entries(cache) == []

    restart_worker_for_redelivery(cluster, killed)
    assert_published_once(cluster, job_id)
    # The cache is whole: running the same dataset again computes nothing.
    rerun = cluster.wait_finished(cluster.retrain(NAME, fresh, 10))
    assert rerun.state == "succeeded", rerun.error
    assert rerun.result is not None
    assert rerun.result["bottlenecks_computed"] == 0, rerun.result
    assert rerun.result["bottlenecks_cached"] == 24 * len(LABELS)


def test_worker_killed_during_training(cluster: fh.Cluster) -> None:
    job_id = cluster.retrain(NAME, CACHED, 15000)
    killed = cluster.kill_worker_when(
        job_id, lambda j: j.phase == "training" and j.progress.get("step", 0) >= 50, "training under way"
    )
    assert (killed.state, killed.phase) == ("running", "training"), killed

    restart_worker_for_redelivery(cluster, killed)
    job = assert_published_once(cluster, job_id)
    assert job.result is not None and job.result["bottlenecks_computed"] == 0, job.result


def test_worker_killed_during_export(cluster: fh.Cluster, photo: Path) -> None:
    """No half version is ever visible; the previous one serves; the job publishes once."""
    for _ in range(3):  # only when the export finished before the kill landed, try again
        previous = cluster.wait_serving(photo, NAME)
        job_id = cluster.retrain(NAME, CACHED, 30)
        killed = cluster.kill_worker_when(job_id, lambda j: j.phase == "exporting", "export started")
        if killed.state == "running":
            break
        cluster.start_worker()
    else:
        pytest.fail("the export always finished before SIGKILL landed")

    published = fh.versions_of_job(cluster.store, NAME, job_id)  # [] unless killed after the rename
    assert fh.visible_entries(cluster.store, NAME) == []
    assert fh.unloadable_versions(cluster.store, NAME) == []
    serving = published[0] if published else previous
    cluster.wait_serving(photo, NAME, serving)
    print(
        "\nexport kill: staging holds {}; published by the killed delivery: {}".format(
            sorted(p.name for p in (cluster.store.root / ".staging").iterdir())
            if (cluster.store.root / ".staging").is_dir()
            else [],
            published,
        )
    )

    restart_worker_for_redelivery(cluster, killed)
    job = assert_published_once(cluster, job_id)
    assert fh.unloadable_versions(cluster.store, NAME) == []
    cluster.wait_serving(photo, NAME, job.version)


def test_redis_stopped_and_restarted(cluster: fh.Cluster, redis_server: fh.RedisServer, photo: Path) -> None:
    """Redis carries the queue and the job records: while it is away /label serves, /retrain
    and /jobs answer 503 store_unavailable; after it is back (AOF: the records kept) both work
    again, and the worker, which lived through it, runs the next job."""
    current = cluster.wait_serving(photo, NAME)
    before = [job["id"] for job in cluster.client.get("/jobs").json()["jobs"]]
    redis_server.stop()
    try:
        for _ in range(5):
            assert cluster.label(photo, NAME)["model"]["version"] == current
        response = cluster.client.post(
            "/retrain",
            data={"image_dir": CACHED, "how_many_training_steps": "10"},
            files={"name": (None, NAME)},
        )
        assert response.status_code == 503, response.text
        assert response.headers.get("Retry-After")
        body = response.json()
        assert body["error"] == "store_unavailable", body
        assert "Redis" in body["detail"] and redis_server.url in body["detail"], body
        listed = cluster.client.get("/jobs", params={"limit": 1})
        assert listed.status_code == 503 and listed.json()["error"] == "store_unavailable", listed.text
        ready = cluster.client.get("/readyz")
        assert ready.status_code == 503 and "broker" in ready.json()["detail"], ready.text
        assert cluster.label(photo, NAME)["model"]["version"] == current
    finally:
        redis_server.start()

    # Nothing restarted but Redis: the API and the worker reconnect by themselves.
    fh.wait_until(lambda: cluster.client.get("/readyz").status_code == 200, 60, "API ready again")
    after = [job["id"] for job in cluster.client.get("/jobs").json()["jobs"]]
    assert after == before  # the records persisted (AOF), and the refused job left none
    job_id = cluster.retrain(NAME, CACHED, 10)
    job = cluster.wait_finished(job_id)
    assert job.state == "succeeded", (job.error, cluster.logs())
    assert cluster.worker is not None and cluster.worker.poll() is None
    cluster.wait_serving(photo, NAME, job.version)


def test_api_restarted_serves_the_current_version_at_once(cluster: fh.Cluster, photo: Path) -> None:
    if len(cluster.store.versions(NAME)) < 2:  # run alone: a second version, so CURRENT must choose
        job = cluster.wait_finished(cluster.retrain(NAME, CACHED, 10))
        assert job.state == "succeeded", (job.error, cluster.logs())
    versions = cluster.store.versions(NAME)
    pinned = versions[-2]  # not the highest: CURRENT decides
    assert pinned < max(versions)
    response = cluster.client.post("/models/{}/versions/{}/activate".format(NAME, pinned))
    assert response.status_code == 200, response.text
    assert cluster.store.current(NAME) == pinned
    cluster.kill_api()
    cluster.start_api()  # returns at the first ready /readyz
    assert cluster.label(photo, NAME)["model"]["version"] == pinned


def test_a_corrupt_version_made_current_leaves_the_old_one_serving(cluster: fh.Cluster, photo: Path) -> None:
    good = cluster.wait_serving(photo, NAME)
    source = cluster.store.path(NAME, good)

    def write_broken(folder: Path) -> None:
        # Looks like a version (metadata, labels, a saved_model.pb) but is not a model.
        for name in ("poets.json", "labels.txt"):
            shutil.copy(str(source / name), str(folder / name))
        (folder / "saved_model.pb").write_bytes(b"\x08\x01garbage, not a SavedModel" * 64)
        (folder / "variables").mkdir()

    log_start = len(cluster.api_log.read_text(errors="replace"))
    bad = cluster.store.publish(NAME, write_broken, activate=True)
    try:

        def error_shown() -> Any:
            models = {m["name"]: m for m in cluster.client.get("/models").json()["models"]}
            error = models[NAME]["load_error"]
            return models[NAME] if error and error["version"] == bad else None

        model = fh.wait_until(error_shown, 60, "the load error in GET /models")
        assert model["current_version"] == bad and model["loaded_version"] == good, model
        assert len(model["load_error"]["detail"]) > 20, model
        for _ in range(5):
            assert cluster.label(photo, NAME)["model"]["version"] == good
        rows = {
            row["version"]: row
            for row in cluster.client.get("/models/{}/versions".format(NAME)).json()["versions"]
        }
        assert rows[bad]["load_error"] and not rows[bad]["loaded"] and rows[good]["loaded"], rows
        logged = cluster.api_log.read_text(errors="replace")[log_start:]
        assert "version {} failed to load".format(bad) in logged, logged[-3000:]
        assert cluster.client.get("/readyz").status_code == 200
        # Activating it through the API is refused, and nothing changes.
        response = cluster.client.post("/models/{}/versions/{}/activate".format(NAME, bad))
        assert response.status_code == 409, response.text
        assert cluster.label(photo, NAME)["model"]["version"] == good
    finally:
        cluster.store.activate(NAME, good)
    print("\ncorrupt version {}: {}".format(bad, json.dumps(model["load_error"])[:300]))


def test_a_pin_holds_while_retrains_publish(cluster: fh.Cluster, photo: Path) -> None:
    """POST .../pin: the pinned version serves; a retrain publishes without replacing it."""
    pinned = cluster.wait_serving(photo, NAME)
    response = cluster.client.post("/models/{}/versions/{}/pin".format(NAME, pinned))
    assert response.status_code == 200, response.text
    assert response.json()["pinned_version"] == pinned
    try:
        job = cluster.wait_finished(cluster.retrain(NAME, CACHED, 10))
        assert job.state == "succeeded", (job.error, cluster.logs())
        assert job.version is not None and job.version > pinned
        assert cluster.store.current(NAME) == pinned
        model = {m["name"]: m for m in cluster.client.get("/models").json()["models"]}[NAME]
        assert (model["current_version"], model["pinned_version"]) == (pinned, pinned), model
        rows = {
            r["version"]: r for r in cluster.client.get("/models/{}/versions".format(NAME)).json()["versions"]
        }
        assert rows[pinned]["pinned"] and rows[pinned]["current"]
        assert not rows[job.version]["current"], rows
        for _ in range(3):
            assert cluster.label(photo, NAME)["model"]["version"] == pinned
    finally:
        released = cluster.client.delete("/models/{}/pin".format(NAME))
    assert released.status_code == 200, released.text
    # Unpinned: the version stays current until the next retrain.
    assert released.json()["pinned_version"] is None
    assert released.json()["current_version"] == pinned
    job = cluster.wait_finished(cluster.retrain(NAME, CACHED, 10))
    assert job.state == "succeeded", job.error
    assert cluster.store.current(NAME) == job.version
    cluster.wait_serving(photo, NAME, job.version)


def test_cancel_of_a_job_whose_worker_is_gone(cluster: fh.Cluster) -> None:
    """DELETE /jobs/{id} marks a job cancelled at once once its worker stopped beating."""
    lost_after_s = float(cluster.env.get("POETS_WORKER_LOST_AFTER_S", "20"))
    job_id = cluster.retrain(NAME, CACHED, 15000)
    killed = cluster.kill_worker_when(
        job_id, lambda j: j.phase == "training" and j.progress.get("step", 0) >= 50, "training under way"
    )
    try:
        assert killed.state == "running"
        # Its heartbeat must be older than POETS_WORKER_LOST_AFTER_S (a rule, not a speed).
        fh.wait_until(
            lambda: time.time() - (cluster.jobs.get(job_id).heartbeat or 0) > lost_after_s,
            lost_after_s + 30,
            "the heartbeat of the killed worker to age",
        )
        response = cluster.client.delete("/jobs/{}".format(job_id))
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["state"] == "cancelled" and "worker had stopped" in body["error"], body
    finally:
        log_start = len(cluster.worker_log.read_text(errors="replace"))
        cluster.start_worker()
    # The new worker takes the killed delivery's message back from Redis (it is older than the
    # visibility timeout by now) and must skip it: wait until it has, then read the record.
    ended = "Task {}[{}] ended, job cancelled".format(RETRAIN_TASK, job_id)
    assert cluster.worker is not None
    helpers.wait_for_log(cluster.worker_log, ended, cluster.worker, timeout=120, start=log_start)
    handled = cluster.worker_log.read_text(errors="replace")[log_start:]
    line = next(line for line in handled.splitlines() if ended in line)
    assert "'skipped': True" in line, line
    job = cluster.jobs.get(job_id)
    assert (job.state, job.attempts, job.version) == ("cancelled", killed.attempts, None), job
