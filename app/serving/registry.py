"""The model registry: which versions this process serves, hot-swaps, and bounded memory.

At startup the current version of the default model, then of other models in name
order, is loaded and warmed, at most ``POETS_MAX_LOADED_MODELS`` of them. Then a
:class:`~app.serving.follower.StoreFollower` calls :meth:`ModelRegistry.sync` whenever the
store may have changed. A new current version of a loaded model is loaded and warmed
(:class:`~app.serving.loading.Loader`), then swapped in under a lock. Requests hold a lease
on the version they started with, so in-flight requests finish on the old model; the old
one's batcher is closed and its references dropped when its last lease ends.

Memory stays bounded: a request for a model that is not loaded (never yet, or unloaded
as the least recently used) asks the poller to load it and is answered 503 with
Retry-After meanwhile (:class:`ModelLoading`); the least recently used model is unloaded
first when the limit is reached.

A version that fails to load leaves the old one serving; the error shows in ``/models``,
and it is not retried while its files stay the same (see :mod:`app.serving.loading`).

Without a model name, ``/label`` uses the model
:func:`poets.engine.store.models.model_meant` names (``POETS_DEFAULT_MODEL`` when that
model exists, else the only model); otherwise it answers 404 with the list.
"""

import contextlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Optional, Set, Tuple

from app.metrics import Metrics
from app.serving.follower import StoreFollower
from app.serving.loading import Factory, Loader
from app.serving.served_model import Decoding, ServedModel
from poets.engine.errors import ModelLoadError, ModelLoading, NoModel, NotFound, PoetsError
from poets.engine.runtime import release_memory
from poets.engine.settings import Settings
from poets.engine.store import events
from poets.engine.store.models import VersionStore, check_name, model_meant
from poets.engine.workspace import Workspace

log = logging.getLogger(__name__)

NO_MODEL_HELP = (
    "No model is loaded yet. Train one: POST /retrain with a dataset archive (multipart field "
    "'file': a .zip or .tar.gz with one folder of images per label), then follow GET /jobs/{id}; "
    "or run `poets retrain --image_dir DIR`. This server loads new versions from the model store "
    "by itself (within POETS_MODEL_POLL_S seconds)."
)
# Longest wait for Redis when announcing an activation: the request answers regardless.
ANNOUNCE_TIMEOUT_S = 2.0


class Lease:
    """Keeps a version alive for one request (``with registry.lease(name) as model``)."""

    def __init__(self, registry: "ModelRegistry", model: ServedModel) -> None:
        self._registry = registry
        self.model = model

    def __enter__(self) -> ServedModel:
        return self.model

    def __exit__(self, *exc: Any) -> None:
        self._registry._release(self.model)


def least_recently_used(models: Dict[str, ServedModel], keep: str) -> Optional[ServedModel]:
    """The model to unload first to make room for ``keep``; None when there is no other."""
    others = [model for name, model in models.items() if name != keep]
    return min(others, key=lambda model: model.last_used) if others else None


class ModelRegistry:
    """Loaded model versions by name, kept in step with the model store, at most
    ``settings.max_loaded_models`` of them.

    ``factory`` makes a predictor from ``(folder, name, version)`` (default: the real one);
    ``clock`` orders uses for unloading the least recently used; ``monitor`` (an
    :class:`app.monitoring.LabelMonitor`) is told every answer.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Optional[Metrics] = None,
        factory: Optional[Factory] = None,
        store: Optional[VersionStore] = None,
        clock: Callable[[], float] = time.monotonic,
        monitor: Optional[Any] = None,
    ) -> None:
        self.settings = settings
        self.store = store or Workspace(settings).store
        self.metrics = metrics or Metrics()
        self.max_loaded = settings.max_loaded_models
        self._clock = clock
        threads = settings.decode_threads or os.cpu_count() or 2
        # Threads start on first use; stop() shuts the pool down.
        self.decoding = Decoding(
            ThreadPoolExecutor(threads, thread_name_prefix="poets-decode"),
            threads,
            settings.max_image_pixels,
            self.metrics.decode_seconds.observe,
        )
        self.loader = Loader(settings, self.store, self.metrics, self.decoding, factory, monitor)
        self.follower = StoreFollower(settings, self.sync)
        self._models: Dict[str, ServedModel] = {}
        self._state: Dict[str, int] = {}  # current version per model at the last sync
        self._wanted: Set[str] = set()  # asked for by requests while not loaded
        self._lock = threading.Lock()  # the references, leases and wishes
        self._load_lock = threading.Lock()  # one load at a time: memory stays bounded
        self.last_sync: Optional[float] = None

    # -- requests -------------------------------------------------------------------------
    def lease(self, name: Optional[str] = None) -> Lease:
        """The version to use for one request; release it by leaving the ``with`` block.

        Without a name: ``POETS_DEFAULT_MODEL`` when it exists, else the only model.

        Raises:
            NotFound: no such model, or no name given and no default (the detail lists them).
            NoModel: no model at all, or its current version failed to load.
            ModelLoading: the model is not in memory; it is being loaded.
        """
        with self._lock:
            resolved = self._resolve(name)
            model = self._models.get(resolved)
            if model is not None:
                model.active += 1
                model.last_used = self._clock()
                return Lease(self, model)
        raise self._not_loaded(resolved)

    def default_name(self) -> Optional[str]:
        """What a request without a model name gets now: None when there is no model, or
        several and none is ``POETS_DEFAULT_MODEL`` (for answers: the console shows it)."""
        with self._lock:
            return model_meant(set(self._state) | set(self._models), self.settings.default_model)

    def _resolve(self, name: Optional[str]) -> str:
        """The model a request means (under ``_lock``)."""
        if name:
            return check_name(name)
        known = set(self._state) | set(self._models)
        meant = model_meant(known, self.settings.default_model)
        if meant is not None:
            return meant
        if not known:
            raise NoModel(NO_MODEL_HELP)
        raise NotFound(
            "No model named and the default model {!r} (POETS_DEFAULT_MODEL) does not "
            "exist: pass ?model= one of {}.".format(self.settings.default_model, ", ".join(sorted(known)))
        )

    def _not_loaded(self, name: str) -> Exception:
        """Why ``name`` cannot answer now; asks for it to be loaded when it can be."""
        version = self.store.current(name)  # fresh: it may have been published just now
        if version is None:
            with self._lock:
                known = sorted(set(self._state) | set(self._models))
            if not known:
                return NoModel(NO_MODEL_HELP)
            return NotFound(
                "No model {!r}: the models are {}; see GET /models.".format(name, ", ".join(known))
            )
        detail = self.loader.failed_detail(name, version)
        if detail is not None:
            return NoModel(
                "Model {!r} is not loaded: version {} failed to load ({}). Activate a "
                "working version with POST /models/{}/versions/N/activate or "
                "retrain.".format(name, version, detail, name)
            )
        with self._lock:
            self._wanted.add(name)
        self.follower.wake()
        return ModelLoading(
            "Model {!r} version {} is being loaded (this server keeps at most {} "
            "models in memory, POETS_MAX_LOADED_MODELS): retry in a few "
            "seconds.".format(name, version, self.max_loaded)
        )

    def _release(self, model: ServedModel) -> None:
        with self._lock:
            model.active -= 1
            close = model.retired and model.active == 0
        if close:
            self._close(model)

    def _close(self, model: ServedModel) -> None:
        model.batcher.close()
        model.predictor = None
        if self.loader.monitor is not None:
            self.loader.monitor.forget(model.name, model.version)

    # -- what is served, for answers ------------------------------------------------------------
    def loaded(self) -> Dict[str, int]:
        with self._lock:
            return {name: model.version for name, model in self._models.items()}

    def get(self, name: str) -> Optional[ServedModel]:
        with self._lock:
            return self._models.get(name)

    def is_loading(self, name: str) -> bool:
        """Whether a request asked for ``name`` and it is not loaded yet."""
        with self._lock:
            return name in self._wanted

    def load_error(self, name: str) -> Optional[Tuple[int, str]]:
        """(version, detail) of the last version of ``name`` that failed to load, if any."""
        return self.loader.errors.get(name)

    def version_error(self, name: str, version: int) -> Optional[str]:
        return self.loader.version_error(name, version)

    # -- loading, swapping and unloading ----------------------------------------------------
    def _load(self, name: str, version: int) -> ServedModel:
        return self.loader.load(name, version, serving=self.loaded().get(name, "nothing"))

    def _swap(self, name: str, new: Optional[ServedModel]) -> None:
        """Serve ``new`` as ``name`` (None: unload it); the old one closes after its last lease."""
        with self._lock:
            old = self._models.pop(name, None)
            if new is not None:
                new.last_used = self._clock()
                self._models[name] = new
            close = False
            if old is not None:
                old.retired = True
                close = old.active == 0
        if new is not None:
            self.metrics.loaded_version.labels(name).set(new.version)
            if old is not None:
                self.metrics.swaps.labels(name).inc()
                log.info("model %s: swapped version %s -> %s", name, old.version, new.version)
        else:
            with contextlib.suppress(KeyError):
                self.metrics.loaded_version.remove(name)
        if old is not None and close:
            self._close(old)
        if old is not None:
            release_memory()

    def _make_room(self, keep: str) -> None:
        """Unload least recently used models until one more fits (under ``_load_lock``)."""
        while True:
            with self._lock:
                if len(self._models) < self.max_loaded:
                    return
                victim = least_recently_used(self._models, keep)
            if victim is None:
                return
            log.info(
                "unloading model %s version %s (least recently used; at most %d models "
                "are kept loaded, POETS_MAX_LOADED_MODELS)",
                victim.name,
                victim.version,
                self.max_loaded,
            )
            self.metrics.evictions.labels(victim.name).inc()
            self._swap(victim.name, None)

    def _bring_in(self, name: str, version: int) -> None:
        """Load a model that is not loaded, unloading the least recently used first."""
        self._make_room(name)
        with contextlib.suppress(ModelLoadError):
            self._swap(name, self._load(name, version))

    def sync(self) -> None:
        """Follow the store: new current versions of loaded models, models asked for by
        requests, then free room; a failure keeps the old version serving."""
        with self._load_lock:
            try:
                state = {name: version for name, version in self.store.state() if version is not None}
            except (OSError, PoetsError) as exc:
                log.warning("cannot read the model store %s: %s", self.store.root, exc)
                return
            with self._lock:
                self._state = dict(state)
                wanted = set(self._wanted)
            for name, loaded_version in sorted(self.loaded().items()):
                version = state.get(name)
                if version is None:
                    log.info("model %s left the store; unloading it", name)
                    self._swap(name, None)
                elif version != loaded_version and self.loader.failed_detail(name, version) is None:
                    with contextlib.suppress(ModelLoadError):
                        self._swap(name, self._load(name, version))
            for name in [*sorted(wanted), self.settings.default_model, *sorted(state)]:
                version = state.get(name)
                if (
                    version is not None
                    and self.get(name) is None
                    and self.loader.failed_detail(name, version) is None
                    and (name in wanted or len(self.loaded()) < self.max_loaded)
                ):
                    self._bring_in(name, version)
                if name in wanted:
                    with self._lock:
                        self._wanted.discard(name)
            self.last_sync = time.time()

    def activate(self, name: str, version: int) -> ServedModel:
        """Make ``version`` current (rollback or pin) and serve it now.

        The version is loaded and warmed first: one that cannot load is refused
        (:class:`ModelLoadError`) and nothing changes.
        """
        check_name(name)
        if int(version) not in self.store.versions(name):
            raise NotFound(
                "Model {!r} has no version {}: see GET /models/{}/versions.".format(name, version, name)
            )
        with self._load_lock:
            current = self.get(name)
            if current is not None and current.version == version:
                model = current
            else:
                self.loader.forget(name, version)
                if current is None:
                    self._make_room(name)
                model = self._load(name, version)
            self.store.activate(name, version)
            if model is not current:
                self._swap(name, model)
        # The other API processes would find out by polling; this tells them at once.
        events.publish(self.settings, name, version, timeout_s=ANNOUNCE_TIMEOUT_S)
        return model

    # -- background threads ---------------------------------------------------------------------
    @property
    def redis_connected(self) -> bool:
        return self.follower.redis_connected

    def start(self) -> None:
        """Follow the store (polling, and Redis events when it is the broker) until :meth:`stop`."""
        self.follower.start()

    def wake(self) -> None:
        self.follower.wake()

    def stop(self, timeout: float = 10.0) -> None:
        self.follower.stop(timeout)
        with self._lock:
            models = list(self._models.values())
            self._models.clear()
        for model in models:
            model.batcher.close()
        for model in models:
            model.batcher.join(timeout)
        self.decoding.pool.shutdown(wait=False)
