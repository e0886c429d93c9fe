"""``/webhooks``: the log of webhook deliveries (POETS_WEBHOOK_URLS)."""

from typing import Any, Dict, List

from fastapi import APIRouter, Depends, Query

from app import errors
from app.blocking import run_blocking
from app.deps import get_workspace, require_key
from app.schemas import DeliveryList, iso_time
from poets.engine.workspace import Workspace

router = APIRouter(tags=["webhooks"])


def _delivery(row: Dict[str, Any]) -> Dict[str, Any]:
    shown = dict(row, created=iso_time(row["created"]), updated=iso_time(row["updated"]))
    shown["next_attempt"] = iso_time(shown.pop("next_at")) if row["state"] == "pending" else None
    return shown


def _recent(workspace: Workspace, limit: int) -> List[Dict[str, Any]]:
    return workspace.webhooks.recent(limit)  # the outbox (SQLite) opens on first use: in the thread too


@router.get(
    "/webhooks/deliveries",
    response_model=DeliveryList,
    responses=errors.responses(401, 422),
    dependencies=[Depends(require_key)],
    summary="Recent webhook deliveries, newest first",
)
async def deliveries(
    limit: int = Query(50, ge=1, le=1000), workspace: Workspace = Depends(get_workspace)
) -> Dict[str, Any]:
    rows = await run_blocking(_recent, workspace, limit)
    return {"urls": len(workspace.settings.webhook_urls), "deliveries": [_delivery(row) for row in rows]}
