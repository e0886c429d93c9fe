"""Several machines on one host: processes that share nothing but Redis and an S3 endpoint.

Each :class:`Machine` has its own folder (its ``POETS_HOME``) and runs its processes in a
mount namespace of their own (``unshare --mount``) in which a private, empty tmpfs covers
every other machine's folder: a path that one machine writes and another reads by accident
(a shared filesystem the design does not have) is an empty folder there, and the test fails.
Logs are written outside every machine's folder, for the test to read.
"""

import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import httpx
import pytest

from poets.engine.store.bucket_models import MANIFEST_FILE
from tests.net import free_port
from tests.waiting import wait_until
from tests.worker import helpers


def version_copier(source: Path) -> Callable[[Path], None]:
    """A ``write`` for ``store.publish`` that copies the version folder ``source`` (a cached
    copy: its own manifest left out), as another machine publishing the same files would."""

    def write(folder: Path) -> None:
        for path in source.rglob("*"):
            if path.is_file() and path.name != MANIFEST_FILE:
                target = folder / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(str(path), str(target))

    return write


class Machine:
    """One machine: its home, its environment, the processes it runs."""

    def __init__(self, root: Path, name: str, env: Dict[str, str]) -> None:
        self.root = root
        self.name = name
        self.folder = root / name
        self.home = self.folder / "home"
        self.home.mkdir(parents=True)
        self.log = root / "logs" / "{}.log".format(name)
        self.log.parent.mkdir(exist_ok=True)
        self.env = dict(env, POETS_HOME=str(self.home))
        self.others: List[Path] = []  # set by Machines: the folders hidden from this one
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.port = free_port()
        self.url = "http://127.0.0.1:{}".format(self.port)
        self.client = httpx.Client(base_url=self.url, timeout=60.0)

    def spawn(self, args: List[str]) -> "subprocess.Popen[bytes]":
        """``python -m poets ARGS`` in a mount namespace where the other machines' folders are
        empty tmpfs mounts."""
        hide = " && ".join(
            "mount -t tmpfs -o size=1m,mode=0500 hidden-from-{} {}".format(
                self.name, shlex.quote(str(folder))
            )
            for folder in self.others
        )
        command = "{} && exec {} -m poets {}".format(
            hide or "true", shlex.quote(sys.executable), " ".join(shlex.quote(arg) for arg in args)
        )
        with open(str(self.log), "ab") as out:
            return subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
                cwd=str(helpers.REPO),
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def serve(self, timeout: float = 180.0) -> None:
        """Start ``poets serve``; return once it answers /healthz."""
        self.process = process = self.spawn(["serve", "--host", "127.0.0.1", "--port", str(self.port)])

        def up() -> bool:
            if process.poll() is not None:
                pytest.fail("{} exited ({}):\n{}".format(self.name, process.returncode, self.tail()))
            try:
                return self.client.get("/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout, "{} answering".format(self.name), interval=0.1)

    def work(self, timeout: float = 120.0) -> None:
        """Start ``poets worker``; return once it consumes."""
        start = len(self.log.read_text(errors="replace")) if self.log.exists() else 0
        self.process = self.spawn(["worker"])
        helpers.wait_for_log(self.log, helpers.READY, self.process, timeout, start)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(30)
            self.process = None

    def stop(self) -> None:
        self.client.close()
        if self.process is not None:
            helpers.stop(self.process, signal.SIGTERM, timeout=60)
            self.process = None

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    # -- requests -----------------------------------------------------------------------------
    def post_label(self, photo: Path, name: str) -> httpx.Response:
        return self.client.post(
            "/label",
            content=photo.read_bytes(),
            params={"model": name},
            headers={"Content-Type": "image/jpeg"},
        )

    def label(self, photo: Path, name: str) -> Dict[str, Any]:
        response = self.post_label(photo, name)
        assert response.status_code == 200, "{}: {}".format(self.name, response.text)
        return response.json()  # type: ignore[no-any-return]

    def serving(self, photo: Path, name: str) -> Optional[int]:
        """The version /label answers from now (None: it answers no model yet)."""
        response = self.post_label(photo, name)
        if response.status_code != 200:
            return None
        return int(response.json()["model"]["version"])

    def wait_serving(self, photo: Path, name: str, version: int, timeout: float = 60.0) -> None:
        wait_until(
            lambda: self.serving(photo, name) == version,
            timeout,
            "{} answering from {} version {}".format(self.name, name, version),
            interval=0.05,
        )

    def follow(self, job_id: str, timeout: float = 300.0) -> Dict[str, Any]:
        """Poll GET /jobs/ID on this machine until the job has ended."""

        def ended() -> Optional[Dict[str, Any]]:
            response = self.client.get("/jobs/{}".format(job_id))
            assert response.status_code == 200, response.text
            job = response.json()
            return job if job["state"] in ("succeeded", "failed", "cancelled") else None

        return wait_until(ended, timeout, "job {} ending".format(job_id), interval=0.2)  # type: ignore[no-any-return]


class Machines:
    """The machines of one deployment; each hides the others' folders from itself."""

    def __init__(self, root: Path, env: Dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.all: Dict[str, Machine] = {}

    def add(self, name: str, **extra: str) -> Machine:
        machine = Machine(self.root, name, dict(self.env, **extra))
        self.all[name] = machine
        for other in self.all.values():
            other.others = [m.folder for m in self.all.values() if m is not other]
        return machine

    def stop(self) -> None:
        for machine in self.all.values():
            machine.stop()

    def logs(self) -> str:
        return "\n".join("== {}\n{}".format(m.name, m.tail(3000)) for m in self.all.values())
