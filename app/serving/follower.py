"""Following the model store: when the registry looks at it again.

A background thread calls ``sync`` every ``POETS_MODEL_POLL_S``; with Redis as broker, a second
thread listens for model events (:mod:`poets.engine.store.events`) and wakes the poller at once
(it reconnects with back-off if Redis goes away; polling converges regardless).
"""

import logging
import threading
from typing import Callable, List, Optional

from poets.engine.settings import Settings
from poets.engine.store import events

log = logging.getLogger(__name__)


class StoreFollower:
    """Runs ``sync`` on a thread of its own, every poll interval and at once on a model event."""

    def __init__(self, settings: Settings, sync: Callable[[], None]) -> None:
        self.settings = settings
        self._sync = sync
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: List[threading.Thread] = []
        self._listener: Optional[events.Listener] = None

    @property
    def redis_connected(self) -> bool:
        return self._listener is not None and self._listener.connected

    def start(self) -> None:
        """Poll (and listen to Redis when it is the broker) until :meth:`stop`."""
        self._stop.clear()
        self._threads = [threading.Thread(target=self._poll, name="model-poller", daemon=True)]
        if self.settings.uses_redis:
            self._listener = events.Listener(
                str(self.settings.broker_url), self._on_event, self.settings.model_poll_s
            )
            self._threads.append(
                threading.Thread(
                    target=self._listener.run, args=(self._stop,), name="model-events", daemon=True
                )
            )
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        """Sync soon, without waiting for the poll interval."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def _on_event(self, event: Optional[events.ModelEvent]) -> None:
        self._wake.set()  # any event, or a (re)connection after which events may have been missed

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.model_poll_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self._sync()
            except Exception:  # never let the poller die
                log.exception("model store poll failed")
