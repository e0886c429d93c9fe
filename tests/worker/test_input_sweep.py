"""With a bucket for a store, the worker's periodic sweep (OrphanWatch) also removes the inputs
that ended jobs left on this machine (the object sweep itself: tests/engine/jobs/test_inputs.py)."""

import os
import time
from pathlib import Path

import pytest

from poets.engine.jobs.inputs import FETCH_PREFIX, input_key
from poets.engine.settings import Settings
from poets.engine.workspace import Workspace
from tests.s3 import MotoServer
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


def _aged(path: Path) -> Path:
    path.mkdir(parents=True)
    then = time.time() - 7200
    os.utime(str(path), (then, then))
    return path


def test_the_worker_sweeps_the_inputs_of_ended_jobs(s3_server: MotoServer, tmp_path: Path) -> None:
    from worker.celery_app import OrphanWatch, app

    url = s3_server.bucket("deploy")
    settings = Settings(
        home=tmp_path / "home", store_url=url, s3_endpoint_url=s3_server.url, worker_heartbeat_s=0.1
    )
    workspace = Workspace(settings)
    jobs = workspace.jobs
    ended, queued = jobs.create("pets", {}), jobs.create("pets", {})
    jobs.finish(ended.id, "failed", error="it ran again elsewhere")
    bucket = workspace.bucket
    assert bucket is not None
    bucket.put(input_key(queued.id), b"a queued job's inputs")
    copies = [_aged(settings.uploads_dir / job.id) for job in (ended, queued)]
    fetch = _aged(settings.uploads_dir / (FETCH_PREFIX + "crashed"))

    watch = OrphanWatch(settings, app)
    watch.start()
    try:
        wait_until(lambda: not copies[0].exists() and not fetch.exists(), 60, "the ended job's copy swept")
    finally:
        watch.stop()
    assert copies[1].is_dir() and bucket.head(input_key(queued.id)) is not None
