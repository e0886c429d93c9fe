"""POST /label on a real server with a real retrained MobileNet model."""

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import httpx
import pytest

from poets.engine.data import datasets
from tests.app import images
from tests.app.conftest import assert_error, copy_model, settings_for

pytestmark = pytest.mark.integration

MAX_UPLOAD = 1024 * 1024
MAX_PIXELS = 4000000
KEY = "label-test-key"


@pytest.fixture(scope="module")
def server(serve: Any, trained: Any, backbone_dir: Path, tmp_path_factory: Any) -> Any:
    home = tmp_path_factory.mktemp("label-home")
    copy_model(trained, home / "models")
    # default_model "default" does not exist: the only model, "flowers", answers.
    return serve(
        settings_for(
            home, backbone_dir, max_upload_bytes=MAX_UPLOAD, max_image_pixels=MAX_PIXELS, api_keys=(KEY,)
        )
    )


@pytest.fixture(scope="module")
def client(server: Any) -> Any:
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def held_back(flowers_dir: Path) -> List[Tuple[Path, str]]:
    """Two photos per label from the testing split: never seen in training."""
    dataset = datasets.scan(flowers_dir)
    picked: Dict[str, List[Path]] = {}
    for record in dataset.split("testing"):
        picked.setdefault(record.label, []).append(record.path)
    return [(path, label) for label in sorted(picked) for path in picked[label][:2]]


@pytest.fixture(scope="module")
def photo(held_back: List[Tuple[Path, str]]) -> bytes:
    return held_back[0][0].read_bytes()


def test_raw_body_answers_model_labels_and_time(client: Any, photo: bytes) -> None:
    response = client.post("/label", content=photo, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "flowers", "version": 1}
    assert len(body["labels"]) == 5
    scores = [entry["score"] for entry in body["labels"]]
    assert scores == sorted(scores, reverse=True)
    assert abs(sum(scores) - 1.0) < 1e-3
    assert body["took_ms"] >= 0


def test_multipart_single_file(client: Any, photo: bytes) -> None:
    response = client.post("/label", files={"file": ("photo.jpg", photo, "image/jpeg")})
    assert response.status_code == 200, response.text
    assert len(response.json()["labels"]) == 5


def test_top_k_and_model_query(client: Any, photo: bytes) -> None:
    response = client.post(
        "/label?top_k=2&model=flowers", content=photo, headers={"Content-Type": "image/jpeg"}
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["labels"]) == 2


def test_held_back_photos_get_their_label(client: Any, held_back: List[Tuple[Path, str]]) -> None:
    files = [("file", (path.name, path.read_bytes(), "image/jpeg")) for path, _ in held_back]
    response = client.post("/label?top_k=1", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["filename"] for r in results] == [path.name for path, _ in held_back]
    correct = sum(r["labels"][0]["label"] == label for r, (_, label) in zip(results, held_back))
    assert correct >= 0.7 * len(held_back), results


def test_raw_photo_is_labelled_correctly(client: Any, held_back: List[Tuple[Path, str]]) -> None:
    hits = 0
    for path, label in held_back[::2]:
        response = client.post(
            "/label", content=path.read_bytes(), headers={"Content-Type": "application/octet-stream"}
        )
        assert response.status_code == 200, response.text
        hits += response.json()["labels"][0]["label"] == label
    assert hits >= 3


@pytest.mark.parametrize(
    "make",
    [
        images.animated_gif,
        images.png_16bit,
        images.cmyk_jpeg,
        images.rgba_png,
        images.palette_transparent_png,
        images.one_pixel,
        images.very_wide,
        images.exif_rotated,
        images.bmp,
        images.webp,
    ],
    ids=lambda make: make.__name__,
)
def test_unusual_but_valid_images_are_labelled(client: Any, make: Any) -> None:
    response = client.post("/label", content=make(), headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    assert len(response.json()["labels"]) == 5


def _batch_metrics(client: Any) -> Tuple[float, float]:
    """(batches run, images in them) for flowers version 1, from /metrics."""
    found = {}
    for line in client.get("/metrics").text.splitlines():
        for kind in ("count", "sum"):
            if line.startswith('poets_batch_size_{}{{model="flowers:1"}}'.format(kind)):
                found[kind] = float(line.split()[-1])
    return found.get("count", 0.0), found.get("sum", 0.0)


def test_concurrent_requests_are_batched(client: Any, server: Any, photo: bytes) -> None:
    clients, each = 6, 6
    loaded = client.post("/label", content=photo, headers={"Content-Type": "image/jpeg"})
    assert loaded.status_code == 200, loaded.text
    served = server.app.state.registry.get("flowers")
    batcher = served.batcher
    predict = batcher._predict
    sizes: List[int] = []

    def gated(pixels: Any) -> Any:
        # The first run waits until other clients' requests are queued behind it, so the next
        # batch has several to take, however slowly this machine runs the threads. (The limit
        # only keeps a broken server from hanging the test: it is well below the clients' 60 s.)
        if not sizes:
            deadline = time.monotonic() + 30
            while batcher._queued < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        sizes.append(len(pixels))
        return predict(pixels)

    failures: List[str] = []

    def hammer() -> None:
        with server.client() as own:
            for _ in range(each):
                try:
                    response = own.post("/label", content=photo, headers={"Content-Type": "image/jpeg"})
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    failures.append(response.text)

    batches_before, images_before = _batch_metrics(client)
    batcher._predict = gated
    try:
        threads = [threading.Thread(target=hammer) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        batcher._predict = predict
    assert not failures
    assert server.app.state.registry.get("flowers") is served, "the model was reloaded meanwhile"
    assert sum(sizes) == clients * each, sizes
    assert sizes[1] >= 2, sizes  # the queued requests ran together
    batches_after, images_after = _batch_metrics(client)
    assert images_after - images_before == clients * each
    assert batches_after - batches_before == len(sizes) < clients * each


# -- bad input: each a 4xx with the one error shape, never a 500 ----------------------------------


def test_empty_body(client: Any) -> None:
    body = assert_error(
        client.post("/label", content=b"", headers={"Content-Type": "image/jpeg"}), 400, "invalid_image"
    )
    assert "empty" in body["detail"]


def test_not_an_image(client: Any) -> None:
    assert_error(
        client.post("/label", content=b"hello, this is text" * 20, headers={"Content-Type": "image/jpeg"}),
        400,
        "invalid_image",
    )


def test_truncated_jpeg(client: Any, photo: bytes) -> None:
    body = assert_error(
        client.post("/label", content=images.truncated_jpeg(photo), headers={"Content-Type": "image/jpeg"}),
        400,
        "invalid_image",
    )
    assert "truncated" in body["detail"] or "corrupt" in body["detail"]


def test_decompression_bomb(client: Any) -> None:
    data = images.bomb_png(3000)  # 9 MP in a few KiB, over the 4 MP limit
    assert len(data) < MAX_UPLOAD
    body = assert_error(
        client.post("/label", content=data, headers={"Content-Type": "image/png"}), 400, "invalid_image"
    )
    assert "pixels" in body["detail"]


def test_over_the_size_limit_by_content_length(client: Any) -> None:
    body = assert_error(
        client.post("/label", content=b"\xff" * (MAX_UPLOAD + 1), headers={"Content-Type": "image/jpeg"}),
        413,
        "too_large",
    )
    assert "POETS_MAX_UPLOAD_BYTES" in body["detail"]


def test_over_the_size_limit_while_streaming(server: Any) -> None:
    chunks = [b"\xff" * 65536] * (MAX_UPLOAD // 65536 + 4)
    with server.client() as client:  # own connection: the server may close it after a 413
        response = client.post("/label", content=iter(chunks), headers={"Content-Type": "image/jpeg"})
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert_error(response, 413, "too_large")


def test_more_parts_than_the_limit(client: Any, server: Any) -> None:
    limit = server.settings.max_label_files
    assert limit == 64  # the default
    tiny = images.one_pixel()
    files = [("file", ("{}.png".format(i), tiny, "image/png")) for i in range(limit + 1)]
    body = assert_error(client.post("/label", files=files), 413, "too_large")
    assert "64" in body["detail"] and "POETS_MAX_LABEL_FILES" in body["detail"]
    response = client.post("/label?top_k=1", files=files[:limit])
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == limit


def test_wrong_content_type(client: Any, photo: bytes) -> None:
    body = assert_error(
        client.post("/label", content=photo, headers={"Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    assert "image/jpeg" in body["detail"]


def test_multipart_without_file_part(client: Any) -> None:
    assert_error(
        client.post("/label", data={"image": "x"}, files={"other": ("a.txt", b"x")}), 422, "invalid_input"
    )


def test_one_bad_file_among_several_is_named(client: Any, photo: bytes) -> None:
    files = [("file", ("good.jpg", photo, "image/jpeg")), ("file", ("bad.jpg", b"nope", "image/jpeg"))]
    body = assert_error(client.post("/label", files=files), 400, "invalid_image")
    assert "bad.jpg" in body["detail"]


def test_top_k_out_of_range(client: Any, photo: bytes) -> None:
    body = assert_error(
        client.post("/label?top_k=0", content=photo, headers={"Content-Type": "image/jpeg"}),
        422,
        "invalid_request",
    )
    assert "top_k" in body["detail"]


def test_unknown_model(client: Any, photo: bytes) -> None:
    assert_error(
        client.post("/label?model=nope", content=photo, headers={"Content-Type": "image/jpeg"}),
        404,
        "not_found",
    )


def test_invalid_model_name(client: Any, photo: bytes) -> None:
    assert_error(
        client.post("/label?model=../x", content=photo, headers={"Content-Type": "image/jpeg"}),
        422,
        "invalid_input",
    )


def test_unknown_path_and_method(client: Any) -> None:
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/label"), 405, "method_not_allowed")


# -- keys, health, metrics -----------------------------------------------------------------------


def test_label_is_open_but_admin_endpoints_need_the_key(client: Any) -> None:
    body = assert_error(client.delete("/jobs/abc"), 401, "unauthorized")
    assert "X-API-Key" in body["detail"]
    assert_error(client.delete("/jobs/abc", headers={"X-API-Key": "wrong"}), 401, "unauthorized")
    assert_error(client.post("/models/flowers/versions/1/activate"), 401, "unauthorized")
    assert_error(client.post("/retrain", data={"image_dir": "x"}), 401, "unauthorized")
    assert_error(client.delete("/jobs/abc", headers={"X-API-Key": KEY}), 404, "not_found")


def test_healthz_readyz(client: Any) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["models"] == {"flowers": 1}


def test_metrics(server: Any, client: Any, photo: bytes) -> None:
    from poets.engine.store.jobs import JobStore

    jobs = JobStore(server.settings.jobs_db)
    done = jobs.create("flowers", {})
    jobs.update(done.id, started=100.0)
    jobs.finish(done.id, "succeeded")
    jobs.update(done.id, finished=112.5)  # a 12.5 s job
    client.post("/label", content=photo, headers={"Content-Type": "image/jpeg"})
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in (
        "poets_http_requests_total",
        "poets_http_request_seconds_bucket",
        "poets_batch_size_bucket",
        "poets_model_loads_total",
        "poets_model_loaded_version",
        "poets_images_labelled_total",
        "poets_jobs_queued",
    ):
        assert name in text, name
    assert 'endpoint="/label"' in text and 'model="flowers:1"' in text
    assert 'poets_jobs{state="succeeded"} 1.0' in text
    assert 'poets_job_duration_seconds_count{state="succeeded"} 1.0' in text
    assert 'poets_job_duration_seconds_sum{state="succeeded"} 12.5' in text


def test_openapi_docs(client: Any) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/label", "/retrain", "/jobs/{job_id}", "/models"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


def test_no_model_and_label_key(serve: Any, backbone_dir: Path, tmp_path_factory: Any, photo: bytes) -> None:
    home = tmp_path_factory.mktemp("empty-home")
    server = serve(settings_for(home, backbone_dir, api_keys=(KEY,), label_requires_key=True))
    with server.client() as client:
        assert_error(
            client.post("/label", content=photo, headers={"Content-Type": "image/jpeg"}), 401, "unauthorized"
        )
        body = assert_error(
            client.post("/label", content=photo, headers={"Content-Type": "image/jpeg", "X-API-Key": KEY}),
            503,
            "no_model",
        )
        assert "POST /retrain" in body["detail"]
        ready = client.get("/readyz")
        assert_error(ready, 503, "not_ready")
        assert client.get("/healthz").status_code == 200
        assert client.get("/models").json()["models"] == []


# -- slow clients ----------------------------------------------------------------------------------


def _trickle(port: int, head: bytes, body: bytes, pause_s: float = 0.1, give_up_s: float = 30.0) -> bytes:
    """Send ``head`` then ``body`` a byte at a time, reading whatever the server answers."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=give_up_s) as sock:
        sock.sendall(head)
        sock.settimeout(pause_s)
        deadline = time.monotonic() + give_up_s
        sent = 0
        while time.monotonic() < deadline:
            if sent < len(body):
                try:
                    sock.sendall(body[sent : sent + 1])
                    sent += 1
                except OSError:  # closed by the server
                    sent = len(body)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not chunk:
                break  # the server closed the connection
            answer += chunk
    return answer


def _parse(answer: bytes) -> Tuple[int, Dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body.decode())


@pytest.fixture(scope="module")
def impatient(serve: Any, backbone_dir: Path, tmp_path_factory: Any) -> Any:
    """A server that waits at most 1 s for a request body (no model: none is needed)."""
    home = tmp_path_factory.mktemp("impatient-home")
    return serve(settings_for(home, backbone_dir, body_timeout_s=1.0))


def test_a_body_trickling_past_the_deadline_gets_408(impatient: Any, photo: bytes) -> None:
    head = (
        "POST /label HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
        "Content-Length: {}\r\n\r\n".format(len(photo))
    ).encode()
    answer = _trickle(impatient.port, head, photo)
    status, body = _parse(answer)
    assert status == 408, answer[:300]
    assert body["error"] == "request_timeout"
    assert "POETS_BODY_TIMEOUT_S" in body["detail"]
    assert b"connection: close" in answer.lower()


def test_a_multipart_body_trickling_past_the_deadline_gets_408(impatient: Any, photo: bytes) -> None:
    data = (
        b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + photo + b"\r\n--b0undary--\r\n"
    )
    head = (
        "POST /label HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: multipart/form-data; boundary=b0undary\r\n"
        "Content-Length: {}\r\n\r\n".format(len(data))
    ).encode()
    status, body = _parse(_trickle(impatient.port, head, data))
    assert status == 408 and body["error"] == "request_timeout", body


def test_a_prompt_body_is_not_cut_off(server: Any, client: Any, photo: bytes) -> None:
    # The default deadline (POETS_BODY_TIMEOUT_S, 30 s): a margin no loaded machine eats up
    # for a body sent at once, as the 1 s of the trickle tests above could.
    assert server.settings.body_timeout_s == 30.0
    # Read whole and labelled, raw and as a form: the deadline did not fire.
    raw = client.post("/label", content=photo, headers={"Content-Type": "image/jpeg"})
    assert raw.status_code == 200 and len(raw.json()["labels"]) == 5, raw.text
    form = client.post("/label", files={"file": ("a.jpg", photo, "image/jpeg")})
    assert form.status_code == 200 and len(form.json()["labels"]) == 5, form.text


def _requests_counted(client: Any) -> Dict[str, float]:
    """poets_http_requests_total, by its labels."""
    counted = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("poets_http_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            counted[labels] = float(value)
    return counted


def test_requests_never_hit_500(client: Any, photo: bytes) -> None:
    # Traffic of its own (good and bad), so that this test checks something when run alone too.
    jpeg = {"Content-Type": "image/jpeg"}
    sent = [
        client.post("/label", content=photo, headers=jpeg),
        client.post("/label", content=b"", headers=jpeg),
        client.post("/label", content=b"hello, this is text" * 20, headers=jpeg),
        client.post("/label", content=images.truncated_jpeg(photo), headers=jpeg),
        client.post("/label", content=images.bomb_png(3000), headers={"Content-Type": "image/png"}),
        client.post("/label", content=photo, headers={"Content-Type": "text/plain"}),
        client.post("/label", data={"image": "x"}, files={"other": ("a.txt", b"x")}),
        client.post("/label", files=[("file", ("a.jpg", photo, "image/jpeg")), ("file", ("b.jpg", b"no"))]),
        client.post("/label?top_k=0", content=photo, headers=jpeg),
        client.post("/label?model=nope", content=photo, headers=jpeg),
        client.post("/label?model=../x", content=photo, headers=jpeg),
        client.get("/nope"),
        client.get("/label"),
        client.delete("/jobs/abc"),
    ]
    assert [r.status_code for r in sent] == [
        200,
        400,
        400,
        400,
        400,
        415,
        422,
        400,
        422,
        404,
        422,
        404,
        405,
        401,
    ]
    counted = _requests_counted(client)
    assert sum(v for k, v in counted.items() if 'endpoint="/label"' in k) >= len(sent) - 3  # counted
    assert not [
        labels for labels in counted if 'status="5' in labels and 'endpoint="/readyz"' not in labels
    ], counted


__all__ = ["httpx"]
