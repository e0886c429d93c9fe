"""``poets migrate``: a local store and its SQLite job records into a bucket (moto) and Redis,
as a user runs it (a real subprocess), twice."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, Iterator

import pytest

from poets.engine.settings import Settings
from poets.engine.store.bucket import Bucket
from poets.engine.store.bucket_models import BucketModelStore
from poets.engine.store.jobs import JobStore
from poets.engine.store.models import ModelStore
from poets.engine.workspace import Workspace
from tests.s3 import CREDENTIALS, MotoServer
from tests.worker import helpers

pytestmark = pytest.mark.integration


def writer(marker: str, job_id: str) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        (folder / "saved_model.pb").write_bytes(b"model " + marker.encode() * 1000)
        (folder / "variables").mkdir()
        (folder / "variables" / "variables.index").write_bytes(marker.encode())
        (folder / "poets.json").write_text(json.dumps({"job_id": job_id, "labels": ["a", "b"]}))

    return write


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from helpers.redis_server(tmp_path_factory.mktemp("redis"))


def migrate(env: Dict[str, str], *args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(
        [sys.executable, "-m", "poets", "migrate", *args],
        check=False,
        env=env,
        cwd=str(helpers.REPO),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_migrate_copies_checks_and_can_run_twice(
    s3_server: MotoServer, redis_url: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    local = ModelStore(home / "models")
    jobs = JobStore(home / "jobs.sqlite3")
    for n in range(1, 4):
        job = jobs.create("flowers", {"config": {"how_many_training_steps": n}}, trigger="cli")
        jobs.start(job.id, worker="w1")
        local.publish("flowers", writer(str(n), job.id), job_id=job.id)
        jobs.finish(job.id, "succeeded", version=n, result={"version": n})
    local.publish("other", writer("o", "x"))
    local.pin("flowers", 2)
    failed = jobs.create("flowers", {})
    jobs.finish(failed.id, "failed", error="out of memory")
    url = s3_server.bucket("poets")
    env = dict(
        {k: v for k, v in os.environ.items() if not k.startswith("POETS_")},
        POETS_HOME=str(home),
        POETS_STORE_URL=url,
        POETS_S3_ENDPOINT_URL=s3_server.url,
        POETS_BROKER_URL=redis_url,
        **CREDENTIALS,
    )
    first = migrate(env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Done: 4 version(s) copied, 4 checked; 4 job record(s) copied, 0 already there." in first.stdout
    # What a new API node sees: every version, the pin, each version's files, the records.
    store = BucketModelStore(Bucket(url, s3_server.url), tmp_path / "node-cache", 1 << 30)
    assert store.names() == ["flowers", "other"]
    assert store.versions("flowers") == [1, 2, 3]
    assert (store.current("flowers"), store.pinned("flowers")) == (2, 2)
    for n in (1, 2, 3):
        copied = (store.path("flowers", n) / "saved_model.pb").read_bytes()
        assert copied == (local.path("flowers", n) / "saved_model.pb").read_bytes()
        assert store.find_job("flowers", store.metadata("flowers", n)["job_id"]) == n
    settings = Settings.from_env(env)
    target = Workspace(settings).jobs
    for job in jobs.list(limit=10):
        assert target.get(job.id).to_dict() == job.to_dict()
    # Again: nothing copied twice, everything checked again.
    again = migrate(env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Done: 0 version(s) copied, 4 checked; 0 job record(s) copied, 4 already there." in again.stdout
    # A version the bucket holds with other files under the same number is reported, not overwritten.
    local.publish("other", writer("local", "y"))
    store.publish("other", writer("bucket", "z"))  # the bucket's own version 2 of "other"
    clash = migrate(env)
    assert clash.returncode == 1
    assert "other version 2: the bucket already has a different version 2" in clash.stdout
    assert (store.path("other", 2) / "variables" / "variables.index").read_bytes() == b"bucket"


def test_migrate_needs_a_bucket(tmp_path: Path) -> None:
    env = dict({k: v for k, v in os.environ.items() if not k.startswith("POETS_")}, POETS_HOME=str(tmp_path))
    refused = migrate(env)
    assert refused.returncode == 1
    assert "POETS_STORE_URL names no bucket" in refused.stderr
