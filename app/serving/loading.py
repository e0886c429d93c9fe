"""Loading one version into memory, and remembering the versions that failed to load.

:class:`Loader` turns a version folder into a warmed :class:`~app.serving.served_model.ServedModel`
with its batcher and metrics. A version that fails is remembered with a cheap fingerprint of its
files: the registry does not retry it while they stay the same, and does once they change (the
store restored from a backup under the same version number). Its error shows in ``/models``.
"""

import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from app.metrics import Metrics
from app.serving.batching import Batcher
from app.serving.served_model import Decoding, ServedModel
from poets.engine.errors import ModelLoadError
from poets.engine.settings import Settings
from poets.engine.store.models import VersionStore

log = logging.getLogger(__name__)

# (folder, name, version) -> a predictor: ``warm()``, ``prepare(data, max_pixels)``, ``predict(pixels)``.
Factory = Callable[[Path, str, int], Any]
Fingerprint = Tuple[Any, ...]


def predictor_factory(settings: Settings) -> Factory:
    """Real predictors (TensorFlow is imported on the first load, not before)."""

    def load(folder: Path, name: str, version: int) -> Any:
        from poets.engine.predictor import Predictor

        return Predictor(folder, name, version, runtime=settings.serve_runtime, settings=settings)

    return load


class Loader:
    """Loads versions with ``factory`` (default: :func:`predictor_factory`), one call at a time
    (the registry holds its load lock), and keeps their failures."""

    def __init__(
        self,
        settings: Settings,
        store: VersionStore,
        metrics: Metrics,
        decoding: Decoding,
        factory: Optional[Factory] = None,
        monitor: Optional[Any] = None,
    ) -> None:
        self.settings = settings
        self.monitor = monitor
        self.store = store
        self.metrics = metrics
        self.decoding = decoding
        self._factory = factory or predictor_factory(settings)
        self.errors: Dict[str, Tuple[int, str]] = {}  # last load failure per model, for /models
        # Versions that failed, with their files' fingerprint: retried once the files change.
        self._failed: Dict[Tuple[str, int], Tuple[Fingerprint, str]] = {}

    def load(self, name: str, version: int, serving: Any = "nothing") -> ServedModel:
        """Load and warm ``version`` of ``name`` (``serving``: what serves meanwhile, for the log).

        Raises:
            ModelLoadError: it cannot be loaded (remembered: see :meth:`failed_detail`).
        """
        started = time.perf_counter()
        files = self.store.fingerprint(name, version)
        try:
            # Inside: a version in a bucket is downloaded here, and one that fails its
            # manifest check is remembered as failed like one that does not load.
            folder = self.store.path(name, version)
            predictor = self._factory(folder, name, version)
            predictor.warm()
        except Exception as exc:
            detail = (
                exc.detail if isinstance(exc, ModelLoadError) else "{}: {}".format(type(exc).__name__, exc)
            )
            self._remember_failure(name, version, files, detail, serving)
            raise ModelLoadError(
                "Model {} version {} cannot be loaded: {}".format(name, version, detail)
            ) from exc
        key = "{}:{}".format(name, version)
        batcher = self._batcher(predictor, key)
        took = time.perf_counter() - started
        self.metrics.model_loads.labels(name, "ok").inc()
        self.metrics.load_seconds.observe(took)
        previous = self.errors.get(name)
        if previous is not None and previous[0] <= version:
            del self.errors[name]
        self._failed.pop((name, version), None)
        log.info("loaded model %s version %s in %.1fs", name, version, took)
        observe = None
        if self.monitor is not None:
            reference = (getattr(predictor, "metadata", None) or {}).get("drift_reference")
            observe = self.monitor.observer(name, version, reference)
        return ServedModel(
            name, version, predictor, batcher, self.decoding, self.metrics.images.labels(key).inc, observe
        )

    def _remember_failure(
        self, name: str, version: int, files: Fingerprint, detail: str, serving: Any
    ) -> None:
        self.errors[name] = (version, detail)
        self._failed[(name, version)] = (files, detail)
        self.metrics.model_loads.labels(name, "error").inc()
        self.metrics.load_failures.labels(name).inc()
        log.error("model %s version %s failed to load; still serving %s: %s", name, version, serving, detail)

    def _batcher(self, predictor: Any, key: str) -> Batcher:
        batch_size = self.metrics.batch_size.labels(key)
        batch_seconds = self.metrics.batch_seconds.labels(key)

        def observe(size: int, seconds: float) -> None:
            batch_size.observe(size)
            batch_seconds.observe(seconds)

        return Batcher(
            predictor.predict,
            self.settings.max_batch_size,
            self.settings.batch_timeout_ms / 1000.0,
            observe,
            name="batcher-{}".format(key),
        )

    def failed_detail(self, name: str, version: int) -> Optional[str]:
        """The load error of a version whose files have not changed since it failed."""
        failed = self._failed.get((name, version))
        if failed is None or failed[0] != self.store.fingerprint(name, version):
            return None
        return failed[1]

    def version_error(self, name: str, version: int) -> Optional[str]:
        """The last load error of a version, whether or not its files changed since."""
        failed = self._failed.get((name, version))
        return failed[1] if failed else None

    def forget(self, name: str, version: int) -> None:
        """Try this version again on its next load (an explicit activation)."""
        self._failed.pop((name, version), None)
