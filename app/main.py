"""Building the FastAPI app: ``create_app(settings)``.

Nothing heavy happens at import time; TensorFlow loads at startup when the first
model is. Run it with ``poets serve`` or ``uvicorn --factory app.main:create_app``.

Works with FastAPI 0.83 / Starlette 0.19 (startup and shutdown handlers) and today's
FastAPI / Starlette 1.x (a ``lifespan``), through :func:`_build`.
"""

import inspect
import logging
from typing import Any, Awaitable, Callable, Dict, Optional

from fastapi import FastAPI

from app import console, docs, errors
from app.api.routes import auth, datasets, health, jobs, label, models, policies, retrain, review, webhooks
from app.blocking import run_blocking
from app.deadlines import BodyDeadline
from app.deps import check_auth_settings
from app.guard import RequestGuard, allowed_origins
from app.headers import SecurityHeaders
from app.job_queue import JobQueue
from app.metrics import Metrics, MetricsMiddleware
from app.monitoring import LabelMonitor
from app.serving.registry import ModelRegistry
from poets.engine.inbox import Collector, Inbox
from poets.engine.runtime import configure_tensorflow
from poets.engine.settings import Settings
from poets.engine.store.health import StorageCheck
from poets.engine.store.jobs import JobRecords
from poets.engine.webhooks import Deliverer
from poets.engine.workspace import Workspace

log = logging.getLogger(__name__)

DESCRIPTION = """Label images with retrained models, retrain on your own images (TensorFlow for
Poets), follow jobs, and roll model versions back. Errors are `{"error": code, "detail": "what to
fix"}`."""

Hook = Callable[[], Awaitable[None]]


class _Lifespan:
    """An async context manager running startup and shutdown hooks (3.6: no asynccontextmanager)."""

    def __init__(self, startup: Hook, shutdown: Hook) -> None:
        self._startup = startup
        self._shutdown = shutdown

    async def __aenter__(self) -> None:
        await self._startup()

    async def __aexit__(self, *exc: Any) -> None:
        await self._shutdown()


def _build(startup: Hook, shutdown: Hook, **kwargs: Any) -> FastAPI:
    if "lifespan" in inspect.signature(FastAPI.__init__).parameters:
        return FastAPI(lifespan=lambda app: _Lifespan(startup, shutdown), **kwargs)
    return FastAPI(on_startup=[startup], on_shutdown=[shutdown], **kwargs)


def _queued_count(store: JobRecords) -> float:
    return float(store.stats().get("queued", (0, 0.0))[0])


def _collector(settings: Settings, metrics: Metrics, inbox: Inbox) -> Collector:
    """The field loop's collector: /label's unsure frames into the review inbox, counted."""
    inbox.on_drop = lambda count: metrics.inbox_dropped.labels("inbox_full").inc(count)
    return Collector(
        inbox,
        settings.collect_threshold,
        settings.collect_fraction,
        settings.collect_queue,
        always=settings.collect,
        models=settings.collect_models,
        on_drop=lambda: metrics.inbox_dropped.labels("queue_full").inc(),
        on_saved=metrics.inbox_saved.inc,
        on_unavailable=lambda: metrics.inbox_dropped.labels("store_unavailable").inc(),
    )


def _parts(settings: Settings) -> Dict[str, Any]:
    """Every object the routes use, built once for one app; :mod:`app.deps` hands them out."""
    metrics = Metrics()
    workspace = Workspace(settings)
    monitor = LabelMonitor(settings, metrics, workspace.tell)
    job_store = workspace.jobs
    metrics.watch_jobs(job_store.stats, job_store.deleted_records)
    storage_folders = [("model store (POETS_MODEL_DIR)", settings.store_dir), ("POETS_HOME", settings.home)]
    return {
        "settings": settings,
        "workspace": workspace,
        "metrics": metrics,
        "monitor": monitor,
        "registry": ModelRegistry(settings, metrics, store=workspace.store, monitor=monitor),
        "jobs": job_store,
        "queue": JobQueue(settings),
        "misclassified": workspace.misclassified,
        "storage_check": StorageCheck(storage_folders, settings.min_free_mb * 1024 * 1024),
        "library": workspace.datasets,
        "collector": _collector(settings, metrics, workspace.inbox),
    }


def create_app(settings: Optional[Settings] = None) -> FastAPI:
    """The Poets API for ``settings`` (default: from the ``POETS_*`` environment)."""
    settings = settings or Settings.from_env()
    check_auth_settings(settings)  # before anything starts: fail closed
    allowed_origins(settings)  # a malformed POETS_ALLOWED_ORIGINS stops it here, not at a request
    parts = _parts(settings)
    workspace: Workspace = parts["workspace"]
    registry: ModelRegistry = parts["registry"]
    metrics: Metrics = parts["metrics"]
    job_store: JobRecords = parts["jobs"]
    job_queue: JobQueue = parts["queue"]
    deliverer = Deliverer(workspace.webhooks) if settings.webhook_urls else None

    async def startup() -> None:
        await run_blocking(configure_tensorflow, settings.tf_memory_growth)
        await run_blocking(registry.sync)
        # What crashed dataset imports and deletes left (the worker sweeps periodically too).
        try:
            removed = await run_blocking(workspace.clean_leftovers)
            if removed:
                log.info("removed %d leftover(s) of crashed dataset imports and deletes", len(removed))
        except Exception:  # a read-only or odd disk: serve anyway, /readyz reports the disk
            log.exception("could not remove what crashed dataset imports left")
        registry.start()
        if deliverer is not None:  # what was queued before a restart is sent now
            deliverer.start()
        metrics.watch_queue(lambda: _queued_count(job_store))
        log.info("Poets API ready: models %s, store %s", registry.loaded() or "none", settings.store_dir)

    async def shutdown() -> None:
        await run_blocking(registry.stop)
        if deliverer is not None:
            await run_blocking(deliverer.stop)
        job_queue.close()

    app = _build(
        startup,
        shutdown,
        title="Poets",
        version="0.1.0",
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
    )
    for name, part in parts.items():
        setattr(app.state, name, part)
    errors.install(app)
    docs.install(app)
    for module in (label, retrain, jobs, models, policies, health, datasets, review, auth, webhooks):
        app.include_router(module.router)
    console.install(app)
    app.add_middleware(
        BodyDeadline, timeout_s=settings.body_timeout_s, upload_timeout_s=settings.upload_timeout_s
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=lambda: app.router.routes)
    # Outermost: a request of another site's page is refused before anything runs, and
    # every answer (refusals too) carries the security headers.
    app.add_middleware(RequestGuard, settings=settings)
    app.add_middleware(SecurityHeaders)
    return app
