"""``/healthz`` (alive), ``/readyz`` (a model loaded, the broker reachable, the storage
writable), ``/metrics``."""

import asyncio
from typing import Any, Dict, List

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app import errors
from app.metrics import CONTENT_TYPE_LATEST
from app.schemas import Health, Ready
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
async def readyz(request: Request) -> Any:
    state = request.app.state
    loop = asyncio.get_event_loop()
    problems: List[str] = []
    models = state.registry.loaded()
    if not models:
        problems.append("no model is loaded (train one with POST /retrain)")
    broker = await loop.run_in_executor(None, state.queue.ping)
    if broker is not None:
        problems.append(broker)
    problems += await loop.run_in_executor(None, _storage(state).problems)
    if problems:
        return errors.error_response("not_ready", "; ".join(problems) + ".", 503, {"Retry-After": "5"})
    return {"status": "ready", "models": models, "broker": "ok"}


def _storage(state: Any) -> StorageCheck:
    check = getattr(state, "storage_check", None)
    if check is None:
        settings = state.settings
        check = StorageCheck(
            [("model store (POETS_MODEL_DIR)", settings.store_dir), ("POETS_HOME", settings.home)],
            settings.min_free_mb * 1024 * 1024,
        )
        state.storage_check = check
    return check  # type: ignore[no-any-return]


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
