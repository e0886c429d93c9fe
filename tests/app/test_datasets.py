"""/datasets through a real server: every endpoint, bad input, path tricks and concurrent moves."""

import io
import json
import random
import threading
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from tests.app import images
from tests.app.conftest import assert_error, settings_for

pytestmark = pytest.mark.integration

KEY = "dataset-key"
LABELS = ("daisy", "roses")


@pytest.fixture(scope="module")
def photos(flowers_dir: Path) -> Dict[str, List[Tuple[str, bytes]]]:
    return {
        label: [(p.name, p.read_bytes()) for p in sorted((flowers_dir / label).glob("*.jpg"))[:5]]
        for label in LABELS
    }


@pytest.fixture(scope="module")
def server(serve: Any, backbone_dir: Path, tmp_path_factory: Any) -> Any:
    home = tmp_path_factory.mktemp("datasets-home")
    return serve(settings_for(home, backbone_dir, api_keys=(KEY,), max_file_bytes=2 * 1024 * 1024))


@pytest.fixture(scope="module")
def client(server: Any) -> Any:
    with server.client(headers={"X-API-Key": KEY}) as client:
        yield client


def create(client: Any, name: str) -> Dict[str, Any]:
    response = client.post("/datasets", json={"name": name})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def upload(client: Any, name: str, label: str, files: List[Tuple[str, bytes]]) -> Any:
    return client.post(
        "/datasets/{}/images".format(name),
        data={"label": label},
        files=[("files", (filename, data, "image/jpeg")) for filename, data in files],
    )


def filled(client: Any, name: str, photos: Dict[str, List[Tuple[str, bytes]]]) -> None:
    create(client, name)
    for label, files in photos.items():
        assert upload(client, name, label, files).status_code == 201


def test_create_get_list_delete(client: Any, server: Any) -> None:
    response = client.post("/datasets", json={"name": "yard"})
    assert response.status_code == 201 and response.headers["location"] == "/datasets/yard"
    body = response.json()
    assert body["name"] == "yard" and body["classes"] == {} and body["fingerprint"]
    assert client.get("/datasets/yard").json()["classes"] == {}
    assert "yard" in [d["name"] for d in client.get("/datasets").json()["datasets"]]
    assert (server.settings.home / "datasets" / "yard").is_dir()  # $POETS_HOME/datasets by default
    assert_error(client.post("/datasets", json={"name": "yard"}), 409, "conflict")
    assert client.delete("/datasets/yard").json() == {"deleted": "yard"}
    assert_error(client.get("/datasets/yard"), 404, "not_found")
    assert_error(client.delete("/datasets/yard"), 404, "not_found")


@pytest.mark.parametrize("name", ["..", "a/b", "../etc", "a\x00b", "x" * 300, "", ".hidden", "a..b", " yard"])
def test_bad_dataset_names_are_refused(client: Any, name: str) -> None:
    assert_error(client.post("/datasets", json={"name": name}), 422, "invalid_input")


NAME_RULE = (
    "is not usable: use 1 to 64 letters, digits, '_', '.' or '-', "
    "starting with a letter or digit, without '..'."
)


@pytest.mark.parametrize(
    "path, status, body",
    [
        # Decoded into the name, which the name check refuses (named, control characters escaped).
        ("/datasets/%2e%2e", 422, {"error": "invalid_input", "detail": "Dataset name '..' " + NAME_RULE}),
        ("/datasets/a%00b", 422, {"error": "invalid_input", "detail": "Dataset name 'a\\x00b' " + NAME_RULE}),
        (
            "/datasets/" + "y" * 300,
            422,
            {"error": "invalid_input", "detail": "Dataset name '{}...' {}".format("y" * 80, NAME_RULE)},
        ),
        # A decoded slash makes a path no route has.
        (
            "/datasets/..%2fetc/images",
            404,
            {"error": "not_found", "detail": "No such endpoint GET /datasets/../etc/images: see /docs."},
        ),
    ],
)
def test_path_tricks_in_urls(client: Any, path: str, status: int, body: Dict[str, str]) -> None:
    response = client.get(path)
    assert response.status_code == status, (path, response.text)
    assert response.json() == body


def test_upload_list_thumbnail_and_file(client: Any, photos: Any) -> None:
    create(client, "garden")
    before = client.get("/datasets/garden").json()["fingerprint"]
    response = upload(client, "garden", "daisy", photos["daisy"])
    assert response.status_code == 201, response.text
    ids = response.json()["ids"]
    assert len(ids) == 5 and len(set(ids)) == 5
    assert all("/" not in i and ".." not in i for i in ids)
    assert upload(client, "garden", "roses", photos["roses"][:3]).status_code == 201
    described = client.get("/datasets/garden").json()
    assert described["classes"] == {"daisy": 5, "roses": 3}
    assert described["fingerprint"] != before
    page = client.get("/datasets/garden/images", params={"label": "daisy", "offset": 1, "limit": 2}).json()
    assert page["total"] == 5 and len(page["items"]) == 2
    item = page["items"][0]
    assert {"id", "label", "thumbnail", "url"} <= set(item) and item["label"] == "daisy"
    thumbnail = client.get(item["thumbnail"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    assert thumbnail.content[:2] == b"\xff\xd8" and len(thumbnail.content) < 20000
    original = client.get(item["url"])
    assert original.status_code == 200 and original.content in [d for _, d in photos["daisy"]]
    everything = client.get("/datasets/garden/images").json()
    assert everything["total"] == 8
    # The same photo again is stored once.
    again = upload(client, "garden", "roses", photos["daisy"][:1]).json()
    assert again["images"][0]["duplicate"] is True and again["images"][0]["label"] == "daisy"
    assert client.get("/datasets/garden").json()["classes"] == {"daisy": 5, "roses": 3}


def test_non_images_are_refused_and_nothing_is_added(client: Any, photos: Any) -> None:
    create(client, "strict")
    response = upload(client, "strict", "daisy", [photos["daisy"][0], ("notes.txt", b"hello")])
    body = assert_error(response, 400, "invalid_image")
    assert "notes.txt" in body["detail"]
    truncated = images.truncated_jpeg(photos["daisy"][1][1])
    assert_error(upload(client, "strict", "daisy", [("cut.jpg", truncated)]), 400, "invalid_image")
    assert client.get("/datasets/strict").json()["classes"] == {}
    assert_error(upload(client, "strict", "daisy", []), 422)
    no_label = client.post("/datasets/strict/images", files=[("files", ("a.jpg", photos["daisy"][0][1]))])
    assert_error(no_label, 422, "invalid_input")
    big = images.encode(images.noise(1200, 1200), "PNG")
    assert_error(upload(client, "strict", "daisy", [("big.png", big)]), 413, "too_large")
    assert_error(
        client.post("/datasets/strict/images", content=b"x", headers={"Content-Type": "image/jpeg"}), 415
    )


@pytest.mark.parametrize("label", ["..", "../x", "a/b", "a\x00b", "l" * 200, ".x", "x "])
def test_bad_labels_are_refused(client: Any, photos: Any, label: str) -> None:
    if "strict2" not in [d["name"] for d in client.get("/datasets").json()["datasets"]]:
        create(client, "strict2")
    assert_error(upload(client, "strict2", label, photos["daisy"][:1]), 422, "invalid_input")


def test_move_delete_and_unknowns(client: Any, photos: Any) -> None:
    filled(client, "moves", photos)
    daisy = client.get("/datasets/moves/images", params={"label": "daisy"}).json()["items"]
    image = daisy[0]["id"]
    moved = client.patch("/datasets/moves/images/{}".format(image), json={"label": "tulips"})
    assert moved.status_code == 200 and moved.json()["label"] == "tulips"
    assert moved.json()["id"] == image  # ids survive moves
    assert client.get("/datasets/moves").json()["classes"] == {"daisy": 4, "roses": 5, "tulips": 1}
    # Moving the last image out of a class removes the class (an empty one would break /retrain).
    client.patch("/datasets/moves/images/{}".format(image), json={"label": "daisy"})
    assert "tulips" not in client.get("/datasets/moves").json()["classes"]
    assert_error(
        client.patch("/datasets/moves/images/{}".format(image), json={"label": "../up"}), 422, "invalid_input"
    )
    assert_error(client.patch("/datasets/moves/images/nope.jpg", json={"label": "daisy"}), 404)
    assert_error(client.patch("/datasets/moves/images/~%2e%2e", json={"label": "daisy"}), 422)
    assert_error(client.patch("/datasets/nowhere/images/{}".format(image), json={"label": "a"}), 404)
    assert_error(client.get("/datasets/moves/images", params={"label": "lilies"}), 404)
    assert_error(client.patch("/datasets/moves/images/{}".format(image), json={}), 422)
    deleted = client.delete("/datasets/moves/images/{}".format(image))
    assert deleted.status_code == 200 and deleted.json()["deleted"] == image
    assert_error(client.delete("/datasets/moves/images/{}".format(image)), 404, "not_found")
    assert_error(client.get("/datasets/moves/images/{}/thumbnail".format(image)), 404)
    assert client.get("/datasets/moves").json()["classes"]["daisy"] == 4


def test_rename_merge_and_delete_classes(client: Any, photos: Any) -> None:
    filled(client, "classes", photos)
    renamed = client.patch("/datasets/classes/classes/daisy", json={"label": "white flowers"})
    assert renamed.status_code == 200
    assert renamed.json()["classes"] == {"roses": 5, "white flowers": 5}
    merged = client.patch("/datasets/classes/classes/roses", json={"label": "white flowers"})
    assert merged.json()["classes"] == {"white flowers": 10}
    assert_error(client.patch("/datasets/classes/classes/lilies", json={"label": "x"}), 404)
    assert_error(client.patch("/datasets/classes/classes/white flowers", json={"label": ".."}), 422)
    gone = client.delete("/datasets/classes/classes/white flowers")
    assert gone.json() == {"deleted": "white flowers", "images": 10}
    assert client.get("/datasets/classes").json()["classes"] == {}
    assert_error(client.delete("/datasets/classes/classes/white flowers"), 404)
    assert_error(client.delete("/datasets/classes/classes/%2e%2e"), 404)


def make_zip(members: List[Tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members:
            archive.writestr(name, data)
    return out.getvalue()


def test_zip_import_and_export(client: Any, photos: Any) -> None:
    create(client, "zipped")
    members = [
        ("flowers/{}/{}".format(label, name), data) for label, files in photos.items() for name, data in files
    ]
    members += [("flowers/daisy/readme.txt", b"not an image"), ("flowers/loose.jpg", photos["daisy"][0][1])]
    response = client.post(
        "/datasets/zipped/archive", files={"file": ("flowers.zip", make_zip(members), "application/zip")}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["added"] == 10 and body["classes"] == {"daisy": 5, "roses": 5}
    assert sorted(s["path"] for s in body["skipped"]) == ["daisy/readme.txt", "loose.jpg"]
    exported = client.get("/datasets/zipped/archive")
    assert exported.status_code == 200 and exported.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(exported.content)).namelist()
    assert len(names) == 10 and sorted({n.split("/")[0] for n in names}) == list(LABELS)
    # Importing the export again adds nothing: same content, same names.
    again = client.post(
        "/datasets/zipped/archive", files={"file": ("again.zip", exported.content, "application/zip")}
    ).json()
    assert again["added"] == 0 and again["duplicates"] == 10
    unsafe = make_zip([("../evil/x.jpg", photos["daisy"][0][1])])
    assert_error(
        client.post("/datasets/zipped/archive", files={"file": ("e.zip", unsafe)}), 400, "invalid_archive"
    )
    bad_label = make_zip([("a..b/x.jpg", photos["daisy"][0][1])])
    assert_error(client.post("/datasets/zipped/archive", files={"file": ("l.zip", bad_label)}), 422)
    assert_error(
        client.post("/datasets/zipped/archive", files={"file": ("n.zip", b"not a zip")}),
        400,
        "invalid_archive",
    )
    empty = assert_error(
        client.post("/datasets/zipped/archive", files={"file": ("e.zip", b"")}), 400, "invalid_archive"
    )
    assert empty["detail"] == (
        "The uploaded archive is empty: send a .zip or .tar.gz with one folder of images per class."
    )
    assert_error(client.post("/datasets/nowhere/archive", files={"file": ("f.zip", unsafe)}), 404)
    assert_error(client.get("/datasets/nowhere/archive"), 404)
    assert client.get("/datasets/zipped").json()["classes"] == {"daisy": 5, "roses": 5}


def test_concurrent_moves_lose_and_duplicate_nothing(client: Any, server: Any, photos: Any) -> None:
    filled(client, "busy", photos)
    ids = [item["id"] for item in client.get("/datasets/busy/images").json()["items"]]
    targets = ("daisy", "roses", "tulips")
    failures: List[str] = []

    def mover(seed: int) -> None:
        rng = random.Random(seed)
        with server.client(headers={"X-API-Key": KEY}) as own:
            for _ in range(15):
                response = own.patch(
                    "/datasets/busy/images/{}".format(rng.choice(ids)), json={"label": rng.choice(targets)}
                )
                if response.status_code != 200:
                    failures.append(response.text)

    threads = [threading.Thread(target=mover, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures
    listed = [item["id"] for item in client.get("/datasets/busy/images").json()["items"]]
    assert sorted(listed) == sorted(ids)  # every image exactly once
    assert sum(client.get("/datasets/busy").json()["classes"].values()) == 10


def test_mutations_need_the_key(server: Any, photos: Any) -> None:
    with server.client() as anonymous:
        assert_error(anonymous.post("/datasets", json={"name": "open"}), 401, "unauthorized")
        assert_error(upload(anonymous, "garden", "daisy", photos["daisy"][:1]), 401)
        assert_error(anonymous.delete("/datasets/garden"), 401)
        assert anonymous.get("/datasets").status_code == 200


def test_retrain_on_a_dataset_by_name_records_name_and_fingerprint(
    client: Any, server: Any, photos: Any, session_home: Path
) -> None:
    from poets.engine.store.jobs import JobStore
    from worker import tasks

    filled(client, "trainable", photos)
    fingerprint = client.get("/datasets/trainable").json()["fingerprint"]
    assert_error(client.post("/retrain", data={"dataset": "nowhere"}), 404, "not_found")
    assert_error(client.post("/retrain", data={"dataset": "../etc"}), 422, "invalid_input")
    both = client.post(
        "/retrain", data={"dataset": "trainable"}, files={"file": ("d.zip", make_zip([("a/x.jpg", b"x")]))}
    )
    assert_error(both, 422, "invalid_input")
    response = client.post(
        "/retrain", data={"dataset": "trainable", "name": "yard", "how_many_training_steps": "20"}
    )
    assert response.status_code == 202, response.text
    job = JobStore(server.settings.jobs_db).get(response.json()["job_id"])
    assert job.params["dataset_name"] == "trainable" and job.params["source"] == "dataset"
    # Edits after the request do not change what the job trains on: it has its own copy.
    upload(client, "trainable", "tulips", [("t.jpg", images.encode(images.noise(64, 64), "JPEG"))])
    # Run the job here as the worker would, on the session's bottleneck cache.
    cache = server.settings.cache_dir
    if not cache.exists():
        (session_home / "bottlenecks").mkdir(parents=True, exist_ok=True)
        cache.symlink_to(session_home / "bottlenecks", target_is_directory=True)
    outcome = tasks.run_job(server.settings, job.id, job.params["image_dir"], "yard", job.params["config"])
    assert outcome["state"] == "succeeded", outcome
    meta = json.loads(
        (server.settings.store_dir / "yard" / str(outcome["version"]) / "poets.json").read_text()
    )
    assert meta["dataset"]["name"] == "trainable"
    assert meta["dataset"]["fingerprint"] == fingerprint
    assert meta["labels"] == list(LABELS)
    assert not Path(job.params["image_dir"]).exists()  # the copy is gone with the job
