"""Misclassified copies in the bucket (moto in server mode): the same names, bounds and trims
as on disk, read back by any machine."""

from pathlib import Path
from typing import Iterator, List

import pytest

from poets.engine.errors import StoreUnavailable
from poets.engine.settings import Settings
from poets.engine.store.bucket import Bucket
from poets.engine.store.misclassified import (
    BucketMisclassifiedImages,
    MisclassifiedImages,
    copies_for,
    image_url,
)
from poets.engine.workspace import Workspace
from tests.engine.store.test_misclassified import _entries, _png
from tests.s3 import MotoServer

pytestmark = pytest.mark.integration


@pytest.fixture
def bucket(s3_server: MotoServer) -> Bucket:
    return Bucket(s3_server.bucket("deploy"), s3_server.url, timeout_s=1)


@pytest.fixture
def paused(s3_server: MotoServer) -> Iterator[MotoServer]:
    yield s3_server
    if s3_server.process is not None:
        s3_server.resume()


def _keys(bucket: Bucket) -> List[str]:
    return [info.key for info in bucket.list("misclassified/")]


def test_the_workspace_picks_the_bucket_when_the_store_is_one(s3_server: MotoServer, tmp_path: Path) -> None:
    url = s3_server.bucket()
    with_bucket = Workspace(Settings(home=tmp_path, store_url=url, s3_endpoint_url=s3_server.url))
    assert isinstance(with_bucket.misclassified, BucketMisclassifiedImages)
    assert type(copies_for(Settings(home=tmp_path), None)) is MisclassifiedImages


def test_copies_are_named_by_position_typed_by_their_bytes_and_read_back(
    bucket: Bucket, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = _png(data / "a" / "one.jpg")  # a PNG named .jpg: kept and served as what it is
    second = _png(data / "b" / "two.png", colour=9)
    writer = BucketMisclassifiedImages(bucket, 10**6, 10**7)

    kept = writer.keep("job1", data, _entries("a/one.jpg", "b/two.png", "a/gone.png"))

    assert [entry["image"] for entry in kept] == [image_url("job1", 0), image_url("job1", 1), None]
    assert _keys(bucket) == ["misclassified/job1/0.png", "misclassified/job1/1.png"]
    reader = BucketMisclassifiedImages(bucket, 10**6, 10**7)  # another machine: an API node
    assert reader.read("job1", 0) == (first, ".png") and reader.read("job1", 1) == (second, ".png")
    assert (
        reader.read("job1", 2) is None and reader.read("job1", 10) is None and reader.read("other", 0) is None
    )
    for bad in ("../x", "a/b", "x\n", ""):
        assert writer.keep(bad, data, _entries("a/one.jpg"))[0]["image"] is None
        assert reader.read(bad, 0) is None
    assert not (tmp_path / "jobs").exists()  # nothing on this machine's disk


def test_a_later_delivery_replaces_the_earlier_copies(bucket: Bucket, tmp_path: Path) -> None:
    data = tmp_path / "data"
    _png(data / "a" / "1.png")
    _png(data / "a" / "2.png", colour=1)
    images = BucketMisclassifiedImages(bucket, 10**6, 10**7)
    images.keep("job", data, _entries("a/1.png", "a/2.png"))
    again = _png(data / "a" / "3.png", colour=2)
    images.keep("job", data, _entries("a/3.png"))
    assert _keys(bucket) == ["misclassified/job/0.png"]
    assert images.read("job", 0) == (again, ".png") and images.read("job", 1) is None


def test_bytes_per_job_and_in_all_are_bounded_oldest_jobs_first(bucket: Bucket, tmp_path: Path) -> None:
    data = tmp_path / "data"
    size = len(_png(data / "a" / "1.png", side=32))
    _png(data / "a" / "2.png", side=32, colour=1)
    _png(data / "a" / "3.png", side=4)
    per_job = BucketMisclassifiedImages(bucket, size + size // 2, 10**7)
    kept = per_job.keep("big", data, _entries("a/1.png", "a/2.png", "a/3.png"))
    # The second does not fit after the first; the small third still does.
    assert [entry["image"] is not None for entry in kept] == [True, False, True]
    assert per_job.read("big", 1) is None

    # All jobs' copies together: room for about one job's; the older job's copies go.
    images = BucketMisclassifiedImages(bucket, 10**6, 2 * size)
    images.keep("newer", data, _entries("a/1.png"))
    assert [key.split("/")[1] for key in _keys(bucket)] == ["newer"]
    assert images.read("big", 0) is None and images.read("newer", 0) is not None
    images.remove("newer")
    assert _keys(bucket) == []


def test_a_bucket_that_cannot_be_reached_is_store_unavailable(
    bucket: Bucket, tmp_path: Path, paused: MotoServer
) -> None:
    data = tmp_path / "data"
    _png(data / "a" / "1.png")
    images = BucketMisclassifiedImages(bucket, 10**6, 10**7)
    images.keep("job", data, _entries("a/1.png"))
    paused.pause()
    with pytest.raises(StoreUnavailable):
        images.read("job", 0)
    paused.resume()
    assert images.read("job", 0) is not None  # kept copies outlive the outage
