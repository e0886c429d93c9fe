"""``POST /retrain``: validate a dataset and options, create the job, enqueue it."""

import asyncio
import contextlib
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from app import errors
from app.api.routes.jobs import job_out
from app.deps import require_key
from app.field_deps import get_library
from app.schemas import JobOut
from app.uploads import FORMS, MULTIPART, close_form, is_upload, read_form
from poets.engine.data import archives, datasets
from poets.engine.errors import Forbidden, InvalidArchive, InvalidInput, Unavailable
from poets.engine.model.config import TrainConfig
from poets.engine.settings import Settings
from poets.engine.store.models import check_name

router = APIRouter(tags=["retrain"])
log = logging.getLogger(__name__)


def _form_doc() -> Dict[str, Any]:
    properties: Dict[str, Any] = {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "The dataset as a .zip or .tar.gz: one folder of images per label, "
            "at the top or inside one top-level folder.",
        },
        "image_dir": {
            "type": "string",
            "description": "Instead of file: a folder on the server, relative to POETS_DATA_ROOT.",
        },
        "name": {"type": "string", "description": "Model name (default: POETS_DEFAULT_MODEL)."},
    }
    # The schema shows the default limits; the server's POETS_* settings may differ.
    caps = TrainConfig.caps(Settings())
    for spec in TrainConfig.parameters():
        properties[spec.name] = spec.json_schema(caps)
    return {
        "requestBody": {
            "required": True,
            "content": {MULTIPART: {"schema": {"type": "object", "properties": properties}}},
        }
    }


def resolve_image_dir(settings: Settings, image_dir: str) -> Path:
    """The server-side folder, which must resolve inside POETS_DATA_ROOT."""
    if settings.data_root is None:
        raise Forbidden(
            "This server reads no server-side folders (POETS_DATA_ROOT is unset): "
            "upload the dataset as an archive in the 'file' field instead."
        )
    if "\x00" in image_dir:  # os.path functions raise ValueError on it
        raise InvalidInput(
            "image_dir must not contain a NUL character: give a folder inside "
            "POETS_DATA_ROOT (a path relative to it)."
        )
    root = Path(os.path.realpath(str(settings.data_root)))
    candidate = Path(image_dir)
    if not candidate.is_absolute():
        candidate = root / candidate
    resolved = Path(os.path.realpath(str(candidate)))
    if resolved != root and root not in resolved.parents:
        raise Forbidden(
            "image_dir {!r} is outside the data root: give a folder inside "
            "POETS_DATA_ROOT (a path relative to it).".format(image_dir[:200])
        )
    if resolved == root:
        raise Forbidden(
            "image_dir {!r} is the data root itself: give the dataset's folder "
            "inside POETS_DATA_ROOT (e.g. 'flowers').".format(image_dir[:200])
        )
    try:
        os.stat(str(resolved))
    except (FileNotFoundError, NotADirectoryError):
        pass  # the dataset scan says it is not a folder
    except OSError as exc:  # a name too long, a symlink loop, no permission: not a 500
        raise InvalidInput(
            "image_dir {!r} cannot be read ({}): give a folder inside "
            "POETS_DATA_ROOT (a path relative to it).".format(
                image_dir[:200], exc.strerror or type(exc).__name__
            )
        ) from exc
    return resolved


def _save_and_extract(upload: Any, job_dir: Path, settings: Settings) -> Path:
    """Copy the upload to disk next to the job folder, then extract it safely (blocking)."""
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    archive = job_dir.with_name(job_dir.name + ".upload")
    try:
        upload.file.seek(0)
        with open(str(archive), "wb") as out:
            shutil.copyfileobj(upload.file, out, 1024 * 1024)
        if archive.stat().st_size == 0:
            raise InvalidArchive(
                "The uploaded archive is empty: send a .zip or .tar.gz of the dataset in the 'file' field."
            )
        return archives.extract(archive, job_dir, archives.Limits.from_settings(settings))
    finally:
        with contextlib.suppress(OSError):
            archive.unlink()


def _scan(
    root: Path, config: TrainConfig, settings: Settings, confine_to: Path, keep: Optional[Path] = None
) -> Dict[str, Any]:
    """The dataset's summary for the job record: counts, and at most POETS_MAX_LISTED_FILES names.

    ``keep``: where to save the scan for the worker (beside a job's own copy, which cannot
    change before it runs; best effort: without it the worker scans again).
    """
    dataset = datasets.scan(
        root,
        config.testing_percentage,
        config.validation_percentage,
        settings.max_image_pixels,
        confine_to=confine_to,
    )
    if keep is not None:
        try:
            dataset.save(keep)
        except OSError as exc:
            log.warning("scan of %s not kept (%s): the worker scans it again", root, exc)
            with contextlib.suppress(OSError):  # nor may the worker read one the archive brought
                keep.unlink()
    counts = dataset.counts()
    return {
        "labels": dataset.labels,
        "images": {label: sum(splits.values()) for label, splits in counts.items()},
        "skipped": [
            {"path": os.path.relpath(path, str(root)), "reason": reason}
            for path, reason in dataset.skipped[: settings.max_listed_files]
        ],
        "skipped_count": len(dataset.skipped),
    }


def _options(form: Any) -> Tuple[Dict[str, Any], Optional[Any], Optional[str], Optional[str]]:
    options: Dict[str, Any] = {}
    upload = image_dir = name = None
    for key, value in form.multi_items():
        if key == "file":
            if not is_upload(value):
                raise InvalidInput(
                    "'file' must be an uploaded archive (curl -F file=@data.zip), not a text field."
                )
            upload = value
        elif is_upload(value):
            raise InvalidInput("Unexpected file field {!r}: send the dataset archive as 'file'.".format(key))
        elif value == "":
            continue  # forms send empty fields for options left unset
        elif key == "image_dir":
            image_dir = value
        elif key == "name":
            name = value
        else:
            options[key] = value
    return options, upload, image_dir, name


@router.post(
    "/retrain",
    status_code=202,
    summary="Retrain a model on a dataset",
    responses=errors.with_ok(
        {202: {"model": JobOut, "description": "Job queued; see Location."}},
        400,
        401,
        403,
        413,
        415,
        422,
        503,
    ),
    openapi_extra=_form_doc(),
    dependencies=[Depends(require_key)],
)
async def retrain(request: Request) -> JSONResponse:
    state = request.app.state
    settings: Settings = state.settings
    form = await read_form(
        request,
        FORMS,
        "Send a multipart form: the dataset archive as 'file' (curl -F file=@flowers.zip) or "
        "a server folder as 'image_dir', plus options such as -F how_many_training_steps=500.",
        settings.max_archive_bytes,
        "The archive is over the limit of {} bytes (POETS_MAX_ARCHIVE_BYTES): send a "
        "smaller dataset or use image_dir.".format(settings.max_archive_bytes),
    )
    loop = asyncio.get_event_loop()
    job_dir: Optional[Path] = None
    try:
        options, upload, image_dir, name = _options(form)
        dataset_name = options.pop("dataset", None)  # a /datasets dataset, by name
        name = check_name(name or settings.default_model)
        config = TrainConfig.from_dict(options)
        config.validate(settings)
        if upload is not None and image_dir is not None:
            raise InvalidInput("Send either 'file' (an archive) or 'image_dir', not both.")
        if dataset_name is not None and (upload is not None or image_dir is not None):
            raise InvalidInput("Send one of 'file', 'image_dir' or 'dataset', not several.")
        if upload is None and image_dir is None and dataset_name is None:
            raise InvalidInput(
                "No dataset: send the archive as 'file' (curl -F file=@flowers.zip) "
                "or a server folder as 'image_dir'."
            )
        job_id = uuid.uuid4().hex
        if dataset_name is not None:  # trained on a frozen copy: edits go on meanwhile
            job_dir = settings.uploads_dir / job_id
            root = await loop.run_in_executor(None, get_library(request).snapshot, dataset_name, job_dir)
            source = "dataset"
        elif image_dir is not None:
            root = resolve_image_dir(settings, image_dir)
            source = "image_dir"
        else:
            job_dir = settings.uploads_dir / job_id
            root = await loop.run_in_executor(None, _save_and_extract, upload, job_dir, settings)
            source = "upload"
        # Nothing may lead out of the data root (or the job's own copy) through a link.
        confine_to = job_dir if job_dir is not None else Path(str(settings.data_root))
        # Only a job's own copy keeps its scan: a folder in the data root may change before the job runs.
        keep = job_dir / datasets.SCAN_FILE if job_dir is not None else None
        summary = await loop.run_in_executor(None, _scan, root, config, settings, confine_to, keep)
    except BaseException:
        if job_dir is not None:
            shutil.rmtree(str(job_dir), ignore_errors=True)
        raise
    finally:
        await close_form(form)

    jobs = state.jobs
    # image_dir is for the worker; answers show dataset_path, relative to the data root or
    # to the upload (app.api.routes.jobs.job_out), never the server's own paths.
    params = {
        "image_dir": str(root),
        "dataset_path": os.path.relpath(str(root), str(confine_to)),
        "source": source,
        "config": config.to_dict(),
        "dataset": summary,
    }
    if dataset_name is not None:
        params["dataset_name"] = dataset_name
    jobs.create(name, params, job_id=job_id)
    try:
        await loop.run_in_executor(None, state.queue.send_retrain, job_id, str(root), name, config.to_dict())
    except Unavailable as exc:
        jobs.finish(job_id, "failed", error=exc.detail)
        if job_dir is not None:
            shutil.rmtree(str(job_dir), ignore_errors=True)
        raise
    state.metrics.jobs_enqueued.inc()
    content = job_out(jobs.get(job_id))
    return JSONResponse(content, status_code=202, headers={"Location": "/jobs/{}".format(job_id)})
