"""The SQLite job records opened by several processes at once on a new file."""

import threading
from pathlib import Path
from typing import List

import pytest

from poets.engine.store.jobs import JobStore

pytestmark = pytest.mark.unit


def open_at_once(path: Path, stores: int) -> List[BaseException]:
    barrier = threading.Barrier(stores)
    errors: List[BaseException] = []

    def open_store() -> None:
        barrier.wait()
        try:
            JobStore(path)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_stores_opening_a_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    # An API and a worker starting together on a fresh POETS_HOME: each switches the new file
    # to WAL, which takes a lock that SQLite's busy timeout does not wait for.
    for round_ in range(20):
        assert open_at_once(tmp_path / "{}.sqlite3".format(round_), 6) == []
