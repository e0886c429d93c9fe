"""The bucket client against a real S3 endpoint (moto in server mode). Conditional claims and
ETag polling: tests/worker/test_bucket_client.py, which also runs on the TX2's Python 3.6."""

from pathlib import Path

import pytest

from poets.engine.errors import StoreUnavailable
from poets.engine.store.bucket import Bucket, split_url
from tests.s3 import MotoServer

pytestmark = pytest.mark.integration


def test_split_url() -> None:
    assert split_url("s3://b") == ("b", "")
    assert split_url("s3://b/") == ("b", "")
    assert split_url("s3://b/p/q/") == ("b", "p/q/")


def test_put_get_list_delete_under_the_prefix(s3_server: MotoServer, tmp_path: Path) -> None:
    bucket = Bucket(s3_server.bucket("deploy/one"), s3_server.url)
    bucket.check()
    assert bucket.get("missing") is None
    assert bucket.head("missing") is None
    assert bucket.put("models/a/1/x.txt", b"hello")
    assert bucket.get("models/a/1/x.txt") == b"hello"
    info = bucket.head("models/a/1/x.txt")
    assert info is not None and info.size == 5
    source = tmp_path / "big.bin"
    source.write_bytes(b"z" * 3000)
    bucket.upload(source, "models/a/2/big.bin")
    assert bucket.download("models/a/2/big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == b"z" * 3000
    assert not bucket.download("models/a/3/none", tmp_path / "none")
    assert [item.key for item in bucket.list("models/")] == ["models/a/1/x.txt", "models/a/2/big.bin"]
    assert bucket.folders("models/a") == ["1", "2"]
    assert bucket.folders("models") == ["a"]
    # Keys are relative to the prefix: another prefix in the same bucket sees nothing.
    other = Bucket(bucket.url.rsplit("/", 1)[0] + "/two", s3_server.url)
    assert list(other.list()) == []
    assert bucket.delete_prefix("models/a/") == 2
    assert list(bucket.list()) == []


def test_unreachable_bucket_is_store_unavailable(s3_server: MotoServer) -> None:
    gone = Bucket("s3://no-such-bucket-here/p", s3_server.url, timeout_s=1)
    with pytest.raises(StoreUnavailable, match="no-such-bucket-here"):
        gone.check()
    with pytest.raises(StoreUnavailable, match="cannot be reached"):
        gone.put("x", b"1")
    nobody = Bucket("s3://b", "http://127.0.0.1:9", timeout_s=0.5)
    with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:9"):
        nobody.get("x")
    with pytest.raises(StoreUnavailable):
        list(nobody.list())


def test_a_frozen_server_times_out(s3_server: MotoServer) -> None:
    bucket = Bucket(s3_server.bucket(), s3_server.url, timeout_s=0.5)
    bucket.put("x", b"1")
    s3_server.pause()
    try:
        with pytest.raises(StoreUnavailable):
            bucket.get("x")
    finally:
        s3_server.resume()
    assert bucket.get("x") == b"1"
