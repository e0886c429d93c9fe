"""The unattended loop's API: retrain policies, the model detail with drift and the gate's
decision, the webhook log, /metrics' label and drift series, and clear 4xx for bad input."""

from pathlib import Path
from typing import Any

import pytest

from poets.engine.settings import Settings
from tests.app.conftest import assert_error, copy_model, settings_for

pytestmark = pytest.mark.integration

KEY = "loop-key"


def refused(response: Any, status: int, code: str, words: str) -> None:
    assert words in assert_error(response, status, code)["detail"]


@pytest.fixture(scope="module")
def server(serve: Any, trained: Any, backbone_dir: Path, tmp_path_factory: Any) -> Any:
    home = tmp_path_factory.mktemp("loop-home")
    copy_model(trained, home / "models")
    settings = settings_for(
        home, backbone_dir, api_keys=(KEY,), default_model="flowers", drift_min_answers=20, drift_window=40
    )
    return serve(settings)


@pytest.fixture(scope="module")
def dataset(server: Any, flowers_dir: Path) -> str:
    with server.client(headers={"X-API-Key": KEY}) as client:
        assert client.post("/datasets", json={"name": "yard"}).status_code == 201
        photos = sorted((flowers_dir / "daisy").glob("*.jpg"))[:3]
        files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
        assert client.post("/datasets/yard/images", data={"label": "daisy"}, files=files).status_code == 201
    return "yard"


def test_policy_put_get_delete(server: Any, dataset: str) -> None:
    body = {"dataset": dataset, "after_new_images": 50, "every_hours": 24, "min_interval_minutes": 30}
    with server.client(headers={"X-API-Key": KEY}) as client:
        put = client.put("/models/flowers/policy", json=dict(body, params={"how_many_training_steps": 200}))
        assert put.status_code == 200, put.text
        shown = put.json()
        assert shown["params"] == {"how_many_training_steps": 200} and shown["due"] is False
        # The session's version was trained on flowers_small, not on this dataset: all 3 are new.
        assert (
            shown["new_images"] == 3
            and shown["reason"] == "Waiting for 47 more image(s) or the interval to pass."
        )
        assert shown["next_due"]
        assert client.get("/models/flowers/policy").json()["dataset"] == dataset
        assert client.get("/models/flowers").json()["policy"]["after_new_images"] == 50
        removed = client.delete("/models/flowers/policy")
        assert (removed.status_code, removed.content, removed.headers.get("content-type")) == (204, b"", None)
        refused(client.get("/models/flowers/policy"), 404, "not_found", "has no retrain policy")
        refused(client.delete("/models/flowers/policy"), 404, "not_found", "has no retrain policy")


@pytest.mark.parametrize(
    "body, status, code, words",
    [
        ({"dataset": "nowhere", "after_new_images": 5}, 404, "not_found", "No dataset 'nowhere'"),
        (
            {"dataset": "yard", "after_new_images": -5},
            422,
            "invalid_input",
            "after_new_images must be between 1",
        ),
        ({"dataset": "yard", "every_hours": -1}, 422, "invalid_input", "every_hours must be between"),
        ({"dataset": "yard"}, 422, "invalid_input", "after_new_images, every_hours or both"),
        (
            {"dataset": "yard", "after_new_images": 5, "params": {"turbo": 1}},
            422,
            "invalid_input",
            "Unknown option(s) turbo",
        ),
        (
            {"dataset": "yard", "after_new_images": 5, "cron": "* * *"},
            422,
            "invalid_input",
            "Unknown policy field(s) cron",
        ),
        ([1, 2], 422, "invalid_input", "A policy is a JSON object"),
    ],
)
def test_bad_policies_get_clear_4xx(
    server: Any, dataset: str, body: Any, status: int, code: str, words: str
) -> None:
    with server.client(headers={"X-API-Key": KEY}) as client:
        refused(client.put("/models/flowers/policy", json=body), status, code, words)
        refused(client.get("/models/flowers/policy"), 404, "not_found", "has no retrain policy")


def test_writes_need_the_key(server: Any, dataset: str) -> None:
    with server.client() as client:
        body = {"dataset": dataset, "after_new_images": 5}
        assert client.put("/models/flowers/policy", json=body).status_code == 401
        assert client.delete("/models/flowers/policy").status_code == 401
        assert client.get("/webhooks/deliveries").status_code == 401


def test_answers_feed_metrics_and_drift(server: Any, flowers_dir: Path) -> None:
    photos = sorted((flowers_dir / "roses").glob("*.jpg"))[:25]  # only roses: far from the test set's mix
    with server.client() as client:
        for photo in photos:
            labelled = client.post(
                "/label", content=photo.read_bytes(), headers={"Content-Type": "image/jpeg"}
            )
            assert labelled.status_code == 200
        detail = client.get("/models/flowers").json()
        drift = detail["drift"]
        assert drift["window"] == 25 and drift["reference"]["n"] == 42
        assert drift["psi_labels"] > 0.25 and drift["alert"]  # one label where the test set had five
        assert sum(drift["recent"]["label_counts"].values()) == 25
        assert sum(b["n"] for b in drift["timeline"]) == 25
        assert (
            detail["latest_promotion"]["decision"] == "promoted"
            and detail["latest_promotion"]["version"] == 1
        )
        metrics = client.get("/metrics").text
        assert 'poets_label_top_score_count{model="flowers",version="1"} 25.0' in metrics
        assert 'poets_label_predictions_total{label="roses",model="flowers",version="1"}' in metrics
        assert 'poets_model_drift{model="flowers",version="1"}' in metrics
        versions = client.get("/models/flowers/versions").json()["versions"]
        assert versions[0]["promotion"]["decision"] == "promoted"
        refused(client.get("/models/nothing"), 404, "not_found", "No model 'nothing'")


def test_webhook_log_and_bad_urls(server: Any) -> None:
    with server.client(headers={"X-API-Key": KEY}) as client:
        assert client.get("/webhooks/deliveries").json() == {"urls": 0, "deliveries": []}
    for bad in ("ftp://hooks.example.org/x", "hooks.example.org", "http://"):
        with pytest.raises(ValueError, match="POETS_WEBHOOK_URLS"):
            Settings.from_env({"POETS_WEBHOOK_URLS": bad})
