"""poets.engine.store.bucket_models: versions in a bucket (moto in server mode), each machine's
verified cache, conditional version numbers, killed uploads, corrupt objects, outages."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, List

import pytest

from poets.engine.errors import NotFound, StoreUnavailable
from poets.engine.store.bucket import Bucket
from poets.engine.store.bucket_models import CLAIM_FILE, MANIFEST_FILE, BucketModelStore, CorruptVersion
from tests.s3 import MotoServer
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
MiB = 1024 * 1024


def writer(marker: str = "", job_id: str = "", size: int = 0) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        (folder / "saved_model.pb").write_bytes(b"model " + marker.encode() + b"x" * size)
        (folder / "variables").mkdir()
        (folder / "variables" / "variables.index").write_bytes(b"index " + marker.encode())
        (folder / "poets.json").write_text(json.dumps({"job_id": job_id or None, "labels": ["a", "b"]}))

    return write


class Machines:
    """Stores on one bucket, each with its own cache folder: one per machine."""

    def __init__(self, server: MotoServer, root: Path, timeout_s: float = 5.0) -> None:
        self.url = server.bucket("deploy")
        self.server = server
        self.root = root
        self.timeout_s = timeout_s
        self.bucket = Bucket(self.url, server.url, timeout_s)

    def store(self, machine: str, cache_bytes: int = 64 * MiB) -> BucketModelStore:
        bucket = Bucket(self.url, self.server.url, self.timeout_s)
        return BucketModelStore(bucket, self.root / machine, cache_bytes, clean_every_s=0)


@pytest.fixture
def machines(s3_server: MotoServer, tmp_path: Path) -> Machines:
    return Machines(s3_server, tmp_path)


def test_a_version_published_on_one_machine_is_served_on_another(machines: Machines) -> None:
    worker, api = machines.store("worker"), machines.store("api")
    assert api.names() == [] and api.current("flowers") is None and api.state() == ()
    assert worker.publish("flowers", writer("one", job_id="job-1"), job_id="job-1") == 1
    assert worker.publish("flowers", writer("two")) == 2
    assert api.names() == ["flowers"] and api.versions("flowers") == [1, 2]
    assert api.current("flowers") == 2 and api.state() == (("flowers", 2),)
    assert api.metadata("flowers", 1)["job_id"] == "job-1"
    assert api.find_job("flowers", "job-1") == 1 and api.find_job("flowers", "job-9") is None
    folder = api.path("flowers", 1)
    assert folder == machines.root / "api" / "flowers" / "1"
    assert (folder / "saved_model.pb").read_bytes() == b"model one"
    assert (folder / "variables" / "variables.index").read_bytes() == b"index one"
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert sorted(manifest["files"]) == ["poets.json", "saved_model.pb", "variables/variables.index"]
    # Publishing again for the same job (a redelivery) returns its version.
    assert worker.publish("flowers", writer("again"), job_id="job-1") == 1
    with pytest.raises(NotFound):
        api.path("flowers", 7)


def test_pointers_rollback_and_pins(machines: Machines) -> None:
    worker, api = machines.store("worker"), machines.store("api")
    for _ in range(2):
        worker.publish("m", writer())
    api.activate("m", 1)  # a rollback on one API node is what the others read
    assert worker.current("m") == 1
    assert worker.publish("m", writer(), activate=False) == 3 and api.current("m") == 1
    api.pin("m", 2)
    assert worker.publish("m", writer()) == 4
    assert (api.current("m"), api.pinned("m")) == (2, 2)
    assert api.unpin("m") == 2 and worker.pinned("m") is None
    assert worker.publish("m", writer()) == 5 and api.current("m") == 5
    with pytest.raises(NotFound, match="no version 9"):
        api.activate("m", 9)


def test_two_workers_publishing_at_once_get_distinct_versions(machines: Machines) -> None:
    workers = [machines.store("worker-{}".format(n)) for n in range(6)]
    got: List[int] = []
    barrier = threading.Barrier(len(workers))

    def publish(store: BucketModelStore, n: int) -> None:
        barrier.wait()
        got.append(store.publish("flowers", writer(str(n))))

    threads = [threading.Thread(target=publish, args=(store, n)) for n, store in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    api = machines.store("api")
    assert api.versions("flowers") == [1, 2, 3, 4, 5, 6]
    markers = {(api.path("flowers", v) / "saved_model.pb").read_bytes() for v in range(1, 7)}
    assert len(markers) == 6  # each version holds its own publisher's files


def test_a_corrupt_object_fails_the_manifest_check_and_is_not_cached(machines: Machines) -> None:
    worker, api = machines.store("worker"), machines.store("api")
    worker.publish("flowers", writer("good"))
    machines.bucket.put("models/flowers/1/saved_model.pb", b"model bad")
    with pytest.raises(CorruptVersion, match=r"saved_model\.pb has 9 bytes.*manifest says 10 bytes"):
        api.path("flowers", 1)
    assert not (machines.root / "api" / "flowers" / "1").exists()
    assert list((machines.root / "api" / ".partial").iterdir()) == []
    before = api.fingerprint("flowers", 1)
    machines.bucket.put("models/flowers/1/saved_model.pb", b"model good")  # repaired
    assert api.fingerprint("flowers", 1) != before
    assert (api.path("flowers", 1) / "saved_model.pb").read_bytes() == b"model good"


def test_the_cache_is_bounded_least_recently_used_first(machines: Machines) -> None:
    worker = machines.store("worker")
    for n in range(3):
        worker.publish("m", writer(str(n), size=MiB))
    api = machines.store("api", cache_bytes=int(2.5 * MiB))
    api.path("m", 1)
    api.path("m", 2)
    api.path("m", 1)  # used again: 2 is now the least recently used
    os.utime(str(api.path("m", 2)), (1, 1))
    api.path("m", 3)
    assert api.local.versions("m") == [1, 3]
    # The current version stays, however long unused: a restart during an outage serves it.
    worker.activate("m", 1)
    assert api.state() == (("m", 1),)
    os.utime(str(api.path("m", 1)), (1, 1))
    api.path("m", 2)
    assert api.local.versions("m") == [1, 2]


def test_a_killed_upload_leaves_no_version_and_its_leftovers_are_cleaned(machines: Machines) -> None:
    """A publisher killed (SIGKILL) between its claim and its manifest: no one sees a version."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from poets.engine.store.bucket import Bucket\n"
        "from poets.engine.store.bucket_models import BucketModelStore\n"
        "def write(folder):\n"
        "    (folder / 'a.bin').write_bytes(b'a' * 1000)\n"
        "    (folder / 'b.bin').write_bytes(b'b' * 1000)\n"
        "store = BucketModelStore(Bucket(sys.argv[1], sys.argv[2]), Path(sys.argv[3]), 1 << 30)\n"
        "upload = store.bucket.upload\n"
        "def slow(path, key):\n"
        "    upload(path, key)\n"
        "    print('uploaded', key, flush=True)\n"
        "    time.sleep(600)\n"
        "store.bucket.upload = slow\n"
        "store.publish('flowers', write)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, machines.url, machines.server.url, str(machines.root / "killed")],
        stdout=subprocess.PIPE,
        cwd=str(REPO),
    )
    try:
        assert process.stdout is not None
        assert "uploaded" in process.stdout.readline().decode()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    keys = [item.key for item in machines.bucket.list("models/flowers/")]
    assert "models/flowers/1/" + CLAIM_FILE in keys and len(keys) == 2  # the claim and one file
    api = machines.store("api")
    assert api.versions("flowers") == [] and api.current("flowers") is None
    with pytest.raises(NotFound):
        api.path("flowers", 1)
    # The next publish takes the next number; the cleanup keeps the claim, so 1 is never reused.
    worker = machines.store("worker")
    assert worker.publish("flowers", writer()) == 2
    assert worker.clean_staging() == []  # a recent claim may be an upload under way
    assert worker.clean_staging(older_than_s=0) == ["flowers/1"]
    keys = [item.key for item in machines.bucket.list("models/flowers/1/")]
    assert keys == ["models/flowers/1/" + CLAIM_FILE]
    assert worker.publish("flowers", writer()) == 3


def test_while_the_bucket_is_down_reads_come_from_the_cache(
    machines: Machines, s3_server: MotoServer
) -> None:
    worker = machines.store("worker")
    worker.publish("flowers", writer("one"))
    worker.publish("flowers", writer("two"))
    fast = Machines.__new__(Machines)
    fast.__dict__.update(machines.__dict__, timeout_s=0.5)
    api = fast.store("api")
    assert api.state() == (("flowers", 2),)
    api.path("flowers", 2)
    assert api.degraded() is None
    s3_server.pause()
    try:
        assert api.state() == (("flowers", 2),)
        assert api.current("flowers") == 2 and api.versions("flowers") == [2]
        assert (api.path("flowers", 2) / "saved_model.pb").read_bytes() == b"model two"
        assert api.metadata("flowers", 2)["labels"] == ["a", "b"]
        degraded = api.degraded()
        assert degraded is not None and machines.url in degraded and "serving cached versions" in degraded
        with pytest.raises(StoreUnavailable):
            api.check()
        with pytest.raises(StoreUnavailable):
            api.activate("flowers", 1)
        with pytest.raises(StoreUnavailable):
            api.path("flowers", 1)  # not cached
        # A restart during the outage (a new process: nothing in memory) still knows.
        restarted = fast.store("api")
        assert restarted.state() == (("flowers", 2),)
    finally:
        s3_server.resume()
    wait_until(
        lambda: api.state() == (("flowers", 2),) and api.degraded() is None, 30, "the store recovering"
    )
    api.activate("flowers", 1)
    assert worker.current("flowers") == 1


def test_a_publish_waits_out_a_short_outage(machines: Machines, s3_server: MotoServer) -> None:
    worker = BucketModelStore(Bucket(machines.url, s3_server.url, 0.5), machines.root / "worker", 64 * MiB)
    write = writer("kept")

    def write_then_lose_the_bucket(folder: Path) -> None:
        write(folder)
        s3_server.pause()  # the outage starts as the upload would
        threading.Timer(3.0, s3_server.resume).start()

    try:
        version = worker.publish("flowers", write_then_lose_the_bucket)
    finally:
        s3_server.resume()  # idempotent: the timer may have done it
    api = machines.store("api")
    assert api.versions("flowers") == [version] and api.current("flowers") == version
    assert (api.path("flowers", version) / "saved_model.pb").read_bytes() == b"model kept"
