"""POST /retrain validation and enqueueing, /jobs, and a broker that is down."""

import io
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from poets.engine.model import config
from poets.engine.store.jobs import JobStore
from tests.app.conftest import assert_error, settings_for
from tests.net import free_port

MAX_ARCHIVE = 3 * 1024 * 1024
LABELS = ("daisy", "roses", "tulips")


@pytest.fixture(scope="module")
def photos(flowers_dir: Path) -> Dict[str, List[Tuple[str, bytes]]]:
    """Four photos of three labels, as (name, bytes)."""
    return {
        label: [(p.name, p.read_bytes()) for p in sorted((flowers_dir / label).glob("*.jpg"))[:4]]
        for label in LABELS
    }


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


def dataset_members(
    photos: Dict[str, List[Tuple[str, bytes]]], prefix: str = "", rename: Any = None
) -> List[Tuple[str, bytes]]:
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
    return serve(
        settings_for(
            home, backbone_dir, data_root=data_root, max_archive_bytes=MAX_ARCHIVE, max_training_steps=5000
        )
    )


@pytest.fixture(scope="module")
def client(server: Any) -> Any:
    with server.client() as client:
        yield client


def post_archive(client: Any, data: bytes, filename: str = "data.zip", **fields: Any) -> Any:
    return client.post(
        "/retrain",
        files={"file": (filename, data, "application/octet-stream")},
        data={k: str(v) for k, v in fields.items()},
    )


# -- success ---------------------------------------------------------------------------------------


def test_zip_with_one_top_folder_and_unicode_names_is_queued(client: Any, server: Any, photos: Any) -> None:
    members = dataset_members(photos, prefix="my flowers/", rename="{} é 花".format)
    response = post_archive(
        client,
        make_zip(members),
        how_many_training_steps=50,
        learning_rate=0.05,
        flip_left_right="true",
        name="petals",
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == "/jobs/{}".format(job["job_id"])
    assert job["state"] == "queued" and job["name"] == "petals"
    assert job["params"]["config"]["how_many_training_steps"] == 50
    assert job["params"]["config"]["flip_left_right"] is True
    assert sorted(job["params"]["dataset"]["labels"]) == sorted("{} é 花".format(label) for label in LABELS)
    # Answers name the dataset inside the upload; the record keeps the worker's path.
    assert job["params"]["image_dir"] == "my flowers"
    record = JobStore(server.settings.jobs_db).get(job["job_id"])
    image_dir = Path(record.params["image_dir"])
    assert image_dir.is_dir() and server.settings.uploads_dir in image_dir.parents
    assert record.state == "queued"
    assert str(server.settings.home) not in response.text
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
    response = post_archive(
        client, make_tgz(dataset_members(photos)), "data.tar.gz", architecture="mobilenet_0.5_224"
    )
    assert response.status_code == 202, response.text
    # One spelling per architecture in the record (and in the version's metadata).
    assert response.json()["params"]["config"]["architecture"] == "mobilenet_0.50_224"


def test_image_dir_inside_data_root(client: Any, data_root: Path) -> None:
    response = client.post("/retrain", data={"image_dir": "flowers"})
    assert response.status_code == 202, response.text
    assert response.json()["params"]["image_dir"] == "flowers"  # relative: no server paths shown
    assert str(data_root) not in response.text
    assert str(data_root) not in client.get("/jobs").text
    absolute = client.post("/retrain", data={"image_dir": str(data_root / "flowers")})
    assert absolute.status_code == 202, absolute.text


# -- refused before anything is queued -----------------------------------------------------------


@pytest.mark.parametrize("image_dir", ["..", "../outside", "/etc", "flowers/../../x", ".", "flowers/.."])
def test_image_dir_outside_data_root(client: Any, image_dir: str) -> None:
    assert_error(client.post("/retrain", data={"image_dir": image_dir}), 403, "forbidden")


def test_not_an_archive(client: Any) -> None:
    body = assert_error(post_archive(client, b"PK\x03\x04 not really a zip" * 10), 400, "invalid_archive")
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
    body = assert_error(
        post_archive(client, make_zip(dataset_members(photos)), architecture="resnet_9000"),
        422,
        "invalid_input",
    )
    assert "mobilenet_1.0_224" in body["detail"]


def test_export_formats(client: Any, photos: Any, monkeypatch: Any) -> None:
    # The name is accepted wherever the converter is installed (not on the TX2's Python 3.6).
    monkeypatch.setitem(config.EXPORT_NEEDS, "onnx", (("json",), "onnx"))
    response = post_archive(client, make_zip(dataset_members(photos)), export="poets_graph,tflite,onnx")
    assert response.status_code == 202, response.text
    assert response.json()["params"]["config"]["export"] == "poets_graph,tflite,onnx"
    client.delete("/jobs/{}".format(response.json()["job_id"]))
    body = assert_error(
        post_archive(client, make_zip(dataset_members(photos)), export="coreml"), 422, "invalid_input"
    )
    assert "poets_graph" in body["detail"] and "onnx" in body["detail"]
    # An installation without the converter refuses onnx when the job is submitted.
    monkeypatch.setitem(config.EXPORT_NEEDS, "onnx", (("poets_no_such_converter",), "onnx"))
    body = assert_error(
        post_archive(client, make_zip(dataset_members(photos)), export="onnx"), 422, "unsupported_export"
    )
    assert "poets[onnx]" in body["detail"]


@pytest.mark.parametrize("steps", ["0", "5001", "-3", "many"])
def test_out_of_range_steps(client: Any, photos: Any, steps: str) -> None:
    body = assert_error(
        post_archive(client, make_zip(dataset_members(photos)), how_many_training_steps=steps),
        422,
        "invalid_input",
    )
    assert "how_many_training_steps" in body["detail"]


def test_unknown_option(client: Any, photos: Any) -> None:
    body = assert_error(
        post_archive(client, make_zip(dataset_members(photos)), learnin_rate="0.1"), 422, "invalid_input"
    )
    assert "learning_rate" in body["detail"]


def test_no_dataset(client: Any) -> None:
    assert_error(client.post("/retrain", data={"how_many_training_steps": "10"}), 422, "invalid_input")


def test_wrong_content_type(client: Any) -> None:
    assert_error(client.post("/retrain", json={"image_dir": "flowers"}), 415, "unsupported_media_type")


def test_archive_over_the_limit(client: Any) -> None:
    body = assert_error(post_archive(client, b"\0" * (MAX_ARCHIVE + 1)), 413, "too_large")
    assert "POETS_MAX_ARCHIVE_BYTES" in body["detail"]


def test_nothing_left_behind_by_refused_uploads(client: Any, server: Any, photos: Any) -> None:
    uploads = server.settings.uploads_dir

    def listing() -> List[str]:
        return sorted(p.name for p in uploads.iterdir()) if uploads.is_dir() else []

    before, jobs = listing(), _job_count(server)
    members = dataset_members(photos)
    whole = make_zip(members)
    refusals = [
        (b"PK\x03\x04 not really a zip" * 10, 400),  # refused while extracting
        (whole[: len(whole) // 2], 400),
        (make_zip([*members, ("../evil.jpg", photos["daisy"][0][1])]), 400),
        (make_zip([*members, ("daisy/zeros.jpg", b"\x00" * (20 * 1024 * 1024))]), 400),
        (make_zip([("daisy/" + n, d) for n, d in photos["daisy"]]), 422),  # extracted, then refused
        (make_zip([*members, ("lilies/readme.txt", b"no images here")]), 422),
        (b"\0" * (MAX_ARCHIVE + 1), 413),
    ]
    for data, status in refusals:
        assert_error(post_archive(client, data), status)
    assert_error(post_archive(client, whole, how_many_training_steps="0"), 422, "invalid_input")
    assert listing() == before  # no archive copy (.upload) and no extracted folder
    assert _job_count(server) == jobs  # and no job record


# -- the broker is down --------------------------------------------------------------------------


def test_broker_down(serve: Any, backbone_dir: Path, tmp_path_factory: Any, photos: Any) -> None:
    """Redis (broker and job records) unreachable: 503 store_unavailable naming it, no record
    anywhere, no upload left behind; /jobs answers 503 too, not 500."""
    home = tmp_path_factory.mktemp("down-home")
    url = "redis://127.0.0.1:{}/0".format(free_port())
    settings = settings_for(home, backbone_dir, broker_url=url)
    server = serve(settings)
    with server.client() as client:
        body = assert_error(post_archive(client, make_zip(dataset_members(photos))), 503, "store_unavailable")
        assert "Redis" in body["detail"] and url in body["detail"], body
        assert not settings.jobs_db.exists()  # the records live in Redis, not in SQLite
        assert not any(settings.uploads_dir.iterdir())
        listed = assert_error(client.get("/jobs"), 503, "store_unavailable")
        assert "POETS_BROKER_URL" in listed["detail"]
        ready = assert_error(client.get("/readyz"), 503, "not_ready")
        assert "broker" in ready["detail"]
        # No data root on this server: image_dir is forbidden.
        assert_error(client.post("/retrain", data={"image_dir": "x"}), 403, "forbidden")


# -- issue 12: hardening -------------------------------------------------------------------------


def _job_count(server: Any) -> int:
    return len(JobStore(server.settings.jobs_db).list(1000))


def test_symlinked_class_folder_outside_the_data_root_is_refused(
    client: Any, server: Any, data_root: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    shutil.copy(str(next((data_root / "flowers" / LABELS[0]).iterdir())), str(secret / "1.jpg"))
    dataset = data_root / "linked"
    for label in LABELS:
        (dataset / label).mkdir(parents=True)
        for image in list((data_root / "flowers" / label).iterdir())[:2]:
            (dataset / label / image.name).write_bytes(image.read_bytes())
    (dataset / "stolen").symlink_to(secret, target_is_directory=True)
    before = _job_count(server)
    body = assert_error(client.post("/retrain", data={"image_dir": "linked"}), 403, "forbidden")
    assert "'linked/stolen'" in body["detail"] and str(tmp_path) not in body["detail"]
    assert _job_count(server) == before


@pytest.mark.parametrize(
    "field, value",
    [
        ("seed", "-1"),
        ("seed", str(2**32)),
        ("learning_rate", "nan"),
        ("export", "coreml"),
        ("how_many_training_steps", "100001"),
        ("validation_batch_size", "0"),
        ("flip_left_right", "2"),
        ("recipe", "keras"),
        ("cross_validate", "1"),
        ("label_smoothing", "0.9"),
        ("learning_rate_schedule", "step"),
        ("early_stopping_patience", "-5"),
    ],
)
def test_every_invalid_option_is_a_422_at_submit_not_a_failed_job(
    client: Any, server: Any, field: str, value: str
) -> None:
    before = _job_count(server)
    body = assert_error(
        client.post("/retrain", data={"image_dir": "flowers", field: value}), 422, "invalid_input"
    )
    assert field in body["detail"]
    assert _job_count(server) == before


def test_the_step_limit_is_the_setting(
    serve: Any, backbone_dir: Path, tmp_path_factory: Any, data_root: Path
) -> None:
    """POETS_MAX_TRAINING_STEPS over 100000 is honoured: accepted at submit, and the worker's
    check (the same definition) accepts what the API accepted."""
    from poets.engine.model.config import TrainConfig

    home = tmp_path_factory.mktemp("steps-home")
    server = serve(settings_for(home, backbone_dir, data_root=data_root, max_training_steps=250000))
    with server.client() as client:
        response = client.post("/retrain", data={"image_dir": "flowers", "how_many_training_steps": "200000"})
        assert response.status_code == 202, response.text
        config = JobStore(server.settings.jobs_db).get(response.json()["job_id"]).params["config"]
        TrainConfig.from_dict(config).validate(server.settings)  # what the worker runs
        client.delete("/jobs/{}".format(response.json()["job_id"]))
        body = assert_error(
            client.post("/retrain", data={"image_dir": "flowers", "how_many_training_steps": "250001"}),
            422,
            "invalid_input",
        )
        assert "POETS_MAX_TRAINING_STEPS" in body["detail"]


@pytest.mark.parametrize("name", ["evil\n", "a\n", "ok\x00", "../x", "x" * 65])
def test_model_names_are_matched_whole(client: Any, name: str) -> None:
    body = assert_error(
        client.post("/retrain", data={"image_dir": "flowers", "name": name}), 422, "invalid_input"
    )
    assert "Model name" in body["detail"]


def test_many_member_zip_bomb_is_refused(client: Any, server: Any) -> None:
    members = [("a/{}.jpg".format(i), b"\0" * 65536) for i in range(600)]
    before = _job_count(server)
    body = assert_error(post_archive(client, make_zip(members)), 400, "invalid_archive")
    assert "200 times" in body["detail"]
    assert _job_count(server) == before


def test_job_records_stay_small_with_many_skipped_files(
    serve: Any, backbone_dir: Path, tmp_path_factory: Any, photos: Any
) -> None:
    home = tmp_path_factory.mktemp("listed-home")
    server = serve(settings_for(home, backbone_dir, max_listed_files=5))
    members = dataset_members(photos) + [("{}/junk{}.txt".format(LABELS[0], i), b"x") for i in range(40)]
    with server.client() as client:
        response = post_archive(client, make_zip(members))
        assert response.status_code == 202, response.text
        dataset = response.json()["params"]["dataset"]
        assert dataset["skipped_count"] == 40 and len(dataset["skipped"]) == 5
        client.delete("/jobs/{}".format(response.json()["job_id"]))


def test_label_key_without_keys_refuses_to_start(tmp_path: Path, backbone_dir: Path) -> None:
    from app.main import create_app
    from poets.engine.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="POETS_API_KEYS"):
        create_app(settings_for(tmp_path, backbone_dir, label_requires_key=True))
    create_app(settings_for(tmp_path, backbone_dir, label_requires_key=True, api_keys=("k",)))


def test_an_upload_keeps_its_scan_for_the_worker_and_an_image_dir_does_not(
    client: Any, server: Any, photos: Any, data_root: Path
) -> None:
    from poets.engine.data import datasets

    settings = server.settings
    response = post_archive(client, make_zip(dataset_members(photos, prefix="top/")), testing_percentage=20)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    image_dir = Path(JobStore(settings.jobs_db).get(job_id).params["image_dir"])
    kept = datasets.Dataset.load(
        settings.uploads_dir / job_id / datasets.SCAN_FILE, image_dir, 20, 10, settings.max_image_pixels
    )
    assert kept is not None and kept.labels == sorted(LABELS) and len(kept.images) == 12
    client.delete("/jobs/{}".format(job_id))
    # A data-root folder may change before the job runs: nothing kept, in it or beside it.
    response = client.post("/retrain", data={"image_dir": "flowers"})
    assert response.status_code == 202, response.text
    assert not list(data_root.rglob(datasets.SCAN_FILE))
    assert not (settings.uploads_dir / response.json()["job_id"]).exists()
    client.delete("/jobs/{}".format(response.json()["job_id"]))
