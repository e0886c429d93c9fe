"""The registry's own logic with a fake loader (``factory=``): leases, hot swaps, unloading
the least recently used, failed versions, activation. No TensorFlow and no server: the
model store is a real one on disk, the predictors are stand-ins, and the store is
followed by calling ``sync()`` (no poller thread)."""

import json
from pathlib import Path
from typing import Iterator, List, Set, Tuple

import numpy as np
import pytest

from app.serving.registry import ModelRegistry
from poets.engine.errors import ModelLoadError, ModelLoading, NoModel, NotFound
from poets.engine.settings import Settings
from poets.engine.store.models import METADATA_FILE, ModelStore

pytestmark = pytest.mark.unit


class FakePredictor:
    def __init__(self, name: str, version: int) -> None:
        self.name = name
        self.version = version

    def warm(self) -> None:
        pass

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return np.zeros((len(pixels), 2), np.float32)


class FakeLoader:
    """The ``factory=``: records every load; versions in ``broken`` fail to load."""

    def __init__(self) -> None:
        self.loads: List[Tuple[str, int]] = []
        self.broken: Set[Tuple[str, int]] = set()

    def __call__(self, folder: Path, name: str, version: int) -> FakePredictor:
        self.loads.append((name, version))
        if (name, version) in self.broken:
            raise RuntimeError("bad graph")
        return FakePredictor(name, version)


class Clock:
    """Each reading is later than the one before: the order of uses, without real time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


@pytest.fixture
def loader() -> FakeLoader:
    return FakeLoader()


@pytest.fixture
def registry(tmp_path: Path, store: ModelStore, loader: FakeLoader) -> Iterator[ModelRegistry]:
    settings = Settings(home=tmp_path, max_loaded_models=2, decode_threads=1, default_model="main")
    registry = ModelRegistry(settings, factory=loader, store=store, clock=Clock())
    yield registry
    registry.stop()


def publish(store: ModelStore, name: str, version: int, metadata: str = "{}") -> None:
    """A version folder as the store lists it (the fake loader reads nothing in it)."""
    folder = store.root / name / str(version)
    folder.mkdir(parents=True)
    (folder / METADATA_FILE).write_text(metadata)


def served(registry: ModelRegistry, name: str = "") -> Tuple[str, int]:
    with registry.lease(name or None) as model:
        return model.name, model.version


# -- which model a request means ---------------------------------------------------------------
def test_without_a_name_the_default_model_else_the_only_one(
    registry: ModelRegistry, store: ModelStore
) -> None:
    with pytest.raises(NoModel, match="No model is loaded yet"):
        registry.lease()
    assert registry.default_name() is None
    publish(store, "flowers", 1)
    registry.sync()
    assert served(registry) == ("flowers", 1) and registry.default_name() == "flowers"  # the only one
    publish(store, "main", 1)
    registry.sync()
    assert served(registry) == ("main", 1) and registry.default_name() == "main"  # the default


def test_without_a_name_or_default_among_several_the_error_lists_them(
    registry: ModelRegistry, store: ModelStore
) -> None:
    publish(store, "cats", 1)
    publish(store, "dogs", 1)
    registry.sync()
    assert registry.default_name() is None
    with pytest.raises(NotFound, match="pass \\?model= one of cats, dogs"):
        registry.lease()
    with pytest.raises(NotFound, match="the models are cats, dogs"):
        registry.lease("birds")


# -- leases and swaps --------------------------------------------------------------------------
def test_a_new_version_is_swapped_in_and_the_old_closes_after_its_last_lease(
    registry: ModelRegistry, store: ModelStore
) -> None:
    publish(store, "main", 1)
    registry.sync()
    with registry.lease() as old:
        publish(store, "main", 2)
        registry.sync()
        assert served(registry) == ("main", 2)  # new requests get the new version
        assert old.version == 1 and old.retired
        assert old.predictor is not None  # still answering the request that holds it
    assert old.predictor is None  # released with the last lease
    assert registry.loaded() == {"main": 2}


def test_an_unleased_old_version_closes_at_the_swap(registry: ModelRegistry, store: ModelStore) -> None:
    publish(store, "main", 1)
    registry.sync()
    old = registry.get("main")
    publish(store, "main", 2)
    registry.sync()
    assert old is not None and old.predictor is None


def test_a_model_that_left_the_store_is_unloaded(registry: ModelRegistry, store: ModelStore) -> None:
    publish(store, "main", 1)
    registry.sync()
    (store.root / "main" / "1" / METADATA_FILE).unlink()
    (store.root / "main" / "1").rmdir()
    registry.sync()
    assert registry.loaded() == {}


# -- bounded memory: least recently used first -------------------------------------------------
def test_start_loads_the_default_first_and_no_more_than_the_limit(
    registry: ModelRegistry, store: ModelStore, loader: FakeLoader
) -> None:
    for name in ("a", "b", "main"):
        publish(store, name, 1)
    registry.sync()
    assert loader.loads == [("main", 1), ("a", 1)]
    assert registry.loaded() == {"main": 1, "a": 1}


def test_a_model_not_in_memory_is_loaded_on_request_in_place_of_the_least_recently_used(
    registry: ModelRegistry, store: ModelStore
) -> None:
    for name in ("a", "b", "main"):
        publish(store, name, 1)
    registry.sync()  # main and a
    served(registry, "main")
    served(registry, "a")
    served(registry, "main")  # a is now the least recently used
    with pytest.raises(ModelLoading, match="POETS_MAX_LOADED_MODELS"):
        registry.lease("b")
    assert registry.is_loading("b")
    registry.sync()
    assert not registry.is_loading("b")
    assert registry.loaded() == {"main": 1, "b": 1}
    assert served(registry, "b") == ("b", 1)
    assert registry.metrics.evictions.labels("a")._value.get() == 1


def test_a_model_in_use_is_unloaded_only_after_its_lease(registry: ModelRegistry, store: ModelStore) -> None:
    for name in ("a", "b", "main"):
        publish(store, name, 1)
    registry.sync()
    with registry.lease("a") as busy:
        served(registry, "main")  # a is the least recently used, but still answering
        with pytest.raises(ModelLoading):
            registry.lease("b")
        registry.sync()
        assert "a" not in registry.loaded()
        assert busy.predictor is not None
    assert busy.predictor is None


# -- versions that fail to load ----------------------------------------------------------------
def test_a_broken_version_keeps_the_old_one_and_is_retried_only_once_its_files_change(
    registry: ModelRegistry, store: ModelStore, loader: FakeLoader
) -> None:
    publish(store, "main", 1)
    registry.sync()
    loader.broken.add(("main", 2))
    publish(store, "main", 2)
    registry.sync()
    assert served(registry) == ("main", 1)
    assert registry.load_error("main") == (2, "RuntimeError: bad graph")
    assert registry.version_error("main", 2) == "RuntimeError: bad graph"
    registry.sync()
    assert loader.loads.count(("main", 2)) == 1  # same files: not tried again
    loader.broken.clear()
    (store.root / "main" / "2" / METADATA_FILE).write_text(json.dumps({"restored": True}))
    registry.sync()
    assert loader.loads.count(("main", 2)) == 2
    assert served(registry) == ("main", 2)
    assert registry.load_error("main") is None


def test_a_request_for_a_model_whose_version_failed_says_so(
    registry: ModelRegistry, store: ModelStore, loader: FakeLoader
) -> None:
    loader.broken.add(("main", 1))
    publish(store, "main", 1)
    registry.sync()
    with pytest.raises(NoModel, match="version 1 failed to load \\(RuntimeError: bad graph\\)"):
        registry.lease()


# -- activation --------------------------------------------------------------------------------
def test_activate_serves_an_older_version_at_once(registry: ModelRegistry, store: ModelStore) -> None:
    publish(store, "main", 1)
    publish(store, "main", 2)
    registry.sync()
    assert served(registry) == ("main", 2)
    registry.activate("main", 1)
    assert served(registry) == ("main", 1)
    assert store.current("main") == 1
    registry.sync()  # the store agrees: nothing changes
    assert served(registry) == ("main", 1)


def test_activate_refuses_a_version_that_cannot_load_and_changes_nothing(
    registry: ModelRegistry, store: ModelStore, loader: FakeLoader
) -> None:
    publish(store, "main", 1)
    publish(store, "main", 2)
    registry.sync()
    loader.broken.add(("main", 1))
    with pytest.raises(ModelLoadError, match="Model main version 1 cannot be loaded"):
        registry.activate("main", 1)
    assert store.current("main") == 2
    assert served(registry) == ("main", 2)
    with pytest.raises(NotFound, match="has no version 3"):
        registry.activate("main", 3)
