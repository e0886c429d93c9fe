"""The review inbox in a shared bucket (moto in server mode): two API nodes, one inbox.

Each "node" is an :class:`Inbox` of its own (its own node id, thumbnail cache and record
cache) over the same bucket, as two API machines with different POETS_HOME folders are.
"""

import contextlib
import logging
import threading
from pathlib import Path
from typing import Any, Callable, List

import pytest

from poets.engine import inbox_storage
from poets.engine.data.thumbnails import ThumbnailCache
from poets.engine.errors import InvalidInput, NotFound, StoreUnavailable
from poets.engine.inbox import Collector, Inbox
from poets.engine.inbox_storage import BucketInboxStorage, LocalInboxStorage
from poets.engine.store.bucket import Bucket
from tests.engine.test_inbox import MODEL, jpeg, scores
from tests.s3 import MotoServer
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

Node = Callable[..., Inbox]


@pytest.fixture
def bucket(s3_server: MotoServer) -> Bucket:
    return Bucket(s3_server.bucket("site/a"), s3_server.url, timeout_s=1.0)


@pytest.fixture
def node(bucket: Bucket, tmp_path: Path) -> Node:
    """``node("000a", max_items=..., max_bytes=...)``: an inbox on a node of its own."""

    def make(name: str, max_items: int = 10, max_bytes: int = 1 << 20) -> Inbox:
        thumbnails = ThumbnailCache(tmp_path / name / "thumbnails", 1 << 20)
        return Inbox(BucketInboxStorage(bucket), max_items, max_bytes, thumbnails, node=name)

    return make


@pytest.fixture(params=["local", "bucket"])
def either(request: Any, tmp_path: Path) -> Node:
    """Inboxes of one kind or the other: what holds on disk holds in the bucket."""
    if request.param == "local":
        return lambda name, max_items=10, max_bytes=1 << 20: Inbox(
            LocalInboxStorage(tmp_path / "inbox"), max_items, max_bytes, node=name
        )
    return request.getfixturevalue("node")  # type: ignore[no-any-return]


def inbox_keys(bucket: Bucket) -> List[str]:
    return [info.key for info in bucket.list("inbox/")]


def test_same_behaviour_on_disk_and_in_the_bucket(either: Node) -> None:
    inbox = either("000a", max_items=3)
    ids = [inbox.add(jpeg(i), MODEL, scores(top)) for i, top in enumerate((0.5, 0.3, 0.45, 0.2))]
    assert ids == sorted(ids) and all(item[13:17] == "000a" for item in ids)  # time, node, count
    total, items = inbox.items()
    assert total == 3 == len(inbox) and inbox.dropped == 1
    assert [i["top_score"] for i in items] == [0.2, 0.3, 0.45]  # least confident first
    assert inbox.items(offset=1, limit=1)[1][0]["id"] == items[1]["id"]
    with pytest.raises(NotFound, match="POETS_INBOX_MAX_ITEMS"):
        inbox.take(ids[0])
    record, data = inbox.take(ids[1])
    assert data == jpeg(1) and record["id"] == ids[1] and record["model"] == MODEL
    with pytest.raises(NotFound, match="filed or discarded"):
        inbox.take(ids[1])
    inbox.put_back(record, data)
    assert inbox.discard(ids[1])["id"] == ids[1]
    assert [i["id"] for i in inbox.items()[1]] == [ids[3], ids[2]]
    for bad in ("../x", "1" * 22, ""):
        with pytest.raises(InvalidInput):
            inbox.record(bad)


def test_frames_collected_on_one_node_are_reviewed_on_another(node: Node, bucket: Bucket) -> None:
    a, b = node("000a"), node("000b")
    ids = [a.add(jpeg(i), MODEL, scores(top)) for i, top in enumerate((0.5, 0.3, 0.45))]
    # The layout: a frame and its record per item, under inbox/.
    assert inbox_keys(bucket) == sorted(
        k for i in ids for k in ("inbox/{}.jpg".format(i), "inbox/{}.json".format(i))
    )
    total, items = b.items()
    assert total == 3 and [i["id"] for i in items] == [ids[1], ids[2], ids[0]]
    assert b.frame(ids[1]) == (items[0], jpeg(1))
    thumbnail = b.thumbnail(ids[1])
    assert thumbnail[:2] == b"\xff\xd8" and b.thumbnail(ids[1]) == thumbnail  # the second from the cache
    record, data = b.take(ids[1])
    assert data == jpeg(1) and record["scores"][0] == {"label": "dog", "score": 0.3}
    with pytest.raises(NotFound, match="filed or discarded already"):
        a.take(ids[1])
    with pytest.raises(NotFound):
        a.thumbnail(ids[1])
    assert a.discard(ids[0])["id"] == ids[0]
    assert [i["id"] for i in b.items()[1]] == [ids[2]]
    assert inbox_keys(bucket) == ["inbox/{}.jpg".format(ids[2]), "inbox/{}.json".format(ids[2])]
    b.put_back(record, data)  # filing failed on b: the item is back for everyone
    assert [i["id"] for i in a.items()[1]] == [ids[1], ids[2]]


def test_two_nodes_taking_one_item_get_it_once(node: Node) -> None:
    a, b = node("000a"), node("000b")
    item = a.add(jpeg(1), MODEL, scores(0.2))
    got: List[bytes] = []
    barrier = threading.Barrier(8)

    def taker(inbox: Inbox) -> None:
        barrier.wait()
        with contextlib.suppress(NotFound):
            got.append(inbox.take(item)[1])

    threads = [threading.Thread(target=taker, args=(a if i % 2 else b,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == [jpeg(1)]
    assert len(a) == len(b) == 0


def test_bounds_hold_across_two_writers(node: Node, bucket: Bucket) -> None:
    a, b = node("000a", max_items=4), node("000b", max_items=4)
    written: List[str] = []
    barrier = threading.Barrier(2)

    def writer(inbox: Inbox, seed: int) -> None:
        barrier.wait()
        for i in range(6):
            written.append(inbox.add(jpeg(seed + i), MODEL, scores(0.4)))

    threads = [threading.Thread(target=writer, args=(a, 0)), threading.Thread(target=writer, args=(b, 100))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Each writer deleted the oldest of what it saw: never one of the four newest.
    kept = [i["id"] for i in a.items(limit=100)[1]]
    assert sorted(kept) == sorted(written)[-4:]
    assert len(inbox_keys(bucket)) == 8
    # Counted per node: a frame both trimmed at once counts on both.
    assert a.dropped + b.dropped >= 8
    with pytest.raises(NotFound, match="POETS_INBOX_MAX_ITEMS"):
        b.take(sorted(written)[0])


def test_bytes_bound_across_two_writers(node: Node) -> None:
    frame = jpeg(1, side=64)
    a, b = node("000a", max_bytes=len(frame) * 3 + 10), node("000b", max_bytes=len(frame) * 3 + 10)
    for i in range(6):
        (a if i % 2 else b).add(frame, MODEL, scores(0.4))
    assert len(a) == 3 and a.dropped + b.dropped == 3


def test_a_take_that_broke_off_is_void_later(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = node("000a"), node("000b")
    item = a.add(jpeg(1), MODEL, scores(0.2))
    assert a.storage.claim(item) is not None  # a node died between its claim and its deletes
    assert len(b) == 0
    with pytest.raises(NotFound):
        b.take(item)
    monkeypatch.setattr(inbox_storage, "CLAIM_STALE_S", -60.0)  # ... long ago
    assert len(b) == 1
    assert b.take(item)[1] == jpeg(1)
    assert len(a) == 0


def test_an_outage_drops_collected_frames_and_review_recovers(
    node: Node, s3_server: MotoServer, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = node("000a"), node("000b")
    kept = a.add(jpeg(1), MODEL, scores(0.2))
    dropped: List[int] = []
    collector = Collector(a, 0.6, 1.0, 10, always=True, on_unavailable=lambda: dropped.append(1), retry_s=0.2)
    caplog.set_level(logging.INFO, logger="poets.engine.inbox")
    s3_server.pause()
    try:
        for i in range(3):
            assert collector.offer(jpeg(10 + i), MODEL, scores(0.3))  # never waits for the bucket
        assert collector.flush(60)
        with pytest.raises(StoreUnavailable, match="cannot be reached"):
            b.items()
        with pytest.raises(StoreUnavailable):
            b.take(kept)
    finally:
        s3_server.resume()
    assert collector.unavailable == len(dropped) == 3 and collector.saved == 0
    warnings = [r.getMessage() for r in caplog.records if "review inbox's store" in r.getMessage()]
    assert len(warnings) == 1 and "frames are dropped" in warnings[0]  # once per outage

    # Back: the next frame is kept (after the short pause between tries), review works again.
    def kept_again() -> bool:
        collector.offer(jpeg(20), MODEL, scores(0.3))
        return collector.flush(60) and collector.saved == 1

    wait_until(kept_again, 60, "a collected frame kept again", interval=0.1)
    warnings = [r.getMessage() for r in caplog.records if "review inbox's store" in r.getMessage()]
    assert len(warnings) == 2 and "answers again" in warnings[1]
    assert b.take(kept)[1] == jpeg(1)
    assert len(b) == 1
