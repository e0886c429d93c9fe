"""/models, rollback and pinning, hot-swap under load, and a broken version."""

import shutil
import threading
from pathlib import Path
from typing import Any, List

import pytest

from poets.engine.store.models import ModelStore
from tests.app.conftest import assert_error, copy_model, settings_for, wait_for

pytestmark = pytest.mark.integration

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
        # Everything a comparison of two versions needs, from the version's own poets.json.
        assert v1["metrics"]["test_accuracy"] == v1["test_accuracy"]
        assert "confusion_matrix" in v1["metrics"]
        assert v1["hyperparameters"]["architecture"] == "mobilenet_1.0_224"
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
    assert all(v == 2 for v in seen[first_two + len(threads) :])

    with server.client() as client:
        assert_error(client.post("/models/flowers/versions/1/activate"), 401, "unauthorized")
        response = client.post("/models/flowers/versions/1/activate", headers={"X-API-Key": KEY})
        assert response.status_code == 200, response.text
        assert response.json() == {"name": "flowers", "version": 1, "loaded_version": 1}
        assert label_version(client, photo) == 1  # swapped at once, not at the next poll
        assert store.current("flowers") == 1
        assert_error(
            client.post("/models/flowers/versions/9/activate", headers={"X-API-Key": KEY}), 404, "not_found"
        )
        response = client.post("/models/flowers/versions/2/activate", headers={"X-API-Key": KEY})
        assert response.status_code == 200, response.text
        assert label_version(client, photo) == 2
        text = client.get("/metrics").text
        assert 'poets_model_swaps_total{model="flowers"}' in text


def test_broken_version_keeps_the_old_one_serving(server: Any, store: ModelStore, photo: bytes) -> None:
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
        assert_error(
            client.post("/models/flowers/versions/{}/activate".format(version), headers={"X-API-Key": KEY}),
            409,
            "model_load_error",
        )
        assert label_version(client, photo) == before
        assert "poets_model_load_failures_total" in client.get("/metrics").text
        # Rolling back to a good version works as usual.
        response = client.post("/models/flowers/versions/1/activate", headers={"X-API-Key": KEY})
        assert response.status_code == 200, response.text
        assert label_version(client, photo) == 1


# -- bounded memory, retried failures, the default model ----------------------------------------


def _break(folder: Path, good: Path) -> None:
    """A version folder whose SavedModel is garbage (with good metadata)."""
    folder.mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    shutil.copy(str(good / "poets.json"), str(folder / "poets.json"))


@pytest.fixture(scope="module")
def small(serve: Any, trained: Any, backbone_dir: Path, tmp_path_factory: Any) -> Any:
    """Three models (a, b, c), at most two loaded, no default model among them."""
    home = tmp_path_factory.mktemp("lru-home")
    for name in ("a", "b", "c"):
        copy_model(trained, home / "models", name)
    return serve(settings_for(home, backbone_dir, max_loaded_models=2))


def _label(client: Any, photo: bytes, model: str) -> Any:
    return client.post("/label?model={}".format(model), content=photo, headers={"Content-Type": "image/jpeg"})


def _label_when_loaded(client: Any, photo: bytes, model: str) -> Any:
    """503 with Retry-After while the model loads, then 200: never anything else."""
    first = _label(client, photo, model)
    if first.status_code == 503:
        assert first.json()["error"] == "model_loading", first.text
        assert first.headers["Retry-After"]
        assert "POETS_MAX_LOADED_MODELS" in first.json()["detail"]

        def answered() -> Any:
            response = _label(client, photo, model)
            assert response.status_code in (200, 503), response.text
            return response if response.status_code == 200 else None

        return wait_for(answered)
    assert first.status_code == 200, first.text
    return first


def test_at_most_max_loaded_models_stay_in_memory(small: Any, photo: bytes) -> None:
    import gc
    import weakref

    registry = small.app.state.registry
    with small.client() as client:
        body = client.get("/models").json()
        assert body["max_loaded_models"] == 2
        assert [m["name"] for m in body["models"] if m["loaded_version"]] == ["a", "b"]
        assert _label_when_loaded(client, photo, "a").json()["model"]["name"] == "a"
        evicted = registry.get("b")  # least recently used: "a" was just used
        predictor = weakref.ref(evicted.predictor)
        batcher = evicted.batcher
        del evicted
        response = _label(client, photo, "c")
        assert response.status_code == 503 and response.headers["Retry-After"], response.text
        assert _label_when_loaded(client, photo, "c").json()["model"]["name"] == "c"
        loaded = {m["name"]: m["loaded_version"] for m in client.get("/models").json()["models"]}
        assert loaded == {"a": 1, "b": None, "c": 1}
        # The unloaded model's memory is released: its batcher stopped, nothing holds it.
        batcher.join(30)
        assert not batcher._thread.is_alive()
        gc.collect()
        assert predictor() is None
        # Asked for again, it comes back (and "a", now least recently used, goes).
        assert _label_when_loaded(client, photo, "b").json()["model"]["name"] == "b"
        assert sorted(registry.loaded()) == ["b", "c"]
        assert 'poets_model_unloads_total{model="b"} 1.0' in client.get("/metrics").text


def test_without_a_name_and_no_default_several_models_answer_404(small: Any, photo: bytes) -> None:
    with small.client() as client:
        body = assert_error(
            client.post("/label", content=photo, headers={"Content-Type": "image/jpeg"}), 404, "not_found"
        )
        assert "POETS_DEFAULT_MODEL" in body["detail"]
        assert "a, b, c" in body["detail"]
        assert client.get("/models").json()["serves_by_default"] is None  # nothing would answer


def test_the_default_model_answers_when_no_name_is_given(
    serve: Any, trained: Any, backbone_dir: Path, tmp_path_factory: Any, photo: bytes
) -> None:
    home = tmp_path_factory.mktemp("default-home")
    for name in ("cams", "flowers"):
        copy_model(trained, home / "models", name)
    server = serve(settings_for(home, backbone_dir, default_model="flowers"))
    with server.client() as client:
        response = client.post("/label", content=photo, headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 200, response.text
        assert response.json()["model"]["name"] == "flowers"
        assert client.get("/models").json()["serves_by_default"] == "flowers"


def test_models_names_the_only_model_as_what_serves_without_a_name(
    serve: Any, trained: Any, backbone_dir: Path, tmp_path_factory: Any, photo: bytes
) -> None:
    """POETS_DEFAULT_MODEL names no model: the only one answers, and GET /models says which
    (the console shows it, not the setting)."""
    home = tmp_path_factory.mktemp("only-home")
    copy_model(trained, home / "models", "cams")
    server = serve(settings_for(home, backbone_dir, default_model="default"))
    with server.client() as client:
        body = client.get("/models").json()
        assert body["default_model"] == "default" and body["serves_by_default"] == "cams"
        response = client.post("/label", content=photo, headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 200, response.text
        assert response.json()["model"]["name"] == body["serves_by_default"]


def test_a_failed_version_is_retried_once_its_files_change(small: Any, trained: Any, photo: bytes) -> None:
    store = ModelStore(small.settings.store_dir)
    folder = store.path("d", 1)
    _break(folder, trained.path)
    with small.client() as client:
        response = _label(client, photo, "d")
        assert response.status_code == 503, response.text

        def failed() -> Any:
            model = {m["name"]: m for m in client.get("/models").json()["models"]}.get("d")
            return model if model and model["load_error"] else None

        model = wait_for(failed)
        assert model["load_error"]["version"] == 1 and model["loaded_version"] is None
        # Not retried while the files stay the same: the error is answered, no new load.
        loads = small.app.state.metrics.model_loads.labels("d", "error")._value.get()
        body = assert_error(_label(client, photo, "d"), 503, "no_model")
        assert "failed to load" in body["detail"]
        small.app.state.registry.sync()
        assert small.app.state.metrics.model_loads.labels("d", "error")._value.get() == loads
        # The store is wiped and restored from a backup: same version number, new files.
        shutil.rmtree(str(folder))
        shutil.copytree(str(trained.path), str(folder))
        assert _label_when_loaded(client, photo, "d").json()["model"] == {"name": "d", "version": 1}
        model = {m["name"]: m for m in client.get("/models").json()["models"]}["d"]
        assert model["load_error"] is None and model["loaded_version"] == 1
