"""Two API nodes, one review inbox: frames collected by /label on node A are reviewed on node B.

The nodes share nothing but the bucket (moto in server mode): each has its own POETS_HOME,
so its own dataset library, thumbnail cache and model cache. Node A serves the model;
node B only runs the console's routes (no model, no TensorFlow).
"""

from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.conftest import assert_error, post_body, publish_model, settings_for, wait_for
from tests.s3 import MotoServer

pytestmark = pytest.mark.integration

Nodes = Tuple[TestClient, TestClient]


@pytest.fixture(scope="module")
def nodes(
    s3_server: MotoServer, backbone_dir: Path, trained: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Nodes]:
    store = {"store_url": s3_server.bucket("nodes"), "s3_endpoint_url": s3_server.url, "store_timeout_s": 1.0}
    a = settings_for(tmp_path_factory.mktemp("node-a"), backbone_dir, collect_threshold=1.01, **store)
    b = settings_for(tmp_path_factory.mktemp("node-b"), backbone_dir, **store)
    publish_model(trained, a)
    node_b = TestClient(create_app(b), base_url="http://localhost")  # no startup: no model
    with TestClient(create_app(a), base_url="http://localhost") as node_a:
        wait_for(lambda: node_a.get("/readyz").status_code == 200, timeout=120)
        yield node_a, node_b


@pytest.fixture(scope="module")
def frames(flowers_dir: Path) -> List[bytes]:
    return [p.read_bytes() for p in sorted((flowers_dir / "tulips").glob("*.jpg"))[:4]]


def collect(node: TestClient, frame: bytes) -> Dict[str, Any]:
    response = post_body(
        node, "/label", frame, params={"collect": "true"}, headers={"Content-Type": "image/jpeg"}
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def metric(node: TestClient, line_start: str) -> float:
    for line in node.get("/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def listed(node: TestClient) -> List[str]:
    page = node.get("/review", params={"limit": 1000})
    assert page.status_code == 200, page.text
    return [item["id"] for item in page.json()["items"]]


def test_collected_on_a_reviewed_on_b(nodes: Nodes, frames: List[bytes]) -> None:
    a, b = nodes
    for frame in frames[:3]:
        collect(a, frame)
    wait_for(lambda: len(listed(b)) == 3)
    items = b.get("/review").json()["items"]
    assert items[0]["model"] == {"name": "flowers", "version": 1}
    first, second, third = (item["id"] for item in items)
    assert b.get(items[0]["image"]).content in frames[:3]
    thumbnail = b.get(items[0]["thumbnail"])
    assert thumbnail.status_code == 200 and thumbnail.content[:2] == b"\xff\xd8"
    # Filed into a dataset of B's own library; A's library has no such dataset.
    assert b.post("/datasets", json={"name": "yard"}).status_code == 201
    filed = b.post("/review/" + first, json={"dataset": "yard", "label": "tulips"})
    assert filed.status_code == 200 and filed.json()["filed"] is True, filed.text
    assert b.get("/datasets/yard").json()["classes"] == {"tulips": 1}
    assert a.get("/datasets/yard").status_code == 404
    assert b.post("/review/" + second, json={"discard": True}).json() == {"id": second, "discarded": True}
    # Gone for A too: it says so; what is left is the same on both.
    assert_error(a.post("/review/" + first, json={"discard": True}), 404, "not_found")
    assert listed(a) == listed(b) == [third]
    assert a.post("/review/" + third, json={"discard": True}).status_code == 200
    assert listed(b) == []


def test_bucket_down_collection_drops_review_refuses_label_answers(
    nodes: Nodes, frames: List[bytes], s3_server: MotoServer
) -> None:
    a, b = nodes
    collect(a, frames[0])
    wait_for(lambda: len(listed(b)) == 1)
    item = listed(b)[0]
    unavailable = 'poets_inbox_dropped_total{reason="store_unavailable"}'
    s3_server.pause()
    try:
        answer = collect(a, frames[1])  # /label never waits for the bucket
        assert answer["labels"][0]["label"] in ("daisy", "dandelion", "roses", "sunflowers", "tulips")
        wait_for(lambda: metric(a, unavailable) >= 1)
        assert_error(b.get("/review"), 503, "store_unavailable")
        assert_error(b.post("/review/" + item, json={"discard": True}), 503, "store_unavailable")
        assert_error(b.get("/review/{}/image".format(item)), 503, "store_unavailable")
    finally:
        s3_server.resume()
    assert b.get("/review").json()["dropped"] == 0  # B collected nothing; A counted its drop
    assert a.get("/review").json()["dropped"] >= 1

    # Back by itself: A's next frames are kept again, B reviews them.
    def collected_again() -> bool:
        collect(a, frames[2])
        return len(listed(b)) >= 2

    wait_for(collected_again, timeout=60, interval=0.5)
    for left in listed(b):
        assert b.post("/review/" + left, json={"discard": True}).status_code == 200
    assert listed(a) == []
