"""Model events on Redis: "model NAME has a new current version", both ends of the protocol.

The worker (after a retrain) and an API process (after an activation) :func:`publish` an
event on :data:`EVENTS_CHANNEL`; every API process runs a :class:`Listener` that wakes its
model-store poller. Events only make a swap faster: the API also polls the store, so a lost
event delays a swap by at most ``POETS_MODEL_POLL_S``. With the embedded SQLite broker there
are no events at all.

Plain redis-py (imported on first use): the worker imports this without FastAPI, the API
without Celery.
"""

import contextlib
import json
import logging
import threading
from typing import Any, Callable, Iterator, NamedTuple, Optional

from poets.engine.settings import Settings

log = logging.getLogger(__name__)

# Redis pub/sub channel announcing a new current version ({"name": ..., "version": ...}).
EVENTS_CHANNEL = "poets:model-events"
# Longest wait for Redis when announcing: the caller (a request, a finished job) goes on regardless.
PUBLISH_TIMEOUT_S = 5.0
# The listener's back-off between reconnections, doubling from the first to the last.
FIRST_BACKOFF_S = 1.0
LAST_BACKOFF_S = 30.0


class ModelEvent(NamedTuple):
    name: str
    version: int


def encode(name: str, version: int) -> str:
    return json.dumps({"name": name, "version": int(version)})


def decode(data: Any) -> Optional[ModelEvent]:
    """The event in a message's data; None when it is not one (it still means "look")."""
    try:
        fields = json.loads(data)
        return ModelEvent(str(fields["name"]), int(fields["version"]))
    except (ValueError, TypeError, KeyError):
        return None


@contextlib.contextmanager
def connect(url: str, timeout_s: float, connect_timeout_s: Optional[float] = None) -> Iterator[Any]:
    """A Redis client for ``url``, closed on leaving (errors from redis-py pass through)."""
    import redis

    client = redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout_s if connect_timeout_s is None else connect_timeout_s,
        socket_timeout=timeout_s,
    )
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.close()


def publish(settings: Settings, name: str, version: int, timeout_s: float = PUBLISH_TIMEOUT_S) -> bool:
    """Announce that ``name`` has a new current version: True when Redis took the event.

    Best effort (it never raises): without Redis as broker there is nobody to tell, and a
    lost event is only a slower swap.
    """
    if not settings.uses_redis:
        return False
    try:
        with connect(str(settings.broker_url), timeout_s) as client:
            client.publish(EVENTS_CHANNEL, encode(name, version))
    except Exception as exc:
        log.warning("could not announce %s version %s on %s: %s", name, version, EVENTS_CHANNEL, exc)
        return False
    return True


class Listener:
    """Hears model events until stopped; reconnects with back-off while Redis is away.

    ``on_event`` gets each event, and None after every (re)connection: events may have
    been missed meanwhile, so the receiver should look at the store.
    """

    def __init__(self, url: str, on_event: Callable[[Optional[ModelEvent]], None], poll_s: float) -> None:
        self.url = url
        self.on_event = on_event
        self.poll_s = poll_s  # only said in the warning: what covers for the events meanwhile
        self.connected = False

    def run(self, stop: threading.Event) -> None:
        """Listen until ``stop`` is set (run it in a thread of its own)."""
        backoff = FIRST_BACKOFF_S
        warned = False
        while not stop.is_set():
            try:
                with connect(self.url, 10.0, connect_timeout_s=3.0) as client:
                    pubsub = client.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(EVENTS_CHANNEL)
                    self.connected = True
                    if warned:
                        log.info("model events: reconnected to Redis")
                    warned = False
                    backoff = FIRST_BACKOFF_S
                    self.on_event(None)
                    self._receive(pubsub, stop)
            except Exception as exc:
                self.connected = False
                if not warned:
                    log.warning(
                        "model events: Redis unreachable (%s); polling the store every %ss and retrying",
                        exc,
                        self.poll_s,
                    )
                    warned = True
                stop.wait(backoff)
                backoff = min(backoff * 2, LAST_BACKOFF_S)

    def _receive(self, pubsub: Any, stop: threading.Event) -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=1.0)
            if message and message.get("type") == "message":
                log.info("model event: %s", message.get("data"))
                self.on_event(decode(message.get("data")))
