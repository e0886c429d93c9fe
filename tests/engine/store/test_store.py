"""poets.engine.store.models: atomic publish, version numbers, activate/rollback, idempotence by job id."""

import json
import threading
from pathlib import Path
from typing import Callable, List

import pytest

from poets.engine.errors import InvalidInput, NotFound
from poets.engine.export.saved_model import METADATA_FILE
from poets.engine.store.models import ModelStore


def writer(job_id: str = "", marker: str = "") -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        (folder / "saved_model.pb").write_bytes(b"model " + marker.encode())
        (folder / METADATA_FILE).write_text(json.dumps({"job_id": job_id or None}))

    return write


def visible(store: ModelStore, name: str) -> List[str]:
    return sorted(p.name for p in (store.root / name).iterdir()) if (store.root / name).is_dir() else []


def test_versions_increment_and_latest_is_current(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    assert store.current("flowers") is None and store.versions("flowers") == []
    assert [store.publish("flowers", writer()) for _ in range(3)] == [1, 2, 3]
    assert store.versions("flowers") == [1, 2, 3]
    assert store.current("flowers") == 3
    assert store.names() == ["flowers"]
    assert store.state() == (("flowers", 3),)
    assert (store.path("flowers", 2) / "saved_model.pb").is_file()


def test_failing_writer_leaves_no_visible_version(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.publish("flowers", writer())

    def broken(folder: Path) -> None:
        (folder / "saved_model.pb").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        store.publish("flowers", broken)
    assert store.versions("flowers") == [1]
    assert visible(store, "flowers") == ["1", "CURRENT"]
    assert list((tmp_path / ".staging").iterdir()) == []
    assert store.publish("flowers", writer()) == 2


def test_activate_and_rollback(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    for _ in range(3):
        store.publish("flowers", writer())
    store.activate("flowers", 1)
    assert store.current("flowers") == 1
    # A new version becomes current by default; activate=False keeps the pin.
    assert store.publish("flowers", writer(), activate=False) == 4
    assert store.current("flowers") == 1
    store.activate("flowers", 4)
    assert store.current("flowers") == 4
    with pytest.raises(NotFound, match="no version 9"):
        store.activate("flowers", 9)
    assert store.current("flowers") == 4


def test_publish_is_idempotent_by_job_id(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    first = store.publish("flowers", writer("job-1", "a"), job_id="job-1")
    again = store.publish("flowers", writer("job-1", "b"), job_id="job-1")
    assert first == again == 1
    assert (store.path("flowers", 1) / "saved_model.pb").read_bytes() == b"model a"
    assert store.publish("flowers", writer("job-2"), job_id="job-2") == 2
    assert store.find_job("flowers", "job-1") == 1 and store.find_job("flowers", "nope") is None


def test_concurrent_publishers_get_distinct_versions(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    got: List[int] = []
    threads = [
        threading.Thread(target=lambda: got.append(store.publish("flowers", writer()))) for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    assert store.versions("flowers") == [1, 2, 3, 4, 5, 6]


def test_bad_names_are_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    for name in ("", "../evil", ".hidden", "a/b", "x" * 65):
        with pytest.raises(InvalidInput):
            store.publish(name, writer())
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize(
    "names, meant",
    [
        (["default", "cats"], "default"),  # the default model when it exists
        (["cats"], "cats"),  # else the only model
        (["cats", "dogs"], None),  # several: the caller asks for a name
        ([], None),
    ],
)
def test_the_model_meant_when_none_is_named(names: List[str], meant: str) -> None:
    """The one rule for the API's /label and the CLI's model folders (POETS_DEFAULT_MODEL)."""
    from poets.engine.store.models import model_meant

    assert model_meant(names, "default") == meant
