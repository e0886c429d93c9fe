"""Sending retraining jobs to Celery by task name; the API never imports the worker.

The Celery app here only sends. Publishing uses a short retry policy and short
connection timeouts, so a request answers within a few seconds when the broker is
down instead of hanging on Celery's default of retrying for minutes.
"""

import contextlib
import logging
import time
from typing import Any, Dict, Optional, Tuple

from poets.engine.errors import Unavailable
from poets.engine.settings import Settings
from poets.engine.store import events
from poets.engine.store.jobs import RETRAIN_TASK

log = logging.getLogger(__name__)

QUEUE_NAME = "poets"
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}


def _describe_broker(settings: Settings) -> str:
    url = settings.celery_broker_url
    if "@" in url:  # never show a password
        scheme, _, rest = url.partition("://")
        url = "{}://***@{}".format(scheme, rest.rpartition("@")[2])
    return url


class JobQueue:
    """Sends retraining jobs to the broker and checks that it is reachable."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._celery: Any = None
        self._ping_cache: Tuple[float, Optional[str]] = (0.0, None)

    @property
    def celery(self) -> Any:
        if self._celery is None:
            from celery import Celery

            if not self.settings.broker_url:
                self.settings.broker_dir.mkdir(parents=True, exist_ok=True)
            config: Dict[str, Any] = dict(self.settings.celery_config())
            if self.settings.uses_redis:
                transport = dict(config.get("broker_transport_options") or {})
                transport.update(
                    {
                        "socket_connect_timeout": 2,
                        "socket_timeout": 5,
                        "max_retries": PUBLISH_RETRY["max_retries"],
                    }
                )
            else:
                # kombu's SQLAlchemy transport hands its options to create_engine(), which
                # refuses Redis-only ones such as visibility_timeout.
                transport = {}
            config.update(
                {
                    "broker_transport_options": transport,
                    "broker_connection_timeout": 2,
                    "broker_connection_retry": False,
                    "broker_connection_max_retries": 1,
                    "task_publish_retry": True,
                    "task_publish_retry_policy": PUBLISH_RETRY,
                }
            )
            app = Celery("poets-api", set_as_current=False)
            app.conf.update(config)
            self._celery = app
        return self._celery

    def send_retrain(self, job_id: str, image_dir: str, name: str, config: Dict[str, Any]) -> None:
        """Publish one job (blocking: call it in a thread).

        Raises:
            Unavailable: the broker cannot be reached.
        """
        try:
            self.celery.send_task(
                RETRAIN_TASK,
                kwargs={"job_id": job_id, "image_dir": image_dir, "name": name, "config": config},
                task_id=job_id,
                queue=QUEUE_NAME,
                retry=True,
                retry_policy=PUBLISH_RETRY,
            )
        except Exception as exc:
            log.warning("cannot enqueue job %s on %s: %s", job_id, _describe_broker(self.settings), exc)
            raise Unavailable(
                "The job queue (broker {}) is unreachable: {}. Check that Redis is "
                "running and POETS_BROKER_URL is right, then retry.".format(
                    _describe_broker(self.settings), type(exc).__name__
                )
            ) from exc

    def ping(self, max_age_s: float = 2.0) -> Optional[str]:
        """None when the broker is reachable, else why not (cached briefly; blocking)."""
        checked, reason = self._ping_cache
        if time.monotonic() - checked < max_age_s:
            return reason
        reason = self._check()
        self._ping_cache = (time.monotonic(), reason)
        return reason

    def _check(self) -> Optional[str]:
        try:
            if self.settings.uses_redis:
                with events.connect(str(self.settings.broker_url), timeout_s=2.0) as client:
                    client.ping()
            else:
                with self.celery.connection_for_write() as connection:
                    connection.ensure_connection(max_retries=1)
        except Exception as exc:
            return "broker {} unreachable: {}".format(_describe_broker(self.settings), exc)
        return None

    def close(self) -> None:
        if self._celery is not None:
            with contextlib.suppress(Exception):
                self._celery.close()
            self._celery = None
