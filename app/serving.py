"""The model registry: which version of each model this process serves, and hot-swaps.

At startup the current version of every model in the store is loaded and warmed.
A background thread then polls ``ModelStore.state()`` every ``model_poll_s``; with
Redis as broker, a second thread also listens on :data:`poets.engine.store.models.EVENTS_CHANNEL`
and wakes the poller at once (it reconnects with back-off if Redis goes away;
polling converges regardless). A new current version is loaded and warmed in the
background, then swapped in under a lock. Requests hold a lease on the version
they started with, so in-flight requests finish on the old model; the old one's
batcher is closed and its references dropped when its last lease ends. A version
that fails to load leaves the old one serving; the error shows in ``/models``.
"""

import contextlib
import gc
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from app.batching import Batcher
from app.metrics import Metrics
from poets.engine.errors import InvalidInput, ModelLoadError, NoModel, NotFound
from poets.engine.settings import Settings
from poets.engine.store.models import EVENTS_CHANNEL, ModelStore, check_name

log = logging.getLogger(__name__)

NO_MODEL_HELP = (
    "No model is loaded yet. Train one: POST /retrain with a dataset archive (multipart field "
    "'file': a .zip or .tar.gz with one folder of images per label), then follow GET /jobs/{id}; "
    "or run `poets retrain --image_dir DIR`. This server loads new versions from the model store "
    "by itself (within POETS_MODEL_POLL_S seconds).")


class LoadedModel:
    """One loaded, warmed version with its batcher."""

    def __init__(self, name: str, version: int, predictor: Any, batcher: Batcher) -> None:
        self.name = name
        self.version = version
        self.predictor = predictor
        self.batcher = batcher
        self.loaded_at = time.time()
        self.active = 0
        self.retired = False

    @property
    def key(self) -> str:
        return "{}:{}".format(self.name, self.version)


class Lease:
    """Keeps a version alive for one request (``with registry.lease(name) as model``)."""

    def __init__(self, registry: "ModelRegistry", model: LoadedModel) -> None:
        self._registry = registry
        self.model = model

    def __enter__(self) -> LoadedModel:
        return self.model

    def __exit__(self, *exc: Any) -> None:
        self._registry._release(self.model)


def _predictor_factory(runtime: str) -> Callable[[Path, str, int], Any]:
    def load(folder: Path, name: str, version: int) -> Any:
        from poets.engine.predictor import Predictor

        return Predictor(folder, name, version, runtime=runtime)

    return load


class ModelRegistry:
    """Loaded model versions by name, kept in step with the model store."""

    def __init__(self, settings: Settings, metrics: Optional[Metrics] = None,
                 factory: Optional[Callable[[Path, str, int], Any]] = None) -> None:
        self.settings = settings
        self.store = ModelStore(settings.store_dir)
        self.metrics = metrics or Metrics()
        self._factory = factory or _predictor_factory(settings.serve_runtime)
        self._models: Dict[str, LoadedModel] = {}
        self._errors: Dict[str, Tuple[int, str]] = {}  # last load failure per model
        self._failed: Dict[Tuple[str, int], str] = {}  # versions that failed: not retried by polling
        self._lock = threading.Lock()  # the references and leases
        self._load_lock = threading.Lock()  # one load at a time: memory stays bounded
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: List[threading.Thread] = []
        self.last_sync: Optional[float] = None
        self.redis_connected = False

    # -- requests -------------------------------------------------------------------------
    def lease(self, name: Optional[str] = None) -> Lease:
        """The version to use for one request; release it by leaving the ``with`` block.

        Without a name: the default model, or the only model when the default does not exist.
        """
        with self._lock:
            model = self._pick(name)
            model.active += 1
            return Lease(self, model)

    def _pick(self, name: Optional[str]) -> LoadedModel:
        if name:
            check_name(name)
            model = self._models.get(name)
            if model is not None:
                return model
            if name in self._errors:
                version, detail = self._errors[name]
                raise NoModel("Model {!r} is not loaded: version {} failed to load ({}). Activate "
                              "a working version with POST /models/{}/versions/N/activate or "
                              "retrain.".format(name, version, detail, name))
            if not self._models:
                raise NoModel(NO_MODEL_HELP)
            raise NotFound("No model {!r}: loaded models are {}; see GET /models.".format(
                name, ", ".join(sorted(self._models))))
        default = self.settings.default_model
        if default in self._models:
            return self._models[default]
        if not self._models:
            raise NoModel(NO_MODEL_HELP)
        if len(self._models) == 1:
            return next(iter(self._models.values()))
        raise InvalidInput("The default model {!r} does not exist and several do: pass ?model= "
                           "one of {}.".format(default, ", ".join(sorted(self._models))))

    def _release(self, model: LoadedModel) -> None:
        with self._lock:
            model.active -= 1
            close = model.retired and model.active == 0
        if close:
            self._close(model)

    def _close(self, model: LoadedModel) -> None:
        model.batcher.close()
        model.predictor = None

    def loaded(self) -> Dict[str, int]:
        with self._lock:
            return {name: model.version for name, model in self._models.items()}

    def get(self, name: str) -> Optional[LoadedModel]:
        with self._lock:
            return self._models.get(name)

    # -- loading and swapping -------------------------------------------------------------------
    def _load(self, name: str, version: int) -> LoadedModel:
        started = time.perf_counter()
        try:
            predictor = self._factory(self.store.path(name, version), name, version)
            predictor.warm()
        except Exception as exc:
            detail = exc.detail if isinstance(exc, ModelLoadError) else "{}: {}".format(
                type(exc).__name__, exc)
            self._errors[name] = (version, detail)
            self._failed[(name, version)] = detail
            self.metrics.model_loads.labels(name, "error").inc()
            self.metrics.load_failures.labels(name).inc()
            log.error("model %s version %s failed to load; still serving %s: %s", name, version,
                      self.loaded().get(name, "nothing"), detail)
            raise ModelLoadError("Model {} version {} cannot be loaded: {}".format(
                name, version, detail)) from exc
        key = "{}:{}".format(name, version)
        batch_size = self.metrics.batch_size.labels(key)
        batch_seconds = self.metrics.batch_seconds.labels(key)

        def observe(size: int, seconds: float) -> None:
            batch_size.observe(size)
            batch_seconds.observe(seconds)

        batcher = Batcher(predictor.predict, self.settings.max_batch_size,
                          self.settings.batch_timeout_ms / 1000.0, observe,
                          name="batcher-{}".format(key))
        took = time.perf_counter() - started
        self.metrics.model_loads.labels(name, "ok").inc()
        self.metrics.load_seconds.observe(took)
        previous = self._errors.get(name)
        if previous is not None and previous[0] <= version:
            del self._errors[name]
        self._failed.pop((name, version), None)
        log.info("loaded model %s version %s in %.1fs", name, version, took)
        return LoadedModel(name, version, predictor, batcher)

    def _swap(self, name: str, new: Optional[LoadedModel]) -> None:
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
        if old is not None and close:
            self._close(old)
        if old is not None:
            gc.collect()

    def sync(self) -> None:
        """Load what the store says is current; a failure keeps the old version serving."""
        with self._load_lock:
            try:
                state = dict(self.store.state())
            except OSError as exc:
                log.warning("cannot read the model store %s: %s", self.store.root, exc)
                return
            for name, version in sorted(state.items()):
                if version is None:
                    continue
                current = self.get(name)
                if current is not None and current.version == version:
                    continue
                if (name, version) in self._failed:
                    continue
                try:
                    self._swap(name, self._load(name, version))
                except ModelLoadError:
                    continue
            for name in list(self.loaded()):
                if state.get(name) is None:
                    log.info("model %s left the store; unloading it", name)
                    self._swap(name, None)
            self.last_sync = time.time()

    def activate(self, name: str, version: int) -> LoadedModel:
        """Make ``version`` current (rollback or pin) and serve it now.

        The version is loaded and warmed first: one that cannot load is refused
        (:class:`ModelLoadError`) and nothing changes.
        """
        check_name(name)
        if int(version) not in self.store.versions(name):
            raise NotFound("Model {!r} has no version {}: see GET /models/{}/versions.".format(
                name, version, name))
        with self._load_lock:
            current = self.get(name)
            if current is not None and current.version == version:
                model = current
            else:
                self._failed.pop((name, version), None)
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
        return {
            "name": name,
            "current_version": self.store.current(name),
            "pinned_version": self.store.pinned(name),
            "loaded_version": model.version if model else None,
            "versions": self.store.versions(name),
            "load_error": {"version": error[0], "detail": error[1]} if error else None,
            "loaded_at": _iso(model.loaded_at) if model else None,
        }

    def version_error(self, name: str, version: int) -> Optional[str]:
        return self._failed.get((name, version))

    def failed_versions(self) -> Set[Tuple[str, int]]:
        return set(self._failed)

    # -- background threads ---------------------------------------------------------------------
    def start(self) -> None:
        """Poll the store (and listen to Redis when it is the broker) until :meth:`stop`."""
        self._stop.clear()
        poller = threading.Thread(target=self._poll, name="model-poller", daemon=True)
        self._threads = [poller]
        if self.settings.uses_redis:
            self._threads.append(threading.Thread(target=self._listen, name="model-events",
                                                  daemon=True))
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
                client = redis.Redis.from_url(str(self.settings.broker_url), socket_connect_timeout=3,
                                              socket_timeout=10)
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
                    log.warning("model events: Redis unreachable (%s); polling the store every "
                                "%ss and retrying", exc, self.settings.model_poll_s)
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

            client = redis.Redis.from_url(str(self.settings.broker_url), socket_connect_timeout=2,
                                          socket_timeout=2)
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
