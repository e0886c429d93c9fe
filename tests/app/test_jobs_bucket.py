"""The API with a bucket for a store (moto in server mode): /retrain sends a job's dataset
there and answers 503 store_unavailable while it cannot be reached; misclassified copies that
a worker elsewhere wrote are served from it, 404 once trimmed, 503 while it is down."""

import io
import os
import zipfile
from pathlib import Path
from typing import Iterator, Tuple

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from poets.engine.settings import Settings
from poets.engine.store.bucket import Bucket
from poets.engine.store.misclassified import BucketMisclassifiedImages
from poets.engine.workspace import Workspace
from tests.app.conftest import assert_error
from tests.s3 import MotoServer

pytestmark = pytest.mark.integration


def _jpeg(seed: int) -> bytes:
    image = Image.frombytes("RGB", (16, 16), bytes((seed * 7 + i) % 256 for i in range(16 * 16 * 3)))
    out = io.BytesIO()
    image.save(out, "JPEG")
    return out.getvalue()


def _zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for index, label in enumerate(("cats", "dogs")):
            for n in range(4):
                archive.writestr("{}/{}.jpg".format(label, n), _jpeg(10 * index + n))
    return out.getvalue()


@pytest.fixture
def node(s3_server: MotoServer, tmp_path: Path) -> Iterator[Tuple[TestClient, Settings, Bucket]]:
    """An API node (no startup: no model, no TensorFlow) and, as a worker elsewhere sees it,
    the bucket."""
    from app.main import create_app

    url = s3_server.bucket("deploy")
    settings = Settings(
        home=tmp_path / "api-home", store_url=url, s3_endpoint_url=s3_server.url, store_timeout_s=1
    )
    # localhost: the Host check (app/guard.py) refuses TestClient's default "testserver".
    client = TestClient(create_app(settings), base_url="http://localhost")
    yield client, settings, Bucket(url, s3_server.url, timeout_s=1)
    if s3_server.process is not None:
        s3_server.resume()


def test_retrain_sends_the_upload_to_the_bucket_and_refuses_while_it_is_down(
    node: Tuple[TestClient, Settings, Bucket], s3_server: MotoServer
) -> None:
    client, settings, bucket = node
    archive = _zip()
    response = client.post("/retrain", files={"file": ("pets.zip", archive, "application/zip")})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert [info.key for info in bucket.list()] == ["inputs/{}.tar".format(job_id)]
    assert not any(settings.uploads_dir.iterdir())  # no copy left on the API node

    s3_server.pause()
    down = client.post("/retrain", files={"file": ("pets.zip", archive, "application/zip")})
    body = assert_error(down, 503, "store_unavailable")
    assert "POETS_STORE_URL" in body["detail"]
    s3_server.resume()
    assert [job["id"] for job in client.get("/jobs").json()["jobs"]] == [job_id]
    assert not any(settings.uploads_dir.iterdir())


def test_misclassified_copies_written_elsewhere_are_served_from_the_bucket(
    node: Tuple[TestClient, Settings, Bucket], s3_server: MotoServer, tmp_path: Path
) -> None:
    client, settings, bucket = node
    data = tmp_path / "worker-data"
    (data / "cats").mkdir(parents=True)
    photo = _jpeg(3)
    (data / "cats" / "a.jpg").write_bytes(photo)
    (data / "cats" / "big.jpg").write_bytes(os.urandom(10))  # not an image: not kept
    # The worker, on another machine, keeps the copies in the bucket with the job's record.
    worker = BucketMisclassifiedImages(bucket, 10**6, len(photo) * 3 // 2)  # room for one job
    job_id = "0" * 31 + "1"
    entries = [{"path": p, "label": "cats", "predicted": "dogs"} for p in ("cats/a.jpg", "cats/big.jpg")]
    kept = worker.keep(job_id, data, entries)
    records = Workspace(settings).jobs  # the job records: Redis or SQLite, as the API node has them
    records.create("pets", {}, job_id=job_id)
    records.finish(job_id, "succeeded", result={"metrics": {"misclassified": kept}})

    image = client.get("/jobs/{}/misclassified/0".format(job_id))
    assert image.status_code == 200, image.text
    assert image.content == photo and image.headers["content-type"] == "image/jpeg"
    assert image.headers["x-content-type-options"] == "nosniff"
    assert "not kept" in assert_error(client.get("/jobs/{}/misclassified/1".format(job_id)), 404)["detail"]
    assert not settings.jobs_dir.exists()  # nothing cached on the API node's disk

    s3_server.pause()
    assert_error(client.get("/jobs/{}/misclassified/0".format(job_id)), 503, "store_unavailable")
    s3_server.resume()

    # A newer job's copies push the older ones out (POETS_MISCLASSIFIED_BYTES): gone, 404.
    newer = "0" * 31 + "2"
    worker.keep(newer, data, entries[:1])
    gone = assert_error(client.get("/jobs/{}/misclassified/0".format(job_id)), 404, "not_found")
    assert "gone" in gone["detail"] and "POETS_MISCLASSIFIED_BYTES" in gone["detail"]
