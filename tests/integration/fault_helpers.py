"""Helpers for the fault tests: a Redis that can be stopped and restarted, a whole
service (API + worker) whose processes can be killed, and checks on the model store
and the bottleneck cache. Built on :mod:`tests.worker.helpers`.
"""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import httpx
import pytest

from poets.engine.settings import Settings
from poets.engine.store.jobs import FINISHED, Job
from poets.engine.store.models import ModelStore
from poets.engine.workspace import Workspace
from tests.waiting import wait_until
from tests.worker import helpers

# MobileNet v1's prelogits: 1024 float32 per cache entry.
FEATURE_BYTES = 1024 * 4


def kill_when_marked(script: str, args: List[str], marker: Path, what: str) -> str:
    """Run a Python ``script`` (it writes ``marker`` at the moment of interest and then
    hangs), SIGKILL it there, and return what it wrote in the marker."""
    process = subprocess.Popen([sys.executable, "-c", script, *args], cwd=str(helpers.REPO))
    try:
        wait_until(lambda: marker.exists() or process.poll() is not None, 60, what)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    return marker.read_text()


class RedisServer:
    """A ``redis-server`` of our own on a fixed free port: stop it and start it again.

    The machine's shared Redis is never touched. AOF on, as the README asks of a deployment
    whose job records live in Redis: they survive a restart.
    """

    def __init__(self, folder: Path) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.fail(
                "no redis-server binary: the fault tests need a Redis they may stop "
                "(apt-get install redis-server)"
            )
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = helpers.free_port()
        self.url = "redis://127.0.0.1:{}/0".format(self.port)
        self.process: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> "RedisServer":
        assert self.binary is not None
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--daemonize",
                "no",
                "--logfile",
                str(self.folder / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        process = self.process
        wait_until(
            lambda: helpers._answers(self.port) or process.poll() is not None,
            15,
            "redis-server answering on port {}".format(self.port),
        )
        if process.poll() is not None:
            pytest.fail("redis-server exited: " + (self.folder / "redis.log").read_text())
        return self

    def stop(self) -> None:
        if self.process is not None:
            helpers.stop(self.process, signal.SIGTERM, timeout=20)
            self.process = None
        wait_until(lambda: not helpers._answers(self.port), 10, "redis-server gone")


class Cluster:
    """``poets serve`` and ``poets worker`` on one POETS_HOME, each killable and restartable."""

    def __init__(self, root: Path, env: Dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.home = Path(env["POETS_HOME"])
        # The records where the service keeps them: SQLite under POETS_HOME, or Redis.
        self.jobs = Workspace(Settings.from_env(env)).jobs
        self.store = ModelStore(self.home / "models")
        self.api: Optional[subprocess.Popen[bytes]] = None
        self.worker: Optional[subprocess.Popen[bytes]] = None
        self.api_log = root / "api.log"
        self.worker_log = root / "worker.log"
        self.port = helpers.free_port()
        self.url = "http://127.0.0.1:{}".format(self.port)
        self.client = httpx.Client(base_url=self.url, timeout=60.0)

    # -- processes ----------------------------------------------------------------------------
    def start_api(self, timeout: float = 180.0) -> None:
        """Start ``poets serve`` and return once /readyz says ready."""
        start = len(self.api_log.read_text(errors="replace")) if self.api_log.exists() else 0
        self.api = api = helpers.spawn(
            ["serve", "--host", "127.0.0.1", "--port", str(self.port)], self.env, self.api_log
        )

        def ready() -> bool:
            if api.poll() is not None:
                pytest.fail(
                    "the API exited ({}):\n{}".format(
                        api.returncode, self.api_log.read_text(errors="replace")[start:][-4000:]
                    )
                )
            try:
                return self.client.get("/readyz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout, "API ready", interval=0.1)

    def start_worker(self) -> None:
        self.worker = helpers.start_worker(self.env, self.worker_log, timeout=120)

    def kill_worker(self) -> None:
        """SIGKILL, as the OOM killer or a power cut would."""
        assert self.worker is not None
        self.worker.kill()
        self.worker.wait(30)
        self.worker = None

    def kill_worker_when(self, job_id: str, check: Callable[[Job], bool], what: str) -> Job:
        """Wait until the job's record passes ``check``, SIGKILL the worker, return the record."""
        self.wait_job(job_id, check, what)
        self.kill_worker()
        return self.jobs.get(job_id)

    def kill_api(self) -> None:
        assert self.api is not None
        self.api.kill()
        self.api.wait(30)
        self.api = None

    def close(self) -> None:
        self.client.close()
        for process in (self.api, self.worker):
            if process is not None:
                helpers.stop(process, signal.SIGTERM, timeout=60)

    def logs(self) -> str:
        return "\n".join(
            "== {}\n{}".format(log.name, log.read_text(errors="replace")[-3000:])
            for log in (self.api_log, self.worker_log)
            if log.exists()
        )

    # -- requests -----------------------------------------------------------------------------
    def retrain(self, name: str, image_dir: str, steps: int) -> str:
        response = self.client.post(
            "/retrain",
            files={"name": (None, name)},
            data={"image_dir": image_dir, "how_many_training_steps": str(steps)},
        )
        assert response.status_code == 202, response.text
        return str(response.json()["job_id"])

    def label(self, photo: Path, name: str) -> Dict[str, Any]:
        response = self.client.post(
            "/label",
            content=photo.read_bytes(),
            params={"model": name},
            headers={"Content-Type": "image/jpeg"},
        )
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def wait_serving(
        self, photo: Path, name: str, version: Optional[int] = None, timeout: float = 60.0
    ) -> int:
        """Wait until /label answers from ``version`` (default: the store's current one)."""
        expected = self.store.current(name) if version is None else version
        wait_until(
            lambda: self.label(photo, name)["model"]["version"] == expected,
            timeout,
            "/label answering from {} version {}".format(name, expected),
            interval=0.1,
        )
        return int(expected)  # type: ignore[arg-type]

    def wait_job(self, job_id: str, check: Callable[[Job], bool], what: str, timeout: float = 240.0) -> Job:
        """Poll the job record (not HTTP: faster, and the API may be down) until ``check``."""

        def poll() -> Optional[Job]:
            job = self.jobs.get(job_id)
            if check(job):
                return job
            if job.state in FINISHED:
                pytest.fail(
                    "job {} ended {} ({}) while waiting for {}\n{}".format(
                        job_id, job.state, job.error, what, self.logs()
                    )
                )
            return None

        return wait_until(poll, timeout, "job {}: {}".format(job_id, what), interval=0.02)  # type: ignore[no-any-return]

    def wait_finished(self, job_id: str, timeout: float = 300.0) -> Job:
        def finished() -> Optional[Job]:
            job = self.jobs.get(job_id)
            return job if job.state in FINISHED else None

        deadline = time.time() + timeout
        while time.time() < deadline:
            job = finished()
            if job is not None:
                return job
            time.sleep(0.1)
        pytest.fail(
            "job {} not finished after {:.0f} s: {}\n{}".format(
                job_id, timeout, self.jobs.get(job_id), self.logs()
            )
        )


def stamp_dataset(source: Path, target: Path, labels: List[str], per_label: int, salt: str) -> Path:
    """Copy photos with a unique trailer after the JPEG's end, so their bottlenecks are not
    cached yet (the cache is keyed by content) while they decode exactly as before."""
    for label in labels:
        (target / label).mkdir(parents=True, exist_ok=True)
        for photo in sorted((source / label).glob("*.jpg"))[:per_label]:
            (target / label / photo.name).write_bytes(
                photo.read_bytes() + "poets-{}-{}".format(salt, photo.name).encode()
            )
    return target


def cache_entries(cache_dir: Path) -> List[Path]:
    return sorted(cache_dir.rglob("*.f32"))


def damaged_cache_entries(cache_dir: Path) -> List[str]:
    """Entries whose size is not one feature vector's (a half-written file made visible)."""
    return [
        "{} ({} bytes)".format(path, path.stat().st_size)
        for path in cache_entries(cache_dir)
        if path.stat().st_size != FEATURE_BYTES
    ]


def versions_of_job(store: ModelStore, name: str, job_id: str) -> List[int]:
    return [v for v in store.versions(name) if store.metadata(name, v).get("job_id") == job_id]


def visible_entries(store: ModelStore, name: str) -> List[str]:
    """Every name in the model's folder that is not an integer version, CURRENT or PINNED."""
    folder = store.root / name
    return sorted(
        p.name
        for p in folder.iterdir()
        if not (p.is_dir() and p.name.isdigit()) and p.name not in ("CURRENT", "PINNED")
    )


def unloadable_versions(store: ModelStore, name: str) -> List[str]:
    """Every published version is a whole model: it loads and labels."""
    from poets.engine.predictor import Predictor

    problems = []
    for version in store.versions(name):
        try:
            Predictor(store.path(name, version), name, version).warm()
        except Exception as exc:
            problems.append("{}: {}: {}".format(version, type(exc).__name__, exc))
    return problems
