"""A job submitted and run through the engine alone: no server, no queue, no Celery.

Real TensorFlow on the real MobileNet; ``send`` only notes what would go to the queue.
"""

import io
import zipfile
from pathlib import Path
from typing import Any, List, Tuple

import pytest

from poets.engine import phases
from poets.engine.data import datasets
from poets.engine.jobs.run import run_job
from poets.engine.jobs.submit import JobRequest, submit
from poets.engine.settings import Settings
from poets.engine.workspace import Workspace

pytestmark = pytest.mark.integration

STEPS = {"how_many_training_steps": "30"}


@pytest.fixture(scope="module")
def module_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One POETS_HOME for the module: its tests share the bottleneck cache."""
    return tmp_path_factory.mktemp("jobs-home")


@pytest.fixture
def workspace(module_home: Path, backbone_dir: Path, small_dataset: Path) -> Workspace:
    return Workspace(
        Settings.from_env(
            {
                "POETS_HOME": str(module_home),
                "POETS_BACKBONE_DIR": str(backbone_dir),
                "POETS_DATA_ROOT": str(small_dataset.parent),
            }
        )
    )


def _zip(root: Path) -> io.BytesIO:
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        for path in sorted(root.rglob("*.jpg")):
            archive.write(str(path), path.relative_to(root).as_posix())
    data.seek(0)
    return data


def _run(workspace: Workspace, job_id: str, published: List[Tuple[str, int]]) -> Any:
    job = workspace.jobs.get(job_id)
    params = job.params
    return run_job(
        workspace.settings,
        job.id,
        params["image_dir"],
        job.name,
        params["config"],
        "engine-test",
        lambda name, version: published.append((name, version)),
    )


def test_an_uploaded_job_runs_to_a_published_version_on_its_submitted_scan(
    workspace: Workspace, small_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: List[Any] = []
    request = JobRequest(dict(STEPS), name="engine-jobs", archive=_zip(small_dataset))
    job = submit(workspace, request, lambda *message: sent.append(message))
    assert [message[0] for message in sent] == [job.id]
    scans: List[Path] = []
    real_scan = datasets.scan

    def counting(root: Path, *args: Any, **kwargs: Any) -> datasets.Dataset:
        scans.append(root)
        return real_scan(root, *args, **kwargs)

    monkeypatch.setattr(datasets, "scan", counting)
    published: List[Tuple[str, int]] = []

    outcome = _run(workspace, job.id, published)

    record = workspace.jobs.get(job.id)
    assert outcome == {"job_id": job.id, "state": "succeeded", "name": "engine-jobs", "version": 1}
    assert record.state == "succeeded" and record.phase == phases.PUBLISHED and record.version == 1
    assert record.worker == "engine-test" and published == [("engine-jobs", 1)]
    assert record.result is not None and record.result["labels"] == ["daisy", "roses", "tulips"]
    assert record.progress["history"], "the training curve is kept in the record"
    assert scans == []  # the scan submit kept was used
    assert workspace.store.path("engine-jobs", 1).is_dir()
    assert not (workspace.settings.uploads_dir / job.id).exists()  # the upload goes with the job


def test_a_job_cancelled_while_queued_never_trains(workspace: Workspace) -> None:
    job = submit(workspace, JobRequest(dict(STEPS), name="engine-cancel", image_dir="small"), lambda *m: None)
    workspace.jobs.request_cancel(job.id)
    published: List[Tuple[str, int]] = []

    outcome = _run(workspace, job.id, published)

    assert outcome["state"] == workspace.jobs.get(job.id).state == "cancelled"
    assert published == [] and workspace.store.versions("engine-cancel") == []


def test_a_bad_message_fails_its_job_with_a_clear_error(workspace: Workspace, small_dataset: Path) -> None:
    job = workspace.jobs.create("engine-bad", {})
    published: List[Tuple[str, int]] = []

    outcome = run_job(
        workspace.settings, job.id, str(small_dataset), "engine-bad", {"learning_rate": -1}, "engine-test"
    )

    record = workspace.jobs.get(job.id)
    assert outcome["state"] == record.state == "failed" and published == []
    assert record.error is not None and "learning_rate" in record.error
