"""Celery tasks: a thin host that runs :mod:`poets.engine.jobs.run` for a job record.

What a job does, and how every outcome ends in its record, is the engine's
(:func:`poets.engine.jobs.run.run_job`); this module gives it the worker's identity and
announces a published version to the API processes.
"""

import logging
from typing import Any, Dict, Optional

from poets.engine.errors import Unavailable
from poets.engine.jobs import run, schedule
from poets.engine.jobs.progress import CancelCheck, ProgressWriter
from poets.engine.settings import Settings
from poets.engine.store import events
from poets.engine.store.jobs import POLICY_TASK, RETRAIN_TASK
from poets.engine.workspace import Workspace
from worker.celery_app import app, worker_identity

# Where tests/worker/test_tasks.py finds them (they live in poets.engine.jobs.progress).
__all__ = ["CancelCheck", "ProgressWriter", "policies_task", "retrain_task", "run_job"]

log = logging.getLogger(__name__)


def run_job(
    settings: Settings, job_id: str, image_dir: str, name: str, config: Dict[str, Any]
) -> Dict[str, Any]:
    """Run one delivery of a job in this worker process (see :func:`poets.engine.jobs.run.run_job`)."""
    return run.run_job(
        settings,
        job_id,
        image_dir,
        name,
        config,
        worker_identity(),
        lambda model, version: events.publish(settings, model, version),
    )


@app.task(name=RETRAIN_TASK, bind=True)
def retrain_task(
    self: Any, job_id: str, image_dir: str, name: str, config: Optional[Dict[str, Any]] = None
) -> Dict[str, Any]:
    """Celery entry point: ``send_task(RETRAIN_TASK, kwargs={job_id, image_dir, name, config})``."""
    if getattr(self.request, "delivery_info", None) and self.request.delivery_info.get("redelivered"):
        log.warning("job %s was redelivered", job_id)
    return run_job(Settings.from_env(), job_id, image_dir, name, config or {})


def send_retrain(job_id: str, image_dir: str, name: str, config: Dict[str, Any]) -> None:
    """Enqueue a job the scheduler submitted, as the API does (by task name, on the poets queue)."""
    try:
        app.send_task(
            RETRAIN_TASK,
            kwargs={"job_id": job_id, "image_dir": image_dir, "name": name, "config": config},
            task_id=job_id,
            queue="poets",
        )
    except Exception as exc:
        raise Unavailable("The job queue is unreachable: {}.".format(type(exc).__name__)) from exc


@app.task(name=POLICY_TASK)
def policies_task() -> Dict[str, Any]:
    """Celery beat's tick: start the jobs the retrain policies say are due."""
    started = schedule.run_due(Workspace(Settings.from_env()), send_retrain)
    return {"started": [{"name": name, "job_id": job_id} for name, job_id in started]}
