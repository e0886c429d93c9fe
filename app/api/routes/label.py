"""``POST /label``: one image as the raw body or multipart, or several as multipart."""

import time
from typing import Any, Dict, List, Optional, Tuple

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader

from app import errors
from app.deps import API_KEY_HEADER, check_key, get_collector, get_registry, get_settings
from app.schemas import LabelBatchResponse, LabelResponse
from app.serving.registry import ModelRegistry
from app.uploads import MULTIPART, close_form, limited, read_files
from app.uploads import media_type as get_media_type
from poets.engine.errors import InvalidImage, InvalidInput, TooLarge, UnsupportedMediaType
from poets.engine.inbox import Collector
from poets.engine.settings import Settings

router = APIRouter(tags=["label"])

RAW_TYPES = (
    "image/jpeg",
    "image/jpg",
    "image/pjpeg",
    "image/png",
    "image/x-png",
    "image/gif",
    "image/bmp",
    "image/x-bmp",
    "image/x-ms-bmp",
    "image/webp",
    "image/mpo",
    "application/octet-stream",
    "",
)
FILE_FIELD = "file"
_key_header = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="Needed when POETS_LABEL_REQUIRES_KEY is set."
)


async def require_label_key(
    settings: Settings = Depends(get_settings), key: Optional[str] = Depends(_key_header)
) -> None:
    """/label is open unless POETS_LABEL_REQUIRES_KEY is set.

    ``async`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool,
    which cost every /label request two thread switches (a third of the event loop's
    time per request at 8 clients).
    """
    if settings.label_requires_key:
        check_key(settings, key)


_BODY_DOC = {
    "requestBody": {
        "required": True,
        "description": "One image as the raw body (what cameras send), or one or more images as "
        "multipart parts named 'file'.",
        "content": {
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            MULTIPART: {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {
                        FILE_FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
        },
    },
}


async def _read_images(request: Request, media: str, limit: int) -> List[Tuple[Optional[str], bytes]]:
    too_large = (
        "The upload is over the limit of {} bytes (POETS_MAX_UPLOAD_BYTES): send a smaller image.".format(
            limit
        )
    )
    body = limited(request, limit, too_large)
    if media == MULTIPART:
        form = await body.form()
        try:
            files = await read_files(form, FILE_FIELD)
            if not files:
                raise InvalidInput(
                    "The multipart form has no file part named '{}': send the image "
                    "as -F {}=@photo.jpg.".format(FILE_FIELD, FILE_FIELD)
                )
            return files
        finally:
            await close_form(form)
    return [(None, await body.body())]


def _check_files(files: List[Tuple[Optional[str], bytes]], max_files: int) -> None:
    if len(files) > max_files:
        raise TooLarge(
            "The request has {} images, over the limit of {} per request "
            "(POETS_MAX_LABEL_FILES): send them in several requests.".format(len(files), max_files)
        )
    for filename, data in files:
        if not data:
            where = "The file {!r}".format(filename) if filename else "The request body"
            raise InvalidImage(
                "{} is empty: send the bytes of a JPEG, PNG, GIF, BMP or WebP image.".format(where)
            )


@router.post(
    "/label",
    summary="Label images",
    responses=errors.with_ok(
        {
            200: {
                "model": LabelResponse,
                "description": "One image; several multipart 'file' parts give a "
                "LabelBatchResponse (one result per file).",
            }
        },
        400,
        401,
        404,
        408,
        413,
        415,
        422,
        503,
    ),
    openapi_extra=_BODY_DOC,
    dependencies=[Depends(require_label_key)],
)
async def label(
    request: Request,
    top_k: int = Query(5, ge=1, le=1000, description="How many labels to return."),
    model: Optional[str] = Query(
        None,
        description="Model name (default: POETS_DEFAULT_MODEL when it exists, "
        "else the only model; 404 with the list otherwise).",
    ),
    collect: bool = Query(
        False, description="Keep the frame in the review inbox (GET /review) when the model is unsure."
    ),
    settings: Settings = Depends(get_settings),
    registry: ModelRegistry = Depends(get_registry),
    collector: Collector = Depends(get_collector),
) -> JSONResponse:
    media = get_media_type(request)
    if media != MULTIPART and media not in RAW_TYPES:
        raise UnsupportedMediaType(
            "Content-Type {!r} is not an image: send the image bytes with Content-Type image/jpeg "
            "(or image/png, image/gif, image/bmp, image/webp, application/octet-stream), or a "
            "multipart form with a part named 'file' (curl -F file=@photo.jpg). With curl "
            "--data-binary add -H 'Content-Type: image/jpeg'.".format(media)
        )
    started = time.perf_counter()
    files = await _read_images(request, media, settings.max_upload_bytes)
    _check_files(files, settings.max_label_files)
    with registry.lease(model) as served:
        request.state.model_version = served.key
        labelled = await served.label([data for _, data in files], top_k, [filename for filename, _ in files])
        ref = served.ref
    # Labelled: files, the model (ref) and every score row (labelled.scores) are known here.
    took_ms = round((time.perf_counter() - started) * 1000.0, 2)
    labels = [[{"label": label, "score": score} for label, score in ranked] for ranked in labelled.labels]
    for (_, data), scores in zip(files, labels):  # queued: saved off this request, never blocks
        collector.offer(data, ref, scores, collect)
    content: Dict[str, Any]
    if len(files) == 1:
        content = {"model": ref, "labels": labels[0], "took_ms": took_ms}
    else:
        content = {
            "model": ref,
            "results": [
                {"filename": filename, "labels": result} for (filename, _), result in zip(files, labels)
            ],
            "took_ms": took_ms,
        }
    return JSONResponse(content)


__all__ = ["LabelBatchResponse", "router"]
