"""Dynamic batching, as in TF Serving.

Requests hand prepared pixels to the :class:`Batcher` of the model version they
picked. One dedicated thread per batcher takes the first waiting image, waits at
most ``timeout_s`` for more (up to ``max_batch_size``), runs them through the model
as one batch and hands each row back to its request's future on the event loop
(``call_soon_threadsafe``). The model never runs on the event loop, and the batch
shape changes only in its first dimension, so the fixed ``predict_pixels``
signature is never retraced.
"""

import contextlib
import logging
import queue
import threading
import time
from typing import Any, Callable, List, Optional, Tuple

import numpy as np

log = logging.getLogger(__name__)

_STOP = object()
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


class Batcher:
    """Batches single images for one model function.

    Args:
        predict: (N, size, size, 3) uint8 -> (N, labels) scores; runs in this batcher's thread.
        max_batch_size: most images per run.
        timeout_s: longest wait for more images once one is waiting.
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
        self._queue = queue.Queue()  # type: ignore[var-annotated]
        self._closed = False
        self._lock = threading.Lock()
        self.batches = 0
        self.images = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, pixels: np.ndarray, loop: Any) -> Any:
        """Queue one image (size, size, 3); returns an asyncio future for its scores row."""
        future = loop.create_future()
        with self._lock:
            if self._closed:
                raise RuntimeError("batcher is closed")
            self._queue.put((pixels, future, loop))
        return future

    def close(self) -> None:
        """Stop after running what is already queued; returns at once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)

    def join(self, timeout: Optional[float] = None) -> None:
        self._thread.join(timeout)

    def _collect(self, first: Item) -> Tuple[List[Item], bool]:
        batch = [first]
        stop = False
        deadline = time.monotonic() + self.timeout_s
        while len(batch) < self.max_batch_size:
            try:
                # Take what is already there without waiting, then wait out the timeout.
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is _STOP:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stop = self._collect(first)
            self._run_batch(batch)
        # Nothing is queued after _STOP (submit refuses once closed): drop references now.
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
