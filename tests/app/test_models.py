"""/models, rollback and pinning, hot-swap under load, and a broken version."""

import shutil
import threading
from pathlib import Path
from typing import Any, List

import pytest

from poets.engine.store.models import ModelStore
from tests.app.conftest import assert_error, copy_model, settings_for, wait_for

KEY = "models-key"


@pytest.fixture(scope="module")
def server(serve: Any, trained: Any, backbone_dir: Path, tmp_path_factory: Any) -> Any:
    home = tmp_path_factory.mktemp("models-home")
    copy_model(trained, home / "models")
    return serve(settings_for(home, backbone_dir, api_keys=(KEY,), default_model="flowers"))


@pytest.fixture(scope="module")
def store(server: Any) -> ModelStore:
    return ModelStore(server.settings.store_dir)


@pytest.fixture(scope="module")
def photo(flowers_dir: Path) -> bytes:
    return sorted((flowers_dir / "roses").glob("*.jpg"))[0].read_bytes()


def label_version(client: Any, photo: bytes) -> int:
    response = client.post("/label", content=photo, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200, response.text
    return int(response.json()["model"]["version"])


def loaded(client: Any) -> Any:
    return {m["name"]: m for m in client.get("/models").json()["models"]}["flowers"]


def test_models_lists_the_store(server: Any) -> None:
    with server.client() as client:
        body = client.get("/models").json()
        assert body["default_model"] == "flowers"
        (model,) = body["models"]
        assert model["name"] == "flowers"
        assert model["current_version"] == model["loaded_version"] == 1
        assert model["versions"] == [1]
        assert model["load_error"] is None
        versions = client.get("/models/flowers/versions").json()
        (v1,) = versions["versions"]
        assert v1["current"] and v1["loaded"]
        assert v1["architecture"] == "mobilenet_1.0_224"
        assert 0.5 < v1["test_accuracy"] <= 1.0
        assert sorted(v1["labels"]) == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
        assert v1["created"]
        assert_error(client.get("/models/nope/versions"), 404, "not_found")


def test_hot_swap_under_load_and_rollback(server: Any, store: ModelStore, photo: bytes) -> None:
    failures: List[str] = []
    seen: List[int] = []
    stop = threading.Event()

    def loop() -> None:
        with server.client() as own:
            while not stop.is_set():
                response = own.post("/label", content=photo, headers={"Content-Type": "image/jpeg"})
                if response.status_code == 200:
                    seen.append(response.json()["model"]["version"])
                else:
                    failures.append(response.text)

    threads = [threading.Thread(target=loop) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(seen) > 5)
        # A second version, published as the worker does (written aside, renamed in).
        v1 = store.path("flowers", 1)
        def copy(folder: Path) -> None:
            folder.rmdir()
            shutil.copytree(str(v1), str(folder))

        version = store.publish("flowers", copy)
        assert version == 2
        with server.client() as client:
            wait_for(lambda: loaded(client)["loaded_version"] == 2)
        wait_for(lambda: seen and seen[-1] == 2)
        count = len(seen)
        wait_for(lambda: len(seen) > count + 5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures, failures[:3]
    assert 1 in seen and 2 in seen
    # Versions only move forward during the swap: nothing answered by v1 after v2 began.
    first_two = seen.index(2)
    assert all(v == 2 for v in seen[first_two + len(threads):])

    with server.client() as client:
        assert_error(client.post("/models/flowers/versions/1/activate"), 401, "unauthorized")
        response = client.post("/models/flowers/versions/1/activate", headers={"X-API-Key": KEY})
        assert response.status_code == 200, response.text
        assert response.json() == {"name": "flowers", "version": 1, "loaded_version": 1}
        assert label_version(client, photo) == 1  # swapped at once, not at the next poll
        assert store.current("flowers") == 1
        assert_error(client.post("/models/flowers/versions/9/activate", headers={"X-API-Key": KEY}),
                     404, "not_found")
        response = client.post("/models/flowers/versions/2/activate", headers={"X-API-Key": KEY})
        assert response.status_code == 200, response.text
        assert label_version(client, photo) == 2
        text = client.get("/metrics").text
        assert 'poets_model_swaps_total{model="flowers"}' in text


def test_broken_version_keeps_the_old_one_serving(server: Any, store: ModelStore,
                                                  photo: bytes) -> None:
    with server.client() as client:
        before = loaded(client)["loaded_version"]

        def broken(folder: Path) -> None:
            (folder / "saved_model.pb").write_bytes(b"this is not a SavedModel")
            shutil.copy(str(store.path("flowers", 1) / "poets.json"), str(folder / "poets.json"))

        version = store.publish("flowers", broken)
        def failed() -> Any:
            model = loaded(client)
            return model if model["load_error"] else None

        model = wait_for(failed)
        assert model["load_error"]["version"] == version
        assert model["current_version"] == version
        assert model["loaded_version"] == before
        assert label_version(client, photo) == before
        versions = client.get("/models/flowers/versions").json()["versions"]
        assert versions[-1]["load_error"]
        # Activating it is refused and changes nothing.
        assert_error(client.post("/models/flowers/versions/{}/activate".format(version),
                                 headers={"X-API-Key": KEY}), 409, "model_load_error")
        assert label_version(client, photo) == before
        assert "poets_model_load_failures_total" in client.get("/metrics").text
        # Rolling back to a good version works as usual.
        response = client.post("/models/flowers/versions/1/activate", headers={"X-API-Key": KEY})
        assert response.status_code == 200, response.text
        assert label_version(client, photo) == 1
