"""A served model version: one ``await model.label(images, top_k)`` call.

The served model owns the whole way from encoded bytes to ranked labels (as MLServer's
models own their batching): decode in the decode pool, batch in its
:class:`~app.serving.batching.Batcher`, rank the score rows. Routes only read the request
and shape the answer.

Speed, kept from the route it replaced:

* decode threads hand the pixels straight to the batcher, not back through the event
  loop: the loop hears about an image once, when its scores (or its error) are ready;
* the images are announced to the batcher before their decode starts, so a batch being
  formed waits for them (at most ``POETS_BATCH_TIMEOUT_MS``), while a lone request
  never waits;

and fairness: a request keeps at most one decode per decode thread in the pool at a
time (the next one is queued when one finishes), so a 64-image request does not put
64 decodes ahead of the next client's single image; the batcher then takes one image
per request in turn.
"""

import asyncio
import threading
import time
from concurrent.futures import Executor
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, cast

import numpy as np

from app.serving.batching import Batcher, Feed, post_error
from poets.engine.errors import InvalidImage, Unavailable

Ranked = List[Tuple[str, float]]


class Decoding:
    """Where and how images are decoded: the pool, its width, the pixel limit, a timer."""

    def __init__(
        self, pool: Executor, threads: int, max_pixels: int, observe: Optional[Callable[[float], None]] = None
    ) -> None:
        self.pool = pool
        self.threads = max(1, int(threads))
        self.max_pixels = max_pixels
        self.observe = observe


class Labelled:
    """What one :meth:`ServedModel.label` call found.

    Attributes:
        scores: one row of scores per image (every label, in the model's label order).
        labels: per image, the ``top_k`` best (label, score) pairs, best first.
    """

    __slots__ = ("labels", "scores")

    def __init__(self, scores: List[np.ndarray], labels: List[Ranked]) -> None:
        self.scores = scores
        self.labels = labels


class _Decodes:
    """One request's images going through the decode pool, a few at a time."""

    def __init__(
        self, model: "ServedModel", feed: Feed, images: Sequence[bytes], futures: List[Any], loop: Any
    ) -> None:
        self.model = model
        self.feed = feed
        self.images = images
        self.futures = futures
        self.loop = loop
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> Optional[int]:
        with self._lock:
            if self._next >= len(self.images):
                return None
            index = self._next
            self._next += 1
            return index

    def start(self, window: int) -> None:
        """Queue the first ``window`` decodes; each queues the next when it ends."""
        for _ in range(min(window, len(self.images))):
            self.model.decoding.pool.submit(self.run_one)

    def run_one(self) -> None:
        """In a decode thread: prepare one image and queue it for the model."""
        index = self.take()
        if index is None:
            return
        future = self.futures[index]
        decoding = self.model.decoding
        started = time.perf_counter()
        try:
            pixels = self.model.predictor.prepare(self.images[index], decoding.max_pixels)
        except BaseException as exc:
            self.feed.forget(1)
            post_error(self.loop, future, exc)
            pixels = None
        finally:
            if decoding.observe is not None:
                decoding.observe(time.perf_counter() - started)
        if pixels is not None:
            try:
                self.feed.put(pixels, future, self.loop)
            except RuntimeError as exc:  # closed: the server is stopping
                post_error(
                    self.loop, future, Unavailable("The server is shutting down: retry ({}).".format(exc))
                )
        if self._next < len(self.images):
            try:
                decoding.pool.submit(self.run_one)
            except RuntimeError:  # the pool is shut down: the server is stopping
                self.fail_rest()

    def fail_rest(self) -> None:
        while True:
            index = self.take()
            if index is None:
                return
            self.feed.forget(1)
            post_error(self.loop, self.futures[index], Unavailable("The server is shutting down: retry."))


class ServedModel:
    """One loaded, warmed version with its batcher.

    Args:
        name: model name.
        version: version number.
        predictor: a :class:`poets.engine.predictor.Predictor` (``prepare``, ``predict``,
            ``top_k``).
        batcher: runs ``predictor.predict`` on batches.
        decoding: the decode pool and its limits.
        count_images: called with the number of images of each labelled request (metrics).
        observe: called with the ranked answers of each request (drift, label metrics).
    """

    def __init__(
        self,
        name: str,
        version: int,
        predictor: Any,
        batcher: Batcher,
        decoding: Decoding,
        count_images: Optional[Callable[[int], None]] = None,
        observe: Optional[Callable[[List[Ranked]], None]] = None,
    ) -> None:
        self.name = name
        self.version = version
        self.predictor = predictor
        self.batcher = batcher
        self.decoding = decoding
        self._count_images = count_images
        self._observe = observe
        self.loaded_at = time.time()
        self.last_used = time.monotonic()
        self.active = 0
        self.retired = False

    @property
    def key(self) -> str:
        return "{}:{}".format(self.name, self.version)

    @property
    def ref(self) -> Dict[str, Any]:
        """The model as answers name it."""
        return {"name": self.name, "version": self.version}

    async def label(
        self, images: Sequence[bytes], top_k: int = 5, names: Optional[Sequence[Optional[str]]] = None
    ) -> Labelled:
        """Decode, batch and rank ``images`` (encoded bytes).

        Args:
            images: encoded images (JPEG, PNG, GIF, BMP, WebP).
            top_k: how many (label, score) pairs to rank per image.
            names: file names, for error messages when several images are sent.

        Raises:
            InvalidImage: an image cannot be decoded (named when ``names`` are given).
            Unavailable: the server is stopping.
        """
        loop = asyncio.get_event_loop()
        feed = self.batcher.open(len(images))
        futures = [loop.create_future() for _ in images]
        decodes = _Decodes(self, feed, images, futures, loop)
        try:
            decodes.start(self.decoding.threads)
        except RuntimeError:  # the pool is shut down: the server is stopping
            decodes.fail_rest()
        outcome = await asyncio.gather(*futures, return_exceptions=True)
        for index, result in enumerate(outcome):
            if isinstance(result, BaseException):
                name = names[index] if names is not None and len(images) > 1 else None
                if isinstance(result, InvalidImage) and name is not None:
                    raise InvalidImage("{!r}: {}".format(name, result.detail))
                raise result
        if self._count_images is not None:
            self._count_images(len(images))
        scores = cast(List[np.ndarray], list(outcome))  # no exceptions left: all rows
        top_k_of = self.predictor.top_k
        labelled = Labelled(scores, [top_k_of(row, top_k) for row in scores])
        if self._observe is not None:
            self._observe(labelled.labels)
        return labelled
