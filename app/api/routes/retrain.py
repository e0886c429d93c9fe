"""``POST /retrain``: the form read into a job request, submitted by :mod:`poets.engine.jobs.submit`."""

from typing import Any, Dict

from fastapi import APIRouter, Depends, Request, Response

from app import errors
from app.api.routes.jobs import job_out
from app.blocking import run_blocking
from app.deps import get_metrics, get_queue, get_settings, get_workspace, require_key
from app.job_queue import JobQueue
from app.metrics import Metrics
from app.schemas import JobOut
from app.uploads import FORMS, MULTIPART, close_form, is_upload, read_form
from poets.engine.errors import InvalidInput
from poets.engine.jobs.submit import JobRequest, submit
from poets.engine.model.config import TrainConfig
from poets.engine.settings import Settings
from poets.engine.workspace import Workspace

router = APIRouter(tags=["retrain"])
CLIENT_HEADER = "X-Poets-Client"


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


def _job_request(form: Any) -> JobRequest:
    request = JobRequest()
    for key, value in form.multi_items():
        if key == "file":
            if not is_upload(value):
                raise InvalidInput(
                    "'file' must be an uploaded archive (curl -F file=@data.zip), not a text field."
                )
            request.archive = value.file
        elif is_upload(value):
            raise InvalidInput("Unexpected file field {!r}: send the dataset archive as 'file'.".format(key))
        elif value == "":
            continue  # forms send empty fields for options left unset
        elif key == "image_dir":
            request.image_dir = value
        elif key == "name":
            request.name = value
        elif key == "dataset":  # a /datasets dataset, by name
            request.dataset = value
        else:
            request.options[key] = value
    return request


@router.post(
    "/retrain",
    status_code=202,
    response_model=JobOut,
    response_description="Job queued; see Location.",
    summary="Retrain a model on a dataset",
    responses=errors.responses(
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
async def retrain(
    request: Request,
    response: Response,
    settings: Settings = Depends(get_settings),
    workspace: Workspace = Depends(get_workspace),
    queue: JobQueue = Depends(get_queue),
    metrics: Metrics = Depends(get_metrics),
) -> Dict[str, Any]:
    form = await read_form(
        request,
        FORMS,
        "Send a multipart form: the dataset archive as 'file' (curl -F file=@flowers.zip) or "
        "a server folder as 'image_dir', plus options such as -F how_many_training_steps=500.",
        settings.max_archive_bytes,
        "The archive is over the limit of {} bytes (POETS_MAX_ARCHIVE_BYTES): send a "
        "smaller dataset or use image_dir.".format(settings.max_archive_bytes),
    )
    try:
        job_request = _job_request(form)
        # The console and the CLI say who they are; any other client is "api".
        client = request.headers.get(CLIENT_HEADER, "").strip().lower()
        job_request.trigger = client if client in ("cli", "console") else "api"
        job = await run_blocking(submit, workspace, job_request, queue.send_retrain)
    finally:
        await close_form(form)
    metrics.jobs_enqueued.inc()
    response.headers["Location"] = "/jobs/{}".format(job.id)
    return job_out(job)
