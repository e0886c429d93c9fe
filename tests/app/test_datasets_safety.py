"""/datasets hardening through a real server (issue 23): links leading out, archive errors
without server paths, reserved class names, deleted datasets, and leftovers swept at start."""

import io
import os
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from poets.engine.data import leftovers
from tests.app.conftest import assert_error, settings_for

pytestmark = pytest.mark.integration

KEY = "safety-key"


def _age(path: Path) -> Path:
    then = time.time() - 7200
    os.utime(str(path), (then, then))
    return path


@pytest.fixture(scope="module")
def home(tmp_path_factory: Any) -> Path:
    """A POETS_HOME holding what a crash mid-import left, before the server starts."""
    home = tmp_path_factory.mktemp("safety-home")
    crashed = home / "datasets" / "old" / ".incoming-0123"
    (crashed / "archive" / "roses").mkdir(parents=True)
    (crashed / "archive" / "roses" / "1.jpg").write_bytes(b"x" * 4096)
    _age(crashed)
    _age(leftovers.import_upload(home / "uploads")).write_bytes(b"half an upload")
    _age(next((home / "uploads").iterdir()))
    (home / "datasets" / ".locks").mkdir()
    (home / "datasets" / ".locks" / "gone.lock").write_text("")
    (home / "datasets" / ".deleting-gone-0123" / "roses").mkdir(parents=True)
    return home


@pytest.fixture(scope="module")
def server(serve: Any, backbone_dir: Path, home: Path) -> Any:
    return serve(settings_for(home, backbone_dir, api_keys=(KEY,)))


@pytest.fixture(scope="module")
def client(server: Any) -> Any:
    with server.client(headers={"X-API-Key": KEY}) as client:
        yield client


@pytest.fixture(scope="module")
def photo(flowers_dir: Path) -> bytes:
    return sorted((flowers_dir / "roses").glob("*.jpg"))[0].read_bytes()


def _create(client: Any, name: str, label: str, photo: bytes) -> Dict[str, Any]:
    assert client.post("/datasets", json={"name": name}).status_code == 201
    response = client.post(
        "/datasets/{}/images".format(name),
        data={"label": label},
        files=[("files", ("a.jpg", photo, "image/jpeg"))],
    )
    assert response.status_code == 201, response.text
    return response.json()["images"][0]  # type: ignore[no-any-return]


def test_leftovers_are_swept_at_start(client: Any, home: Path) -> None:
    assert client.get("/healthz").status_code == 200
    assert sorted(os.listdir(str(home / "datasets" / "old"))) == []
    assert [p.name for p in (home / "uploads").iterdir() if p.name.startswith("import-")] == []
    assert not (home / "datasets" / ".locks" / "gone.lock").exists()
    assert not (home / "datasets" / ".deleting-gone-0123").exists()


def test_links_leading_out_are_refused(client: Any, server: Any, photo: bytes, tmp_path: Path) -> None:
    _create(client, "linked", "roses", photo)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(photo)
    folder = server.settings.datasets_root / "linked"
    os.symlink(str(outside / "secret.jpg"), str(folder / "roses" / "secret.jpg"))
    body = assert_error(client.get("/datasets/linked/images/secret.jpg"), 403, "forbidden")
    assert "symbolic link" in body["detail"] and str(tmp_path) not in body["detail"]
    assert_error(client.delete("/datasets/linked/images/secret.jpg"), 403, "forbidden")
    assert client.get("/datasets/linked").json()["classes"] == {"roses": 1}
    assert (outside / "secret.jpg").read_bytes() == photo


@pytest.mark.parametrize("label", ["__MACOSX"])
def test_reserved_class_names_are_refused(client: Any, photo: bytes, label: str) -> None:
    image = _create(client, "reserved", "roses", photo)
    body = assert_error(
        client.patch("/datasets/reserved/images/" + image["id"], json={"label": label}), 422, "invalid_input"
    )
    assert "reserved" in body["detail"]
    assert_error(client.patch("/datasets/reserved/classes/roses", json={"label": label}), 422)
    assert client.get("/datasets/reserved").json()["classes"] == {"roses": 1}


def _members(kind: str, members: List[Tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(out, "w") as archive:
            for name, data in members:
                archive.writestr(name, data)
    else:
        with tarfile.open(fileobj=out, mode="w:gz") as archive:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_archive_errors_show_no_server_path(client: Any, server: Any, photo: bytes, kind: str) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        archive = _members(kind, [("set/roses/1.jpg", photo), ("set/roses/1.jpg", photo)])
    if client.get("/datasets/imports").status_code == 404:
        assert client.post("/datasets", json={"name": "imports"}).status_code == 201
    answers = [
        client.post("/datasets/imports/archive", files={"file": ("a." + kind, archive)}),
        client.post("/retrain", files={"file": ("a." + kind, archive)}),
    ]
    for answer in answers:
        body = assert_error(answer, 400, "invalid_archive")
        assert "'set/roses/1.jpg' appears twice" in body["detail"], body
        assert str(server.settings.home) not in body["detail"], body


def test_adding_to_a_deleted_dataset_is_404(client: Any, photo: bytes) -> None:
    _create(client, "brief", "roses", photo)
    assert client.delete("/datasets/brief").status_code == 200
    answer = client.post(
        "/datasets/brief/images", data={"label": "roses"}, files=[("files", ("a.jpg", photo, "image/jpeg"))]
    )
    assert_error(answer, 404, "not_found")
