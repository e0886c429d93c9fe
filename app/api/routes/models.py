"""``/models``: what is served, every version, rollback and pins.

A pin works like a TF Serving version label: the pinned version is served, and a
retrain publishes its version without making it current, until the pin is removed.
"""

from typing import Any, Dict, List, Optional

from fastapi import APIRouter, Depends, Path

from app import errors
from app.blocking import run_blocking
from app.deps import get_monitor, get_registry, get_settings, get_workspace, require_key
from app.monitoring import LabelMonitor
from app.schemas import ActivateResponse, ModelDetail, ModelList, PinResponse, VersionList, iso_time
from app.serving.registry import ModelRegistry
from poets.engine.errors import NotFound
from poets.engine.jobs.schedule import status
from poets.engine.settings import Settings
from poets.engine.store.models import check_name
from poets.engine.workspace import Workspace

router = APIRouter(tags=["models"])


def _latest_promotion(registry: ModelRegistry, name: str, versions: List[int]) -> Optional[Dict[str, Any]]:
    if not versions:
        return None
    promotion = registry.store.metadata(name, versions[-1]).get("promotion")
    return dict(promotion, version=versions[-1]) if isinstance(promotion, dict) else None


def _model(registry: ModelRegistry, name: str) -> Dict[str, Any]:
    """One model in ``GET /models``: what the store says and what this process serves."""
    store = registry.store
    model = registry.get(name)
    error = registry.load_error(name)
    versions = store.versions(name)
    return {
        "name": name,
        "current_version": store.current(name),
        "pinned_version": store.pinned(name),
        "loaded_version": model.version if model else None,
        "loading": registry.is_loading(name),
        "versions": versions,
        "load_error": {"version": error[0], "detail": error[1]} if error else None,
        "loaded_at": iso_time(model.loaded_at) if model else None,
        "latest_promotion": _latest_promotion(registry, name, versions),
    }


def _models(registry: ModelRegistry) -> List[Dict[str, Any]]:
    names = sorted(set(registry.store.names()) | set(registry.loaded()))
    return [_model(registry, name) for name in names]


@router.get("/models", response_model=ModelList, summary="Every model: current, loaded, versions")
async def list_models(
    registry: ModelRegistry = Depends(get_registry), settings: Settings = Depends(get_settings)
) -> Dict[str, Any]:
    models = await run_blocking(_models, registry)
    return {
        "default_model": settings.default_model,
        "serves_by_default": registry.default_name(),
        "max_loaded_models": registry.max_loaded,
        "models": models,
    }


def _detail(
    registry: ModelRegistry, monitor: LabelMonitor, workspace: Workspace, name: str
) -> Dict[str, Any]:
    check_name(name)
    if not registry.store.versions(name) and name not in registry.loaded():
        raise NotFound("No model {!r}: see the list of models.".format(name))
    model = _model(registry, name)
    loaded = model["loaded_version"]
    policy = workspace.policies.get(name)
    return dict(
        model,
        drift=monitor.figures(name, loaded) if loaded is not None else None,
        policy=status(workspace, name, policy) if policy is not None else None,
    )


@router.get(
    "/models/{name}",
    response_model=ModelDetail,
    responses=errors.responses(404, 422),
    summary="One model: what serves, the gate's last decision, drift and retrain policy",
)
async def get_model(
    name: str = Path(..., max_length=64),
    registry: ModelRegistry = Depends(get_registry),
    monitor: LabelMonitor = Depends(get_monitor),
    workspace: Workspace = Depends(get_workspace),
) -> Dict[str, Any]:
    return await run_blocking(_detail, registry, monitor, workspace, name)


def _versions(registry: ModelRegistry, name: str) -> Dict[str, Any]:
    check_name(name)
    store = registry.store
    versions = store.versions(name)
    if not versions:
        raise NotFound("No model {!r}: see GET /models.".format(name))
    current = store.current(name)
    pinned = store.pinned(name)
    loaded = registry.get(name)
    rows = []
    for version in versions:
        meta = store.metadata(name, version)
        metrics = meta.get("metrics") or {}
        accuracy = metrics.get("test_accuracy") if isinstance(metrics, dict) else None
        rows.append(
            {
                "version": version,
                "current": version == current,
                "pinned": version == pinned,
                "loaded": loaded is not None and loaded.version == version,
                "created": meta.get("created"),
                "architecture": meta.get("architecture"),
                "test_accuracy": accuracy,
                "labels": list(meta.get("labels") or []),
                "job_id": meta.get("job_id"),
                "load_error": registry.version_error(name, version),
                "metrics": metrics if isinstance(metrics, dict) else {},
                "dataset": meta.get("dataset") if isinstance(meta.get("dataset"), dict) else None,
                "hyperparameters": meta.get("hyperparameters") or {},
                "promotion": meta.get("promotion") if isinstance(meta.get("promotion"), dict) else None,
            }
        )
    return {
        "name": name,
        "current_version": current,
        "pinned_version": pinned,
        "loaded_version": loaded.version if loaded else None,
        "versions": rows,
    }


@router.get(
    "/models/{name}/versions",
    response_model=VersionList,
    responses=errors.responses(404, 422),
    summary="Every version of one model",
)
async def list_versions(
    name: str = Path(..., max_length=64), registry: ModelRegistry = Depends(get_registry)
) -> Dict[str, Any]:
    return await run_blocking(_versions, registry, name)


@router.post(
    "/models/{name}/versions/{version}/activate",
    response_model=ActivateResponse,
    responses=errors.responses(401, 404, 409, 422),
    dependencies=[Depends(require_key)],
    summary="Serve this version now (rollback; the next retrain becomes current "
    "unless pinned); other API processes follow",
)
async def activate(
    name: str = Path(..., max_length=64),
    version: int = Path(..., ge=1),
    registry: ModelRegistry = Depends(get_registry),
) -> Dict[str, Any]:
    model = await run_blocking(registry.activate, name, version)
    return {"name": name, "version": version, "loaded_version": model.version}


def _pin(registry: ModelRegistry, name: str, version: int) -> Dict[str, Any]:
    model = registry.activate(name, version)  # loads it first: an unloadable version is refused
    registry.store.pin(name, version)
    return {
        "name": name,
        "pinned_version": version,
        "current_version": registry.store.current(name),
        "loaded_version": model.version,
    }


@router.post(
    "/models/{name}/versions/{version}/pin",
    response_model=PinResponse,
    responses=errors.responses(401, 404, 409, 422),
    dependencies=[Depends(require_key)],
    summary="Pin this version: serve it, and let retrains only publish until unpinned",
)
async def pin(
    name: str = Path(..., max_length=64),
    version: int = Path(..., ge=1),
    registry: ModelRegistry = Depends(get_registry),
) -> Dict[str, Any]:
    return await run_blocking(_pin, registry, name, version)


def _unpin(registry: ModelRegistry, name: str) -> Dict[str, Any]:
    check_name(name)
    if not registry.store.versions(name):
        raise NotFound("No model {!r}: see GET /models.".format(name))
    registry.store.unpin(name)
    loaded = registry.get(name)
    return {
        "name": name,
        "pinned_version": None,
        "current_version": registry.store.current(name),
        "loaded_version": loaded.version if loaded else None,
    }


@router.delete(
    "/models/{name}/pin",
    response_model=PinResponse,
    responses=errors.responses(401, 404, 422),
    dependencies=[Depends(require_key)],
    summary="Unpin: the pinned version stays current until the next retrain or activate",
)
async def unpin(
    name: str = Path(..., max_length=64), registry: ModelRegistry = Depends(get_registry)
) -> Dict[str, Any]:
    return await run_blocking(_unpin, registry, name)
