"""The model registry: which versions this process serves, hot-swaps, and bounded memory.

At startup the current version of the default model, then of other models in name
order, is loaded and warmed, at most ``POETS_MAX_LOADED_MODELS`` of them. A background
thread then polls ``ModelStore.state()`` every ``model_poll_s``; with Redis as broker, a
second thread also listens on :data:`poets.engine.store.models.EVENTS_CHANNEL` and wakes
the poller at once (it reconnects with back-off if Redis goes away; polling converges
regardless). A new current version of a loaded model is loaded and warmed in the
background, then swapped in under a lock. Requests hold a lease on the version they
started with, so in-flight requests finish on the old model; the old one's batcher is
closed and its references dropped when its last lease ends.

Memory stays bounded: a request for a model that is not loaded (never yet, or unloaded
as the least recently used) asks the poller to load it and is answered 503 with
Retry-After meanwhile (:class:`ModelLoading`); the least recently used model is unloaded
first when the limit is reached.

A version that fails to load leaves the old one serving; the error shows in
``/models``. It is not retried while its files stay the same (keyed on a cheap
fingerprint of the version folder), and is retried once they change (the store
restored from a backup under the same version number).

Without a model name, ``/label`` uses ``POETS_DEFAULT_MODEL`` when that model exists,
else the only model when exactly one exists; otherwise it answers 404 with the list.
"""

import contextlib
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from app.batching import Batcher
from app.metrics import Metrics
from app.served_model import Decoding, ServedModel
from poets.engine.errors import ModelLoadError, ModelLoading, NoModel, NotFound
from poets.engine.runtime import release_memory
from poets.engine.settings import Settings
from poets.engine.store.models import EVENTS_CHANNEL, METADATA_FILE, ModelStore, check_name
from poets.engine.workspace import Workspace

log = logging.getLogger(__name__)

NO_MODEL_HELP = (
    "No model is loaded yet. Train one: POST /retrain with a dataset archive (multipart field "
    "'file': a .zip or .tar.gz with one folder of images per label), then follow GET /jobs/{id}; "
    "or run `poets retrain --image_dir DIR`. This server loads new versions from the model store "
    "by itself (within POETS_MODEL_POLL_S seconds)."
)


# Kept for callers of the old name.
LoadedModel = ServedModel

Fingerprint = Tuple[Any, ...]


def fingerprint(folder: Path) -> Fingerprint:
    """Cheap identity of a version folder's files: changes when they are replaced.

    The folder's inode (a wiped and restored store makes new folders) and the size and
    modification time of ``saved_model.pb``, ``poets.json`` and the variables' index.
    """
    parts: List[Any] = []
    for path, whole in (
        (folder, False),
        (folder / "saved_model.pb", True),
        (folder / METADATA_FILE, True),
        (folder / "variables" / "variables.index", True),
    ):
        try:
            stat = path.stat()
        except OSError:
            parts.append(None)
            continue
        parts.append((stat.st_size, stat.st_mtime_ns) if whole else stat.st_ino)
    return tuple(parts)


class Lease:
    """Keeps a version alive for one request (``with registry.lease(name) as model``)."""

    def __init__(self, registry: "ModelRegistry", model: ServedModel) -> None:
        self._registry = registry
        self.model = model

    def __enter__(self) -> ServedModel:
        return self.model

    def __exit__(self, *exc: Any) -> None:
        self._registry._release(self.model)


def _predictor_factory(settings: Settings) -> Callable[[Path, str, int], Any]:
    def load(folder: Path, name: str, version: int) -> Any:
        from poets.engine.predictor import Predictor

        return Predictor(folder, name, version, runtime=settings.serve_runtime, settings=settings)

    return load


class ModelRegistry:
    """Loaded model versions by name, kept in step with the model store, at most
    ``settings.max_loaded_models`` of them."""

    def __init__(
        self,
        settings: Settings,
        metrics: Optional[Metrics] = None,
        factory: Optional[Callable[[Path, str, int], Any]] = None,
        store: Optional[ModelStore] = None,
    ) -> None:
        self.settings = settings
        self.store = store or Workspace(settings).store
        self.metrics = metrics or Metrics()
        self._factory = factory or _predictor_factory(settings)
        self.max_loaded = max(1, int(settings.max_loaded_models))
        threads = settings.decode_threads or os.cpu_count() or 2
        # Threads start on first use; stop() shuts the pool down.
        self.decoding = Decoding(
            ThreadPoolExecutor(threads, thread_name_prefix="poets-decode"),
            threads,
            settings.max_image_pixels,
            self.metrics.decode_seconds.observe,
        )
        self._models: Dict[str, ServedModel] = {}
        self._state: Dict[str, int] = {}  # current version per model at the last sync
        self._wanted: Set[str] = set()  # asked for by requests while not loaded
        self._errors: Dict[str, Tuple[int, str]] = {}  # last load failure per model
        # Versions that failed, with their files' fingerprint: retried once the files change.
        self._failed: Dict[Tuple[str, int], Tuple[Fingerprint, str]] = {}
        self._lock = threading.Lock()  # the references, leases and wishes
        self._load_lock = threading.Lock()  # one load at a time: memory stays bounded
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: List[threading.Thread] = []
        self.last_sync: Optional[float] = None
        self.redis_connected = False

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
                model.last_used = time.monotonic()
                return Lease(self, model)
        raise self._not_loaded(resolved)

    def _default(self) -> Optional[str]:
        """The model a request without a name gets (under ``_lock``): the default model,
        else the only one; None when there is none or several without the default."""
        default = self.settings.default_model
        known = set(self._state) | set(self._models)
        if default in known:
            return default
        if len(known) == 1:
            return next(iter(known))
        return None

    def default_name(self) -> Optional[str]:
        """What ``/label`` without ``?model=`` serves now (GET /models says it, so the
        console shows the model that will answer, not the setting)."""
        with self._lock:
            return self._default()

    def _resolve(self, name: Optional[str]) -> str:
        """The model a request means (under ``_lock``)."""
        if name:
            return check_name(name)
        default = self.settings.default_model
        known = set(self._state) | set(self._models)
        chosen = self._default()
        if chosen is not None:
            return chosen
        if not known:
            raise NoModel(NO_MODEL_HELP)
        raise NotFound(
            "No model named and the default model {!r} (POETS_DEFAULT_MODEL) does not "
            "exist: pass ?model= one of {}.".format(default, ", ".join(sorted(known)))
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
        detail = self._failed_detail(name, version)
        if detail is not None:
            return NoModel(
                "Model {!r} is not loaded: version {} failed to load ({}). Activate a "
                "working version with POST /models/{}/versions/N/activate or "
                "retrain.".format(name, version, detail, name)
            )
        with self._lock:
            self._wanted.add(name)
        self._wake.set()
        return ModelLoading(
            "Model {!r} version {} is being loaded (this server keeps at most {} "
            "models in memory, POETS_MAX_LOADED_MODELS): retry in a few "
            "seconds.".format(name, version, self.max_loaded)
        )

    def _failed_detail(self, name: str, version: int) -> Optional[str]:
        """The load error of a version whose files have not changed since it failed."""
        failed = self._failed.get((name, version))
        if failed is None or failed[0] != fingerprint(self.store.path(name, version)):
            return None
        return failed[1]

    def _release(self, model: ServedModel) -> None:
        with self._lock:
            model.active -= 1
            close = model.retired and model.active == 0
        if close:
            self._close(model)

    def _close(self, model: ServedModel) -> None:
        model.batcher.close()
        model.predictor = None

    def loaded(self) -> Dict[str, int]:
        with self._lock:
            return {name: model.version for name, model in self._models.items()}

    def get(self, name: str) -> Optional[ServedModel]:
        with self._lock:
            return self._models.get(name)

    # -- loading, swapping and unloading ----------------------------------------------------
    def _load(self, name: str, version: int) -> ServedModel:
        started = time.perf_counter()
        folder = self.store.path(name, version)
        files = fingerprint(folder)
        try:
            predictor = self._factory(folder, name, version)
            predictor.warm()
        except Exception as exc:
            detail = (
                exc.detail if isinstance(exc, ModelLoadError) else "{}: {}".format(type(exc).__name__, exc)
            )
            self._errors[name] = (version, detail)
            self._failed[(name, version)] = (files, detail)
            self.metrics.model_loads.labels(name, "error").inc()
            self.metrics.load_failures.labels(name).inc()
            log.error(
                "model %s version %s failed to load; still serving %s: %s",
                name,
                version,
                self.loaded().get(name, "nothing"),
                detail,
            )
            raise ModelLoadError(
                "Model {} version {} cannot be loaded: {}".format(name, version, detail)
            ) from exc
        key = "{}:{}".format(name, version)
        batch_size = self.metrics.batch_size.labels(key)
        batch_seconds = self.metrics.batch_seconds.labels(key)

        def observe(size: int, seconds: float) -> None:
            batch_size.observe(size)
            batch_seconds.observe(seconds)

        batcher = Batcher(
            predictor.predict,
            self.settings.max_batch_size,
            self.settings.batch_timeout_ms / 1000.0,
            observe,
            name="batcher-{}".format(key),
        )
        took = time.perf_counter() - started
        self.metrics.model_loads.labels(name, "ok").inc()
        self.metrics.load_seconds.observe(took)
        previous = self._errors.get(name)
        if previous is not None and previous[0] <= version:
            del self._errors[name]
        self._failed.pop((name, version), None)
        log.info("loaded model %s version %s in %.1fs", name, version, took)
        return ServedModel(
            name, version, predictor, batcher, self.decoding, self.metrics.images.labels(key).inc
        )

    def _swap(self, name: str, new: Optional[ServedModel]) -> None:
        with self._lock:
            old = self._models.pop(name, None)
            if new is not None:
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
                others = [m for n, m in self._models.items() if n != keep]
                if len(self._models) < self.max_loaded or not others:
                    return
                victim = min(others, key=lambda m: m.last_used)
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
            except OSError as exc:
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
                elif version != loaded_version and self._failed_detail(name, version) is None:
                    with contextlib.suppress(ModelLoadError):
                        self._swap(name, self._load(name, version))
            default = self.settings.default_model
            for name in [*sorted(wanted), default, *sorted(state)]:
                version = state.get(name)
                if (
                    version is not None
                    and self.get(name) is None
                    and self._failed_detail(name, version) is None
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
                self._failed.pop((name, version), None)
                if current is None:
                    self._make_room(name)
                model = self._load(name, version)
            self.store.activate(name, version)
            if model is not current:
                self._swap(name, model)
        self._notify(name, version)
        return model

    # -- describing -----------------------------------------------------------------------------
    def describe(self) -> List[Dict[str, Any]]:
        names = sorted(set(self.store.names()) | set(self.loaded()))
        return [self.describe_model(name) for name in names]

    def describe_model(self, name: str) -> Dict[str, Any]:
        model = self.get(name)
        error = self._errors.get(name)
        with self._lock:
            loading = name in self._wanted
        return {
            "name": name,
            "current_version": self.store.current(name),
            "pinned_version": self.store.pinned(name),
            "loaded_version": model.version if model else None,
            "loading": loading,
            "versions": self.store.versions(name),
            "load_error": {"version": error[0], "detail": error[1]} if error else None,
            "loaded_at": _iso(model.loaded_at) if model else None,
        }

    def version_error(self, name: str, version: int) -> Optional[str]:
        failed = self._failed.get((name, version))
        return failed[1] if failed else None

    def failed_versions(self) -> Set[Tuple[str, int]]:
        return set(self._failed)

    # -- background threads ---------------------------------------------------------------------
    def start(self) -> None:
        """Poll the store (and listen to Redis when it is the broker) until :meth:`stop`."""
        self._stop.clear()
        poller = threading.Thread(target=self._poll, name="model-poller", daemon=True)
        self._threads = [poller]
        if self.settings.uses_redis:
            self._threads.append(threading.Thread(target=self._listen, name="model-events", daemon=True))
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []
        with self._lock:
            models = list(self._models.values())
            self._models.clear()
        for model in models:
            model.batcher.close()
        for model in models:
            model.batcher.join(timeout)
        self.decoding.pool.shutdown(wait=False)

    def _poll(self) -> None:
        interval = max(0.05, float(self.settings.model_poll_s))
        while not self._stop.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.sync()
            except Exception:  # never let the poller die
                log.exception("model store poll failed")

    def _listen(self) -> None:
        import redis

        backoff = 1.0
        warned = False
        while not self._stop.is_set():
            client = None
            try:
                client = redis.Redis.from_url(
                    str(self.settings.broker_url), socket_connect_timeout=3, socket_timeout=10
                )
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(EVENTS_CHANNEL)
                self.redis_connected = True
                if warned:
                    log.info("model events: reconnected to Redis")
                warned = False
                backoff = 1.0
                self._wake.set()  # notices may have been missed while away
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        log.info("model event: %s", message.get("data"))
                        self._wake.set()
            except Exception as exc:
                self.redis_connected = False
                if not warned:
                    log.warning(
                        "model events: Redis unreachable (%s); polling the store every %ss and retrying",
                        exc,
                        self.settings.model_poll_s,
                    )
                    warned = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close()

    def _notify(self, name: str, version: int) -> None:
        """Tell the other API processes at once (they would find out by polling anyway)."""
        if not self.settings.uses_redis:
            return
        try:
            import redis

            client = redis.Redis.from_url(
                str(self.settings.broker_url), socket_connect_timeout=2, socket_timeout=2
            )
            try:
                client.publish(EVENTS_CHANNEL, json.dumps({"name": name, "version": int(version)}))
            finally:
                client.close()
        except Exception as exc:
            log.warning("could not announce %s version %s on Redis: %s", name, version, exc)


def _iso(timestamp: Optional[float]) -> Optional[str]:
    if timestamp is None:
        return None
    from datetime import datetime, timezone

    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat()
