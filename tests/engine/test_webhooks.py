"""Webhooks: signed events to a real HTTP receiver, retries with back-off, an outbox that outlives
a restart, and bad URLs or dead receivers handled without an exception."""

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from poets.engine.errors import ConfigurationError
from poets.engine.webhooks import Deliverer, Outbox, check_urls, sign
from tests.net import free_port
from tests.waiting import wait_until

pytestmark = pytest.mark.unit
SECRET = "s3cret"


class Receiver:
    """A real HTTP server that records what it is sent and answers the statuses it is told to."""

    def __init__(self, port: int = 0) -> None:
        self.received: List[Dict[str, Any]] = []
        self.answers: List[int] = []  # statuses to give first; then 200
        self.delay_s = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(receiver.delay_s)
                receiver.received.append({"headers": dict(self.headers), "body": body})
                status = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.port = port or free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = "http://127.0.0.1:{}/hook".format(self.port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def _outbox(tmp_path: Path, *urls: str, **kw: Any) -> Outbox:
    return Outbox(tmp_path / "webhooks.sqlite3", urls, SECRET, **kw)


def test_events_arrive_signed_and_verify(tmp_path: Path, receiver: Receiver) -> None:
    outbox = _outbox(tmp_path, receiver.url)
    event_id = outbox.emit("version.held", {"name": "flowers", "version": 2, "reason": "worse"})
    assert outbox.deliver_due() == 1
    [got] = receiver.received
    body = got["body"]
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert got["headers"]["X-Poets-Signature"] == expected == sign(SECRET, body)
    assert got["headers"]["X-Poets-Event"] == "version.held"
    event = json.loads(body)
    assert event["event"] == "version.held" and event["id"] == event_id
    assert event["data"] == {"name": "flowers", "version": 2, "reason": "worse"}
    assert isinstance(event["created"], float)
    [delivery] = outbox.recent()
    assert (delivery["state"], delivery["attempts"], delivery["last_status"]) == ("delivered", 1, 200)


def test_failures_are_retried_with_back_off_then_delivered(tmp_path: Path, receiver: Receiver) -> None:
    receiver.answers = [500, 503]
    outbox = _outbox(tmp_path, receiver.url, backoff_s=10.0)
    outbox.emit("job.failed", {"job_id": "j1"})
    assert outbox.deliver_due() == 0
    [first] = outbox.recent()
    assert (first["state"], first["attempts"], first["last_status"]) == ("pending", 1, 500)
    assert first["next_at"] - first["updated"] == pytest.approx(10.0)
    assert outbox.deliver_due() == 0  # not due yet: nothing is sent
    assert len(receiver.received) == 1
    assert outbox.deliver_due(now=first["next_at"] + 0.01) == 0
    [second] = outbox.recent()
    assert (second["attempts"], second["last_error"]) == (2, "answered HTTP 503")
    assert second["next_at"] - second["updated"] == pytest.approx(20.0)  # doubled
    assert outbox.deliver_due(now=second["next_at"] + 0.01) == 1
    assert [json.loads(r["body"])["id"] for r in receiver.received] == [
        json.loads(receiver.received[0]["body"])["id"]
    ] * 3
    assert outbox.recent()[0]["state"] == "delivered"


def test_nothing_queued_is_lost_on_a_restart(tmp_path: Path) -> None:
    down = Receiver()
    down.close()  # the receiver is down: the first attempt fails
    outbox = _outbox(tmp_path, down.url, backoff_s=0.0)
    outbox.emit("job.succeeded", {"job_id": "j2", "version": 3})
    assert outbox.deliver_due() == 0
    [pending] = outbox.recent()
    assert pending["state"] == "pending" and "could not deliver" in pending["last_error"]
    del outbox  # the API restarts, and the receiver comes back

    back = Receiver(down.port)
    try:
        assert _outbox(tmp_path, down.url).deliver_due() == 1
        assert json.loads(back.received[0]["body"])["data"] == {"job_id": "j2", "version": 3}
    finally:
        back.close()


def test_a_pending_delivery_survives_a_restart_and_is_sent(tmp_path: Path, receiver: Receiver) -> None:
    receiver.answers = [502]
    outbox = _outbox(tmp_path, receiver.url, backoff_s=0.0)
    outbox.emit("drift.alert", {"name": "flowers", "psi": 0.4})
    assert outbox.deliver_due() == 0
    reopened = _outbox(tmp_path, receiver.url, backoff_s=0.0)  # a new process on the same outbox
    assert reopened.deliver_due() == 1
    assert len(receiver.received) == 2
    assert receiver.received[0]["body"] == receiver.received[1]["body"]  # the same signed body


def test_a_slow_receiver_times_out_into_the_log_and_gives_up_after_max_attempts(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.delay_s = 1.0
    outbox = _outbox(tmp_path, receiver.url, timeout_s=0.2, max_attempts=2, backoff_s=0.0)
    outbox.emit("job.failed", {"job_id": "j4"})
    outbox.deliver_due()
    outbox.deliver_due()
    [delivery] = outbox.recent()
    assert (delivery["state"], delivery["attempts"]) == ("failed", 2)
    assert "timed out" in delivery["last_error"]


def test_bad_urls_are_refused_at_start_up(tmp_path: Path) -> None:
    for bad in ("ftp://example.org/x", "example.org/hook", "http://", "file:///etc/passwd"):
        with pytest.raises(ConfigurationError, match="POETS_WEBHOOK_URLS"):
            check_urls([bad])
        with pytest.raises(ConfigurationError, match="POETS_WEBHOOK_URLS"):
            _outbox(tmp_path, bad)
    assert check_urls(["https://hooks.example.org/poets"]) == ("https://hooks.example.org/poets",)
    with pytest.raises(ValueError, match="unknown webhook event"):
        _outbox(tmp_path).emit("job.exploded", {})
    assert _outbox(tmp_path).emit("job.failed", {}) is None  # no URL: nothing queued


def test_the_deliverer_thread_sends_at_once_and_old_deliveries_are_pruned(
    tmp_path: Path, receiver: Receiver
) -> None:
    outbox = _outbox(tmp_path, receiver.url, keep=3)
    deliverer = Deliverer(outbox, poll_s=60.0)  # only an emit can wake it this soon
    deliverer.start()
    try:
        for number in range(5):
            outbox.emit("job.succeeded", {"job_id": str(number)})
        wait_until(lambda: len(receiver.received) == 5, 30, "five deliveries")
        wait_until(lambda: len(outbox.recent()) == 3, 30, "pruning to the last three")
    finally:
        deliverer.stop()
    assert not deliverer.is_alive()
