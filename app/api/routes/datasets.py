"""``/datasets``: datasets as a resource, kept on disk in the poets layout.

The library (:mod:`poets.engine.data.library`) does the work in a thread; these
routes read requests within their size limits and shape the answers.
"""

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, Dict, List, Optional, Tuple

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel

from app import errors
from app.blocking import run_blocking
from app.deps import get_library, get_settings, require_key
from app.image_access import require_image_key
from app.schemas import (
    ArchiveImported,
    ClassDeleted,
    DatasetDeleted,
    DatasetList,
    DatasetOut,
    ImageDeleted,
    ImageOut,
    ImagePage,
    ImagesAdded,
)
from app.streaming import PacedStreamingResponse
from app.uploads import FORMS, MULTIPART, close_form, is_upload, read_form
from app.uploads import media_type as get_media_type
from poets.engine.data import leftovers, uploads
from poets.engine.data.images import MEDIA_TYPES
from poets.engine.data.library import DatasetLibrary, ImageInfo
from poets.engine.errors import InvalidInput, TooLarge, UnsupportedMediaType
from poets.engine.settings import Settings

router = APIRouter(tags=["datasets"])

_FILE_FIELDS = ("files", "file")


class DatasetCreate(BaseModel):
    name: str


class LabelBody(BaseModel):
    label: str


def image_out(dataset: str, info: ImageInfo) -> Dict[str, Any]:
    """An image as the API shows it, with the URLs of the file and its thumbnail."""
    url = "/datasets/{}/images/{}".format(dataset, info.id)
    out = info.to_dict()
    out.update({"url": url, "thumbnail": url + "/thumbnail"})
    return out


@router.post(
    "/datasets",
    status_code=201,
    response_model=DatasetOut,
    summary="Create a dataset",
    responses=errors.responses(401, 409, 422),
    dependencies=[Depends(require_key)],
)
async def create_dataset(
    body: DatasetCreate, response: Response, library: DatasetLibrary = Depends(get_library)
) -> Dict[str, Any]:
    described = await run_blocking(library.create, body.name)
    response.headers["Location"] = "/datasets/{}".format(body.name)
    return described


# Summaries are read in this one thread (no thread hop for the library either): however
# many clients poll the listing, it takes one thread's share of the GIL from /label, not 40.
_DESCRIBE = ThreadPoolExecutor(1, thread_name_prefix="datasets-describe")


def _listing(library: DatasetLibrary) -> Dict[str, Any]:
    return {"datasets": [library.describe(name) for name in library.names()]}


# A JSONResponse, documented by its model but not validated by FastAPI: this is the route
# clients poll, and the summaries are the library's own (GET /datasets/{name} validates them).
@router.get("/datasets", response_model=DatasetList, summary="List the datasets")
async def list_datasets(library: DatasetLibrary = Depends(get_library)) -> JSONResponse:
    # Unchanged datasets are answered here, from a few stats: no thread, no GIL ping-pong.
    summaries = [library.cached_summary(name) for name in library.names()]
    if all(summary is not None for summary in summaries):
        return JSONResponse({"datasets": summaries})
    return JSONResponse(await run_blocking(_listing, library, pool=_DESCRIBE))


@router.get(
    "/datasets/{name}",
    response_model=DatasetOut,
    summary="A dataset's classes, counts and fingerprint",
    responses=errors.responses(404, 422),
)
async def get_dataset(name: str, library: DatasetLibrary = Depends(get_library)) -> Dict[str, Any]:
    return await run_blocking(library.describe, name, pool=_DESCRIBE)


@router.delete(
    "/datasets/{name}",
    response_model=DatasetDeleted,
    summary="Delete a dataset and its images",
    responses=errors.responses(401, 404, 422),
    dependencies=[Depends(require_key)],
)
async def delete_dataset(name: str, library: DatasetLibrary = Depends(get_library)) -> Dict[str, Any]:
    await run_blocking(library.delete, name)
    return {"deleted": name}


@router.get(
    "/datasets/{name}/images",
    response_model=ImagePage,
    summary="Page through a dataset's images",
    responses=errors.responses(404, 422),
)
async def list_images(
    name: str,
    label: Optional[str] = Query(None, description="Only this class."),
    offset: int = Query(0, ge=0),
    limit: int = Query(100, ge=1, le=1000),
    library: DatasetLibrary = Depends(get_library),
) -> Dict[str, Any]:
    total, page = await run_blocking(library.images, name, label or None, offset, limit)
    return {
        "name": name,
        "label": label or None,
        "total": total,
        "offset": offset,
        "limit": limit,
        "items": [image_out(name, info) for info in page],
    }


def _upload_size(upload: Any) -> int:
    handle = upload.file
    handle.seek(0, os.SEEK_END)
    size = int(handle.tell())
    handle.seek(0)
    return size


def _form_files(form: Any, settings: Settings) -> Tuple[List[Tuple[Optional[str], IO[bytes]]], Optional[str]]:
    """The uploaded images as their spooled files (read one at a time by the library) and the label."""
    files: List[Tuple[Optional[str], IO[bytes]]] = []
    label: Optional[str] = None
    item: Any
    for key, item in form.multi_items():
        value = item
        if is_upload(value):
            if key not in _FILE_FIELDS:
                raise InvalidInput("Unexpected file field {!r}: send the images as 'files'.".format(key[:50]))
            if _upload_size(value) > settings.max_file_bytes:
                raise TooLarge(
                    "File {!r} is over the limit of {} bytes (POETS_MAX_FILE_BYTES): "
                    "send a smaller image.".format(value.filename, settings.max_file_bytes)
                )
            files.append((value.filename, value.file))
        elif key == "label":
            label = str(value)
    return files, label


@router.post(
    "/datasets/{name}/images",
    status_code=201,
    response_model=ImagesAdded,
    summary="Add images to a class",
    responses=errors.responses(400, 401, 404, 413, 415, 422),
    dependencies=[Depends(require_key)],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                MULTIPART: {
                    "schema": {
                        "type": "object",
                        "required": ["files", "label"],
                        "properties": {
                            "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                            "label": {"type": "string"},
                        },
                    }
                }
            },
        }
    },
)
async def add_images(
    name: str,
    request: Request,
    library: DatasetLibrary = Depends(get_library),
    settings: Settings = Depends(get_settings),
) -> Dict[str, Any]:
    # The parts are spooled to disk as they arrive (as /retrain's archives are), and the
    # library reads them one at a time: a request never holds all its images in memory.
    form = await read_form(
        request,
        FORMS,
        "Send a multipart form: the images as 'files' and the class as "
        "'label' (curl -F files=@a.jpg -F files=@b.jpg -F label=roses).",
        settings.max_archive_bytes,
        "The upload is over the limit of {} bytes (POETS_MAX_ARCHIVE_BYTES): send fewer "
        "images per request.".format(settings.max_archive_bytes),
    )
    try:
        files, label = await run_blocking(_form_files, form, settings)
        if not files:
            raise InvalidInput("No images: send them as 'files' parts (curl -F files=@a.jpg -F label=roses).")
        if not label:
            raise InvalidInput("No class: send the 'label' field with the images (-F label=roses).")
        added = await run_blocking(library.add, name, label, files)
    finally:
        await close_form(form)
    return {"ids": [info.id for info in added], "images": [image_out(name, info) for info in added]}


@router.get(
    "/datasets/{name}/images/{image}",
    summary="An image's file",
    response_class=FileResponse,
    responses=errors.responses(401, 404, 422),
    dependencies=[Depends(require_image_key)],
)
async def get_image(name: str, image: str, library: DatasetLibrary = Depends(get_library)) -> Response:
    _, path = await run_blocking(library.image_path, name, image)
    return FileResponse(
        str(path), media_type=MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
    )


@router.get(
    "/datasets/{name}/images/{image}/thumbnail",
    summary="An image's thumbnail (JPEG)",
    response_class=Response,
    responses=errors.responses(400, 401, 404, 422),
    dependencies=[Depends(require_image_key)],
)
async def get_thumbnail(name: str, image: str, library: DatasetLibrary = Depends(get_library)) -> Response:
    return Response(
        await run_blocking(library.thumbnail, name, image),
        media_type="image/jpeg",
        headers={"Cache-Control": "private, max-age=3600"},
    )


@router.patch(
    "/datasets/{name}/images/{image}",
    response_model=ImageOut,
    summary="Move an image to another class",
    responses=errors.responses(401, 404, 409, 422),
    dependencies=[Depends(require_key)],
)
async def move_image(
    name: str, image: str, body: LabelBody, library: DatasetLibrary = Depends(get_library)
) -> Dict[str, Any]:
    return image_out(name, await run_blocking(library.move, name, image, body.label))


@router.delete(
    "/datasets/{name}/images/{image}",
    response_model=ImageDeleted,
    summary="Delete an image",
    responses=errors.responses(401, 404, 422),
    dependencies=[Depends(require_key)],
)
async def delete_image(
    name: str, image: str, library: DatasetLibrary = Depends(get_library)
) -> Dict[str, Any]:
    info = await run_blocking(library.delete_image, name, image)
    return {"deleted": info.id, "label": info.label}


@router.patch(
    "/datasets/{name}/classes/{label}",
    response_model=DatasetOut,
    summary="Rename a class (into an existing one: merge)",
    responses=errors.responses(401, 404, 409, 422),
    dependencies=[Depends(require_key)],
)
async def rename_class(
    name: str, label: str, body: LabelBody, library: DatasetLibrary = Depends(get_library)
) -> Dict[str, Any]:
    return await run_blocking(library.rename_class, name, label, body.label)


@router.delete(
    "/datasets/{name}/classes/{label}",
    response_model=ClassDeleted,
    summary="Delete a class and its images",
    responses=errors.responses(401, 404, 422),
    dependencies=[Depends(require_key)],
)
async def delete_class(
    name: str, label: str, library: DatasetLibrary = Depends(get_library)
) -> Dict[str, Any]:
    count = await run_blocking(library.delete_class, name, label)
    return {"deleted": label, "images": count}


@router.post(
    "/datasets/{name}/archive",
    status_code=201,
    response_model=ArchiveImported,
    summary="Import a zip or tar.gz in the poets layout into a dataset",
    responses=errors.responses(400, 401, 404, 413, 415, 422),
    dependencies=[Depends(require_key)],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                MULTIPART: {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                }
            },
        }
    },
)
async def import_archive(
    name: str,
    request: Request,
    library: DatasetLibrary = Depends(get_library),
    settings: Settings = Depends(get_settings),
) -> Dict[str, Any]:
    wrong_type = "Send the archive as a multipart 'file' part (curl -F file=@photos.zip)."
    if get_media_type(request) != MULTIPART:  # 415 before the dataset's 404, as read_form would
        raise UnsupportedMediaType(wrong_type)
    await run_blocking(library.describe, name)  # unknown dataset: 404 before reading the upload
    form = await read_form(
        request,
        (MULTIPART,),
        wrong_type,
        settings.max_archive_bytes,
        "The archive is over the limit of {} bytes (POETS_MAX_ARCHIVE_BYTES): send a smaller one.".format(
            settings.max_archive_bytes
        ),
    )
    saved = leftovers.import_upload(settings.uploads_dir)
    # Claimed while in use: what a crash leaves, the periodic clean-up removes; never this.
    claimed = leftovers.Claim(saved)
    try:
        upload = form.get("file")
        if upload is None or not is_upload(upload):
            raise InvalidInput("No archive: send it as the 'file' part (curl -F file=@photos.zip).")
        empty = "send a .zip or .tar.gz with one folder of images per class."
        await run_blocking(uploads.save_archive, upload.file, saved, empty)
        summary = await run_blocking(library.import_archive, name, saved)
    finally:
        await close_form(form)
        claimed.release()
        with contextlib.suppress(OSError):
            saved.unlink()
    return summary


@router.get(
    "/datasets/{name}/archive",
    summary="Export a dataset as a zip",
    response_class=StreamingResponse,
    responses=errors.responses(401, 404, 422),
    dependencies=[Depends(require_image_key)],
)
async def export_archive(
    name: str, library: DatasetLibrary = Depends(get_library), settings: Settings = Depends(get_settings)
) -> Response:
    chunks = await run_blocking(library.export, name)
    return PacedStreamingResponse(
        chunks,
        settings.send_timeout_s,
        media_type="application/zip",
        headers={"Content-Disposition": 'attachment; filename="{}.zip"'.format(name)},
    )
