"""Real processes for worker and integration tests: Redis, Celery workers, job polling."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from poets.engine.store.jobs import FINISHED, Job, JobRecords
from tests.net import free_port

REPO = Path(__file__).resolve().parents[2]
READY = "ready."  # what a Celery worker logs once it consumes


def _answers(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_server(folder: Path) -> Iterator[str]:
    """A Redis URL for one test module; yields it and cleans up.

    Tests run their own ``redis-server`` on a free port when the binary exists: a
    Celery queue is named ``poets`` in every run, so sharing 127.0.0.1:6379 with
    another test run (or a developer's ``poets up``) would let one run's worker take
    the other's jobs. Without the binary, the shared server's DB 15 is used.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        if not _answers(6379):
            pytest.fail(
                "no redis-server binary and nothing answers on 127.0.0.1:6379 (apt-get install redis-server)"
            )
        import redis

        url = "redis://127.0.0.1:6379/15"
        redis.Redis.from_url(url).flushdb()
        yield url
        return
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(folder),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            str(folder / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 10
        while not _answers(port):
            if process.poll() is not None or time.time() > deadline:
                pytest.fail(
                    "redis-server did not start: {}".format(
                        (folder / "redis.log").read_text() if (folder / "redis.log").exists() else ""
                    )
                )
            time.sleep(0.05)
        yield "redis://127.0.0.1:{}/0".format(port)
    finally:
        stop(process)


def service_env(
    home: Path, backbone_dir: Path, broker_url: Optional[str] = None, **extra: str
) -> Dict[str, str]:
    """Environment for a Poets process with all its state under ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POETS_")}
    for name in ("POETS_TEST_CACHE", "POETS_TEST_DATASETS"):
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(
        POETS_HOME=str(home),
        POETS_BACKBONE_DIR=str(backbone_dir),
        POETS_LOG_LEVEL="INFO",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
    )
    # As in this process (tests/conftest.py): every retrain goes live unless a test asks for the gate.
    env["POETS_PROMOTE"] = os.environ.get("POETS_PROMOTE", "always")
    if broker_url:
        env["POETS_BROKER_URL"] = broker_url
    env.update(extra)
    return env


def spawn(args: List[str], env: Dict[str, str], log: Path) -> "subprocess.Popen[bytes]":
    """``python -m poets ARGS`` from the repository, output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(str(log), "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "poets", *args],
            cwd=str(REPO),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_for_log(
    log: Path, text: str, process: "subprocess.Popen[bytes]", timeout: float = 90.0, start: int = 0
) -> None:
    deadline = time.time() + timeout
    while True:
        content = log.read_text(errors="replace") if log.exists() else ""
        if text in content[start:]:
            return
        if process.poll() is not None:
            pytest.fail(
                "process exited ({}) before logging {!r}:\n{}".format(
                    process.returncode, text, content[-4000:]
                )
            )
        if time.time() > deadline:
            pytest.fail("no {!r} in {} after {:.0f} s:\n{}".format(text, log, timeout, content[-4000:]))
        time.sleep(0.1)


def start_worker(env: Dict[str, str], log: Path, timeout: float = 90.0) -> "subprocess.Popen[bytes]":
    """A real ``poets worker`` (Celery, prefork pool with one child), returned once it consumes."""
    start = len(log.read_text(errors="replace")) if log.exists() else 0
    process = spawn(["worker"], env, log)
    wait_for_log(log, READY, process, timeout, start)
    return process


def stop(process: "subprocess.Popen[bytes]", sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
    """Signal and reap; kill when it does not stop in time. Returns the exit code."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return int(process.returncode)


def wait_job(
    jobs: JobRecords,
    job_id: str,
    timeout: float = 180.0,
    until: Tuple[str, ...] = FINISHED,
    phase: Optional[str] = None,
    phases: Optional[List[str]] = None,
) -> Job:
    """Poll a job record until its state is in ``until`` (or its phase is ``phase``).

    ``phases`` collects every phase seen, in order.
    """
    deadline = time.time() + timeout
    while True:
        job = jobs.get(job_id)
        if phases is not None and job.phase and (not phases or phases[-1] != job.phase):
            phases.append(job.phase)
        if job.state in until or (phase is not None and job.phase == phase):
            return job
        if job.state in FINISHED:
            pytest.fail(
                "job {} ended {} (error: {}) while waiting for {} {}".format(
                    job_id, job.state, job.error, until, phase or ""
                )
            )
        if time.time() > deadline:
            pytest.fail("job {} still {}/{} after {:.0f} s".format(job_id, job.state, job.phase, timeout))
        time.sleep(0.05)


def copy_dataset(source: Path, target: Path, labels: Tuple[str, ...], per_label: int, skip: int = 0) -> Path:
    """Copy ``per_label`` photos of each label (after the first ``skip``) into a poets layout."""
    for label in labels:
        (target / label).mkdir(parents=True, exist_ok=True)
        for photo in sorted((source / label).glob("*.jpg"))[skip : skip + per_label]:
            shutil.copy(str(photo), str(target / label / photo.name))
    return target
