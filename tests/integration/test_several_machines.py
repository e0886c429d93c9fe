"""Several machines that share only Redis and an S3 bucket (moto in server mode).

Two API nodes and a worker, each with its own POETS_HOME in a mount namespace where the
others' folders are hidden under empty tmpfs mounts (tests/integration/machines.py): the job's
upload, its record, the published version and the swap all have to go through Redis and the
bucket. Then the faults: the bucket frozen and back, a damaged object in a version.
"""

import time
import zipfile
from pathlib import Path
from typing import Any, Iterator, List

import httpx
import pytest

from poets.engine.store.bucket import Bucket
from poets.engine.store.bucket_models import MANIFEST_FILE, BucketModelStore
from tests.integration.machines import Machine, Machines, version_copier
from tests.s3 import CREDENTIALS, MotoServer
from tests.waiting import wait_until
from tests.worker import helpers

pytestmark = pytest.mark.integration

NAME = "flowers"
LABELS = ("daisy", "roses", "tulips")
PER_LABEL = 16
STEPS = 60


@pytest.fixture(scope="module")
def photo(flowers_dir: Path) -> Path:
    return sorted((flowers_dir / "daisy").glob("*.jpg"))[-1]


@pytest.fixture(scope="module")
def archive(flowers_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("upload") / "flowers.zip"
    with zipfile.ZipFile(str(path), "w", zipfile.ZIP_STORED) as out:
        for label in LABELS:
            for image in sorted((flowers_dir / label).glob("*.jpg"))[:PER_LABEL]:
                out.write(str(image), "flowers/{}/{}".format(label, image.name))
    return path


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from helpers.redis_server(tmp_path_factory.mktemp("redis"))


class Deployment:
    def __init__(self, machines: Machines, server: MotoServer, url: str) -> None:
        self.machines = machines
        self.server = server
        self.url = url
        self.bucket = Bucket(url, server.url)
        self.api_a = machines.all["api-a"]
        self.api_b = machines.all["api-b"]
        self.worker = machines.all["worker"]

    def post_retrain(self, api: Machine, archive: Path) -> httpx.Response:
        with open(str(archive), "rb") as data:
            return api.client.post(
                "/retrain",
                files={"file": ("flowers.zip", data, "application/zip")},
                data={"name": NAME, "how_many_training_steps": str(STEPS)},
            )

    def retrain(self, api: Machine, archive: Path) -> str:
        response = self.post_retrain(api, archive)
        assert response.status_code == 202, response.text
        return str(response.json()["job_id"])

    def both_serving(self, photo: Path) -> int:
        """Start node B if an earlier test did not; return the version both nodes answer from."""
        if self.api_b.process is None:
            self.api_b.serve()
        serving = int(self.api_a.label(photo, NAME)["model"]["version"])
        self.api_b.wait_serving(photo, NAME, serving, timeout=120)
        return serving

    def versions(self) -> List[int]:
        return sorted(
            int(item.key.split("/")[2])
            for item in self.bucket.list("models/{}/".format(NAME))
            if item.key.endswith("/" + MANIFEST_FILE)
        )


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, s3_server: MotoServer, redis_url: str, backbone_dir: Path
) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("machines")
    url = s3_server.bucket("poets")
    env = helpers.service_env(
        root / "unused",
        backbone_dir,
        redis_url,
        POETS_STORE_URL=url,
        POETS_S3_ENDPOINT_URL=s3_server.url,
        POETS_STORE_TIMEOUT_S="1",
        POETS_MODEL_POLL_S="0.5",
        **CREDENTIALS,
    )
    machines = Machines(root, env)
    for name in ("api-a", "api-b", "worker"):
        machines.add(name)
    deployment = Deployment(machines, s3_server, url)
    try:
        deployment.api_a.serve()
        deployment.worker.work()
        yield deployment
    except BaseException:
        print(machines.logs())
        raise
    finally:
        machines.stop()


@pytest.fixture(scope="module")
def first(deployment: Deployment, archive: Path, photo: Path) -> int:
    """Retrain through API node A; the worker publishes to the bucket; A swaps it in."""
    job_id = deployment.retrain(deployment.api_a, archive)
    job = deployment.api_a.follow(job_id)
    assert job["state"] == "succeeded", "{}\n{}".format(job, deployment.machines.logs())
    version = int(job["version"])
    assert deployment.versions() == [version]
    deployment.api_a.wait_serving(photo, NAME, version)
    return version


def test_a_job_posted_on_one_node_is_served_by_every_node(
    deployment: Deployment, first: int, archive: Path, photo: Path
) -> None:
    api_a, api_b, worker = deployment.api_a, deployment.api_b, deployment.worker
    # The nodes share no folder: the upload went through the bucket, the version came back.
    assert (worker.home / "store-cache" / NAME / str(first)).is_dir()  # published from here
    assert (api_a.home / "store-cache" / NAME / str(first) / "saved_model.pb").is_file()
    # A second API node starts empty and serves the current version from the bucket.
    assert not (api_b.home / "store-cache").exists()
    api_b.serve()
    api_b.wait_serving(photo, NAME, first, timeout=120)
    ready = api_b.client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["models"] == {NAME: first} and ready["degraded"] == []
    # A job posted on B: both nodes swap to its version (Redis notice, else polling CURRENT).
    job_id = deployment.retrain(api_b, archive)
    job = api_a.follow(job_id)  # its record is in Redis: either node shows it
    assert job["state"] == "succeeded", job
    done = time.monotonic()
    version = int(job["version"])
    assert version == first + 1
    api_a.wait_serving(photo, NAME, version)
    api_b.wait_serving(photo, NAME, version)
    print(
        "\n[several machines] job done to both API nodes serving v{}: {:.2f} s".format(
            version, time.monotonic() - done
        )
    )
    models = api_b.client.get("/models/{}".format(NAME)).json()
    assert models["current_version"] == version


def test_while_the_bucket_is_down_label_serves_and_retrain_says_503(
    deployment: Deployment, first: int, archive: Path, photo: Path
) -> None:
    api_a, api_b = deployment.api_a, deployment.api_b
    serving = deployment.both_serving(photo)
    deployment.server.pause()
    try:
        down = time.monotonic()
        answers = 0
        while time.monotonic() - down < 4:  # across several polls of the store
            for api in (api_a, api_b):
                assert api.label(photo, NAME)["model"]["version"] == serving
                answers += 1
        for api in (api_a, api_b):
            ready = api.client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["status"] == "degraded", ready.text
            assert deployment.url in ready.json()["degraded"][0]
        refused = deployment.post_retrain(api_a, archive)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "store_unavailable"
        assert deployment.url in refused.json()["detail"]
    finally:
        deployment.server.resume()
    print("\n[several machines] {} /label answers while the bucket was down, none failed".format(answers))
    for api in (api_a, api_b):
        wait_until(
            lambda api=api: api.client.get("/readyz").json()["status"] == "ready",  # type: ignore[misc]
            30,
            "{} ready again".format(api.name),
        )
    # Accepted again (then cancelled: the swap after a job is the first test's).
    job_id = deployment.retrain(api_a, archive)
    assert api_b.client.delete("/jobs/{}".format(job_id)).status_code == 202
    assert api_a.follow(job_id)["state"] == "cancelled"


def test_a_damaged_object_is_not_served_and_models_says_why(
    deployment: Deployment, first: int, photo: Path, tmp_path: Path
) -> None:
    api_a, api_b = deployment.api_a, deployment.api_b
    serving = deployment.both_serving(photo)
    # A third machine (this test) publishes a copy of the version serving, then an object of
    # the copy is damaged in the bucket before any node has downloaded it.
    store = BucketModelStore(Bucket(deployment.url, deployment.server.url), tmp_path / "cache", 1 << 30)
    source = store.path(NAME, serving)
    damaged = store.publish(NAME, version_copier(source), activate=False)
    graph = "models/{}/{}/saved_model.pb".format(NAME, damaged)
    original = deployment.bucket.get(graph)
    assert original is not None
    deployment.bucket.put(graph, bytes(255 - b for b in original))  # same size, other bytes
    store.activate(NAME, damaged)  # as a node that skipped the check would
    try:
        for api in (api_a, api_b):

            def says_why(api: Machine = api) -> Any:
                text = api.client.get("/models/{}/versions".format(NAME)).text
                return "fails its manifest check" in text and "saved_model.pb" in text

            wait_until(says_why, 60, "{} saying why version {} is not served".format(api.name, damaged))
            assert api.label(photo, NAME)["model"]["version"] == serving
        refused = api_a.client.post("/models/{}/versions/{}/activate".format(NAME, damaged))
        assert refused.status_code == 409, refused.text
        assert "fails its manifest check" in refused.json()["detail"]
        assert not (api_a.home / "store-cache" / NAME / str(damaged)).exists()
    finally:
        store.activate(NAME, serving)
    for api in (api_a, api_b):
        assert api.label(photo, NAME)["model"]["version"] == serving
