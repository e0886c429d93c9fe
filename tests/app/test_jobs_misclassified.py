"""Misclassified test images stay viewable after a job from an upload ends (its upload is gone).

A real job: the archive goes through POST /retrain, the worker's task runs it here (real
TensorFlow on the real MobileNet), then GET /jobs/{id} is read without an API key, and the
image URLs it lists with one (keys are on: image data needs the key). Misclassification is
forced cheaply: two classes made of the same photos, so of each pair of identical test images
one is always wrong.
"""

import io
import shutil
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import pytest

from poets.engine.settings import Settings
from poets.engine.store.jobs import JobStore
from tests.app.conftest import assert_error, settings_for

pytestmark = pytest.mark.integration

KEY = "misclassified-test-key"
LISTED = 3  # POETS_MAX_LISTED_FILES: fewer than the misclassified test images


@pytest.fixture(scope="module")
def server(serve: Any, backbone_dir: Path, tmp_path_factory: Any) -> Any:
    home = tmp_path_factory.mktemp("misclassified-home")
    return serve(settings_for(home, backbone_dir, api_keys=(KEY,), max_listed_files=LISTED))


@pytest.fixture(scope="module")
def finished(server: Any, flowers_dir: Path) -> Iterator[Tuple[str, Dict[str, Any], Dict[str, bytes]]]:
    """A job from an uploaded archive, run to its end by the worker's task: (id, GET answer, photos)."""
    from worker import tasks

    photos = {p.name: p.read_bytes() for p in sorted((flowers_dir / "daisy").glob("*.jpg"))[:20]}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for label in ("same", "twin"):
            for name, data in photos.items():
                archive.writestr("{}/{}".format(label, name), data)
    with server.client(headers={"X-API-Key": KEY}) as client:
        response = client.post(
            "/retrain",
            files={"file": ("twins.zip", out.getvalue(), "application/zip")},
            data={"name": "twins", "how_many_training_steps": "10", "testing_percentage": "40"},
        )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    settings: Settings = server.settings
    record = JobStore(settings.jobs_db).get(job_id)
    assert (settings.uploads_dir / job_id).is_dir()
    ran = tasks.run_job(settings, job_id, record.params["image_dir"], "twins", record.params["config"])
    assert ran["state"] == "succeeded", ran
    with server.client() as client:  # no key: GETs are open
        answer = client.get("/jobs/{}".format(job_id))
    assert answer.status_code == 200, answer.text
    yield job_id, answer.json(), photos


def test_images_are_reachable_after_the_job_and_its_upload_are_gone(server: Any, finished: Any) -> None:
    job_id, job, photos = finished
    assert not (server.settings.uploads_dir / job_id).exists()
    metrics = job["result"]["metrics"]
    listed = metrics["misclassified"]
    assert len(listed) == LISTED < metrics["misclassified_count"]  # the count cap, the full count
    with server.client() as anyone:
        assert_error(anyone.get(listed[0]["image"]), 401, "unauthorized")
    with server.client(headers={"X-API-Key": KEY}) as client:
        for n, entry in enumerate(listed):
            assert entry["image"] == "/jobs/{}/misclassified/{}".format(job_id, n)
            label, name = entry["path"].split("/")
            assert label in ("same", "twin") and {label, entry["predicted"]} == {"same", "twin"}
            response = client.get(entry["image"])
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "image/jpeg"
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.content == photos[name]
    copies = sorted(p.name for p in (server.settings.jobs_dir / job_id / "misclassified").iterdir())
    assert copies == ["{}.jpg".format(n) for n in range(LISTED)]


def test_missing_jobs_and_images_are_clear_404s(server: Any, finished: Any) -> None:
    job_id, _, _ = finished
    with server.client(headers={"X-API-Key": KEY}) as client:
        assert (
            "No job"
            in assert_error(client.get("/jobs/{}/misclassified/0".format("0" * 32)), 404, "not_found")[
                "detail"
            ]
        )
        for bad in ("x.y", "a%0A", "-x", "..%2F.."):
            assert_error(client.get("/jobs/{}/misclassified/0".format(bad)), 404)
        beyond = assert_error(client.get("/jobs/{}/misclassified/{}".format(job_id, LISTED)), 404)
        assert "there is no image {}".format(LISTED) in beyond["detail"]
        assert_error(client.get("/jobs/{}/misclassified/-1".format(job_id)), 422)
        queued = JobStore(server.settings.jobs_db).create("twins", {})
        assert_error(client.get("/jobs/{}/misclassified/0".format(queued.id)), 404)
        # Copies removed to stay within POETS_MISCLASSIFIED_BYTES: the record stays, the image is gone.
        shutil.rmtree(str(server.settings.jobs_dir / job_id))
        gone = assert_error(client.get("/jobs/{}/misclassified/0".format(job_id)), 404, "not_found")
        assert "gone" in gone["detail"] and "POETS_MISCLASSIFIED_BYTES" in gone["detail"]
        assert client.get("/jobs/{}".format(job_id)).status_code == 200
