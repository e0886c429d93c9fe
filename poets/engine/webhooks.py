"""Webhooks: events told to other systems, signed, retried, and never lost on a restart.

Each event is a JSON POST ``{"event": TYPE, "id": EVENT_ID, "created": UNIX_TIME, "data": {...}}``
to every configured URL, with ``X-Poets-Signature: sha256=<hex HMAC-SHA256 of the body>`` as the
well-known services sign theirs, ``X-Poets-Event`` and ``X-Poets-Delivery``. Emitting only adds
rows to an outbox (SQLite under ``$POETS_HOME``, one row per event and URL), so it never blocks
``/label`` or a job; a :class:`Deliverer` thread in the API sends them, retrying with exponential
back-off, and what a restart interrupted is sent by the next one. Several processes may deliver
from one outbox: a row is claimed before it is sent.
"""

import hashlib
import hmac
import json
import logging
import sqlite3
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from poets.engine.errors import ConfigurationError
from poets.engine.store.sqlite import Connections, immediate

log = logging.getLogger(__name__)

EVENT_TYPES = ("job.succeeded", "job.failed", "version.promoted", "version.held", "drift.alert")
SIGNATURE_HEADER = "X-Poets-Signature"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL,
    event TEXT NOT NULL,
    url TEXT NOT NULL,
    body BLOB NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    claimed_until REAL NOT NULL DEFAULT 0,
    last_status INTEGER,
    last_error TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
)
"""


def check_urls(urls: Sequence[str]) -> Tuple[str, ...]:
    """The URLs, or :class:`ConfigurationError` naming the first that is not http(s) with a host."""
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                "POETS_WEBHOOK_URLS: {!r} is not an http:// or https:// URL with a host.".format(url)
            )
    return tuple(urls)


def sign(secret: str, body: bytes) -> str:
    """The ``X-Poets-Signature`` value for ``body``: what a receiver recomputes to check it."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class Outbox:
    """Events waiting to be sent, and the log of attempts."""

    def __init__(
        self,
        path: Path,
        urls: Sequence[str],
        secret: Optional[str] = None,
        timeout_s: float = 5.0,
        max_attempts: int = 8,
        backoff_s: float = 2.0,
        max_backoff_s: float = 600.0,
        keep: int = 1000,
    ) -> None:
        self.path = Path(path)
        self.urls = check_urls(urls)
        self.secret = secret or ""
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.keep = keep
        self.wake = threading.Event()  # set by emit: the deliverer need not wait for its next poll
        self._connections = Connections(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = self._db()
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        return self._connections.get()

    def emit(self, event: str, data: Dict[str, Any]) -> Optional[str]:
        """Queue ``event`` for every URL; returns its id (None when no URL is configured)."""
        if event not in EVENT_TYPES:
            raise ValueError("unknown webhook event {!r}".format(event))
        if not self.urls:
            return None
        event_id = uuid.uuid4().hex
        now = time.time()
        body = json.dumps({"event": event, "id": event_id, "created": now, "data": data}).encode("utf-8")
        rows = [(uuid.uuid4().hex, event_id, event, url, body, "pending", now, now, now) for url in self.urls]
        self._db().executemany(
            "INSERT INTO deliveries (id, event_id, event, url, body, state, next_at, created, updated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        self.wake.set()
        return event_id

    def _claim(self, now: float, limit: int) -> List[sqlite3.Row]:
        with immediate(self._db()) as db:
            rows = db.execute(
                "SELECT * FROM deliveries WHERE state = 'pending' AND next_at <= ? AND claimed_until <= ? "
                "ORDER BY next_at LIMIT ?",
                (now, now, limit),
            ).fetchall()
            until = now + 2 * self.timeout_s + 1
            db.executemany(
                "UPDATE deliveries SET claimed_until = ? WHERE id = ?", [(until, row["id"]) for row in rows]
            )
        return rows

    def deliver_due(self, now: Optional[float] = None, limit: int = 20) -> int:
        """Send what is due; returns how many were sent successfully."""
        delivered = 0
        for row in self._claim(time.time() if now is None else now, limit):
            status, error = self._post(row)
            attempts = row["attempts"] + 1
            finished = time.time()
            if error is None:
                state, next_at = "delivered", finished
                delivered += 1
            elif attempts >= self.max_attempts:
                state, next_at = "failed", finished
                log.warning("webhook %s to %s failed for good: %s", row["event"], row["url"], error)
            else:
                state = "pending"
                next_at = finished + min(self.max_backoff_s, self.backoff_s * 2 ** (attempts - 1))
            self._db().execute(
                "UPDATE deliveries SET state = ?, attempts = ?, next_at = ?, claimed_until = 0, "
                "last_status = ?, last_error = ?, updated = ? WHERE id = ?",
                (state, attempts, next_at, status, error, finished, row["id"]),
            )
        self._prune()
        return delivered

    def _post(self, row: sqlite3.Row) -> Tuple[Optional[int], Optional[str]]:
        body = bytes(row["body"])
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "poets-webhooks",
            "X-Poets-Event": row["event"],
            "X-Poets-Delivery": row["id"],
        }
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        request = urllib.request.Request(row["url"], data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                return answer.status, None
        except urllib.error.HTTPError as exc:
            return exc.code, "answered HTTP {}".format(exc.code)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            return None, "could not deliver: {}".format(reason)

    def _prune(self) -> None:
        """Keep the last ``keep`` finished deliveries; pending ones are never dropped."""
        self._db().execute(
            "DELETE FROM deliveries WHERE state != 'pending' AND id NOT IN "
            "(SELECT id FROM deliveries WHERE state != 'pending' ORDER BY updated DESC LIMIT ?)",
            (self.keep,),
        )

    def recent(self, limit: int = 50) -> List[Dict[str, Any]]:
        """The latest deliveries, newest first, as ``GET /webhooks/deliveries`` lists them."""
        rows = self._db().execute(
            "SELECT id, event_id, event, url, state, attempts, next_at, last_status, last_error, created, "
            "updated FROM deliveries ORDER BY created DESC, url LIMIT ?",
            (limit,),
        )
        return [dict(row) for row in rows]


class Deliverer(threading.Thread):
    """Sends the outbox in the background: at once after an emit, else every ``poll_s``."""

    def __init__(self, outbox: Outbox, poll_s: float = 1.0) -> None:
        super().__init__(name="poets-webhooks", daemon=True)
        self.outbox = outbox
        self.poll_s = poll_s
        self._stopping = threading.Event()  # not _stop: Thread has a method of that name

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.outbox.deliver_due()
            except Exception:  # a full disk or a locked file must not end deliveries for good
                log.exception("webhook delivery round failed")
            self.outbox.wake.wait(self.poll_s)
            self.outbox.wake.clear()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self.outbox.wake.set()
        self.join(timeout)
