"""Orphan recovery when PIDs repeat: each worker runs in a fresh PID namespace, as in a
restarted container, so the second worker has the same PIDs as the one that was killed.
Liveness comes from the job's heartbeat and a random instance id, not from host:pid."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

from poets.engine.store.jobs import JobStore
from tests.worker import helpers
from tests.worker.test_worker_process import _send

pytestmark = pytest.mark.integration


def _in_new_pid_namespace(env: dict, log: Path) -> "subprocess.Popen[bytes]":
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed")
    start = len(log.read_text(errors="replace")) if log.exists() else 0
    with open(str(log), "ab") as out:
        process = subprocess.Popen(
            [
                "unshare",
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child",
                sys.executable,
                "-m",
                "poets",
                "worker",
            ],
            cwd=str(helpers.REPO),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    helpers.wait_for_log(log, helpers.READY, process, timeout=300, start=start)  # a hang guard
    return process


def _children(pid: int) -> List[int]:
    found: List[int] = []
    for path in Path("/proc/{}/task".format(pid)).glob("*/children"):
        found += [int(p) for p in path.read_text().split()]
    return found


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, flowers_dir: Path) -> Path:
    return helpers.copy_dataset(
        flowers_dir, tmp_path_factory.mktemp("data") / "flowers", ("daisy", "roses", "tulips"), 12
    )


def test_job_of_a_worker_killed_in_its_namespace_finishes_after_a_restart(
    tmp_path: Path, backbone_dir: Path, dataset: Path
) -> None:
    env = helpers.service_env(tmp_path / "home", backbone_dir)  # default liveness settings
    log = tmp_path / "worker.log"
    jobs = JobStore(tmp_path / "home" / "jobs.sqlite3")
    from poets.engine.settings import Settings

    settings = Settings.from_env(env)
    first = _in_new_pid_namespace(env, log)
    try:
        job_id = _send(settings, "namespaced", dataset, {"how_many_training_steps": 3000})
        helpers.wait_job(jobs, job_id, phase="training", timeout=600)  # a hang guard
        killed_by = jobs.get(job_id).worker or ""
        # SIGKILL the namespace's init (the worker's main process): the kernel kills
        # every process in the namespace with it, as when a container dies.
        (init,) = _children(first.pid)
        subprocess.run(["kill", "-KILL", str(init)], check=True)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(30)
    assert jobs.get(job_id).state == "running"

    second = _in_new_pid_namespace(env, log)
    restarted = time.time()
    try:
        # A guard against a hang, not a speed bound: restart, recovery (the heartbeat must age
        # past POETS_WORKER_LOST_AFTER_S) and 3000 training steps on a shared, loaded machine.
        job = helpers.wait_job(jobs, job_id, timeout=900)
        print(
            "\nkilled worker {}, recovered by {} {:.1f} s after the restart".format(
                killed_by, job.worker, time.time() - restarted
            )
        )
        assert job.state == "succeeded", job.error
        assert job.attempts == 2
        assert job.worker != killed_by
        assert "requeued job {}".format(job_id) in log.read_text(errors="replace")
    finally:
        # unshare does not pass SIGTERM on: stop the namespace's init, the worker itself.
        for init in _children(second.pid):
            os.kill(init, signal.SIGTERM)
        try:
            second.wait(60)
        except subprocess.TimeoutExpired:
            second.kill()
            second.wait(30)
