"""A whole unattended day, real parts only: ``poets up`` (API, worker, Celery beat, embedded
broker), a camera posting frames, a person filing the unsure ones, a retrain policy starting one
job by itself, the promotion gate deciding, and signed webhooks arriving at a real receiver."""

import hashlib
import hmac
import json
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List

import httpx
import pytest

from tests.engine.test_webhooks import Receiver
from tests.net import free_port
from tests.waiting import wait_until
from tests.worker import helpers

SECRET = "day-secret"
LABELS = ("daisy", "roses")
STEPS = {"how_many_training_steps": 300}
NEW = 4  # frames filed before the policy retrains


def _events(receiver: Receiver) -> List[Dict[str, Any]]:
    found = []
    for got in list(receiver.received):
        expected = "sha256=" + hmac.new(SECRET.encode(), got["body"], hashlib.sha256).hexdigest()
        assert got["headers"]["X-Poets-Signature"] == expected  # every event verifies
        found.append(json.loads(got["body"]))
    return found


def _named(events: List[Dict[str, Any]], kind: str) -> List[Dict[str, Any]]:
    return [event for event in events if event["event"] == kind]


@pytest.fixture
def day(tmp_path: Path, backbone_dir: Path, session_home: Path, trained: Any) -> Any:
    receiver = Receiver()
    home = tmp_path / "home"
    home.mkdir()
    shutil.copytree(str(session_home / "bottlenecks"), str(home / "bottlenecks"))  # a warm cache
    port = free_port()
    env = helpers.service_env(
        home,
        backbone_dir,
        POETS_PROMOTE="if_better",
        # A day's retrain on a few more frames is within noise of the current version.
        POETS_PROMOTE_TOLERANCE="10",
        POETS_POLICY_CHECK_S="2",
        POETS_WEBHOOK_URLS=receiver.url,
        POETS_WEBHOOK_SECRET=SECRET,
        POETS_COLLECT_THRESHOLD="1.01",  # the test camera's every frame is "unsure"
        POETS_DEFAULT_MODEL="yard",
        POETS_MODEL_POLL_S="0.5",
    )
    log = tmp_path / "up.log"
    process = helpers.spawn(["up", "--port", str(port)], env, log)
    client = httpx.Client(base_url="http://127.0.0.1:{}".format(port), timeout=60.0)
    try:
        wait_until(lambda: _answers(client), 180, "poets up answering /healthz")
        yield client, receiver, log
    finally:
        client.close()
        helpers.stop(process)
        receiver.close()


def _answers(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def _ended(client: httpx.Client, job_id: str) -> Any:
    job = client.get("/jobs/{}".format(job_id)).json()
    return job if job["state"] in ("succeeded", "failed", "cancelled") else None


def _job(client: httpx.Client, job_id: str) -> Dict[str, Any]:
    job = wait_until(lambda: _ended(client, job_id), 300, "job {} to end".format(job_id), interval=0.5)
    assert job["state"] == "succeeded", job
    return job  # type: ignore[no-any-return]


def _served(client: httpx.Client, version: int) -> bool:
    models = client.get("/models").json()["models"]
    return bool(models) and models[0]["loaded_version"] == version


def _inbox(client: httpx.Client, count: int) -> Any:
    inbox = client.get("/review").json()
    return inbox if inbox["total"] == count else None


def _policy_jobs(client: httpx.Client) -> List[Dict[str, Any]]:
    return [job for job in client.get("/jobs").json()["jobs"] if job["trigger"] == "policy"]


def _promotions(receiver: Receiver, count: int) -> Any:
    events = _events(receiver)
    return events if len(_named(events, "version.promoted")) == count else None


def test_an_unattended_day(day: Any, flowers_dir: Path) -> None:
    client, receiver, _ = day
    assert client.post("/datasets", json={"name": "yard"}).status_code == 201
    for label in LABELS:
        photos = sorted((flowers_dir / label).glob("*.jpg"))[:20]
        files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
        assert client.post("/datasets/yard/images", data={"label": label}, files=files).status_code == 201

    # The first version, by hand: nothing to beat.
    first = client.post("/retrain", data=dict(STEPS, dataset="yard", name="yard"))
    assert first.status_code == 202, first.text
    done = _job(client, first.json()["job_id"])
    assert done["trigger"] == "api" and done["result"]["promotion"]["decision"] == "promoted"
    wait_until(lambda: _served(client, 1), 60, "version 1 served")

    policy = {"dataset": "yard", "after_new_images": NEW, "min_interval_minutes": 0, "params": STEPS}
    answer = client.put("/models/yard/policy", json=policy)
    assert answer.status_code == 200, answer.text
    assert answer.json()["due"] is False and answer.json()[
        "reason"
    ] == "Waiting for {} more image(s).".format(NEW)

    # The camera posts frames it has never seen; each is kept for review.
    frames = [(label, p) for label in LABELS for p in sorted((flowers_dir / label).glob("*.jpg"))[40:42]]
    for _, photo in frames:
        labelled = client.post(
            "/label?collect=true", content=photo.read_bytes(), headers={"Content-Type": "image/jpeg"}
        )
        assert labelled.status_code == 200 and labelled.json()["model"] == {"name": "yard", "version": 1}
    inbox = wait_until(lambda: _inbox(client, len(frames)), 30, "the frames in the inbox")

    # The person files each by what it shows (the inbox keeps no file names: match by bytes).
    by_digest = {hashlib.sha256(p.read_bytes()).hexdigest(): label for label, p in frames}
    for item in inbox["items"]:
        image = client.get(item["image"]).content
        label = by_digest[hashlib.sha256(image).hexdigest()]
        filed = client.post("/review/{}".format(item["id"]), json={"dataset": "yard", "label": label})
        assert filed.status_code == 200, filed.text

    # Within a minute of the last frame, the policy starts exactly one job by itself.
    policy_jobs = wait_until(lambda: _policy_jobs(client), 60, "a job started by the policy", 0.5)
    second = _job(client, policy_jobs[0]["id"])
    promotion = second["result"]["promotion"]
    assert promotion["decision"] == "promoted", promotion
    assert promotion["compared"]["on"] == "reference"
    time.sleep(3 * 2)  # three more ticks of the scheduler: nothing more is due
    assert len(_policy_jobs(client)) == 1
    status = client.get("/models/yard/policy").json()
    assert status["due"] is False and status["new_images"] == 0

    wait_until(lambda: _served(client, 2), 60, "version 2 served")
    detail = client.get("/models/yard").json()
    assert detail["latest_promotion"]["decision"] == "promoted" and detail["policy"]["dataset"] == "yard"

    # The webhooks arrived, signed: two jobs, two promotions, in order for each job.
    events = wait_until(lambda: _promotions(receiver, 2), 60, "the webhooks")
    assert [e["data"]["version"] for e in _named(events, "job.succeeded")] == [1, 2]
    assert [e["data"]["version"] for e in _named(events, "version.promoted")] == [1, 2]
    deliveries = client.get("/webhooks/deliveries").json()
    assert deliveries["urls"] == 1 and {d["state"] for d in deliveries["deliveries"]} == {"delivered"}
