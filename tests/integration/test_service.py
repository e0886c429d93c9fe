"""The whole service, real parts only: uvicorn + Celery worker + Redis, and ``poets up``.

A version is published first (the session's ``trained`` model), so /label works
from the start; a client keeps labelling while a retraining job publishes the next
version, and must see no failed request through the swap. Job and swap times are
printed, not asserted (speed belongs in bench/).
"""

import shutil
import signal
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import httpx
import pytest

from tests.worker import helpers

NAME = "flowers"
HELD_BACK = 3  # photos per label kept out of the archive, labelled after retraining
STEPS = 500


@pytest.fixture(scope="module")
def holdout(flowers_dir: Path) -> Dict[str, List[Path]]:
    return {
        label.name: sorted(label.glob("*.jpg"))[-HELD_BACK:]
        for label in sorted(flowers_dir.iterdir())
        if label.is_dir()
    }


@pytest.fixture(scope="module")
def archive(
    flowers_dir: Path, holdout: Dict[str, List[Path]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """flowers_small as a zip, without the held-back photos."""
    path = tmp_path_factory.mktemp("upload") / "flowers.zip"
    kept = {photo for photos in holdout.values() for photo in photos}
    with zipfile.ZipFile(str(path), "w", zipfile.ZIP_STORED) as out:
        for label in holdout:
            for photo in sorted((flowers_dir / label).glob("*.jpg")):
                if photo not in kept:
                    out.write(str(photo), "flowers/{}/{}".format(label, photo.name))
    return path


@pytest.fixture(scope="module")
def bottlenecks(trained: Any, session_home: Path) -> Path:
    """The session's bottleneck cache: each service home starts from a copy of it."""
    return session_home / "bottlenecks"


def make_home(root: Path, trained: Any, bottlenecks: Path) -> Path:
    """A POETS_HOME with the session's trained model as ``flowers`` v1 and a warm cache."""
    home = root / "home"
    shutil.copytree(str(trained.path), str(home / "models" / NAME / "1"))
    shutil.copytree(str(bottlenecks), str(home / "bottlenecks"))
    return home


class Service:
    """Base URL, a client, and the processes to stop."""

    def __init__(self, port: int, processes: List[Any], log: Path) -> None:
        self.url = "http://127.0.0.1:{}".format(port)
        self.processes = processes
        self.log = log
        self.client = httpx.Client(base_url=self.url, timeout=60.0)

    def wait_ready(self, process: Any, timeout: float = 180.0) -> None:
        deadline = time.time() + timeout
        while True:
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.time() > deadline:
                pytest.fail("the API never became ready:\n" + self.log.read_text()[-4000:])
            time.sleep(0.2)

    def close(self) -> None:
        self.client.close()
        for process in reversed(self.processes):
            assert helpers.stop(process, signal.SIGTERM, timeout=90) == 0


class Labeller(threading.Thread):
    """Keeps calling /label with one photo; records (time, status, version) for each answer."""

    def __init__(self, url: str, photo: Path) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.data = photo.read_bytes()
        self.answers: List[Tuple[float, int, Optional[int], str]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30.0) as client:
            while not self.stopping.is_set():
                try:
                    response = client.post(
                        "/label",
                        content=self.data,
                        params={"model": NAME},
                        headers={"Content-Type": "image/jpeg"},
                    )
                    version = response.json()["model"]["version"] if response.status_code == 200 else None
                    self.answers.append(
                        (
                            time.time(),
                            response.status_code,
                            version,
                            "" if response.status_code == 200 else response.text,
                        )
                    )
                except httpx.HTTPError as exc:
                    self.answers.append((time.time(), 0, None, repr(exc)))

    def first_answer_from(self, version: int, timeout: float = 60.0) -> float:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for at, status, seen, _ in list(self.answers):
                if status == 200 and seen == version:
                    return at
            time.sleep(0.05)
        pytest.fail("/label never answered from version {}".format(version))

    def finish(self) -> List[Tuple[float, int, Optional[int], str]]:
        self.stopping.set()
        self.join(60)
        return [answer for answer in self.answers if answer[1] != 200]


def retrain(service: Service, archive: Path, steps: int) -> str:
    with open(str(archive), "rb") as data:
        response = service.client.post(
            "/retrain",
            files={"file": ("flowers.zip", data, "application/zip")},
            data={"name": NAME, "how_many_training_steps": str(steps)},
        )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert response.headers["Location"].endswith("/jobs/{}".format(job_id))
    return str(job_id)


def follow(
    service: Service, job_id: str, timeout: float = 240.0, until_phase: Optional[str] = None
) -> Tuple[Dict[str, Any], List[str]]:
    phases: List[str] = []
    deadline = time.time() + timeout
    while True:
        job = service.client.get("/jobs/{}".format(job_id)).json()
        if job.get("phase") and (not phases or phases[-1] != job["phase"]):
            phases.append(job["phase"])
        if job["state"] in ("succeeded", "failed", "cancelled") or (
            until_phase is not None and job.get("phase") == until_phase
        ):
            return job, phases
        if time.time() > deadline:
            pytest.fail(
                "job {} still {}/{} after {:.0f} s".format(job_id, job["state"], job.get("phase"), timeout)
            )
        time.sleep(0.1)


def label(service: Service, photo: Path) -> Dict[str, Any]:
    response = service.client.post(
        "/label", content=photo.read_bytes(), params={"model": NAME}, headers={"Content-Type": "image/jpeg"}
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def retrain_and_swap(service: Service, archive: Path, holdout: Dict[str, List[Path]], broker: str) -> int:
    """The main flow; returns the new version."""
    assert label(service, holdout["daisy"][0])["model"]["version"] == 1
    labeller = Labeller(service.url, holdout["roses"][0])
    labeller.start()
    try:
        labeller.first_answer_from(1)  # answers from before the swap, whatever the machine's speed
        started = time.time()
        job_id = retrain(service, archive, STEPS)
        job, phases = follow(service, job_id)
        assert job["state"] == "succeeded", job
        succeeded = time.time()
        version = job["version"]
        assert version == 2
        assert job["metrics"]["test_accuracy"] is not None
        assert "bottlenecks" in phases or "training" in phases, phases
        assert "training" in phases and phases[-1] == "published", phases
        finished = succeeded
        first = labeller.first_answer_from(version)
        time.sleep(0.5)  # a few more answers after the swap
    finally:
        failures = labeller.finish()
    assert failures == [], failures[:5]
    # Versions only move forward during the swap: one client asking in turn never gets an
    # answer from v1 after one from the new version.
    seen = [answer[2] for answer in labeller.answers]
    assert seen[0] == 1 and seen[-1] == version, seen
    assert seen == sorted(seen) and set(seen) == {1, version}, seen
    print(
        "\n[{}] job {}: {:.1f} s (POST to succeeded, {} steps, phases {})".format(
            broker, job_id, succeeded - started, STEPS, " > ".join(phases)
        )
    )
    print(
        "[{}] swap: {:.2f} s from job success to the first /label answer from v{} "
        "({} /label requests, 0 failed)".format(
            broker, max(0.0, first - finished), version, len(labeller.answers)
        )
    )
    right = 0
    for truth, photos in holdout.items():
        for photo in photos:
            answer = label(service, photo)
            assert answer["model"]["version"] == version
            right += answer["labels"][0]["label"] == truth
    total = sum(len(p) for p in holdout.values())
    print("[{}] held-back photos labelled right by v{}: {}/{}".format(broker, version, right, total))
    assert right >= 0.8 * total
    return int(version)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from helpers.redis_server(tmp_path_factory.mktemp("redis"))


@pytest.fixture(scope="module")
def redis_service(
    tmp_path_factory: pytest.TempPathFactory,
    redis_url: str,
    backbone_dir: Path,
    trained: Any,
    bottlenecks: Path,
) -> Iterator[Service]:
    """``poets worker`` + ``poets serve`` (uvicorn) on a test Redis."""
    root = tmp_path_factory.mktemp("redis-service")
    home = make_home(root, trained, bottlenecks)
    env = helpers.service_env(home, backbone_dir, redis_url)
    worker = helpers.start_worker(env, root / "worker.log")
    port = helpers.free_port()
    api = helpers.spawn(["serve", "--host", "127.0.0.1", "--port", str(port)], env, root / "api.log")
    service = Service(port, [worker, api], root / "api.log")
    try:
        service.wait_ready(api)
        yield service
    finally:
        service.close()


def test_retrain_swap_rollback_on_redis(
    redis_service: Service, archive: Path, holdout: Dict[str, List[Path]]
) -> None:
    service = redis_service
    version = retrain_and_swap(service, archive, holdout, "redis")
    # Rollback to v1, then forward again.
    response = service.client.post("/models/{}/versions/1/activate".format(NAME))
    assert response.status_code == 200, response.text
    assert label(service, holdout["daisy"][0])["model"]["version"] == 1
    models = {m["name"]: m for m in service.client.get("/models").json()["models"]}
    assert models[NAME]["current_version"] == 1
    response = service.client.post("/models/{}/versions/{}/activate".format(NAME, version))
    assert response.status_code == 200, response.text
    assert label(service, holdout["daisy"][0])["model"]["version"] == version


def test_cancel_a_running_job_on_redis(redis_service: Service, redis_url: str, archive: Path) -> None:
    from poets.engine.store.redis_jobs import RedisJobStore

    service = redis_service
    before = service.client.get("/models/{}/versions".format(NAME)).json()
    job_id = retrain(service, archive, 100000)
    job, _ = follow(service, job_id, until_phase="training")
    assert job["state"] == "running"
    response = service.client.delete("/jobs/{}".format(job_id))
    assert response.status_code == 202, response.text
    job, _ = follow(service, job_id, timeout=60)
    assert job["state"] == "cancelled" and job["version"] is None
    assert service.client.get("/models/{}/versions".format(NAME)).json() == before
    # With a Redis broker the records live in Redis, where every machine sees them.
    record = RedisJobStore(redis_url).get(job_id)
    assert record.state == "cancelled" and record.cancel_requested


def test_retrain_and_swap_with_the_embedded_broker_via_poets_up(
    tmp_path: Path,
    backbone_dir: Path,
    trained: Any,
    bottlenecks: Path,
    archive: Path,
    holdout: Dict[str, List[Path]],
) -> None:
    """``poets up``: API and worker, SQLite broker under POETS_HOME, no Redis at all."""
    home = make_home(tmp_path, trained, bottlenecks)
    env = helpers.service_env(home, backbone_dir, POETS_MODEL_POLL_S="1")
    port = helpers.free_port()
    up = helpers.spawn(["up", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path / "up.log")
    service = Service(port, [up], tmp_path / "up.log")
    try:
        service.wait_ready(up)
        retrain_and_swap(service, archive, holdout, "embedded")
    finally:
        service.close()
    assert (home / "broker" / "broker.sqlite3").is_file()
