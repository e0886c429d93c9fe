"""``/review``: the inbox of unsure /label frames, least confident first; file or discard each."""

from typing import Any, Dict, Optional, Tuple

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel

from app import errors
from app.api.routes.datasets import image_out
from app.blocking import run_blocking
from app.deps import get_collector, get_library, require_key
from app.image_access import require_image_key
from app.schemas import ReviewDone, ReviewItem, ReviewPage
from poets.engine.data.images import MEDIA_TYPES
from poets.engine.data.library import DatasetLibrary
from poets.engine.errors import InvalidInput
from poets.engine.inbox import Collector, Inbox

router = APIRouter(tags=["review"])


class ReviewAction(BaseModel):
    dataset: Optional[str] = None
    label: Optional[str] = None
    discard: bool = False


def item_out(record: Dict[str, Any]) -> Dict[str, Any]:
    item = record["id"]
    return {
        "id": item,
        "model": record.get("model"),
        "scores": record.get("scores", []),
        "top_score": record.get("top_score"),
        "created": record.get("created"),
        "image": "/review/{}/image".format(item),
        "thumbnail": "/review/{}/thumbnail".format(item),
    }


@router.get(
    "/review",
    response_model=ReviewPage,
    responses=errors.responses(422, 503),
    summary="Inbox frames, least confident first",
)
async def list_review(
    offset: int = Query(0, ge=0),
    limit: int = Query(50, ge=1, le=1000),
    collector: Collector = Depends(get_collector),
) -> Dict[str, Any]:
    total, page = await run_blocking(collector.inbox.items, offset, limit)
    return {
        "total": total,
        "offset": offset,
        "limit": limit,
        "pending": collector.pending(),
        "dropped": collector.inbox.dropped + collector.dropped + collector.unavailable,
        "items": [item_out(record) for record in page],
    }


@router.get(
    "/review/{item}",
    response_model=ReviewItem,
    summary="One inbox frame",
    responses=errors.responses(404, 422, 503),
)
async def get_review(item: str, collector: Collector = Depends(get_collector)) -> Dict[str, Any]:
    return item_out(await run_blocking(collector.inbox.record, item))


def _image(inbox: Inbox, item: str) -> Tuple[bytes, str]:
    record, data = inbox.frame(item)
    return data, MEDIA_TYPES.get(str(record.get("suffix")), "image/jpeg")


@router.get(
    "/review/{item}/image",
    summary="An inbox frame's image",
    response_class=Response,
    responses=errors.responses(401, 404, 422, 503),
    dependencies=[Depends(require_image_key)],
)
async def get_review_image(item: str, collector: Collector = Depends(get_collector)) -> Response:
    data, media_type = await run_blocking(_image, collector.inbox, item)
    return Response(data, media_type=media_type)


@router.get(
    "/review/{item}/thumbnail",
    summary="An inbox frame's thumbnail (JPEG)",
    response_class=Response,
    responses=errors.responses(401, 404, 422, 503),
    dependencies=[Depends(require_image_key)],
)
async def get_review_thumbnail(item: str, collector: Collector = Depends(get_collector)) -> Response:
    return Response(
        await run_blocking(collector.inbox.thumbnail, item),
        media_type="image/jpeg",
        headers={"Cache-Control": "private, max-age=3600"},
    )


def _act(inbox: Inbox, library: DatasetLibrary, item: str, body: ReviewAction) -> Dict[str, Any]:
    if body.discard:
        if body.dataset or body.label:
            raise InvalidInput('Send either {"discard": true} or {"dataset": ..., "label": ...}, not both.')
        inbox.discard(item)
        return {"id": item, "discarded": True}
    if not body.dataset or not body.label:
        raise InvalidInput(
            'Say where the frame goes: {"dataset": NAME, "label": CLASS}, or drop it with {"discard": true}.'
        )
    library.describe(body.dataset)  # unknown dataset: 404 while the item is still in the inbox
    record, data = inbox.take(item)
    try:
        added = library.add(body.dataset, body.label, [(None, data)], reviewed=True)
    except BaseException:
        inbox.put_back(record, data)
        raise
    return {"id": item, "filed": True, "dataset": body.dataset, "image": image_out(body.dataset, added[0])}


@router.post(
    "/review/{item}",
    response_model=ReviewDone,
    summary="File a frame into a dataset class, or discard it",
    responses=errors.responses(400, 401, 404, 409, 422, 503),
    dependencies=[Depends(require_key)],
)
async def act_on_review(
    item: str,
    body: ReviewAction,
    collector: Collector = Depends(get_collector),
    library: DatasetLibrary = Depends(get_library),
) -> Dict[str, Any]:
    return await run_blocking(_act, collector.inbox, library, item, body)
