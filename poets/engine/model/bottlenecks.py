"""The bottleneck cache and the batched, parallel computation that fills it.

A bottleneck is the backbone's feature vector for one view of one image. Its cache
key hashes the image *bytes* (not the path), the backbone's weights and output,
the preprocessing and the view, so every job and dataset shares one cache, renamed
or copied files hit it, and nothing stale is ever served. Each entry is a raw
little-endian float32 file, written aside and renamed into place, so two
processes can fill the cache at once. The key holds nothing of the machine, so with
POETS_BOTTLENECK_STORE_URL the cache has a second level that workers share
(:mod:`poets.engine.model.shared_bottlenecks`).
"""

import hashlib
import logging
import os
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from poets.engine.data.images import DEFAULT_MAX_PIXELS, Distortion, prepare
from poets.engine.errors import Cancelled, InvalidImage
from poets.engine.model.backbones import Backbone

if TYPE_CHECKING:
    from poets.engine.model.shared_bottlenecks import SharedBottlenecks, Transfer

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
ShouldStop = Callable[[], bool]


class BottleneckCache:
    """Content-addressed feature vectors on disk.

    Args:
        root: the folder (POETS_HOME/bottlenecks).
        shared: the bucket level under it (POETS_BOTTLENECK_STORE_URL), or None.
    """

    def __init__(self, root: Path, shared: Optional["SharedBottlenecks"] = None) -> None:
        self.root = Path(root)
        self.shared = shared

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / (key + ".f32")

    def has(self, key: str, dim: int) -> bool:
        """Whether a sound-looking entry is there (its size; :meth:`get` reads it)."""
        try:
            return self._path(key).stat().st_size == dim * 4
        except OSError:
            return False

    def get(self, key: str, dim: int) -> Optional[np.ndarray]:
        """The cached vector, or None when absent or damaged (then it is recomputed)."""
        try:
            data = self._path(key).read_bytes()
        except OSError:
            return None
        if len(data) != dim * 4:
            return None
        return np.frombuffer(data, dtype="<f4")

    def put(self, key: str, vector: np.ndarray) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(np.asarray(vector, dtype="<f4").tobytes())
            os.replace(tmp, str(path))
        except BaseException:
            os.unlink(tmp)
            raise


def cache_key(image_digest: str, backbone: Backbone, view: int, distortion: Distortion) -> str:
    parts = [
        image_digest,
        backbone.fingerprint,
        backbone.preprocessing.fingerprint(),
        str(view),
        distortion.fingerprint() if view else "plain",
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


@dataclass
class BottleneckResult:
    """Features per requested image; ``None`` where the image could not be read.

    ``digests`` holds each file's SHA-256 (what the cache keys and the promotion gate know an
    image by), ``None`` where it could not be read.
    """

    features: List[Optional[np.ndarray]]
    digests: List[Optional[str]] = field(default_factory=list)
    failures: List[Tuple[str, str]] = field(default_factory=list)
    computed: int = 0
    cached: int = 0  # includes those pulled from the shared bucket into the local cache
    shared: Optional["Transfer"] = None  # what was exchanged with it, when there is one


@dataclass
class _Loaded:
    index: int
    keys: List[str]
    vectors: Dict[int, np.ndarray]
    pixels: Dict[int, np.ndarray]
    error: Optional[str] = None
    digest: Optional[str] = None


def _bounded_map(
    pool: ThreadPoolExecutor, fn: Callable[[int], _Loaded], count: int, window: int
) -> Iterator[_Loaded]:
    """Like ``pool.map`` but with at most ``window`` results held at once (memory)."""
    pending: Deque[Any] = deque()  # futures of _Loaded
    for index in range(count):
        pending.append(pool.submit(fn, index))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _chunked_map(
    pool: ThreadPoolExecutor, fn: Callable[[int], _Loaded], count: int, chunk: int
) -> Iterator[_Loaded]:
    """``chunk`` items at a time in all threads; none decoded while the caller runs the model."""
    for start in range(0, count, chunk):
        yield from pool.map(fn, range(start, min(count, start + chunk)))


def _needed_keys(
    paths: Sequence[Path], views: Sequence[int], backbone: Backbone, distortion: Distortion, threads: int
) -> List[str]:
    """The cache keys of every view of every readable file (files read and hashed in threads)."""

    def keys(index: int) -> List[str]:
        try:
            digest = hashlib.sha256(Path(paths[index]).read_bytes()).hexdigest()
        except OSError:
            return []  # compute() reports it
        return [cache_key(digest, backbone, view, distortion) for view in range(views[index])]

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return [key for found in pool.map(keys, range(len(paths))) for key in found]


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def _load(
    index: int,
    path: Path,
    view_count: int,
    backbone: Backbone,
    cache: BottleneckCache,
    distortion: Distortion,
    max_pixels: int,
) -> _Loaded:
    """Read and hash one file; its cached views as vectors, the others decoded to pixels."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return _Loaded(index, [], {}, {}, "cannot read: {}".format(exc.strerror))
    digest = hashlib.sha256(data).hexdigest()
    keys = [cache_key(digest, backbone, view, distortion) for view in range(view_count)]
    loaded = _Loaded(index, keys, {}, {}, digest=digest)
    for view, key in enumerate(keys):
        vector = cache.get(key, backbone.feature_dim)
        if vector is not None:
            loaded.vectors[view] = vector
            continue
        try:
            seed = int(digest[:12], 16) + view
            loaded.pixels[view] = prepare(
                data, backbone.preprocessing, max_pixels, distortion if view else None, seed
            )
        except InvalidImage as exc:
            loaded.error = exc.detail
            return loaded
    return loaded


class _Batches:
    """Views waiting for the backbone, run ``batch_size`` at a time into the cache and ``result``.

    An image's features are stacked into ``result`` once its last view is in.
    """

    def __init__(
        self, backbone: Backbone, cache: BottleneckCache, result: BottleneckResult, batch_size: int
    ) -> None:
        self.backbone = backbone
        self.cache = cache
        self.result = result
        self.batch_size = batch_size
        self.batch: List[Tuple[_Loaded, int]] = []
        self.waiting: Dict[int, _Loaded] = {}

    def add(self, item: _Loaded, path: Path) -> None:
        """Record a loaded image, queue its uncached views, and run every full batch."""
        result = self.result
        result.digests[item.index] = item.digest
        if item.error is not None:
            result.failures.append((str(path), item.error))
        else:
            result.cached += len(item.vectors)
            if item.pixels:
                self.waiting[item.index] = item
                self.batch.extend((item, view) for view in sorted(item.pixels))
            else:
                self.finish(item)
        batch_size = self.batch_size
        while len(self.batch) >= batch_size:
            rest = self.batch[batch_size:]
            del self.batch[batch_size:]
            self.run_batch()
            self.batch.extend(rest)

    def flush(self) -> None:
        """Run the last, partial batch."""
        if self.batch:
            self.run_batch()

    def finish(self, item: _Loaded) -> None:
        self.result.features[item.index] = np.stack([item.vectors[v] for v in range(len(item.keys))])

    def run_batch(self) -> None:
        batch = self.batch
        features = self.backbone.features(np.stack([item.pixels[view] for item, view in batch]))
        for (item, view), vector in zip(batch, features):
            self.cache.put(item.keys[view], vector)
            item.vectors[view] = vector
            del item.pixels[view]
            self.result.computed += 1
            if not item.pixels:
                self.finish(self.waiting.pop(item.index))
        del batch[:]


def compute(
    paths: Sequence[Path],
    views: Sequence[int],
    backbone: Backbone,
    cache: BottleneckCache,
    distortion: Distortion = Distortion(),
    batch_size: int = 32,
    threads: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Optional[Progress] = None,
    should_stop: Optional[ShouldStop] = None,
    overlap: Optional[bool] = None,
) -> BottleneckResult:
    """Bottlenecks for ``views[i]`` views of each ``paths[i]``, from cache or computed.

    View 0 is the plain image; views 1.. are distorted, each reproducibly (its seed
    comes from the image bytes), so they are cached like plain ones. Files are read,
    hashed and decoded in ``threads`` threads. With ``overlap`` (default: when a GPU
    runs the model) decoding runs ahead while the backbone runs a batch; without it a
    batch is decoded by all threads, then the backbone runs on all cores: on a CPU
    with few cores, decode threads competing with TensorFlow's own threads make
    both slower (measured in ``bench/engine.py``).

    With a shared level (``cache.shared``), the keys are read first: what the local cache
    lacks is pulled from the bucket before anything is computed, and afterwards what the
    bucket lacks of these images is pushed (``result.shared`` says what moved). A bucket
    that cannot be reached costs a warning, never the computation.

    Returns:
        One (views[i], D) array per path, or None for an unreadable file (listed in
        ``failures`` with the reason).

    Raises:
        Cancelled: ``should_stop`` answered true; nothing half-written is left.
    """
    result = BottleneckResult(features=[None] * len(paths), digests=[None] * len(paths))
    exchange = None
    if cache.shared is not None:
        from poets.engine.model.shared_bottlenecks import group_of

        dim = backbone.feature_dim
        group = group_of(backbone.fingerprint, backbone.preprocessing.fingerprint(), dim)
        exchange = cache.shared.exchange(cache, group, dim)
        needed = _needed_keys(paths, views, backbone, distortion, threads)
        missing = [key for key in needed if not cache.has(key, dim)]
        if missing:  # a warm local cache never waits for the bucket
            exchange.pull(missing)
        result.shared = exchange.transfer

    def load(index: int) -> _Loaded:
        return _load(index, Path(paths[index]), views[index], backbone, cache, distortion, max_pixels)

    batches = _Batches(backbone, cache, result, batch_size)
    done = 0
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        if overlap is None:
            overlap = _has_gpu()
        loaded = (
            _bounded_map(pool, load, len(paths), window=max(batch_size * 3, 8))
            if overlap
            else _chunked_map(pool, load, len(paths), batch_size)
        )
        for item in loaded:
            if should_stop is not None and should_stop():
                raise Cancelled("Cancelled while computing bottlenecks.")
            batches.add(item, paths[item.index])
            done += 1
            if progress is not None:
                progress(done, len(paths))
        batches.flush()
    if exchange is not None and exchange.known is not None:
        exchange.push(needed)
    return result
