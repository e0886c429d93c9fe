"""POST /retrain validation and enqueueing, /jobs, and a broker that is down."""

import io
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from poets.engine.store.jobs import JobStore
from tests.app.conftest import assert_error, settings_for
from tests.net import free_port

MAX_ARCHIVE = 3 * 1024 * 1024
LABELS = ("daisy", "roses", "tulips")


@pytest.fixture(scope="module")
def photos(flowers_dir: Path) -> Dict[str, List[Tuple[str, bytes]]]:
    """Four photos of three labels, as (name, bytes)."""
    return {label: [(p.name, p.read_bytes()) for p in sorted((flowers_dir / label).glob("*.jpg"))[:4]]
            for label in LABELS}


def make_zip(members: List[Tuple[str, bytes]], **infos: Any) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return out.getvalue()


def make_tgz(members: List[Tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def dataset_members(photos: Dict[str, List[Tuple[str, bytes]]], prefix: str = "",
                    rename: Any = None) -> List[Tuple[str, bytes]]:
    members: List[Tuple[str, bytes]] = []
    for label, files in photos.items():
        folder = rename(label) if rename else label
        members.extend(("{}{}/{}".format(prefix, folder, name), data) for name, data in files)
    return members


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: Any, photos: Dict[str, List[Tuple[str, bytes]]]) -> Path:
    root = tmp_path_factory.mktemp("data-root")
    for label, files in photos.items():
        (root / "flowers" / label).mkdir(parents=True)
        for name, data in files:
            (root / "flowers" / label / name).write_bytes(data)
    (root / "outside-target").mkdir()
    return root


@pytest.fixture(scope="module")
def server(serve: Any, backbone_dir: Path, tmp_path_factory: Any, data_root: Path) -> Any:
    home = tmp_path_factory.mktemp("retrain-home")
    return serve(settings_for(home, backbone_dir, data_root=data_root, max_archive_bytes=MAX_ARCHIVE,
                              max_training_steps=5000))


@pytest.fixture(scope="module")
def client(server: Any) -> Any:
    with server.client() as client:
        yield client


def post_archive(client: Any, data: bytes, filename: str = "data.zip", **fields: Any) -> Any:
    return client.post("/retrain", files={"file": (filename, data, "application/octet-stream")},
                       data={k: str(v) for k, v in fields.items()})


# -- success ---------------------------------------------------------------------------------------

def test_zip_with_one_top_folder_and_unicode_names_is_queued(client: Any, server: Any,
                                                           photos: Any) -> None:
    members = dataset_members(photos, prefix="my flowers/",
                              rename="{} é 花".format)
    response = post_archive(client, make_zip(members), how_many_training_steps=50,
                            learning_rate=0.05, flip_left_right="true", name="petals")
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == "/jobs/{}".format(job["job_id"])
    assert job["state"] == "queued" and job["name"] == "petals"
    assert job["params"]["config"]["how_many_training_steps"] == 50
    assert job["params"]["config"]["flip_left_right"] is True
    assert sorted(job["params"]["dataset"]["labels"]) == sorted("{} é 花".format(label) for label in LABELS)
    image_dir = Path(job["params"]["image_dir"])
    assert image_dir.is_dir() and server.settings.uploads_dir in image_dir.parents
    # The record the worker will pick up.
    record = JobStore(server.settings.jobs_db).get(job["job_id"])
    assert record.state == "queued"
    fetched = client.get(response.headers["location"]).json()
    assert fetched["state"] == "queued" and fetched["progress"] == {}
    assert client.get("/jobs").json()["jobs"][0]["job_id"] == job["job_id"]
    # Cancel: a queued job is cancelled at once; a second cancel conflicts.
    cancelled = client.delete("/jobs/{}".format(job["job_id"]))
    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert_error(client.delete("/jobs/{}".format(job["job_id"])), 409, "conflict")
    assert_error(client.get("/jobs/nope"), 404, "not_found")


def test_tar_gz_at_top_level_is_queued(client: Any, photos: Any) -> None:
    response = post_archive(client, make_tgz(dataset_members(photos)), "data.tar.gz",
                            architecture="mobilenet_0.5_224")
    assert response.status_code == 202, response.text
    # One spelling per architecture in the record (and in the version's metadata).
    assert response.json()["params"]["config"]["architecture"] == "mobilenet_0.50_224"


def test_image_dir_inside_data_root(client: Any, data_root: Path) -> None:
    response = client.post("/retrain", data={"image_dir": "flowers"})
    assert response.status_code == 202, response.text
    assert response.json()["params"]["image_dir"] == str((data_root / "flowers").resolve())
    absolute = client.post("/retrain", data={"image_dir": str(data_root / "flowers")})
    assert absolute.status_code == 202, absolute.text


# -- refused before anything is queued -----------------------------------------------------------

@pytest.mark.parametrize("image_dir", ["..", "../outside", "/etc", "flowers/../../x"])
def test_image_dir_outside_data_root(client: Any, image_dir: str) -> None:
    assert_error(client.post("/retrain", data={"image_dir": image_dir}), 403, "forbidden")


def test_not_an_archive(client: Any) -> None:
    body = assert_error(post_archive(client, b"PK\x03\x04 not really a zip" * 10), 400,
                        "invalid_archive")
    assert ".zip" in body["detail"] or "corrupt" in body["detail"]


def test_truncated_zip(client: Any, photos: Any) -> None:
    data = make_zip(dataset_members(photos))
    assert_error(post_archive(client, data[: len(data) // 2]), 400, "invalid_archive")


def test_dot_dot_path(client: Any, photos: Any) -> None:
    members = [*dataset_members(photos), ("../evil.jpg", photos["daisy"][0][1])]
    body = assert_error(post_archive(client, make_zip(members)), 400, "invalid_archive")
    assert "'..'" in body["detail"]


def test_absolute_path(client: Any, photos: Any) -> None:
    members = [*dataset_members(photos), ("/tmp/evil.jpg", photos["daisy"][0][1])]
    body = assert_error(post_archive(client, make_zip(members)), 400, "invalid_archive")
    assert "absolute" in body["detail"]


def test_symlink_in_zip(client: Any, photos: Any) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in dataset_members(photos):
            archive.writestr(name, data)
        link = zipfile.ZipInfo("daisy/link.jpg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    body = assert_error(post_archive(client, out.getvalue()), 400, "invalid_archive")
    assert "link" in body["detail"]


def test_symlink_in_tar(client: Any, photos: Any) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        link = tarfile.TarInfo("daisy/link.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        archive.addfile(link)
    body = assert_error(post_archive(client, out.getvalue(), "d.tgz"), 400, "invalid_archive")
    assert "link" in body["detail"]


def test_zip_bomb_by_ratio(client: Any, photos: Any) -> None:
    members = [*dataset_members(photos), ("daisy/zeros.jpg", b"\x00" * (20 * 1024 * 1024))]
    data = make_zip(members)
    assert len(data) < MAX_ARCHIVE
    body = assert_error(post_archive(client, data), 400, "invalid_archive")
    assert "bomb" in body["detail"]


def test_nested_archive(client: Any, photos: Any) -> None:
    inner = make_zip(dataset_members(photos))
    members = [*dataset_members(photos), ("daisy/more.zip", inner)]
    body = assert_error(post_archive(client, make_zip(members)), 400, "invalid_archive")
    assert "nested" in body["detail"]


def test_single_class(client: Any, photos: Any) -> None:
    members = [("daisy/{}".format(name), data) for name, data in photos["daisy"]]
    body = assert_error(post_archive(client, make_zip(members)), 422, "invalid_dataset")
    assert "two" in body["detail"]


def test_empty_class(client: Any, photos: Any) -> None:
    members = [*dataset_members(photos), ("lilies/readme.txt", b"no images here")]
    body = assert_error(post_archive(client, make_zip(members)), 422, "invalid_dataset")
    assert "lilies" in body["detail"]


def test_unknown_architecture(client: Any, photos: Any) -> None:
    body = assert_error(post_archive(client, make_zip(dataset_members(photos)),
                                     architecture="resnet_9000"), 422, "invalid_input")
    assert "mobilenet_1.0_224" in body["detail"]


def test_export_formats(client: Any, photos: Any) -> None:
    response = post_archive(client, make_zip(dataset_members(photos)), export="poets_graph,tflite")
    assert response.status_code == 202, response.text
    assert response.json()["params"]["config"]["export"] == "poets_graph,tflite"
    client.delete("/jobs/{}".format(response.json()["job_id"]))
    body = assert_error(post_archive(client, make_zip(dataset_members(photos)), export="onnx"),
                        422, "invalid_input")
    assert "poets_graph" in body["detail"] and "tflite" in body["detail"]


@pytest.mark.parametrize("steps", ["0", "5001", "-3", "many"])
def test_out_of_range_steps(client: Any, photos: Any, steps: str) -> None:
    body = assert_error(post_archive(client, make_zip(dataset_members(photos)),
                                     how_many_training_steps=steps), 422, "invalid_input")
    assert "how_many_training_steps" in body["detail"]


def test_unknown_option(client: Any, photos: Any) -> None:
    body = assert_error(post_archive(client, make_zip(dataset_members(photos)), learnin_rate="0.1"),
                        422, "invalid_input")
    assert "learning_rate" in body["detail"]


def test_no_dataset(client: Any) -> None:
    assert_error(client.post("/retrain", data={"how_many_training_steps": "10"}), 422,
                 "invalid_input")


def test_wrong_content_type(client: Any) -> None:
    assert_error(client.post("/retrain", json={"image_dir": "flowers"}), 415,
                 "unsupported_media_type")


def test_archive_over_the_limit(client: Any) -> None:
    body = assert_error(post_archive(client, b"\0" * (MAX_ARCHIVE + 1)), 413, "too_large")
    assert "POETS_MAX_ARCHIVE_BYTES" in body["detail"]


def test_nothing_left_behind_by_refused_uploads(server: Any) -> None:
    uploads = server.settings.uploads_dir
    leftovers = [p for p in uploads.iterdir() if p.suffix == ".upload"] if uploads.is_dir() else []
    assert not leftovers
    states = {job.state for job in JobStore(server.settings.jobs_db).list()}
    assert states <= {"queued", "cancelled"}


# -- the broker is down --------------------------------------------------------------------------

def test_broker_down(serve: Any, backbone_dir: Path, tmp_path_factory: Any, photos: Any) -> None:
    home = tmp_path_factory.mktemp("down-home")
    settings = settings_for(home, backbone_dir,
                            broker_url="redis://127.0.0.1:{}/0".format(free_port()))
    server = serve(settings)
    with server.client() as client:
        body = assert_error(post_archive(client, make_zip(dataset_members(photos))), 503,
                            "unavailable")
        assert "Redis" in body["detail"]
        (job,) = JobStore(settings.jobs_db).list()
        assert job.state == "failed" and job.error  # no queued ghost
        assert not any(settings.uploads_dir.iterdir())
        ready = assert_error(client.get("/readyz"), 503, "not_ready")
        assert "broker" in ready["detail"]
        # No data root on this server: image_dir is forbidden.
        assert_error(client.post("/retrain", data={"image_dir": "x"}), 403, "forbidden")
