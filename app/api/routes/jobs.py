"""``/jobs``: follow and cancel retraining jobs."""

import os
from typing import Any, Dict, Optional

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response

from app import errors
from app.blocking import run_blocking
from app.deps import get_jobs, get_misclassified, get_settings, require_key
from app.image_access import require_image_key
from app.schemas import JobList, JobOut, iso_time
from poets.engine.data.images import MEDIA_TYPES
from poets.engine.errors import NotFound
from poets.engine.settings import Settings
from poets.engine.store.jobs import Job, JobRecords
from poets.engine.store.misclassified import JOB_ID, MisclassifiedCopies

router = APIRouter(tags=["jobs"])

_PROGRESS_KEYS = ("phase", "done", "total", "step", "steps", "version", "history")


def shown_params(params: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """A job's parameters without the server's paths: the dataset relative to the data root
    or to the upload (older records: the folder's name)."""
    shown = dict(params or {})
    dataset_path = shown.pop("dataset_path", None)
    if "image_dir" in shown:
        shown["image_dir"] = dataset_path or os.path.basename(str(shown["image_dir"]))
    return shown


def job_out(job: Job) -> Dict[str, Any]:
    """A job as the API shows it: state, phase, progress, live or final metrics, result."""
    result = job.result or None
    if result and result.get("metrics") is not None:
        metrics: Optional[Dict[str, Any]] = result.get("metrics")
    else:
        live = {k: v for k, v in (job.progress or {}).items() if k not in _PROGRESS_KEYS}
        metrics = live or None
    version = job.version
    if version is None and result:
        version = result.get("version")
    return {
        "id": job.id,
        "job_id": job.id,
        "name": job.name,
        "state": job.state,
        "phase": job.phase,
        "progress": job.progress or {},
        "metrics": metrics,
        "result": result,
        "version": version,
        "error": job.error,
        "attempts": job.attempts,
        "cancel_requested": job.cancel_requested,
        "params": shown_params(job.params),
        "trigger": job.trigger,
        "created": iso_time(job.created),
        "started": iso_time(job.started),
        "finished": iso_time(job.finished),
        "location": "/jobs/{}".format(job.id),
    }


@router.get(
    "/jobs", response_model=JobList, responses=errors.responses(422), summary="Recent jobs, newest first"
)
async def list_jobs(
    limit: int = Query(50, ge=1, le=1000), jobs: JobRecords = Depends(get_jobs)
) -> Dict[str, Any]:
    found = await run_blocking(jobs.list, limit)
    return {"jobs": [job_out(job) for job in found]}


@router.get(
    "/jobs/{job_id}",
    response_model=JobOut,
    responses=errors.responses(404, 422),
    summary="One job: state, phase, progress, metrics, result",
)
async def get_job(
    job_id: str = Path(..., max_length=64), jobs: JobRecords = Depends(get_jobs)
) -> Dict[str, Any]:
    return job_out(await run_blocking(jobs.get, job_id))


def _misclassified_image(images: MisclassifiedCopies, job: Job, n: int) -> Response:
    listed = ((job.result or {}).get("metrics") or {}).get("misclassified") or []
    if n >= len(listed):
        raise NotFound(
            "Job {} lists {} misclassified image(s){}; there is no image {}.".format(
                job.id, len(listed), " (0 to {})".format(len(listed) - 1) if listed else "", n
            )
        )
    if not listed[n].get("image"):
        raise NotFound(
            "Misclassified image {} of job {} was not kept (over "
            "POETS_MISCLASSIFIED_JOB_BYTES, not readable, or the job predates the "
            "copies): its path in the dataset is in the job's record.".format(n, job.id)
        )
    found = images.read(job.id, n)  # from disk or the bucket (StoreUnavailable: 503)
    if found is None:
        raise NotFound(
            "Misclassified image {} of job {} is gone: the copies of the oldest jobs "
            "are removed to stay within POETS_MISCLASSIFIED_BYTES.".format(n, job.id)
        )
    data, suffix = found
    return Response(
        data,
        media_type=MEDIA_TYPES[suffix],
        headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


@router.get(
    "/jobs/{job_id}/misclassified/{n}",
    response_class=Response,
    responses=errors.with_ok(
        {
            200: {
                "content": {media: {} for media in MEDIA_TYPES.values()},
                "description": "The image, as it was in the dataset.",
            }
        },
        401,
        404,
        422,
        503,
    ),
    dependencies=[Depends(require_image_key)],
    summary="A finished job's n-th misclassified test image (a copy kept with the job; "
    "the URL is in the entry's 'image')",
)
async def misclassified_image(
    job_id: str = Path(..., max_length=64),
    n: int = Path(..., ge=0, le=1000000),
    jobs: JobRecords = Depends(get_jobs),
    images: MisclassifiedCopies = Depends(get_misclassified),
) -> Response:
    if not JOB_ID.fullmatch(job_id):
        raise NotFound(
            "No job {!r}: job ids are letters, digits, '-' and '_' (see GET /jobs).".format(job_id[:64])
        )
    job = await run_blocking(jobs.get, job_id)
    return await run_blocking(_misclassified_image, images, job, n)


@router.delete(
    "/jobs/{job_id}",
    status_code=202,
    response_model=JobOut,
    responses=errors.responses(401, 404, 409, 422),
    dependencies=[Depends(require_key)],
    summary="Cancel a job: a queued job at once, a running one at its next step "
    "(at once when its worker is gone)",
)
async def cancel_job(
    job_id: str = Path(..., max_length=64),
    jobs: JobRecords = Depends(get_jobs),
    settings: Settings = Depends(get_settings),
) -> Dict[str, Any]:
    job = await run_blocking(jobs.request_cancel, job_id, settings.worker_lost_after_s)
    return job_out(job)
