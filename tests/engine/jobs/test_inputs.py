"""Job inputs through the bucket: submit on one machine, the worker on another with its own
POETS_HOME and nothing shared but the S3 endpoint (moto in server mode) and the job records.

The job records stand in for Redis here: both sides' workspaces read one JobStore (what a
redis:// broker gives machines that share no disk). Everything else each side keeps under
its own home.
"""

import io
import os
import tarfile
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from poets.engine.data import datasets
from poets.engine.data.library.snapshot import ORIGIN_FILE, snapshot_origin
from poets.engine.errors import Forbidden, InvalidArchive, InvalidInput, NotFound, StoreUnavailable
from poets.engine.jobs import inputs as inputs_module
from poets.engine.jobs.dataset import dataset_confinement, job_folder, submitted_scan
from poets.engine.jobs.inputs import BucketInputs, JobInputs, input_key
from poets.engine.jobs.run import run_job
from poets.engine.jobs.submit import JobRequest, submit
from poets.engine.model.config import TrainConfig
from poets.engine.settings import Settings
from poets.engine.store.bucket import Bucket
from poets.engine.store.jobs import JobStore
from poets.engine.workspace import Workspace
from tests.engine.imaging import noise_jpeg
from tests.net import free_port
from tests.s3 import MotoServer

pytestmark = pytest.mark.integration

LABELS = ("cats", "dogs")


def _write_dataset(root: Path, per_label: int = 4) -> Path:
    for index, label in enumerate(LABELS):
        (root / label).mkdir(parents=True)
        for n in range(per_label):
            (root / label / "{}.jpg".format(n)).write_bytes(noise_jpeg(seed=100 * index + n))
    return root


def _zip(files: Dict[str, bytes]) -> io.BytesIO:
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        for name, content in sorted(files.items()):
            archive.writestr(name, content)
    data.seek(0)
    return data


def _dataset_zip(root: Path, top: str = "top/") -> io.BytesIO:
    return _zip({top + p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.jpg"))})


class Machine:
    """One side: its own POETS_HOME and data root, the shared bucket, the shared job records."""

    def __init__(self, root: Path, url: str, s3: MotoServer, records: List[JobStore], **extra: str) -> None:
        env = {
            "POETS_HOME": str(root / "home"),
            "POETS_STORE_URL": url,
            "POETS_S3_ENDPOINT_URL": s3.url,
            "POETS_STORE_TIMEOUT_S": "1",
        }
        env.update(extra)
        self.settings = Settings.from_env(env)
        self.workspace = Workspace(self.settings)
        if records:  # the second machine reads the first one's records, as Redis would share them
            self.workspace._parts["jobs"] = records[0]
        records.append(self.workspace.jobs)

    @property
    def uploads(self) -> List[str]:
        folder = self.settings.uploads_dir
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture
def bucket_url(s3_server: MotoServer) -> str:
    return s3_server.bucket("deploy")


@pytest.fixture
def sides(tmp_path: Path, bucket_url: str, s3_server: MotoServer) -> Tuple[Machine, Machine]:
    """(the API node, the worker): each with its own home and its own copy of the data root."""
    records: List[JobStore] = []
    for side in ("api", "worker"):
        _write_dataset(tmp_path / side / "data" / "pets")
    api = Machine(
        tmp_path / "api", bucket_url, s3_server, records, POETS_DATA_ROOT=str(tmp_path / "api" / "data")
    )
    worker = Machine(
        tmp_path / "worker", bucket_url, s3_server, records, POETS_DATA_ROOT=str(tmp_path / "worker" / "data")
    )
    return api, worker


@pytest.fixture
def paused(s3_server: MotoServer) -> Iterator[MotoServer]:
    """Resumes the server after a test that pauses it, whatever happens."""
    yield s3_server
    if s3_server.process is not None:
        s3_server.resume()


def _bucket(machine: Machine) -> Bucket:
    bucket = machine.workspace.bucket
    assert bucket is not None
    return bucket


def _keys(machine: Machine, prefix: str = "") -> List[str]:
    return [info.key for info in _bucket(machine).list(prefix)]


def _sent() -> Any:
    return lambda *message: None


def test_a_local_store_keeps_the_inputs_where_they_are(tmp_path: Path) -> None:
    workspace = Workspace(Settings.from_env({"POETS_HOME": str(tmp_path)}))
    inputs = workspace.job_inputs
    assert type(inputs) is JobInputs and workspace.bucket is None
    assert (
        inputs.dataset("j1", "/somewhere/else", {"source": "upload", "dataset_path": "."})
        == "/somewhere/else"
    )


def test_an_upload_travels_through_the_bucket_and_the_worker_trains_on_its_own_copy(
    sides: Tuple[Machine, Machine], tmp_path: Path
) -> None:
    api, worker = sides
    job = submit(api.workspace, JobRequest(archive=_dataset_zip(_write_dataset(tmp_path / "pets"))), _sent())

    assert isinstance(api.workspace.job_inputs, BucketInputs)
    assert _keys(api) == [input_key(job.id)]
    assert api.uploads == []  # the API node keeps no copy, nor the tar it sent
    packed = tmp_path / "packed.tar"
    assert _bucket(api).download(input_key(job.id), packed)
    with tarfile.open(str(packed)) as archive:  # plain tar, the kept scan included
        members = {member.name: member for member in archive.getmembers()}
    assert datasets.SCAN_FILE in members and members["top/cats/0.jpg"].isfile()
    assert job.params["dataset_path"] == "top" and job.params["source"] == "upload"

    # The worker: the message names the API node's folder; it trains on its own.
    mine = worker.workspace.job_inputs.dataset(job.id, job.params["image_dir"], job.params)
    own = job_folder(worker.settings, job.id)
    assert mine == str(own / "top") and mine != job.params["image_dir"]
    assert sorted(p.name for p in (own / "top" / "cats").iterdir()) == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]
    assert worker.uploads == [job.id]  # the download and the extraction aside are gone
    assert dataset_confinement(worker.settings, job.id, mine) == own
    scanned = submitted_scan(worker.settings, job.id, mine, TrainConfig.from_dict(job.params["config"]))
    assert scanned is not None and scanned.labels == list(LABELS) and len(scanned.images) == 8

    worker.workspace.job_inputs.drop(job.id)
    assert worker.uploads == [] and _keys(api) == []


def test_a_dataset_snapshot_travels_with_its_origin(sides: Tuple[Machine, Machine]) -> None:
    api, worker = sides
    library = api.workspace.datasets
    library.create("yard")
    for index, label in enumerate(LABELS):
        library.add(
            "yard", label, [("{}.jpg".format(n), noise_jpeg(seed=500 + 10 * index + n)) for n in range(3)]
        )

    job = submit(api.workspace, JobRequest(dataset="yard"), _sent())

    assert _keys(api) == [input_key(job.id)] and api.uploads == []
    mine = worker.workspace.job_inputs.dataset(job.id, job.params["image_dir"], job.params)
    # The snapshot's hard links travel as plain files (the safe extractor refuses links).
    assert mine == str(job_folder(worker.settings, job.id)) and (Path(mine) / ORIGIN_FILE).is_file()
    assert snapshot_origin(Path(mine)) == "yard"
    assert len(list(Path(mine).glob("*/*.jpg"))) == 6


def test_a_data_root_folder_is_read_from_the_workers_own_data_root(sides: Tuple[Machine, Machine]) -> None:
    api, worker = sides
    job = submit(api.workspace, JobRequest(image_dir="pets"), _sent())

    assert _keys(api) == [] and api.uploads == []
    mine = worker.workspace.job_inputs.dataset(job.id, job.params["image_dir"], job.params)
    worker_root = Path(str(worker.settings.data_root))
    assert mine == os.path.realpath(str(worker_root / "pets")) != job.params["image_dir"]
    assert dataset_confinement(worker.settings, job.id, mine) == worker_root
    no_root = BucketInputs(Settings(home=worker.settings.home), _bucket(worker))
    with pytest.raises(Forbidden) as refused:
        no_root.dataset(job.id, job.params["image_dir"], job.params)
    assert "POETS_DATA_ROOT" in refused.value.detail


def test_a_redelivery_uses_the_copy_here_or_downloads_it_again(
    sides: Tuple[Machine, Machine], tmp_path: Path
) -> None:
    api, worker = sides
    job = submit(api.workspace, JobRequest(archive=_dataset_zip(_write_dataset(tmp_path / "pets"))), _sent())
    inputs = worker.workspace.job_inputs
    first = inputs.dataset(job.id, job.params["image_dir"], job.params)
    marker = Path(first) / "cats" / "kept.txt"
    marker.write_text("this machine's copy")

    # Delivered again to this worker: its complete copy is used as it is.
    assert inputs.dataset(job.id, job.params["image_dir"], job.params) == first and marker.exists()
    # Delivered to a worker without the copy (another machine, or this one's copy gone): fetched again.
    JobInputs.drop(inputs, job.id)  # the local copy only
    assert inputs.dataset(job.id, job.params["image_dir"], job.params) == first and not marker.exists()
    # The object gone (the job ended elsewhere): a clear error, nothing left here.
    inputs.drop(job.id)
    with pytest.raises(NotFound) as gone:
        inputs.dataset(job.id, job.params["image_dir"], job.params)
    assert "Submit the job again" in gone.value.detail and worker.uploads == []


def test_an_object_that_cannot_be_trusted_is_refused_by_the_safe_extractor(
    sides: Tuple[Machine, Machine], tmp_path: Path
) -> None:
    _, worker = sides
    evil = tmp_path / "evil.tar"
    with tarfile.open(str(evil), "w") as archive:
        link = tarfile.TarInfo("cats/passwd.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    _bucket(worker).upload(evil, input_key("evil1"))
    params = {"source": "upload", "dataset_path": "."}
    with pytest.raises(InvalidArchive):
        worker.workspace.job_inputs.dataset("evil1", "/api/node/path", params)
    assert worker.uploads == []
    with pytest.raises(InvalidInput):
        worker.workspace.job_inputs.dataset("evil1", "/x", {"source": "upload", "dataset_path": "../.."})


def test_a_bucket_that_cannot_be_reached_refuses_every_job_and_keeps_nothing(
    sides: Tuple[Machine, Machine], tmp_path: Path, paused: MotoServer
) -> None:
    api, _ = sides
    archive = _dataset_zip(_write_dataset(tmp_path / "pets"))
    paused.pause()
    for request in (JobRequest(archive=archive), JobRequest(image_dir="pets")):
        with pytest.raises(StoreUnavailable) as refused:
            submit(api.workspace, request, _sent())
        assert "cannot be reached" in refused.value.detail
    paused.resume()
    assert api.workspace.jobs.list() == [] and api.uploads == [] and _keys(api) == []


def test_a_bucket_lost_during_the_upload_leaves_no_job_no_copy_and_no_object(
    sides: Tuple[Machine, Machine], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, _ = sides
    bucket = _bucket(api)
    real_pack = inputs_module.pack

    def pack_then_lose_the_bucket(folder: Path, target: Path) -> None:
        real_pack(folder, target)
        # The network to the bucket goes (a refused connection: nothing of the PUT arrives).
        monkeypatch.setattr(bucket, "endpoint_url", "http://127.0.0.1:{}".format(free_port()))
        monkeypatch.setattr(bucket, "_clients", {})

    monkeypatch.setattr(inputs_module, "pack", pack_then_lose_the_bucket)
    with pytest.raises(StoreUnavailable) as refused:
        submit(api.workspace, JobRequest(archive=_dataset_zip(_write_dataset(tmp_path / "pets"))), _sent())
    assert "inputs/" in refused.value.detail
    monkeypatch.undo()
    assert api.workspace.jobs.list() == [] and api.uploads == [] and _keys(api) == []


def test_the_sweep_removes_inputs_of_ended_and_unknown_jobs_only(
    sides: Tuple[Machine, Machine], tmp_path: Path
) -> None:
    api, worker = sides
    jobs = api.workspace.jobs
    queued, ended = (
        submit(api.workspace, JobRequest(archive=_dataset_zip(_write_dataset(tmp_path / n))), _sent())
        for n in ("a", "b")
    )
    inputs = worker.workspace.job_inputs
    for job in (queued, ended):
        inputs.dataset(job.id, job.params["image_dir"], job.params)  # copies on the worker
    jobs.finish(ended.id, "failed", error="its worker died; it ran again elsewhere")
    _bucket(api).put(input_key("0" * 32), b"a submit that died before recording its job")
    leftover = worker.settings.uploads_dir / (inputs_module.FETCH_PREFIX + "x")
    leftover.mkdir()

    assert inputs.sweep(jobs) == []  # all younger than an hour
    removed = inputs.sweep(jobs, older_than_s=0)

    assert sorted(removed) == sorted(
        [input_key(ended.id), input_key("0" * 32), "uploads/" + ended.id, "uploads/" + leftover.name]
    )
    assert _keys(api) == [input_key(queued.id)] and worker.uploads == [queued.id]


def test_a_worker_with_its_own_home_fetches_the_input_trains_and_keeps_misclassified_in_the_bucket(
    sides: Tuple[Machine, Machine], backbone_dir: Path, flowers_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api, worker_side = sides
    # Two classes of the same photos: of each identical pair in the test split, one is wrong.
    photos = {p.name: p.read_bytes() for p in sorted((flowers_dir / "daisy").glob("*.jpg"))[:15]}
    archive = _zip(
        {"{}/{}".format(label, name): data for label in ("same", "twin") for name, data in photos.items()}
    )
    options = {"how_many_training_steps": "10", "testing_percentage": "40"}
    job = submit(api.workspace, JobRequest(options, name="twins", archive=archive), _sent())
    worker = Settings.from_env(
        {
            "POETS_HOME": str(worker_side.settings.home),
            "POETS_BACKBONE_DIR": str(backbone_dir),
            "POETS_STORE_URL": str(worker_side.settings.store_url),
            "POETS_S3_ENDPOINT_URL": str(worker_side.settings.s3_endpoint_url),
        }
    )
    shared = api.workspace.jobs
    monkeypatch.setattr(Workspace, "jobs", property(lambda self: shared))  # as Redis shares them

    outcome = run_job(worker, job.id, job.params["image_dir"], job.name, job.params["config"], "worker-b")

    assert outcome["state"] == "succeeded", outcome
    record = shared.get(job.id)
    listed = record.result["metrics"]["misclassified"]  # type: ignore[index]
    assert listed and all(entry["image"] for entry in listed)
    # The input went with the job, on both machines and in the bucket; the copies are there.
    assert api.uploads == [] and worker_side.uploads == []
    assert _keys(api, "inputs/") == []
    copies = _keys(api, "misclassified/{}/".format(job.id))
    assert copies == sorted("misclassified/{}/{}.jpg".format(job.id, n) for n in range(len(listed)))
    assert not worker.jobs_dir.exists() and not api.settings.jobs_dir.exists()  # nothing local
    first = _bucket(api).get(copies[0])
    assert first == photos[listed[0]["path"].split("/")[1]]
