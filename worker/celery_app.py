"""The Celery app that runs retraining jobs.

Built from :meth:`poets.engine.settings.Settings.celery_config`, the settings the API's
sender uses too: JSON only, late acknowledgement with requeue when a worker dies,
one job at a time per worker process, a visibility timeout longer than any job.
With ``POETS_BROKER_URL`` unset the broker is SQLite under ``$POETS_HOME/broker``
(no Redis needed on one machine); with a ``redis://`` URL the same tasks run on
Redis.

TensorFlow is initialised in the process that runs the tasks, never in a parent
that forks them: CUDA state does not survive ``fork()``, so a prefork child of a
parent that had touched the GPU hangs or fails. ``poets worker`` uses the prefork
pool with one child by default: the parent never imports TensorFlow (this module and
:mod:`worker.tasks` do not at import time); the child sets it up after the fork
(``worker_process_init``) and runs the jobs, one at a time. The child is replaced by
a fresh one after ``POETS_WORKER_MAX_TASKS_PER_CHILD`` jobs or once its memory passed
``POETS_WORKER_MAX_MEMORY_MB``, each time after its job has ended and been
acknowledged, so memory TensorFlow keeps between jobs goes back to the system and no
job is lost. The solo and threads pools run jobs in the worker's own process and
never recycle it.

A job's record names the process running it (host, pid and a random instance id
drawn when the process starts: PIDs repeat across container restarts) and carries a
heartbeat that process refreshes every ``POETS_WORKER_HEARTBEAT_S``. Every worker
looks for running jobs whose heartbeat stopped (``POETS_WORKER_LOST_AFTER_S``) and
sends them again (:func:`recover_orphans`).
"""

import ctypes
import logging
import os
import re
import signal
import socket
import threading
import time
import uuid
from typing import Any, Dict, List, Optional

from celery import Celery, signals

from poets.engine.errors import Conflict, StoreUnavailable
from poets.engine.runtime import configure_tensorflow
from poets.engine.settings import Settings
from poets.engine.store.jobs import POLICY_TASK, RETRAIN_TASK, JobRecords

log = logging.getLogger(__name__)

# Pools whose tasks run inside the worker's main process (no fork after start).
_IN_PROCESS_POOLS = ("solo", "threads", "thread")


def create_app(settings: Optional[Settings] = None) -> Celery:
    """A Celery app for ``settings`` (default: from the environment)."""
    settings = settings or Settings.from_env()
    if not settings.broker_url:
        # The embedded broker and result backend are SQLite files; SQLite creates
        # files but not folders.
        settings.broker_dir.mkdir(parents=True, exist_ok=True)
    app = Celery("poets", include=["worker.tasks"])
    app.conf.update(settings.celery_config())
    app.conf.update(worker_config(settings))
    app.conf.update(beat_config(settings))
    return app


def beat_config(settings: Settings) -> Dict[str, Any]:
    """Celery beat's schedule: the retrain policies, every POETS_POLICY_CHECK_S. Exactly one
    beat runs per deployment (``poets up`` embeds it in its worker; compose runs ``poets beat``)."""
    return {
        "beat_schedule": {
            "retrain-policies": {
                "task": POLICY_TASK,
                "schedule": settings.policy_check_s,
                "options": {"queue": "poets", "expires": settings.policy_check_s},
            }
        },
        "beat_schedule_filename": str(settings.home / "beat-schedule"),
    }


def worker_config(settings: Settings) -> Dict[str, Any]:
    """Celery's child-recycling settings (prefork pool) from Poets' settings."""
    return {
        "worker_max_tasks_per_child": settings.worker_max_tasks_per_child or None,
        # Celery counts KiB.
        "worker_max_memory_per_child": settings.worker_max_memory_mb * 1024 or None,
    }


_instance: Dict[int, str] = {}  # pid -> instance id: a forked child draws its own


def worker_identity() -> str:
    """``host:pid:instance`` of this process, recorded on the jobs it runs.

    The instance id is random, drawn once per process (a forked child draws its
    own): a restarted container reuses PIDs, so host and pid alone do not tell two
    worker processes apart.
    """
    pid = os.getpid()
    instance = _instance.setdefault(pid, uuid.uuid4().hex[:12])
    return "{}:{}:{}".format(socket.gethostname(), pid, instance)


def recover_orphans(settings: Settings, celery: Celery, jobs: Optional[JobRecords] = None) -> List[str]:
    """Requeue jobs left ``running`` by a worker process that stopped sending heartbeats.

    kombu's SQLite transport (the embedded broker) never redelivers a message whose
    worker was killed; Redis does, but only after the visibility timeout (hours).
    So every worker looks for jobs whose heartbeat is older than
    ``POETS_WORKER_LOST_AFTER_S`` and sends them again under the same job id (the
    job's publish is idempotent; a late redelivery of the old message finds the
    job ended and skips it). A job whose cancellation was asked for is marked
    cancelled instead. ``jobs``: the records to look in (default: the settings' own).
    """
    from poets.engine.workspace import Workspace

    jobs = jobs or Workspace(settings).jobs
    lost_after_s = settings.worker_lost_after_s
    recovered = []
    for job in jobs.lost(lost_after_s):
        if job.cancel_requested:
            try:
                if jobs.request_cancel(job.id, lost_after_s).state == "cancelled":
                    log.warning("job %s cancelled: its worker %s is gone", job.id, job.worker)
            except Conflict:  # it ended meanwhile
                pass
            continue
        if not job.params.get("image_dir"):
            jobs.finish(
                job.id,
                "failed",
                error="Its worker stopped and the job cannot be resent: "
                "its record has no image_dir. Submit it again.",
            )
            continue
        if not jobs.requeue(job.id, lost_after_s):
            continue
        kwargs = {
            "job_id": job.id,
            "image_dir": job.params.get("image_dir"),
            "name": job.name,
            "config": job.params.get("config") or {},
        }
        try:
            celery.send_task(RETRAIN_TASK, kwargs=kwargs, task_id=job.id)
        except Exception:
            # Broker down: leave it running-and-lost, so the next round tries again.
            jobs.update(job.id, state="running", worker=job.worker)
            raise
        log.warning("requeued job %s: its worker %s is gone", job.id, job.worker)
        recovered.append(job.id)
    return recovered


def _pool_name(pool: Any) -> str:
    if isinstance(pool, str):
        return pool.lower()
    return "{}.{}".format(getattr(pool, "__module__", ""), getattr(pool, "__name__", "")).lower()


def _die_with_parent() -> None:
    """Make this prefork child die with the worker's main process.

    A child left behind by a killed parent would finish its job with nobody to
    acknowledge it, while the next worker runs the same job again.
    """
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0:  # PR_SET_PDEATHSIG
            if os.getppid() == parent:
                return
            os._exit(1)  # the parent died before the call: nobody left to serve
    except (OSError, AttributeError):
        pass

    def watch() -> None:  # without prctl (not Linux): look every second
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


@signals.worker_process_init.connect
def _init_child(**_: Any) -> None:
    """Prefork: each child sets TensorFlow up itself, after the fork."""
    _die_with_parent()
    configure_tensorflow(Settings.from_env().tf_memory_growth)


class OrphanWatch:
    """Runs :func:`recover_orphans` and removes stale staging folders of the model store,
    what crashed imports and deletes left (:meth:`Workspace.clean_leftovers`) and the
    leftover inputs of ended jobs (:meth:`poets.engine.jobs.inputs.JobInputs.sweep`)
    when the worker is ready, then every heartbeat interval."""

    def __init__(self, settings: Settings, celery: Celery) -> None:
        self.settings = settings
        self.celery = celery
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="orphan-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from poets.engine.workspace import Workspace

        workspace = Workspace(self.settings)
        store = workspace.store
        unreachable = False  # warned once per outage of the job records
        while True:
            try:
                recover_orphans(self.settings, self.celery, workspace.jobs)
                if unreachable:
                    log.info("job records reachable again: looking for jobs of dead workers")
                    unreachable = False
                removed = store.clean_staging()
                if removed:
                    log.info("removed %d stale staging folder(s) of the model store", len(removed))
            except StoreUnavailable as exc:  # Redis restarting: look again next round
                if not unreachable:
                    log.warning("could not recover jobs of dead workers: %s", exc.detail)
                unreachable = True
            except Exception:  # never stop looking: the job store or broker may come back
                log.exception("could not recover jobs of dead workers")
            try:
                removed = workspace.clean_leftovers()
                if removed:
                    log.info("removed %d leftover(s) of crashed dataset imports and deletes", len(removed))
            except Exception:  # a full or read-only disk: try again next time
                log.exception("could not remove what crashed dataset imports left")
            try:
                removed = workspace.job_inputs.sweep(workspace.jobs)
                if removed:
                    log.info("removed %d leftover input(s) of ended or unrecorded jobs", len(removed))
            except StoreUnavailable as exc:  # the bucket is down: try again next time
                log.warning("could not remove the leftover inputs of ended jobs: %s", exc.detail)
            except Exception:  # the job store is down: try again next time
                log.exception("could not remove the leftover inputs of ended jobs")
            if self._stop.wait(self.settings.worker_heartbeat_s):
                return

    def stop(self) -> None:
        self._stop.set()


_watch: List[Any] = []  # what the worker's own process runs beside the pool: stopped at shutdown


@signals.worker_ready.connect
def _recover(sender: Any = None, **_: Any) -> None:
    settings = Settings.from_env()
    watch = OrphanWatch(settings, app)
    _watch.append(watch)
    watch.start()
    if settings.webhook_urls:
        # Jobs queue their events (job.succeeded, version.promoted...) in this machine's
        # outbox; with no API on this machine's POETS_HOME, nobody else would send them.
        from poets.engine.webhooks import Deliverer
        from poets.engine.workspace import Workspace

        deliverer = Deliverer(Workspace(settings).webhooks)
        _watch.append(deliverer)
        deliverer.start()


@signals.worker_shutdown.connect
def _stop_recovering(sender: Any = None, **_: Any) -> None:
    while _watch:
        _watch.pop().stop()


class JobOutcomeFilter(logging.Filter):
    """Celery logs "Task ... succeeded" whenever a task returns, and a retraining task
    always returns (its outcome is in the job record): say the job's own state instead."""

    _STATE = re.compile(r"'state': '(\w+)'")

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, dict) and args.get("name") == RETRAIN_TASK and "succeeded in" in str(record.msg):
            found = self._STATE.search(str(args.get("return_value")))
            state = found.group(1) if found else "unknown"
            if state != "succeeded":
                record.msg = str(record.msg).replace("succeeded in", "ended, job {}, in".format(state))
        return True


logging.getLogger("celery.app.trace").addFilter(JobOutcomeFilter())


@signals.worker_init.connect
def _init_main(sender: Any = None, **_: Any) -> None:
    """Solo/threads pool: the worker's own process runs the tasks; set up before the first job."""
    name = _pool_name(getattr(sender, "pool_cls", None))
    if any(pool in name for pool in _IN_PROCESS_POOLS):
        configure_tensorflow(Settings.from_env().tf_memory_growth)


app = create_app()
