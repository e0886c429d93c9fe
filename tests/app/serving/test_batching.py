"""The dynamic batcher: who waits for whom and who goes first (no timing asserted, only who
ends up together and in which order)."""

import asyncio
import threading
from typing import Any, List

import numpy as np
import pytest

from app.serving.batching import Batcher

pytestmark = pytest.mark.unit

# Longer than any test: a batcher that waited for it would hang the test.
FOREVER_S = 3600.0


class Model:
    """Records each batch size; score row i is the first pixel of image i."""

    def __init__(self) -> None:
        self.sizes: List[int] = []

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        self.sizes.append(len(pixels))
        return pixels[:, 0, 0, :1].astype(np.float32)


def image(value: int) -> np.ndarray:
    return np.full((2, 2, 3), value, np.uint8)


@pytest.fixture()
def loop() -> Any:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def gather(loop: Any, futures: List[Any]) -> List[Any]:
    return loop.run_until_complete(asyncio.wait_for(asyncio.gather(*futures), 60))  # type: ignore[no-any-return]


def test_a_lone_image_does_not_wait_for_the_timeout(loop: Any) -> None:
    model = Model()
    batcher = Batcher(model, max_batch_size=32, timeout_s=FOREVER_S)
    try:
        rows = gather(loop, [batcher.submit(image(7), loop)])
        assert rows[0][0] == 7
        assert model.sizes == [1]
    finally:
        batcher.close()
        batcher.join(10)


def test_announced_images_are_waited_for_and_run_together(loop: Any) -> None:
    model = Model()
    batcher = Batcher(model, max_batch_size=32, timeout_s=FOREVER_S)
    try:
        feed = batcher.open(3)
        futures = [loop.create_future() for _ in range(3)]
        feed.put(image(1), futures[0], loop)

        def later() -> None:
            for value, future in ((2, futures[1]), (3, futures[2])):
                feed.put(image(value), future, loop)

        threading.Timer(0.05, later).start()
        rows = gather(loop, futures)
        assert [int(r[0]) for r in rows] == [1, 2, 3]
        assert model.sizes == [3]
    finally:
        batcher.close()
        batcher.join(10)


def test_forget_stops_the_wait_for_an_image_that_will_not_come(loop: Any) -> None:
    model = Model()
    batcher = Batcher(model, max_batch_size=32, timeout_s=FOREVER_S)
    try:
        feed = batcher.open(2)
        future = loop.create_future()
        feed.put(image(5), future, loop)
        threading.Timer(0.05, feed.forget).start()
        assert gather(loop, [future])[0][0] == 5
        assert model.sizes == [1]
    finally:
        batcher.close()
        batcher.join(10)


def test_batches_never_exceed_the_maximum(loop: Any) -> None:
    model = Model()
    batcher = Batcher(model, max_batch_size=4, timeout_s=FOREVER_S)
    try:
        feed = batcher.open(10)
        futures = [loop.create_future() for _ in range(10)]
        for value, future in enumerate(futures):
            feed.put(image(value), future, loop)
        rows = gather(loop, futures)
        assert [int(r[0]) for r in rows] == list(range(10))
        assert max(model.sizes) <= 4 and sum(model.sizes) == 10
    finally:
        batcher.close()
        batcher.join(10)


def test_a_model_error_reaches_every_request_of_the_batch(loop: Any) -> None:
    def broken(pixels: np.ndarray) -> np.ndarray:
        raise ValueError("boom")

    batcher = Batcher(broken, max_batch_size=8, timeout_s=0.0)
    try:
        futures = [batcher.submit(image(i), loop) for i in range(3)]
        outcome = loop.run_until_complete(asyncio.gather(*futures, return_exceptions=True))
        assert all(isinstance(result, ValueError) for result in outcome)
    finally:
        batcher.close()
        batcher.join(10)


def test_close_runs_what_is_queued_then_refuses(loop: Any) -> None:
    release = threading.Event()
    sizes: List[int] = []

    def slow(pixels: np.ndarray) -> np.ndarray:
        release.wait(30)
        sizes.append(len(pixels))
        return pixels[:, 0, 0, :1].astype(np.float32)

    batcher = Batcher(slow, max_batch_size=1, timeout_s=0.0)
    futures = [batcher.submit(image(i), loop) for i in range(3)]
    batcher.close()
    with pytest.raises(RuntimeError):
        batcher.submit(image(9), loop)
    release.set()
    rows = gather(loop, futures)
    batcher.join(10)
    assert [int(r[0]) for r in rows] == [0, 1, 2]
    assert sizes == [1, 1, 1]


def test_a_big_request_shares_batches_with_the_next_clients_single_image(loop: Any) -> None:
    """64 images of one request, then 1 of another: the single one rides in the next batch."""
    started = threading.Event()
    release = threading.Event()
    batches: List[List[int]] = []

    def model(pixels: np.ndarray) -> np.ndarray:
        batches.append([int(v) for v in pixels[:, 0, 0, 0]])
        started.set()
        release.wait(30)  # the first batch holds until the single image is queued
        return pixels[:, 0, 0, :1].astype(np.float32)

    batcher = Batcher(model, max_batch_size=8, timeout_s=FOREVER_S)
    try:
        big = batcher.open(64)
        big_futures = [loop.create_future() for _ in range(64)]
        for value, future in enumerate(big_futures):
            big.put(image(value % 200), future, loop)
        assert started.wait(30)
        single_future = batcher.submit(image(255), loop)
        release.set()
        gather(loop, [*big_futures, single_future])
        assert len(batches[0]) == 8 and 255 not in batches[0]
        # The single image goes in the very next batch, not after the 56 waiting images.
        assert 255 in batches[1], batches
        assert sum(len(b) for b in batches) == 65 and max(len(b) for b in batches) <= 8
        # The big request's own images keep their order.
        assert [v for b in batches for v in b if v != 255] == [v % 200 for v in range(64)]
    finally:
        release.set()
        batcher.close()
        batcher.join(10)


def test_turns_alternate_between_waiting_requests(loop: Any) -> None:
    started = threading.Event()
    release = threading.Event()
    batches: List[List[int]] = []

    def model(pixels: np.ndarray) -> np.ndarray:
        batches.append([int(v) for v in pixels[:, 0, 0, 0]])
        started.set()
        release.wait(30)
        return pixels[:, 0, 0, :1].astype(np.float32)

    batcher = Batcher(model, max_batch_size=4, timeout_s=0.0)
    try:
        blocker = batcher.submit(image(0), loop)  # holds the model while the rest queues
        assert started.wait(30)
        first, second = batcher.open(6), batcher.open(2)
        futures = []
        for value in range(10, 16):
            futures.append(loop.create_future())
            first.put(image(value), futures[-1], loop)
        for value in (20, 21):
            futures.append(loop.create_future())
            second.put(image(value), futures[-1], loop)
        release.set()
        gather(loop, [blocker, *futures])
        assert batches == [[0], [10, 20, 11, 21], [12, 13, 14, 15]]
    finally:
        release.set()
        batcher.close()
        batcher.join(10)
