"""Dynamic batching, as in TF Serving, but without waiting for nobody.

Requests hand prepared pixels to the :class:`Batcher` of the model version they
picked. One dedicated thread per batcher takes the waiting images and, while more
are known to be on their way (announced with :meth:`Batcher.expect` before their
decode starts) and the batch is not full, waits at most ``timeout_s`` for them. A
lone request therefore never waits: its latency is decode + one batch-1 run. The
batch runs through the model and each row goes back to its request's future on the
event loop (``call_soon_threadsafe``). The model never runs on the event loop, and
the batch shape changes only in its first dimension, so the fixed ``predict_pixels``
signature is never retraced. Decode threads call :meth:`Batcher.put` themselves, so
a request costs the event loop one wake-up, not one per stage.
"""

import collections
import contextlib
import logging
import threading
import time
from typing import Any, Callable, List, Optional, Tuple

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


class Batcher:
    """Batches single images for one model function.

    Args:
        predict: (N, size, size, 3) uint8 -> (N, labels) scores; runs in this batcher's thread.
        max_batch_size: most images per run.
        timeout_s: longest wait for announced images once one is waiting.
        observe: called with (batch size, seconds) after each run (metrics).
        name: thread name, for debugging.
    """

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], max_batch_size: int = 32,
                 timeout_s: float = 0.002, observe: Optional[Callable[[int, float], None]] = None,
                 name: str = "batcher") -> None:
        self._predict = predict
        self.max_batch_size = max(1, int(max_batch_size))
        self.timeout_s = max(0.0, float(timeout_s))
        self._observe = observe
        self._items = collections.deque()  # type: ignore[var-annotated]
        self._coming = 0  # announced by expect(), not yet put() or forgotten
        self._closed = False
        self._cond = threading.Condition()
        self.batches = 0
        self.images = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def expect(self, count: int = 1) -> None:
        """Announce ``count`` images being prepared: a batch may wait for them."""
        with self._cond:
            self._coming += count

    def forget(self, count: int = 1) -> None:
        """Announced images that will not come (their decode failed)."""
        with self._cond:
            self._coming = max(0, self._coming - count)
            self._cond.notify()

    def put(self, pixels: np.ndarray, future: Any, loop: Any, expected: bool = False) -> None:
        """Queue one image (size, size, 3) for ``future`` (of ``loop``); thread-safe.

        ``expected``: it was announced with :meth:`expect`.
        """
        with self._cond:
            if expected:
                self._coming = max(0, self._coming - 1)
            if self._closed:
                raise RuntimeError("batcher is closed")
            self._items.append((pixels, future, loop))
            self._cond.notify()

    def submit(self, pixels: np.ndarray, loop: Any) -> Any:
        """Queue one image from the event loop; returns an asyncio future for its scores row."""
        future = loop.create_future()
        self.put(pixels, future, loop)
        return future

    def close(self) -> None:
        """Stop after running what is already queued; returns at once."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def join(self, timeout: Optional[float] = None) -> None:
        self._thread.join(timeout)

    def _next(self) -> Optional[List[Item]]:
        """The next batch; None once closed and drained."""
        cond = self._cond
        with cond:
            while not self._items and not self._closed:
                cond.wait()
            if not self._items:
                return None
            if self.timeout_s > 0 and self._coming > 0 and len(self._items) < self.max_batch_size:
                deadline = time.monotonic() + self.timeout_s
                while (self._coming > 0 and len(self._items) < self.max_batch_size
                       and not self._closed):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    cond.wait(remaining)
            count = min(len(self._items), self.max_batch_size)
            return [self._items.popleft() for _ in range(count)]

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
