"""Model events: what the worker and the API publish is what every API process hears
(a real redis-server), and Redis going away only costs a warning."""

import logging
import queue
import threading
from pathlib import Path
from typing import Iterator, Optional

import pytest

from poets.engine.settings import Settings
from poets.engine.store import events
from tests.net import free_port
from tests.worker import helpers

# Longest wait for something that happens at once on a working machine (never a timing assert).
WAIT_S = 30.0


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from helpers.redis_server(tmp_path_factory.mktemp("redis"))


def _settings(tmp_path: Path, broker_url: Optional[str]) -> Settings:
    return Settings(home=tmp_path, broker_url=broker_url)


def _unreachable() -> str:
    return "redis://127.0.0.1:{}/0".format(free_port())


class Heard:
    """A listener on its own thread, and what it heard, in order."""

    def __init__(self, url: str) -> None:
        self.events: queue.Queue[Optional[events.ModelEvent]] = queue.Queue()
        self.listener = events.Listener(url, self.events.put, poll_s=1.0)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.listener.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def next(self) -> Optional[events.ModelEvent]:
        return self.events.get(timeout=WAIT_S)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive()


def test_a_published_event_is_heard(redis_url: str, tmp_path: Path) -> None:
    heard = Heard(redis_url)
    try:
        assert heard.next() is None  # connected: look at the store once, events may have been missed
        assert heard.listener.connected
        assert events.publish(_settings(tmp_path, redis_url), "flowers", 7)
        assert heard.next() == events.ModelEvent("flowers", 7)
    finally:
        heard.close()


def test_the_wire_format_is_name_and_version(redis_url: str, tmp_path: Path) -> None:
    """What older API processes and TF Serving-side tools subscribe to: plain JSON."""
    import json

    import redis

    pubsub = redis.Redis.from_url(redis_url).pubsub()
    pubsub.subscribe(events.EVENTS_CHANNEL)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    events.publish(_settings(tmp_path, redis_url), "flowers", 7)
    message = pubsub.get_message(timeout=5)
    assert message is not None and json.loads(message["data"]) == {"name": "flowers", "version": 7}
    pubsub.close()


def test_a_message_that_is_not_an_event_still_wakes_the_listener(redis_url: str) -> None:
    import redis

    heard = Heard(redis_url)
    try:
        assert heard.next() is None
        client = redis.Redis.from_url(redis_url)
        client.publish(events.EVENTS_CHANNEL, "not json")
        client.close()
        assert heard.next() is None
    finally:
        heard.close()


def test_unreachable_redis_only_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=events.log.name):
        assert not events.publish(_settings(tmp_path, _unreachable()), "flowers", 1)  # no exception
    warnings = [r for r in caplog.records if r.name == events.log.name and r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert "could not announce flowers version 1" in warnings[0].getMessage()


def test_without_redis_nothing_is_published(tmp_path: Path) -> None:
    assert not events.publish(_settings(tmp_path, None), "flowers", 1)


def test_a_listener_without_redis_keeps_retrying_until_stopped(caplog: pytest.LogCaptureFixture) -> None:
    heard = Heard(_unreachable())
    heard.close()
    assert not heard.listener.connected
    assert heard.events.empty()
    assert "Redis unreachable" in caplog.text


@pytest.mark.parametrize(
    "data, event",
    [
        (b'{"name": "a", "version": 2}', events.ModelEvent("a", 2)),
        ('{"name": "a", "version": "2"}', events.ModelEvent("a", 2)),
        (b"{}", None),
        (b"[]", None),
        (b"\xff", None),
        (None, None),
    ],
)
def test_decode(data: object, event: Optional[events.ModelEvent]) -> None:
    assert events.decode(data) == event
