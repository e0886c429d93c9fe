"""``POST /retrain``: validate a dataset and options, create the job, enqueue it."""

import asyncio
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
from app.field_loop import get_library
from app.schemas import JobOut
from app.uploads import FORMS, MULTIPART, close_form, is_upload, read_form
from poets.engine.data import datasets
from poets.engine.errors import InvalidInput, Unavailable
from poets.engine.jobs.dataset import resolve_image_dir, save_and_extract, scan_summary
from poets.engine.model.config import TrainConfig
from poets.engine.settings import Settings
from poets.engine.store.models import check_name

router = APIRouter(tags=["retrain"])


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
            root = await loop.run_in_executor(None, save_and_extract, upload, job_dir, settings)
            source = "upload"
        # Nothing may lead out of the data root (or the job's own copy) through a link.
        confine_to = job_dir if job_dir is not None else Path(str(settings.data_root))
        # Only a job's own copy keeps its scan: a folder in the data root may change before the job runs.
        keep = job_dir / datasets.SCAN_FILE if job_dir is not None else None
        summary = await loop.run_in_executor(None, scan_summary, root, config, settings, confine_to, keep)
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
