"""Submitting a job without a server: the checks, the dataset's three sources, confinement,
the scan kept for the run, and what an unreachable queue leaves behind."""

import io
import shutil
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from poets.engine.data import datasets
from poets.engine.errors import Forbidden, InvalidDataset, InvalidInput, Unavailable
from poets.engine.jobs.dataset import dataset_confinement, job_folder, scan_file, submitted_scan
from poets.engine.jobs.submit import JobRequest, submit
from poets.engine.model.config import TrainConfig
from poets.engine.settings import Settings
from poets.engine.workspace import Workspace
from tests.engine.imaging import noise_jpeg

pytestmark = pytest.mark.unit

LABELS = ("cats", "dogs")

Sent = List[Tuple[str, str, str, Dict[str, Any]]]


def _write_dataset(root: Path, labels: Tuple[str, ...] = LABELS, per_label: int = 5) -> Path:
    for index, label in enumerate(labels):
        (root / label).mkdir(parents=True)
        for n in range(per_label):
            (root / label / "{}.jpg".format(n)).write_bytes(noise_jpeg(seed=100 * index + n))
    return root


def _zip(root: Path) -> io.BytesIO:
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        for path in sorted(root.rglob("*.jpg")):
            archive.write(str(path), "top/" + path.relative_to(root).as_posix())
    data.seek(0)
    return data


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Workspace]:
    data_root = tmp_path / "data"
    _write_dataset(data_root / "pets")
    yield Workspace(
        Settings.from_env({"POETS_HOME": str(tmp_path / "home"), "POETS_DATA_ROOT": str(data_root)})
    )


@pytest.fixture
def sent() -> Sent:
    return []


def _send(sent: Sent) -> Any:
    return lambda *message: sent.append(message)


def _leftovers(workspace: Workspace) -> List[Path]:
    uploads = workspace.settings.uploads_dir
    return sorted(uploads.iterdir()) if uploads.is_dir() else []


def test_an_upload_is_extracted_scanned_recorded_and_sent(
    workspace: Workspace, tmp_path: Path, sent: Sent
) -> None:
    archive = _zip(_write_dataset(tmp_path / "pets"))
    request = JobRequest({"how_many_training_steps": "20"}, name="pets", archive=archive)

    job = submit(workspace, request, _send(sent))

    settings = workspace.settings
    root = job_folder(settings, job.id) / "top"
    assert job.state == "queued" and job.name == "pets"
    assert job.params["source"] == "upload" and job.params["dataset_path"] == "top"
    assert job.params["image_dir"] == str(root)
    assert job.params["dataset"]["images"] == {"cats": 5, "dogs": 5}
    assert job.params["config"]["how_many_training_steps"] == 20
    assert sent == [(job.id, str(root), "pets", job.params["config"])]
    assert workspace.jobs.get(job.id).state == "queued"
    # The handshake: submit keeps the scan beside the job's own copy, the run takes it.
    assert dataset_confinement(settings, job.id, str(root)) == job_folder(settings, job.id)
    kept = scan_file(settings, job.id, str(root))
    assert kept is not None and kept.is_file()
    scanned = submitted_scan(settings, job.id, str(root), TrainConfig.from_dict(job.params["config"]))
    assert scanned is not None and scanned.labels == list(LABELS) and len(scanned.images) == 10


def test_a_data_root_folder_is_confined_to_the_root_and_scanned_again_at_run(
    workspace: Workspace, sent: Sent
) -> None:
    job = submit(workspace, JobRequest(image_dir="pets"), _send(sent))

    settings = workspace.settings
    root = Path(job.params["image_dir"])
    assert job.params["source"] == "image_dir" and job.params["dataset_path"] == "pets"
    assert job.name == settings.default_model and len(sent) == 1
    assert dataset_confinement(settings, job.id, str(root)) == Path(str(settings.data_root))
    assert scan_file(settings, job.id, str(root)) is None
    assert submitted_scan(settings, job.id, str(root), TrainConfig()) is None
    assert not list(Path(str(settings.data_root)).rglob(datasets.SCAN_FILE)) and not _leftovers(workspace)


def test_a_library_dataset_is_trained_on_a_snapshot(workspace: Workspace, sent: Sent) -> None:
    library = workspace.datasets
    library.create("yard")
    for index, label in enumerate(LABELS):
        library.add(
            "yard", label, [("{}.jpg".format(n), noise_jpeg(seed=500 + 10 * index + n)) for n in range(4)]
        )

    job = submit(workspace, JobRequest(dataset="yard"), _send(sent))

    root = Path(job.params["image_dir"])
    assert job.params["source"] == "dataset" and job.params["dataset_name"] == "yard"
    assert job_folder(workspace.settings, job.id) in (root, *root.parents)
    assert scan_file(workspace.settings, job.id, str(root)) is not None


@pytest.mark.parametrize(
    "request_, detail",
    [
        (JobRequest(), "No dataset"),
        (JobRequest(image_dir="pets", archive=io.BytesIO(b"PK")), "not both"),
        (JobRequest(image_dir="pets", dataset="yard"), "not several"),
        (JobRequest({"how_many_training_steps": "0"}, image_dir="pets"), "how_many_training_steps"),
        (JobRequest({"no_such_option": "1"}, image_dir="pets"), "no_such_option"),
        (JobRequest(name="../up", image_dir="pets"), "name"),
    ],
)
def test_bad_requests_are_refused_before_anything_is_written(
    workspace: Workspace, sent: Sent, request_: JobRequest, detail: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        submit(workspace, request_, _send(sent))
    assert detail in refused.value.detail
    assert sent == [] and workspace.jobs.list() == [] and not _leftovers(workspace)


def test_a_folder_outside_the_data_root_is_forbidden(
    workspace: Workspace, tmp_path: Path, sent: Sent
) -> None:
    outside = _write_dataset(tmp_path / "outside")
    for image_dir in (str(outside), "../outside", "."):
        with pytest.raises(Forbidden):
            submit(workspace, JobRequest(image_dir=image_dir), _send(sent))
    assert sent == [] and workspace.jobs.list() == []


def test_a_link_out_of_the_data_root_is_forbidden_at_submit(
    workspace: Workspace, tmp_path: Path, sent: Sent
) -> None:
    outside = _write_dataset(tmp_path / "outside", labels=("birds",))
    (Path(str(workspace.settings.data_root)) / "pets" / "birds").symlink_to(outside / "birds")
    with pytest.raises(Forbidden) as refused:
        submit(workspace, JobRequest(image_dir="pets"), _send(sent))
    assert "symbolic link" in refused.value.detail and str(outside) not in refused.value.detail
    assert sent == [] and workspace.jobs.list() == []


def test_a_refused_upload_leaves_nothing_behind(workspace: Workspace, tmp_path: Path, sent: Sent) -> None:
    one_class = _zip(_write_dataset(tmp_path / "one", labels=("cats",)))
    with pytest.raises(InvalidDataset):
        submit(workspace, JobRequest(archive=one_class), _send(sent))
    assert sent == [] and workspace.jobs.list() == [] and not _leftovers(workspace)


def test_an_unreachable_queue_fails_the_recorded_job_and_drops_its_upload(
    workspace: Workspace, tmp_path: Path
) -> None:
    def down(*message: Any) -> None:
        raise Unavailable("The job queue is unreachable.")

    archive = _zip(_write_dataset(tmp_path / "pets"))
    with pytest.raises(Unavailable):
        submit(workspace, JobRequest(archive=archive), down)
    [job] = workspace.jobs.list()
    assert job.state == "failed" and job.error == "The job queue is unreachable."
    assert not _leftovers(workspace)


def test_an_upload_folder_is_its_own_confinement_even_with_a_data_root(tmp_path: Path) -> None:
    settings = Settings.from_env({"POETS_HOME": str(tmp_path / "home"), "POETS_DATA_ROOT": str(tmp_path)})
    own = job_folder(settings, "abc")
    assert dataset_confinement(settings, "abc", str(own / "top")) == own
    assert dataset_confinement(settings, "abc", str(own)) == own
    # Another job's folder, or one whose name only starts like it, is not this job's own.
    assert dataset_confinement(settings, "abc", str(own) + "d") == tmp_path
    assert dataset_confinement(settings, "ab", str(own)) == tmp_path
    shutil.rmtree(str(tmp_path / "home"), ignore_errors=True)
    without_root = Settings.from_env({"POETS_HOME": str(tmp_path / "home")})
    assert dataset_confinement(without_root, "abc", str(tmp_path / "x")) == tmp_path / "x"
