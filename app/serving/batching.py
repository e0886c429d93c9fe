"""Dynamic batching, as in TF Serving, but without waiting for nobody, and fair.

Each request opens a :class:`Feed` on the :class:`Batcher` of the model version it
picked, announcing how many images it will bring, and decode threads put the prepared
pixels into that feed. One dedicated thread per batcher forms batches: while more
images are announced and the batch is not full, it waits at most ``timeout_s`` for
them. A lone request therefore never waits: its latency is decode + one batch-1 run.

Batches take one image from each waiting request in turn (round-robin over the
feeds), so a request with 64 images shares every batch with the next client's single
image instead of putting all 64 ahead of it. The batch runs through the model and
each row goes back to its request's future on the event loop
(``call_soon_threadsafe``). The model never runs on the event loop, and the batch
shape changes only in its first dimension, so the fixed ``predict_pixels`` signature
is never retraced.
"""

import collections
import contextlib
import logging
import threading
import time
from typing import Any, Callable, Deque, List, Optional, Tuple

import numpy as np

log = logging.getLogger(__name__)

Item = Tuple[np.ndarray, Any, Any]  # pixels, future, event loop


def _resolve(future: Any, value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: Any, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _post(loop: Any, callback: Callable[[Any, Any], None], future: Any, value: Any) -> None:
    # RuntimeError: the loop closed (shutdown), so nobody is waiting any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, future, value)


def post_error(loop: Any, future: Any, error: BaseException) -> None:
    """Fail ``future`` (of ``loop``) from any thread."""
    _post(loop, _fail, future, error)


class Feed:
    """One request's images on their way into a :class:`Batcher` (see :meth:`Batcher.open`).

    Thread-safe: decode threads call :meth:`put` or :meth:`forget` once per announced image.
    """

    def __init__(self, batcher: "Batcher", count: int) -> None:
        self._batcher = batcher
        self.items: Deque[Item] = collections.deque()
        self.coming = count  # announced, not yet put or forgotten
        self.waiting = False  # in the batcher's round-robin of feeds with items

    def put(self, pixels: np.ndarray, future: Any, loop: Any) -> None:
        """Queue one announced image (size, size, 3) for ``future`` (of ``loop``).

        Raises:
            RuntimeError: the batcher is closed (the server is stopping).
        """
        self._batcher._put(self, (pixels, future, loop))

    def forget(self, count: int = 1) -> None:
        """Announced images that will not come (their decode failed)."""
        self._batcher._forget(self, count)


class Batcher:
    """Batches single images for one model function, fairly between requests.

    Args:
        predict: (N, size, size, 3) uint8 -> (N, labels) scores; runs in this batcher's thread.
        max_batch_size: most images per run.
        timeout_s: longest wait for announced images once one is waiting.
        observe: called with (batch size, seconds) after each run (metrics).
        name: thread name, for debugging.
    """

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int = 32,
        timeout_s: float = 0.002,
        observe: Optional[Callable[[int, float], None]] = None,
        name: str = "batcher",
    ) -> None:
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.timeout_s = timeout_s
        self._observe = observe
        self._ready: Deque[Feed] = collections.deque()  # feeds with items, in turn order
        self._queued = 0  # images waiting in all feeds
        self._coming = 0  # announced by open(), not yet put or forgotten
        self._closed = False
        self._cond = threading.Condition()
        self.batches = 0
        self.images = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def open(self, count: int = 1) -> Feed:
        """A feed for one request's ``count`` images, announced before their decode starts.

        A batch being formed waits for announced images (at most ``timeout_s``) instead of
        running without them.
        """
        count = max(0, int(count))
        with self._cond:
            self._coming += count
        return Feed(self, count)

    def submit(self, pixels: np.ndarray, loop: Any) -> Any:
        """Queue one image from the event loop; returns an asyncio future for its scores row."""
        future = loop.create_future()
        self.open(1).put(pixels, future, loop)
        return future

    def _put(self, feed: Feed, item: Item) -> None:
        with self._cond:
            if feed.coming > 0:
                feed.coming -= 1
                self._coming = max(0, self._coming - 1)
            if self._closed:
                raise RuntimeError("batcher is closed")
            feed.items.append(item)
            self._queued += 1
            if not feed.waiting:
                feed.waiting = True
                self._ready.append(feed)
            self._cond.notify()

    def _forget(self, feed: Feed, count: int) -> None:
        with self._cond:
            count = min(max(0, count), feed.coming)
            feed.coming -= count
            self._coming = max(0, self._coming - count)
            self._cond.notify()

    def close(self) -> None:
        """Stop after running what is already queued; returns at once."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def join(self, timeout: Optional[float] = None) -> None:
        self._thread.join(timeout)

    def _next(self) -> Optional[List[Item]]:
        """The next batch, one image per waiting request in turn; None once closed and drained."""
        cond = self._cond
        with cond:
            while not self._queued and not self._closed:
                cond.wait()
            if not self._queued:
                return None
            if self.timeout_s > 0 and self._coming > 0 and self._queued < self.max_batch_size:
                deadline = time.monotonic() + self.timeout_s
                while self._coming > 0 and self._queued < self.max_batch_size and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    cond.wait(remaining)
            batch: List[Item] = []
            ready = self._ready
            while ready and len(batch) < self.max_batch_size:
                feed = ready.popleft()
                batch.append(feed.items.popleft())
                if feed.items:
                    ready.append(feed)
                else:
                    feed.waiting = False
            self._queued -= len(batch)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._next()
            if batch is None:
                break
            self._run_batch(batch)
        # Nothing is queued once closed and drained (put refuses): drop references now.
        self._predict = None  # type: ignore[assignment]

    def _run_batch(self, batch: List[Item]) -> None:
        started = time.perf_counter()
        try:
            if len(batch) == 1:
                pixels = batch[0][0][np.newaxis]
            else:
                pixels = np.stack([item[0] for item in batch])
            scores = self._predict(pixels)
        except BaseException as exc:  # every waiting request must hear about it
            log.exception("model run failed for a batch of %d", len(batch))
            for _, future, loop in batch:
                _post(loop, _fail, future, exc)
            return
        took = time.perf_counter() - started
        self.batches += 1
        self.images += len(batch)
        for row, (_, future, loop) in zip(scores, batch):
            _post(loop, _resolve, future, row)
        if self._observe is not None:
            try:
                self._observe(len(batch), took)
            except Exception:
                log.debug("batch observer failed", exc_info=True)
