"""Celery tasks: thin wrappers that run :func:`poets.engine.retrain.retrain` for a job record.

The job record (:class:`poets.engine.store.jobs.JobStore`) is the source of truth the API shows;
Celery only carries the message. Every outcome ends in the record: a task never
raises, so a bad job cannot take a worker down, and a job is never retried for
bad input. A redelivered message (worker killed mid-job; messages are
acknowledged late) runs again under the same job id, and ``retrain`` returns the
version that job already published instead of publishing a second one.
"""

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

from poets.engine.errors import Cancelled, NotFound, PoetsError
from poets.engine.runtime import configure_tensorflow
from poets.engine.settings import Settings
from poets.engine.store.health import storage_error
from poets.engine.store.jobs import FINISHED, RETRAIN_TASK, JobStore
from poets.engine.workspace import Workspace
from worker.celery_app import app, worker_identity
from worker.history import TrainingHistory

if TYPE_CHECKING:
    from poets.engine.data.datasets import Dataset
    from poets.engine.model.config import TrainConfig

log = logging.getLogger(__name__)

# Most progress writes per second to the job record (phase changes always go through).
PROGRESS_WRITES_PER_S = 5.0
# How often the job record is read to see whether the owner cancelled the job.
CANCEL_POLL_S = 0.5


class ProgressWriter:
    """Turns retrain's progress events into throttled job-record updates."""

    def __init__(
        self,
        jobs: JobStore,
        job_id: str,
        min_interval_s: float = 1.0 / PROGRESS_WRITES_PER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.phase: Optional[str] = None
        self.writes = 0
        self._last = float("-inf")
        self._pending: Optional[Dict[str, Any]] = None
        self.history = TrainingHistory()  # the curves: kept in every later write

    def __call__(self, event: Dict[str, Any]) -> None:
        event = _jsonable(event)
        phase = event.pop("phase", None) or self.phase
        if phase == "training" and "step" in event:
            self.history.add(event)
        now = self.clock()
        if phase == self.phase and now - self._last < self.min_interval_s and not _complete(event):
            self._pending = event
            return
        if phase != self.phase and self._pending is not None:
            self._write(self.phase, self._pending)  # the previous phase's last word
        self.phase = phase
        self._write(phase, event)
        self._last = now

    def flush(self) -> None:
        if self._pending is not None:
            self._write(self.phase, self._pending)

    def _write(self, phase: Optional[str], event: Dict[str, Any]) -> None:
        self._pending = None
        self.writes += 1
        if len(self.history):
            event = dict(event, history=self.history.points())
        self.jobs.update(self.job_id, phase=phase, progress=event)


class Heartbeat:
    """Refreshes the running job's heartbeat every ``interval_s`` on a thread of its own.

    Other workers requeue a job whose heartbeat stopped (its process died). ``lost``
    turns true when the record is no longer this process's (it was requeued after a
    long stall, or ended): the job must then stop and leave the record alone.
    """

    def __init__(self, jobs: JobStore, job_id: str, worker: str, interval_s: float) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self.worker = worker
        self.interval_s = max(interval_s, 0.05)
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(10.0)

    def _run(self) -> None:
        beating = False  # the first beats may come before this delivery has started the job
        while not self._stop.wait(self.interval_s):
            try:
                if self.jobs.beat(self.job_id, self.worker):
                    beating = True
                    continue
                if not beating or self._stop.is_set():
                    continue
                job = self.jobs.get(self.job_id)
                if job.worker == self.worker and job.state in FINISHED:
                    return  # this process has just finished it
                log.warning(
                    "job %s is no longer run by this process (%s by %s); stopping it",
                    self.job_id,
                    job.state,
                    job.worker,
                )
                self.lost = True
                return
            except Exception:  # a busy or briefly unreachable job store: beat again later
                log.exception("job %s: heartbeat not written", self.job_id)


class CancelCheck:
    """``should_stop`` for retrain: the record's cancel flag, read at most every ``interval_s``
    (and true at once when ``heartbeat`` lost the job to another worker)."""

    def __init__(
        self,
        jobs: JobStore,
        job_id: str,
        interval_s: float = CANCEL_POLL_S,
        heartbeat: Optional[Heartbeat] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self.interval_s = interval_s
        self.heartbeat = heartbeat
        self.clock = clock  # injectable, as in ProgressWriter, so tests need no real waits
        self._checked = float("-inf")
        self._cancelled = False
        self._lock = threading.Lock()  # bottlenecks are computed on several threads

    def __call__(self) -> bool:
        if self.heartbeat is not None and self.heartbeat.lost:
            return True
        with self._lock:
            now = self.clock()
            if not self._cancelled and now - self._checked >= self.interval_s:
                self._checked = now
                self._cancelled = self.jobs.cancel_requested(self.job_id)
            return self._cancelled


def _complete(event: Dict[str, Any]) -> bool:
    """The last event of a counted phase, which must not be dropped by the throttle."""
    for done, total in (("done", "total"), ("step", "steps")):
        if done in event and event.get(done) == event.get(total):
            return True
    return False


def _jsonable(value: Any) -> Any:
    """Plain JSON types (numpy scalars, paths...) for the record."""
    return json.loads(json.dumps(value, default=_to_plain))


def _to_plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def publish_event(settings: Settings, name: str, version: int) -> None:
    """Tell every API process that ``name`` has a new current version (Redis only).

    Best effort: the API also polls the model store, so a lost notice only delays
    the swap by ``POETS_MODEL_POLL_S``.
    """
    if not settings.uses_redis:
        return
    import redis

    from poets.engine.store.models import EVENTS_CHANNEL  # poets.engine.store.models imports TensorFlow

    try:
        client = redis.Redis.from_url(str(settings.broker_url), socket_timeout=5, socket_connect_timeout=5)
        try:
            client.publish(EVENTS_CHANNEL, json.dumps({"name": name, "version": version}))
        finally:
            client.close()
    except redis.RedisError as exc:
        log.warning("could not announce %s version %s on %s: %s", name, version, EVENTS_CHANNEL, exc)


def dataset_confinement(settings: Settings, job_id: str, image_dir: str) -> Path:
    """What no entry of the job's dataset may lead out of through a symbolic link (checked
    again here: a link may be swapped in after submit): the job's own folder for an upload
    or a ``dataset=NAME`` snapshot, else POETS_DATA_ROOT, else (a message sent by hand to a
    worker without a data root) the dataset folder itself."""
    own = os.path.abspath(str(settings.uploads_dir / job_id))
    path = os.path.abspath(image_dir)
    if path == own or path.startswith(own + os.sep):
        return Path(own)
    if settings.data_root is not None:
        return Path(str(settings.data_root))
    return Path(path)


def submitted_scan(
    settings: Settings, job_id: str, image_dir: str, config: "TrainConfig"
) -> Optional["Dataset"]:
    """The scan POST /retrain kept beside the job's own copy (an upload, a ``dataset=NAME``
    snapshot: nothing changes it after submit), so the job does not scan it again; None when
    there is none or it no longer fits. A folder in POETS_DATA_ROOT is always scanned again:
    images may be added, removed or replaced (or a link swapped in) between submit and run."""
    from poets.engine.data import datasets

    own = settings.uploads_dir / job_id
    if dataset_confinement(settings, job_id, image_dir) != Path(os.path.abspath(str(own))):
        return None
    return datasets.Dataset.load(
        own / datasets.SCAN_FILE,
        Path(image_dir),
        config.testing_percentage,
        config.validation_percentage,
        settings.max_image_pixels,
    )


def keep_misclassified(
    settings: Settings, job_id: str, dataset_root: Path, confine_to: Path, summary: Dict[str, Any]
) -> None:
    """Copy the listed misclassified images beside the job (before its upload is deleted) and
    give each entry of ``summary`` its ``image`` URL. Best effort: the version is published."""
    from poets.engine.store.misclassified import MisclassifiedImages

    metrics = summary.get("metrics") or {}
    entries = metrics.get("misclassified") or []
    if not entries:
        return
    try:
        metrics["misclassified"] = MisclassifiedImages.from_settings(settings).keep(
            job_id, dataset_root, entries, confine_to
        )
    except Exception:  # a full disk must not fail a job whose version is published
        log.exception("job %s: misclassified images not kept", job_id)
        metrics["misclassified"] = [dict(entry, image=None) for entry in entries]


def run_job(
    settings: Settings, job_id: str, image_dir: str, name: str, config: Dict[str, Any]
) -> Dict[str, Any]:
    """Run one delivery of a job, then drop its uploaded dataset once the job has ended."""
    workspace = Workspace(settings)
    with Heartbeat(workspace.jobs, job_id, worker_identity(), settings.worker_heartbeat_s) as heartbeat:
        outcome = _run_job(workspace, job_id, image_dir, name, config, heartbeat)
    if outcome.get("state") in FINISHED:
        # Only after a final state: a redelivered job still needs its images.
        upload = settings.uploads_dir / job_id
        if upload.is_dir():
            shutil.rmtree(str(upload), ignore_errors=True)
    return outcome


def _run_job(
    workspace: Workspace,
    job_id: str,
    image_dir: str,
    name: str,
    config: Dict[str, Any],
    heartbeat: Optional[Heartbeat] = None,
) -> Dict[str, Any]:
    """Run one delivery of a retraining job; returns what the task returns (JSON).

    Every outcome is written to the job record: ``succeeded`` with the version and
    the summary, ``cancelled``, or ``failed`` with a detail the user can act on.
    """
    settings = workspace.settings
    jobs = workspace.jobs
    try:
        job = jobs.get(job_id)
    except NotFound:
        # Sent without a record (by hand, or an old API): make one so it is visible.
        job = jobs.create(name, {"image_dir": image_dir, "config": config}, job_id=job_id)
    if job.state in FINISHED:
        # Cancelled while queued, or a redelivery of a job that already ended.
        log.info("job %s already %s; skipping", job_id, job.state)
        return {"job_id": job_id, "state": job.state, "skipped": True}
    job = jobs.start(job_id, worker_identity())
    if job.attempts > 1:
        log.warning("job %s: delivery %d (a worker stopped during an earlier one)", job_id, job.attempts)
    if job.cancel_requested:
        jobs.finish(job_id, "cancelled", error=None)
        return {"job_id": job_id, "state": "cancelled"}

    progress = ProgressWriter(jobs, job_id)
    try:
        configure_tensorflow(settings.tf_memory_growth)
        from poets.engine.model.config import TrainConfig
        from poets.engine.retrain import retrain  # TensorFlow after fork

        # Checked at submit time too; again here for messages sent by other clients.
        train_config = TrainConfig.from_dict(dict(config or {}))
        train_config.validate(settings)
        confine_to = dataset_confinement(settings, job_id, image_dir)
        result = retrain(
            Path(image_dir),
            train_config,
            workspace.store,
            workspace.bottlenecks,
            settings.backbone_dir,
            name=name,
            job_id=job_id,
            summaries_dir=settings.logs_dir / name / job_id,
            progress=progress,
            should_stop=CancelCheck(jobs, job_id, heartbeat=heartbeat),
            threads=settings.decode_threads,
            max_pixels=settings.max_image_pixels,
            confine_to=confine_to,
            dataset=submitted_scan(settings, job_id, image_dir, train_config),
        )
    except Cancelled as exc:
        if heartbeat is not None and heartbeat.lost:  # another delivery owns the record now
            return {"job_id": job_id, "state": "superseded"}
        progress.flush()
        log.info("job %s cancelled: %s", job_id, exc.detail)
        jobs.finish(job_id, "cancelled", error=None)
        return {"job_id": job_id, "state": "cancelled"}
    except PoetsError as exc:
        progress.flush()
        log.warning("job %s failed: %s", job_id, exc.detail)
        jobs.finish(job_id, "failed", error=exc.detail)
        return {"job_id": job_id, "state": "failed", "error": exc.detail}
    except Exception as exc:  # anything else is a bug or the machine; the record must say so
        progress.flush()
        clear = storage_error(exc)  # a read-only or full disk: say so, not "Internal error"
        if clear is not None:
            log.error("job %s failed: %s (%s)", job_id, clear.detail, exc)
            jobs.finish(job_id, "failed", error=clear.detail)
            return {"job_id": job_id, "state": "failed", "error": clear.detail}
        log.exception("job %s failed unexpectedly", job_id)
        detail = "Internal error ({}: {}); see the worker log.".format(type(exc).__name__, exc)
        jobs.finish(job_id, "failed", error=detail)
        return {"job_id": job_id, "state": "failed", "error": detail}
    summary = _jsonable(result.summary(settings.max_listed_files))
    keep_misclassified(settings, job_id, Path(image_dir), confine_to, summary)
    progress.flush()
    jobs.finish(job_id, "succeeded", phase="published", version=result.version, result=summary, error=None)
    publish_event(settings, result.name, result.version)
    log.info("job %s published %s version %s", job_id, result.name, result.version)
    return {"job_id": job_id, "state": "succeeded", "name": result.name, "version": result.version}


@app.task(name=RETRAIN_TASK, bind=True)
def retrain_task(
    self: Any, job_id: str, image_dir: str, name: str, config: Optional[Dict[str, Any]] = None
) -> Dict[str, Any]:
    """Celery entry point: ``send_task(RETRAIN_TASK, kwargs={job_id, image_dir, name, config})``."""
    if getattr(self.request, "delivery_info", None) and self.request.delivery_info.get("redelivered"):
        log.warning("job %s was redelivered", job_id)
    return run_job(Settings.from_env(), job_id, image_dir, name, config or {})
