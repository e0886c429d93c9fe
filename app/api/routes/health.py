"""``/healthz`` (alive), ``/readyz`` (a model loaded, the broker reachable, the storage
writable; what is degraded meanwhile), ``/metrics``."""

from typing import Any, Dict, List

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from app import errors
from app.blocking import run_blocking
from app.deps import get_metrics, get_queue, get_registry, get_storage_check
from app.job_queue import JobQueue
from app.metrics import CONTENT_TYPE_LATEST, Metrics
from app.schemas import Health, Ready
from app.serving.registry import ModelRegistry
from poets.engine.store.health import StorageCheck

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Dict[str, Any]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Ready,
    responses=errors.responses(503),
    summary="Ready: a model is loaded and the broker is reachable",
)
async def readyz(
    registry: ModelRegistry = Depends(get_registry),
    queue: JobQueue = Depends(get_queue),
    storage: StorageCheck = Depends(get_storage_check),
) -> Any:
    problems: List[str] = []
    models = registry.loaded()
    if not models:
        problems.append("no model is loaded (train one with POST /retrain)")
    broker = await run_blocking(queue.ping)
    if broker is not None:
        problems.append(broker)
    problems += await run_blocking(storage.problems)
    if problems:
        return errors.error_response("not_ready", "; ".join(problems) + ".", 503, {"Retry-After": "5"})
    # Ready while degraded: taking a node out of its load balancer because the bucket is down
    # would stop /label everywhere, when each node serves its cached versions.
    degraded = [problem for problem in (registry.store.degraded(),) if problem]
    return {
        "status": "degraded" if degraded else "ready",
        "models": models,
        "broker": "ok",
        "degraded": degraded,
    }


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(app_metrics: Metrics = Depends(get_metrics)) -> Response:
    # A scrape reads the job store (SQLite): in a thread.
    return Response(await run_blocking(app_metrics.render), media_type=CONTENT_TYPE_LATEST)
