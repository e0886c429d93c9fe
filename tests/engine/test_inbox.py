"""The review inbox (bounded in items and bytes) and the collector (off the caller's thread)."""

import contextlib
import io
import random
import threading
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
from PIL import Image

from poets.engine.errors import InvalidInput, NotFound
from poets.engine.inbox import Collector, Inbox

pytestmark = pytest.mark.unit

MODEL = {"name": "yard", "version": 3}


def jpeg(seed: int, side: int = 32) -> bytes:
    pixels = np.random.RandomState(seed).randint(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG")
    return out.getvalue()


def scores(top: float) -> List[Dict[str, Any]]:
    """The model's scores for a frame whose top score is ``top``."""
    return [{"label": "cat", "score": top / 2}, {"label": "dog", "score": top}]


def test_items_least_confident_first_with_model_and_scores(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path / "inbox", 10, 1 << 20)
    for top in (0.5, 0.3, 0.45):
        inbox.add(jpeg(int(top * 100)), MODEL, scores(top))
    total, items = inbox.items()
    assert total == 3
    assert [i["top_score"] for i in items] == [0.3, 0.45, 0.5]
    first = items[0]
    assert first["model"] == MODEL
    assert first["scores"] == [{"label": "dog", "score": 0.3}, {"label": "cat", "score": 0.15}]
    assert inbox.items(offset=1, limit=1)[1][0]["id"] == items[1]["id"]


def test_oldest_dropped_beyond_max_items_and_counted(tmp_path: Path) -> None:
    drops: List[int] = []
    inbox = Inbox(tmp_path / "inbox", 3, 1 << 20, on_drop=drops.append)
    ids = [inbox.add(jpeg(i), MODEL, scores(0.4)) for i in range(5)]
    assert ids == sorted(ids)  # ids sort by arrival, frames of one millisecond too
    assert len(inbox) == 3 and sum(drops) == 2 and inbox.dropped == 2
    kept = {i["id"] for i in inbox.items()[1]}
    assert kept == set(ids[2:])
    with pytest.raises(NotFound, match="POETS_INBOX_MAX_ITEMS"):
        inbox.take(ids[0])


def test_oldest_dropped_beyond_max_bytes(tmp_path: Path) -> None:
    frame = jpeg(1, side=64)
    inbox = Inbox(tmp_path / "inbox", 100, len(frame) * 2 + 10)
    for _ in range(4):
        inbox.add(frame, MODEL, scores(0.4))
    assert len(inbox) == 2 and inbox.dropped == 2


def test_take_once_put_back_discard(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path / "inbox", 10, 1 << 20)
    item = inbox.add(jpeg(1), MODEL, scores(0.2))
    record, data = inbox.take(item)
    assert data == jpeg(1) and record["id"] == item
    with pytest.raises(NotFound, match="filed or discarded"):
        inbox.take(item)
    inbox.put_back(record, data)
    assert inbox.discard(item)["id"] == item
    assert len(inbox) == 0 and not [p for p in (tmp_path / "inbox").iterdir()]


def test_concurrent_takes_give_the_item_once(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path / "inbox", 10, 1 << 20)
    item = inbox.add(jpeg(1), MODEL, scores(0.2))
    got: List[bytes] = []

    def taker() -> None:
        with contextlib.suppress(NotFound):
            got.append(inbox.take(item)[1])

    threads = [threading.Thread(target=taker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 1


@pytest.mark.parametrize("item", ["../x", "1" * 22, "abc", "0000000000000000000zz", ""])
def test_bad_ids(tmp_path: Path, item: str) -> None:
    with pytest.raises(InvalidInput):
        Inbox(tmp_path / "inbox", 10, 1 << 20).record(item)


def test_collector_keeps_only_unsure_frames_of_wanted_models(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path / "inbox", 100, 1 << 20)
    collector = Collector(inbox, threshold=0.6, fraction=1.0, queue_size=10, models=("cams",))
    assert not collector.offer(jpeg(1), MODEL, scores(0.4))  # not asked, not a listed model
    assert collector.offer(jpeg(2), MODEL, scores(0.4), requested=True)
    assert not collector.offer(jpeg(3), MODEL, [{"label": "cat", "score": 0.9}], requested=True)
    assert collector.offer(jpeg(4), {"name": "cams", "version": 1}, scores(0.45))
    assert collector.flush()
    assert len(inbox) == 2 and collector.saved == 2


def test_collector_samples_a_fraction(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path / "inbox", 1000, 1 << 24)
    collector = Collector(inbox, 0.9, 0.25, 1000, always=True, rng=random.Random(1))
    taken = sum(collector.offer(jpeg(i, 8), MODEL, scores(0.5)) for i in range(400))
    assert 60 < taken < 140
    assert collector.flush()


def test_collector_never_blocks_and_drops_when_the_writer_is_behind(tmp_path: Path) -> None:
    release = threading.Event()
    saved: List[str] = []

    class SlowInbox(Inbox):
        def add(self, data: bytes, model: Dict[str, Any], scores: Any) -> str:
            release.wait(30)  # a disk that does not keep up
            saved.append(threading.current_thread().name)
            return super().add(data, model, scores)

    dropped: List[int] = []
    collector = Collector(
        SlowInbox(tmp_path / "inbox", 100, 1 << 20),
        0.6,
        1.0,
        queue_size=2,
        always=True,
        on_drop=lambda: dropped.append(1),
    )
    results = [collector.offer(jpeg(i), MODEL, scores(0.3)) for i in range(10)]
    # One frame is with the writer, two wait in the queue: the other seven are dropped.
    assert results.count(True) >= 2 and len(dropped) == results.count(False) >= 6
    assert collector.dropped == len(dropped)
    release.set()
    assert collector.flush()
    assert set(saved) == {"poets-collector"}  # written on the collector's thread, not the caller's
    assert len(collector.inbox) == results.count(True)


def test_collector_thread_exits_when_idle_and_restarts(tmp_path: Path) -> None:
    collector = Collector(Inbox(tmp_path / "inbox", 10, 1 << 20), 0.6, 1.0, 4, always=True, idle_exit_s=0.05)
    collector.offer(jpeg(1), MODEL, scores(0.3))
    assert collector.flush()
    thread = collector._thread
    if thread is not None:
        thread.join(5)
    assert collector._thread is None
    collector.offer(jpeg(2), MODEL, scores(0.3))
    assert collector.flush() and len(collector.inbox) == 2
