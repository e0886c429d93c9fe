"""``/models/{name}/policy``: when a model retrains itself (see :mod:`poets.engine.policies`)."""

from typing import Any, Dict

from fastapi import APIRouter, Body, Depends, Path
from fastapi.responses import Response

from app import errors
from app.blocking import run_blocking
from app.deps import get_workspace, require_key
from app.schemas import PolicyOut
from poets.engine.errors import NotFound
from poets.engine.jobs.schedule import status
from poets.engine.policies import Policy
from poets.engine.store.models import check_name
from poets.engine.workspace import Workspace

router = APIRouter(tags=["policies"])
NAME = Path(..., max_length=64, description="Model name.")


def _get(workspace: Workspace, name: str) -> Dict[str, Any]:
    policy = workspace.policies.get(check_name(name))
    if policy is None:
        raise NotFound("Model {!r} has no retrain policy: set one with PUT.".format(name))
    return status(workspace, name, policy)


def _put(workspace: Workspace, name: str, body: Any) -> Dict[str, Any]:
    check_name(name)
    policy = Policy.from_dict(body, workspace.settings)
    workspace.datasets.describe(policy.dataset)  # a dataset that does not exist: 404 now, not later
    workspace.policies.put(name, policy)
    return status(workspace, name, policy)


def _delete(workspace: Workspace, name: str) -> None:
    if not workspace.policies.delete(check_name(name)):
        raise NotFound("Model {!r} has no retrain policy.".format(name))


@router.get(
    "/models/{name}/policy",
    response_model=PolicyOut,
    responses=errors.responses(404, 422),
    summary="A model's retrain policy, whether it is due and why",
)
async def get_policy(name: str = NAME, workspace: Workspace = Depends(get_workspace)) -> Dict[str, Any]:
    return await run_blocking(_get, workspace, name)


@router.put(
    "/models/{name}/policy",
    response_model=PolicyOut,
    responses=errors.responses(401, 404, 422),
    dependencies=[Depends(require_key)],
    summary="Set a model's retrain policy",
)
async def put_policy(
    name: str = NAME,
    body: Any = Body(
        ...,
        description='{"dataset": "yard", "after_new_images": 50, "every_hours": 24, '
        '"min_interval_minutes": 30, "params": {...retrain options...}}',
    ),
    workspace: Workspace = Depends(get_workspace),
) -> Dict[str, Any]:
    return await run_blocking(_put, workspace, name, body)


@router.delete(
    "/models/{name}/policy",
    status_code=204,
    responses=errors.responses(401, 404, 422),
    dependencies=[Depends(require_key)],
    summary="Remove a model's retrain policy",
)
async def delete_policy(name: str = NAME, workspace: Workspace = Depends(get_workspace)) -> Response:
    await run_blocking(_delete, workspace, name)
    return Response(status_code=204)  # no body, and no JSON content type promising one
