"""A job scans its dataset once: the worker uses the scan POST /retrain kept beside the job's
own copy, and scans a POETS_DATA_ROOT folder again (it may change between submit and run)."""

import shutil
import uuid
from pathlib import Path
from typing import Any, List

import pytest

from poets.engine.data import datasets
from poets.engine.jobs.dataset import scan_summary
from poets.engine.model.config import TrainConfig
from poets.engine.settings import Settings
from poets.engine.store.jobs import JobStore
from worker import tasks

pytestmark = pytest.mark.integration

CONFIG = {"how_many_training_steps": 10}
LABELS = ["daisy", "roses", "tulips"]


@pytest.fixture
def settings(session_home: Path, backbone_dir: Path) -> Settings:
    # The session's home: its bottleneck cache is warm when the session trained on flowers.
    return Settings.from_env({"POETS_HOME": str(session_home), "POETS_BACKBONE_DIR": str(backbone_dir)})


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> List[Path]:
    """The folders datasets.scan is called on from now on, in this process."""
    seen: List[Path] = []
    real = datasets.scan

    def counting(root: Path, *args: Any, **kwargs: Any) -> datasets.Dataset:
        seen.append(Path(root))
        return real(root, *args, **kwargs)

    monkeypatch.setattr(datasets, "scan", counting)
    return seen


def _photos(flowers_dir: Path, root: Path) -> Path:
    for label in LABELS:
        (root / label).mkdir(parents=True)
        for photo in sorted((flowers_dir / label).glob("*.jpg"))[:12]:
            shutil.copy(str(photo), str(root / label / photo.name))
    return root


def test_a_job_from_an_upload_is_scanned_once(
    settings: Settings, flowers_dir: Path, scans: List[Path]
) -> None:
    job_id = uuid.uuid4().hex
    job_dir = settings.uploads_dir / job_id
    root = _photos(flowers_dir, job_dir / "flowers")  # as an archive with one top folder extracts
    (root / "roses" / "notes.txt").write_text("not a photo")
    config = TrainConfig.from_dict(dict(CONFIG))
    # What POST /retrain does for an upload or a dataset=NAME snapshot.
    summary = scan_summary(root, config, settings, job_dir, keep=job_dir / datasets.SCAN_FILE)
    assert scans == [root] and (job_dir / datasets.SCAN_FILE).is_file()
    jobs = JobStore(settings.jobs_db)
    jobs.create("scanned-once", {"dataset": summary}, job_id=job_id)

    out = tasks.run_job(settings, job_id, str(root), "scanned-once", dict(CONFIG))

    record = jobs.get(job_id)
    assert out["state"] == "succeeded", record.error
    assert scans == [root]  # not again in the worker
    assert record.result is not None and record.result["labels"] == LABELS
    assert sum(record.result["metrics"]["images"].values()) == 36
    assert record.result["skipped"] == [
        {"path": "roses/notes.txt", "reason": summary["skipped"][0]["reason"]}
    ]
    assert not job_dir.exists()  # the upload goes when the job ends, its scan with it


def test_a_data_root_folder_is_scanned_again(
    settings: Settings, flowers_dir: Path, tmp_path: Path, scans: List[Path]
) -> None:
    root = _photos(flowers_dir, tmp_path / "data" / "flowers")
    # Even a scan lying beside it is not trusted: the folder may have changed since submit.
    datasets.scan(root).save(root / datasets.SCAN_FILE)
    scans.clear()
    jobs = JobStore(settings.jobs_db)
    job = jobs.create("scanned-again", {})

    out = tasks.run_job(settings, job.id, str(root), "scanned-again", dict(CONFIG))

    assert out["state"] == "succeeded", jobs.get(job.id).error
    assert scans == [root]
