"""Running a job: one delivery of a queued job, from its record to its published version.

The job record (:class:`poets.engine.store.jobs.JobRecords`) is the source of truth the API
shows; the queue only carries the message. Every outcome ends in the record: a run never
raises, so a bad job cannot take a worker down, and a job is never retried for bad input.
A redelivered message (worker killed mid-job; messages are acknowledged late) runs again
under the same job id, and ``retrain`` returns the version that job already published
instead of publishing a second one.

Job records in Redis may be out of reach for a while (Redis restarting). Training goes on
meanwhile (:mod:`poets.engine.jobs.progress`); the writes a job cannot do without, its start
and its outcome, wait up to :data:`RECORD_PATIENCE_S` for the records to come back.
"""

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, TypeVar

from poets.engine.errors import Cancelled, NotFound, PoetsError
from poets.engine.jobs.dataset import dataset_confinement, submitted_scan
from poets.engine.jobs.progress import CancelCheck, Heartbeat, ProgressWriter, jsonable
from poets.engine.phases import PUBLISHED
from poets.engine.runtime import configure_tensorflow
from poets.engine.settings import Settings
from poets.engine.store import health
from poets.engine.store.health import storage_error
from poets.engine.store.jobs import FINISHED, JobRecords
from poets.engine.workspace import Workspace

if TYPE_CHECKING:  # imports TensorFlow: only in the process that runs the job
    from poets.engine.retrain import RetrainResult

log = logging.getLogger(__name__)

# Told the model name and version a job published (the worker announces it to the API).
Published = Callable[[str, int], Any]
# Longest wait for unreachable job records to start a job or record its outcome; past it the
# delivery fails, and the job is sent again once its heartbeat is seen to have stopped.
RECORD_PATIENCE_S = 120.0
T = TypeVar("T")


def patiently(job_id: str, what: str, call: Callable[[], T], patience_s: float = RECORD_PATIENCE_S) -> T:
    """``call()``, tried again while the job records are unreachable, for up to ``patience_s``."""
    return health.patiently(call, patience_s, "job {}: {} waits for the job records".format(job_id, what))


def keep_misclassified(
    workspace: Workspace, job_id: str, dataset_root: Path, confine_to: Path, summary: Dict[str, Any]
) -> None:
    """Copy the listed misclassified images beside the job, or to the bucket (before its
    upload is deleted) and give each entry of ``summary`` its ``image`` URL. Best effort:
    the version is published."""
    metrics = summary.get("metrics") or {}
    entries = metrics.get("misclassified") or []
    if not entries:
        return
    try:
        metrics["misclassified"] = workspace.misclassified.keep(job_id, dataset_root, entries, confine_to)
    except Exception:  # a full disk or a bucket down must not fail a job whose version is published
        log.exception("job %s: misclassified images not kept", job_id)
        metrics["misclassified"] = [dict(entry, image=None) for entry in entries]


def run_job(
    settings: Settings,
    job_id: str,
    image_dir: str,
    name: str,
    config: Dict[str, Any],
    worker: str,
    published: Optional[Published] = None,
) -> Dict[str, Any]:
    """Run one delivery of a job, then drop its uploaded dataset once the job has ended.

    ``worker`` names this process in the record (see :meth:`JobRecords.start`); ``published``
    is told of the version a successful job published. Returns what the task returns (JSON).
    """
    workspace = Workspace(settings)
    with Heartbeat(workspace.jobs, job_id, worker, settings.worker_heartbeat_s) as heartbeat:
        outcome = deliver(workspace, job_id, image_dir, name, config, worker, heartbeat, published)
    if outcome.get("state") in FINISHED:
        # Only after a final state: a redelivered job still needs its images.
        workspace.job_inputs.drop(job_id)
    return outcome


def deliver(
    workspace: Workspace,
    job_id: str,
    image_dir: str,
    name: str,
    config: Dict[str, Any],
    worker: str,
    heartbeat: Optional[Heartbeat] = None,
    published: Optional[Published] = None,
) -> Dict[str, Any]:
    """Run one delivery of a retraining job; returns what the task returns (JSON).

    Every outcome is written to the job record: ``succeeded`` with the version and
    the summary, ``cancelled``, or ``failed`` with a detail the user can act on.
    """
    jobs = workspace.jobs
    skipped = patiently(job_id, "its start", lambda: _start(jobs, job_id, image_dir, name, config, worker))
    if skipped is not None:
        return skipped
    progress = ProgressWriter(jobs, job_id)
    should_stop = CancelCheck(jobs, job_id, heartbeat=heartbeat)
    try:
        # The folder on this machine (with a bucket: fetched; the message names the API node's).
        image_dir = workspace.job_inputs.dataset(job_id, image_dir, jobs.get(job_id).params)
        result = _retrain(workspace, job_id, image_dir, name, config, progress, should_stop)
    except Exception as exc:
        if isinstance(exc, Cancelled) and heartbeat is not None and heartbeat.lost:
            return {"job_id": job_id, "state": "superseded"}  # another delivery owns the record now
        progress.flush()
        ended = _ended(jobs, job_id, exc)
        if ended["state"] == "failed":
            workspace.tell("job.failed", {"job_id": job_id, "name": name, "error": ended["error"]})
        return ended
    settings = workspace.settings
    summary = jsonable(result.summary(settings.max_listed_files))
    confine_to = dataset_confinement(settings, job_id, image_dir)
    keep_misclassified(workspace, job_id, Path(image_dir), confine_to, summary)
    progress.flush()
    patiently(
        job_id,
        "its outcome",
        lambda: jobs.finish(
            job_id, "succeeded", phase=PUBLISHED, version=result.version, result=summary, error=None
        ),
    )
    if published is not None:
        published(result.name, result.version)
    _tell_published(workspace, job_id, summary)
    log.info("job %s published %s version %s", job_id, result.name, result.version)
    return {"job_id": job_id, "state": "succeeded", "name": result.name, "version": result.version}


def _tell_published(workspace: Workspace, job_id: str, summary: Dict[str, Any]) -> None:
    """The webhook events of a job that published: job.succeeded, then the gate's decision."""
    name, version = summary["name"], summary["version"]
    metrics = summary.get("metrics") or {}
    workspace.tell(
        "job.succeeded",
        {"job_id": job_id, "name": name, "version": version, "test_accuracy": metrics.get("test_accuracy")},
    )
    promotion = summary.get("promotion")
    if promotion:
        event = "version.promoted" if promotion["decision"] == "promoted" else "version.held"
        workspace.tell(event, {"job_id": job_id, "name": name, "version": version, "promotion": promotion})


def _start(
    jobs: JobRecords, job_id: str, image_dir: str, name: str, config: Dict[str, Any], worker: str
) -> Optional[Dict[str, Any]]:
    """Mark the job running in ``worker``; the outcome instead when it must not run."""
    try:
        job = jobs.get(job_id)
    except NotFound:
        # Sent without a record (by hand, or an old API): make one so it is visible.
        job = jobs.create(name, {"image_dir": image_dir, "config": config}, job_id=job_id)
    if job.state in FINISHED:
        # Cancelled while queued, or a redelivery of a job that already ended.
        log.info("job %s already %s; skipping", job_id, job.state)
        return {"job_id": job_id, "state": job.state, "skipped": True}
    job = jobs.start(job_id, worker)
    if job.attempts > 1:
        log.warning("job %s: delivery %d (a worker stopped during an earlier one)", job_id, job.attempts)
    if job.cancel_requested:
        jobs.finish(job_id, "cancelled", error=None)
        return {"job_id": job_id, "state": "cancelled"}
    return None


def _retrain(
    workspace: Workspace,
    job_id: str,
    image_dir: str,
    name: str,
    config: Dict[str, Any],
    progress: ProgressWriter,
    should_stop: CancelCheck,
) -> "RetrainResult":
    settings = workspace.settings
    configure_tensorflow(settings.tf_memory_growth)
    from poets.engine.model.config import TrainConfig
    from poets.engine.promotion import policy_of
    from poets.engine.retrain import retrain  # TensorFlow after fork

    # Checked at submit time too; again here for messages sent by other clients.
    train_config = TrainConfig.from_dict(dict(config or {}))
    train_config.validate(settings)
    return retrain(
        Path(image_dir),
        train_config,
        workspace.store,
        workspace.bottlenecks,
        settings.backbone_dir,
        name=name,
        job_id=job_id,
        summaries_dir=settings.logs_dir / name / job_id,
        progress=progress,
        should_stop=should_stop,
        threads=settings.decode_threads,
        max_pixels=settings.max_image_pixels,
        confine_to=dataset_confinement(settings, job_id, image_dir),
        dataset=submitted_scan(settings, job_id, image_dir, train_config),
        promote=policy_of(settings),
    )


def _ended(jobs: JobRecords, job_id: str, exc: Exception) -> Dict[str, Any]:
    """Record how ``exc`` ended the job (called while handling it, for the log's traceback)."""
    if isinstance(exc, Cancelled):
        log.info("job %s cancelled: %s", job_id, exc.detail)
        patiently(job_id, "its outcome", lambda: jobs.finish(job_id, "cancelled", error=None))
        return {"job_id": job_id, "state": "cancelled"}
    if isinstance(exc, PoetsError):
        detail = exc.detail
        log.warning("job %s failed: %s", job_id, detail)
    else:  # anything else is a bug or the machine; the record must say so
        clear = storage_error(exc)  # a read-only or full disk: say so, not "Internal error"
        if clear is not None:
            detail = clear.detail
            log.error("job %s failed: %s (%s)", job_id, detail, exc)
        else:
            log.exception("job %s failed unexpectedly", job_id)
            detail = "Internal error ({}: {}); see the worker log.".format(type(exc).__name__, exc)
    patiently(job_id, "its outcome", lambda: jobs.finish(job_id, "failed", error=detail))
    return {"job_id": job_id, "state": "failed", "error": detail}
