"""``POST /label``: one image as the raw body or multipart, or several as multipart."""

import asyncio
import time
from typing import Any, Dict, List, Optional, Tuple

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader

from app import errors
from app.batching import post_error
from app.deps import API_KEY_HEADER, check_key
from app.schemas import LabelBatchResponse, LabelResponse
from app.uploads import MULTIPART, close_form, limited, read_files
from app.uploads import media_type as get_media_type
from poets.engine.errors import InvalidImage, InvalidInput, Unavailable, UnsupportedMediaType

router = APIRouter(tags=["label"])

RAW_TYPES = ("image/jpeg", "image/jpg", "image/pjpeg", "image/png", "image/x-png", "image/gif",
             "image/bmp", "image/x-bmp", "image/x-ms-bmp", "image/webp", "image/mpo",
             "application/octet-stream", "")
FILE_FIELD = "file"
_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                           description="Needed when POETS_LABEL_REQUIRES_KEY is set.")


async def require_label_key(request: Request, key: Optional[str] = Depends(_key_header)) -> None:
    """/label is open unless POETS_LABEL_REQUIRES_KEY is set.

    ``async`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool,
    which cost every /label request two thread switches (a third of the event loop's
    time per request at 8 clients).
    """
    settings = request.app.state.settings
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
            MULTIPART: {"schema": {
                "type": "object", "required": [FILE_FIELD],
                "properties": {FILE_FIELD: {"type": "array",
                                            "items": {"type": "string", "format": "binary"}}}}},
        },
    },
}


def _prepare_and_queue(predictor: Any, batcher: Any, data: bytes, max_pixels: int, observe: Any,
                       future: Any, loop: Any) -> None:
    """In a decode thread: prepare one image and queue it for the model.

    The pixels go straight to the batcher, not back through the event loop: the loop
    hears about this image once, when its scores (or its error) are ready.
    """
    started = time.perf_counter()
    try:
        pixels = predictor.prepare(data, max_pixels)
    except BaseException as exc:
        batcher.forget(1)
        post_error(loop, future, exc)
        return
    finally:
        observe(time.perf_counter() - started)
    try:
        batcher.put(pixels, future, loop, expected=True)
    except RuntimeError as exc:  # closed: the server is shutting down
        post_error(loop, future, Unavailable("The server is shutting down: retry ({}).".format(exc)))


async def _read_images(request: Request, media: str, limit: int) -> List[Tuple[Optional[str], bytes]]:
    too_large = ("The upload is over the limit of {} bytes (POETS_MAX_UPLOAD_BYTES): send a smaller "
                 "image.".format(limit))
    body = limited(request, limit, too_large)
    if media == MULTIPART:
        form = await body.form()
        try:
            files = await read_files(form, FILE_FIELD)
            if not files:
                raise InvalidInput("The multipart form has no file part named '{}': send the image "
                                   "as -F {}=@photo.jpg.".format(FILE_FIELD, FILE_FIELD))
            return files
        finally:
            await close_form(form)
    return [(None, await body.body())]


@router.post("/label", summary="Label images", responses=errors.with_ok(
    {200: {"model": LabelResponse,
           "description": "One image; several multipart 'file' parts give a "
                          "LabelBatchResponse (one result per file)."}},
    400, 401, 404, 413, 415, 422, 503),
    openapi_extra=_BODY_DOC, dependencies=[Depends(require_label_key)])
async def label(request: Request,
                top_k: int = Query(5, ge=1, le=1000, description="How many labels to return."),
                model: Optional[str] = Query(
                    None, description="Model name (default: POETS_DEFAULT_MODEL, or the only "
                                      "model).")) -> JSONResponse:
    state = request.app.state
    settings = state.settings
    media = get_media_type(request)
    if media != MULTIPART and media not in RAW_TYPES:
        raise UnsupportedMediaType(
            "Content-Type {!r} is not an image: send the image bytes with Content-Type image/jpeg "
            "(or image/png, image/gif, image/bmp, image/webp, application/octet-stream), or a "
            "multipart form with a part named 'file' (curl -F file=@photo.jpg). With curl "
            "--data-binary add -H 'Content-Type: image/jpeg'.".format(media))
    started = time.perf_counter()
    files = await _read_images(request, media, settings.max_upload_bytes)
    for filename, data in files:
        if not data:
            where = "The file {!r}".format(filename) if filename else "The request body"
            raise InvalidImage("{} is empty: send the bytes of a JPEG, PNG, GIF, BMP or WebP "
                               "image.".format(where))
    loop = asyncio.get_event_loop()
    observe = state.metrics.decode_seconds.observe
    pool = state.decode_pool
    max_pixels = settings.max_image_pixels
    with state.registry.lease(model) as loaded:
        request.state.model_version = loaded.key
        predictor = loaded.predictor
        batcher = loaded.batcher
        # Announced before decoding starts, so a batch being formed waits for these
        # images (at most POETS_BATCH_TIMEOUT_MS) instead of running without them.
        batcher.expect(len(files))
        futures = [loop.create_future() for _ in files]
        for index, ((_, data), future) in enumerate(zip(files, futures)):
            try:
                pool.submit(_prepare_and_queue, predictor, batcher, data, max_pixels, observe,
                            future, loop)
            except RuntimeError:  # the pool is shut down: the server is stopping
                batcher.forget(len(files) - index)
                raise Unavailable("The server is shutting down: retry.") from None
        outcome = await asyncio.gather(*futures, return_exceptions=True)
        for (filename, _), result in zip(files, outcome):
            if isinstance(result, InvalidImage) and filename is not None and len(files) > 1:
                raise InvalidImage("{!r}: {}".format(filename, result.detail))
            if isinstance(result, BaseException):
                raise result
        rows = outcome
        labels = [[{"label": label, "score": score} for label, score in predictor.top_k(row, top_k)]
                  for row in rows]
        ref = {"name": loaded.name, "version": loaded.version}
        state.metrics.images.labels(loaded.key).inc(len(files))
    took_ms = round((time.perf_counter() - started) * 1000.0, 2)
    content: Dict[str, Any]
    if len(files) == 1:
        content = {"model": ref, "labels": labels[0], "took_ms": took_ms}
    else:
        content = {"model": ref, "results": [{"filename": filename, "labels": result}
                                             for (filename, _), result in zip(files, labels)],
                   "took_ms": took_ms}
    return JSONResponse(content)


__all__ = ["LabelBatchResponse", "router"]
