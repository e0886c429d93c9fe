"""The bucket client as a worker uses it, against a real S3 endpoint, on both stacks.

scripts/test-oldest runs this module on Python 3.6 with the TX2's pins (boto3 1.23.10,
botocore 1.26.10, s3transfer 0.5.2: constraints/tx2.txt), whose ``put_object`` has no
``IfNoneMatch``: the conditional write is the client's header hook. moto does not install
there, so its server runs under the main venv's Python (tests/s3.py); scripts/test runs the
same module on today's boto3. tests/engine/store/test_bucket.py has the client's finer points.
"""

import json
import os
import threading
from pathlib import Path
from typing import List

import pytest

from poets.engine.errors import StoreUnavailable
from poets.engine.store.bucket import Bucket, sha256_file
from tests.net import free_port
from tests.s3 import MotoServer

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def test_a_version_claimed_written_read_and_deleted(s3_server: MotoServer, tmp_path: Path) -> None:
    bucket = Bucket(s3_server.bucket("deploy/site"), s3_server.url)
    bucket.check()

    # The version number: a conditional write of its CLAIM; the second writer loses.
    assert bucket.put("models/m/1/CLAIM", b"worker-a", if_absent=True)
    assert not bucket.put("models/m/1/CLAIM", b"worker-b", if_absent=True)
    assert bucket.get("models/m/1/CLAIM") == b"worker-a"

    # The files: a small one in one request, a large one in parts (above boto3's 8 MiB
    # multipart threshold, as a SavedModel's variables often are), then the manifest.
    big = tmp_path / "variables.data-00000-of-00001"
    big.write_bytes(os.urandom(9 * MIB))
    assert bucket.put("models/m/1/labels.txt", b"daisy\nrose\n")
    bucket.upload(big, "models/m/1/variables/" + big.name)
    manifest = {"variables/" + big.name: {"size": 9 * MIB, "sha256": sha256_file(big)}}
    assert bucket.put("models/m/1/MANIFEST.json", json.dumps(manifest).encode())
    assert bucket.put("models/m/CURRENT", b"1\n")

    listing = {item.key: item for item in bucket.list("models/m/")}
    assert sorted(listing) == [
        "models/m/1/CLAIM",
        "models/m/1/MANIFEST.json",
        "models/m/1/labels.txt",
        "models/m/1/variables/" + big.name,
        "models/m/CURRENT",
    ]
    assert listing["models/m/1/variables/" + big.name].size == 9 * MIB
    assert bucket.folders("models") == ["m"]
    assert bucket.folders("models/m") == ["1"]
    info = bucket.head("models/m/1/labels.txt")
    assert info is not None and info.size == len(b"daisy\nrose\n") and info.etag
    back = tmp_path / "back"
    assert bucket.download("models/m/1/variables/" + big.name, back)
    assert sha256_file(back) == manifest["variables/" + big.name]["sha256"]
    assert json.loads(bucket.get("models/m/1/MANIFEST.json") or b"") == manifest

    # Polling CURRENT: unchanged is (None, same etag), a move is new bytes.
    data, etag = bucket.get_if_changed("models/m/CURRENT", None)
    assert data == b"1\n" and etag
    assert bucket.get_if_changed("models/m/CURRENT", etag) == (None, etag)
    assert bucket.put("models/m/CURRENT", b"2\n")
    assert bucket.get_if_changed("models/m/CURRENT", etag)[0] == b"2\n"

    # Deleting: missing keys are no error; a prefix goes whole; a deleted claim is free again.
    bucket.delete(["models/m/CURRENT", "models/m/no-such-key"])
    assert bucket.get("models/m/CURRENT") is None
    assert bucket.delete_prefix("models/m/1/") == 4
    assert list(bucket.list()) == []
    assert bucket.put("models/m/1/CLAIM", b"worker-c", if_absent=True)


def test_concurrent_claims_have_one_winner(s3_server: MotoServer) -> None:
    bucket = Bucket(s3_server.bucket(), s3_server.url)
    wins: List[bool] = []
    barrier = threading.Barrier(6)

    def claim() -> None:
        barrier.wait()
        wins.append(bucket.put("models/m/7/CLAIM", b"me", if_absent=True))

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins) == [False] * 5 + [True]
    assert not bucket.put("models/m/7/CLAIM", b"again", if_absent=True)
    assert bucket.put("models/m/7/CLAIM", b"overwrite")  # a plain write still replaces


def test_no_server_is_store_unavailable(s3_server: MotoServer) -> None:
    # s3_server only for its credentials: without any, boto3 would ask for an instance role.
    nobody = Bucket("s3://poets/site", "http://127.0.0.1:{}".format(free_port()), timeout_s=0.5)
    with pytest.raises(StoreUnavailable, match="cannot be reached"):
        nobody.check()
    with pytest.raises(StoreUnavailable):
        nobody.put("models/m/1/CLAIM", b"x", if_absent=True)
    with pytest.raises(StoreUnavailable):
        list(nobody.list("models/"))
