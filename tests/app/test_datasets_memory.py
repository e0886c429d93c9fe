"""/datasets within bounded memory, through a real server: uploads spooled to disk, 409 at a
dataset's bounds, exports that give up on a client that stops reading (issue 23, 6, 8, 9)."""

import asyncio
import io
import tracemalloc
import uuid
from pathlib import Path
from typing import Any, Iterator, List

import numpy as np
import pytest
from PIL import Image

from app.streaming import PacedStreamingResponse
from tests.app.conftest import assert_error, settings_for

pytestmark = pytest.mark.integration

KEY = "memory-key"


def noise_png(seed: int, side: int) -> bytes:
    pixels = np.random.RandomState(seed).randint(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", compress_level=0)
    return out.getvalue()


@pytest.fixture(scope="module")
def server(serve: Any, backbone_dir: Path, tmp_path_factory: Any) -> Any:
    home = tmp_path_factory.mktemp("datasets-memory-home")
    return serve(settings_for(home, backbone_dir, api_keys=(KEY,), dataset_max_images=12))


@pytest.fixture(scope="module")
def client(server: Any) -> Any:
    with server.client(headers={"X-API-Key": KEY}) as client:
        yield client


def multipart(label: str, parts: List[Path], boundary: str) -> Iterator[bytes]:
    """The form, produced a part at a time (the client holds one piece, not the body)."""
    for index, path in enumerate(parts):
        yield (
            '--{}\r\nContent-Disposition: form-data; name="files"; filename="p{}.png"\r\n'
            "Content-Type: image/png\r\n\r\n".format(boundary, index)
        ).encode()
        with path.open("rb") as source:
            while True:
                piece = source.read(64 * 1024)
                if not piece:
                    break
                yield piece
        yield b"\r\n"
    yield '--{}\r\nContent-Disposition: form-data; name="label"\r\n\r\n{}\r\n--{}--\r\n'.format(
        boundary, label, boundary
    ).encode()


def test_an_upload_is_spooled_to_disk_not_held_whole(client: Any, tmp_path: Path) -> None:
    assert client.post("/datasets", json={"name": "spooled"}).status_code == 201
    parts = []
    for seed in range(8):
        path = tmp_path / "part{}.png".format(seed)
        path.write_bytes(noise_png(seed, 700))  # about 1.5 MB each, 12 MB in all
        parts.append(path)
    total = sum(p.stat().st_size for p in parts)
    boundary = uuid.uuid4().hex
    tracemalloc.start()  # the server runs in this process: its allocations are traced too
    try:
        response = client.post(
            "/datasets/spooled/images",
            content=multipart("noise", parts, boundary),
            headers={"Content-Type": "multipart/form-data; boundary={}".format(boundary)},
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 201, response.text
    assert len(response.json()["ids"]) == 8
    assert client.get("/datasets/spooled").json()["bytes"] == total
    assert peak < total / 2, "the upload was held in memory ({} of {} bytes at peak)".format(peak, total)


def test_a_full_dataset_refuses_more_with_409_naming_the_setting(client: Any) -> None:
    assert client.post("/datasets", json={"name": "small"}).status_code == 201
    files = [("files", ("n{}.png".format(i), noise_png(100 + i, 8), "image/png")) for i in range(13)]
    response = client.post("/datasets/small/images", data={"label": "a"}, files=files)
    assert_error(response, 409, "dataset_full")
    assert "POETS_DATASET_MAX_IMAGES" in response.json()["detail"]
    assert client.get("/datasets/small").json()["images"] == 0
    response = client.post("/datasets/small/images", data={"label": "a"}, files=files[:12])
    assert response.status_code == 201, response.text
    assert client.get("/datasets/small").json()["images"] == 12


def run_response(response: Any, send: Any) -> None:
    scope = {"type": "http", "method": "GET", "path": "/datasets/x/archive", "headers": []}

    async def receive() -> Any:
        await asyncio.Event().wait()  # the client never hangs up

    loop = asyncio.new_event_loop()
    try:
        # A safety net for a broken build, not a timing assertion: the fix ends in 0.2 s.
        loop.run_until_complete(asyncio.wait_for(response(scope, receive, send), 30))
    finally:
        loop.close()


def pieces(produced: List[int]) -> Iterator[bytes]:
    for index in range(100):
        produced.append(index)
        yield b"x" * 1000


def test_an_export_to_a_client_that_stops_reading_is_cut_off() -> None:
    produced: List[int] = []
    sent: List[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and len(sent) >= 3:
            await asyncio.Event().wait()  # the client stopped reading: the send never completes

    run_response(PacedStreamingResponse(pieces(produced), 0.2, media_type="application/zip"), send)
    assert len(produced) < 10, "the rest of the export was still produced"
    assert sent[-1].get("more_body", False), "a stalled response must not look complete"


def test_an_export_to_a_client_that_reads_is_whole() -> None:
    produced: List[int] = []
    sent: List[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    run_response(PacedStreamingResponse(pieces(produced), 0.2, media_type="application/zip"), send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert len(produced) == 100 and body == b"x" * 100000 and not sent[-1].get("more_body", False)


def test_listing_answers_from_the_cache_until_a_change(client: Any, monkeypatch: Any) -> None:
    from poets.engine.data.library import summary as summary_module

    assert client.post("/datasets", json={"name": "polled"}).status_code == 201
    files = [("files", ("n{}.png".format(i), noise_png(200 + i, 8), "image/png")) for i in range(3)]
    assert client.post("/datasets/polled/images", data={"label": "a"}, files=files).status_code == 201
    computed = [0]
    real = summary_module.content_fingerprint

    def counted(*args: Any) -> str:  # the server runs in this process
        computed[0] += 1
        return real(*args)

    monkeypatch.setattr(summary_module, "content_fingerprint", counted)
    first = client.get("/datasets").json()
    computed[0] = 0
    for _ in range(10):
        assert client.get("/datasets").json() == first
        assert client.get("/datasets/polled").json()["images"] == 3
    assert computed[0] == 0, "a listing of unchanged datasets looked at their images"
    more = [("files", ("m.png", noise_png(300, 8), "image/png"))]
    assert client.post("/datasets/polled/images", data={"label": "b"}, files=more).status_code == 201
    computed[0] = 0
    polled = next(d for d in client.get("/datasets").json()["datasets"] if d["name"] == "polled")
    assert polled["classes"] == {"a": 3, "b": 1} and computed[0] == 1
