"""The Celery app that runs retraining jobs.

Built from :meth:`poets.engine.settings.Settings.celery_config`, the settings the API's
sender uses too: JSON only, late acknowledgement with requeue when a worker dies,
one job at a time per worker process, a visibility timeout longer than any job.
With ``POETS_BROKER_URL`` unset the broker is SQLite under ``$POETS_HOME/broker``
(no Redis needed on one machine); with a ``redis://`` URL the same tasks run on
Redis.

TensorFlow is initialised in the process that runs the tasks, never in a parent
that forks them: CUDA state does not survive ``fork()``, so a prefork child of a
parent that had touched the GPU hangs or fails. Hence the solo pool by default
(``poets worker``, ``celery -A worker.celery_app worker --pool solo``): the task
runs in the worker's own process, one job at a time, which is all one GPU can do
usefully anyway. With ``--pool prefork`` TensorFlow is set up in each child after
the fork (``worker_process_init``); this module and :mod:`worker.tasks` never import
TensorFlow at import time.
"""

import logging
import os
import socket
from typing import Any, List, Optional

from celery import Celery, signals

from poets.engine.runtime import configure_tensorflow
from poets.engine.settings import Settings

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
    return app


def worker_identity() -> str:
    """``host:pid`` of this process, recorded on the jobs it runs."""
    return "{}:{}".format(socket.gethostname(), os.getpid())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but someone else's
        return True
    return True


def recover_orphans(settings: Settings, celery: Celery) -> List[str]:
    """Requeue jobs left ``running`` by a dead worker process on this host.

    Redis redelivers a dead worker's unacknowledged job by itself (visibility
    timeout). kombu's SQLite transport does not: a message taken by a worker
    that is killed is gone. So on the embedded broker a starting worker looks for
    jobs whose recorded worker process on this machine no longer exists, and
    sends them again under the same job id (the job's publish is idempotent).
    """
    if settings.uses_redis:
        return []
    from poets.engine.store.jobs import RETRAIN_TASK, JobStore

    jobs = JobStore(settings.jobs_db)
    host = socket.gethostname()
    recovered = []
    for job in jobs.running():
        owner_host, _, pid = (job.worker or "").rpartition(":")
        if owner_host != host or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        if not job.params.get("image_dir"):
            jobs.finish(job.id, "failed", error="Its worker stopped and the job cannot be resent: "
                                               "its record has no image_dir. Submit it again.")
            continue
        if not jobs.requeue(job.id):
            continue
        kwargs = {"job_id": job.id, "image_dir": job.params.get("image_dir"), "name": job.name,
                  "config": job.params.get("config") or {}}
        celery.send_task(RETRAIN_TASK, kwargs=kwargs, task_id=job.id)
        log.warning("requeued job %s: its worker %s is gone", job.id, job.worker)
        recovered.append(job.id)
    return recovered


def _pool_name(pool: Any) -> str:
    if isinstance(pool, str):
        return pool.lower()
    return "{}.{}".format(getattr(pool, "__module__", ""), getattr(pool, "__name__", "")).lower()


@signals.worker_process_init.connect
def _init_child(**_: Any) -> None:
    """Prefork: each child sets TensorFlow up itself, after the fork."""
    configure_tensorflow(Settings.from_env().tf_memory_growth)


@signals.worker_ready.connect
def _recover(sender: Any = None, **_: Any) -> None:
    try:
        recover_orphans(Settings.from_env(), app)
    except Exception:  # recovery must never stop a worker from starting
        log.exception("could not recover jobs of dead workers")


@signals.worker_init.connect
def _init_main(sender: Any = None, **_: Any) -> None:
    """Solo/threads pool: the worker's own process runs the tasks; set up before the first job."""
    name = _pool_name(getattr(sender, "pool_cls", None))
    if any(pool in name for pool in _IN_PROCESS_POOLS):
        configure_tensorflow(Settings.from_env().tf_memory_growth)


app = create_app()
