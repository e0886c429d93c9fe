"""The worker's periodic sweep (OrphanWatch) removes what crashed dataset imports left, as it
removes the model store's stale staging folders (issue 23.10)."""

import os
import time
from pathlib import Path

import pytest

from poets.engine.data import leftovers
from poets.engine.settings import Settings
from tests.waiting import wait_until

pytestmark = pytest.mark.unit


def _age(path: Path) -> Path:
    then = time.time() - 7200
    os.utime(str(path), (then, then))
    return path


def test_the_worker_sweeps_import_leftovers_periodically(tmp_path: Path) -> None:
    from worker.celery_app import OrphanWatch, app

    settings = Settings(home=tmp_path / "home", worker_heartbeat_s=0.1)
    watch = OrphanWatch(settings, app)
    watch.start()
    try:
        # Left after the first sweep: the next ones find them.
        crashed = settings.datasets_root / "yard" / ".incoming-0123"
        crashed.mkdir(parents=True)
        upload = leftovers.import_upload(settings.uploads_dir)
        _age(crashed)
        _age(upload)
        wait_until(lambda: not crashed.exists() and not upload.exists(), 60, "the leftovers swept")
    finally:
        watch.stop()
    assert (settings.datasets_root / "yard").is_dir()
