"""Job records: what the API shows of a retraining job and what the worker reports.

Records live in one SQLite file under ``$POETS_HOME`` (WAL mode: one writer at a
time, readers never blocked), so the API, workers and the CLI on one machine or
one shared volume see the same jobs, whichever broker carries the messages.
"""

import json
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from poets.engine.errors import Conflict, NotFound
from poets.engine.store.sqlite import Connections, immediate

# The Celery task name: the API enqueues by this name and never imports the worker.
RETRAIN_TASK = "poets.retrain"
# Celery beat sends this one every POETS_POLICY_CHECK_S: the retrain policies' scheduler.
POLICY_TASK = "poets.policies"

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    phase TEXT,
    progress TEXT NOT NULL DEFAULT '{}',
    params TEXT NOT NULL DEFAULT '{}',
    result TEXT,
    error TEXT,
    version INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    heartbeat REAL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    trigger TEXT NOT NULL DEFAULT 'api'
)
"""
TRIGGERS = ("api", "cli", "console", "policy")

_CLAIMS = """
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until REAL NOT NULL
)
"""


@dataclass
class Job:
    id: str
    name: str
    state: str
    phase: Optional[str] = None
    progress: Dict[str, Any] = field(default_factory=dict)
    params: Dict[str, Any] = field(default_factory=dict)
    result: Optional[Dict[str, Any]] = None
    error: Optional[str] = None
    version: Optional[int] = None
    attempts: int = 0
    cancel_requested: bool = False
    worker: Optional[str] = None
    heartbeat: Optional[float] = None
    created: float = 0.0
    started: Optional[float] = None
    finished: Optional[float] = None
    trigger: str = "api"  # who started it: TRIGGERS

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


_JSON_COLUMNS = ("progress", "params", "result")


class JobStore:
    """Create, update and read job records. Safe across threads and processes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connections = Connections(self.path)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            db.execute(_CLAIMS)
            columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
            for column, kind in (
                ("worker", "TEXT"),
                ("heartbeat", "REAL"),
                ("trigger", "TEXT NOT NULL DEFAULT 'api'"),
            ):
                if column not in columns:  # a jobs file from before the column existed
                    db.execute("ALTER TABLE jobs ADD COLUMN {} {}".format(column, kind))

    def _connect(self) -> sqlite3.Connection:
        return self._connections.get()

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        data = dict(row)
        for column in _JSON_COLUMNS:
            data[column] = json.loads(data[column]) if data[column] else (None if column == "result" else {})
        data["cancel_requested"] = bool(data["cancel_requested"])
        return Job(**data)

    def create(
        self, name: str, params: Dict[str, Any], job_id: Optional[str] = None, trigger: str = "api"
    ) -> Job:
        job = Job(
            id=job_id or uuid.uuid4().hex,
            name=name,
            state="queued",
            params=params,
            created=time.time(),
            trigger=trigger,
        )
        self._connect().execute(
            "INSERT INTO jobs (id, name, state, params, created, trigger) VALUES (?, ?, ?, ?, ?, ?)",
            (job.id, job.name, job.state, json.dumps(params), job.created, trigger),
        )
        return job

    def active(self, name: str) -> bool:
        """Whether a job for model ``name`` is queued or running."""
        row = (
            self._connect()
            .execute("SELECT 1 FROM jobs WHERE name = ? AND state IN ('queued', 'running') LIMIT 1", (name,))
            .fetchone()
        )
        return row is not None

    def last_created(self, name: str, trigger: str) -> Optional[float]:
        """When the newest job for ``name`` started by ``trigger`` was created (None: never)."""
        row = (
            self._connect()
            .execute("SELECT MAX(created) FROM jobs WHERE name = ? AND trigger = ?", (name, trigger))
            .fetchone()
        )
        return float(row[0]) if row and row[0] is not None else None

    def claim(self, key: str, holder: str, ttl_s: float) -> bool:
        """Hold ``key`` for ``ttl_s`` seconds unless another holder has it: a lease, so that of
        several schedulers (or overlapping ticks of one) only one decides at a time."""
        now = time.time()
        with immediate(self._connect()) as db:
            row = db.execute("SELECT holder, until FROM claims WHERE key = ?", (key,)).fetchone()
            free = row is None or row[1] < now or row[0] == holder
            if free:
                db.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?)", (key, holder, now + ttl_s))
        return free

    def release(self, key: str, holder: str) -> None:
        self._connect().execute("DELETE FROM claims WHERE key = ? AND holder = ?", (key, holder))

    def get(self, job_id: str) -> Job:
        row = self._connect().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound("No job {!r}: check the id against the job list.".format(job_id))
        return self._job(row)

    def list(self, limit: int = 100) -> List[Job]:
        rows = (
            self._connect().execute("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
        )
        return [self._job(row) for row in rows]

    def update(self, job_id: str, **changes: Any) -> None:
        """Set columns; dict values are stored as JSON."""
        if not changes:
            return
        for column in _JSON_COLUMNS:
            if column in changes and changes[column] is not None:
                changes[column] = json.dumps(changes[column])
        assignments = ", ".join("{} = ?".format(column) for column in changes)
        self._connect().execute(
            "UPDATE jobs SET {} WHERE id = ?".format(assignments), (*changes.values(), job_id)
        )

    def start(self, job_id: str, worker: Optional[str] = None) -> Job:
        """Mark a delivery of the job as running by ``worker``; counts attempts (redeliveries)."""
        db = self._connect()
        now = time.time()
        db.execute(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, worker = ?, "
            "heartbeat = ?, started = COALESCE(started, ?) "
            "WHERE id = ? AND state IN ('queued', 'running')",
            (worker, now, now, job_id),
        )
        return self.get(job_id)

    def beat(self, job_id: str, worker: Optional[str]) -> bool:
        """Say that ``worker`` is still running the job; False once the job is no longer its own
        (finished, or requeued because its heartbeat had stopped)."""
        cursor = self._connect().execute(
            "UPDATE jobs SET heartbeat = ? WHERE id = ? AND state = 'running' AND worker IS ?",
            (time.time(), job_id, worker),
        )
        return cursor.rowcount == 1

    def running(self) -> List[Job]:
        rows = self._connect().execute("SELECT * FROM jobs WHERE state = 'running'").fetchall()
        return [self._job(row) for row in rows]

    def lost(self, after_s: float) -> List[Job]:
        """Running jobs whose worker has not sent a heartbeat for ``after_s`` seconds."""
        rows = (
            self._connect()
            .execute(
                "SELECT * FROM jobs WHERE state = 'running' AND COALESCE(heartbeat, started, created) < ?",
                (time.time() - after_s,),
            )
            .fetchall()
        )
        return [self._job(row) for row in rows]

    def requeue(self, job_id: str, lost_after_s: Optional[float] = None) -> bool:
        """Put a running job whose worker died back to queued; False if it moved on meanwhile
        (with ``lost_after_s``: also when a heartbeat came in since it was seen as lost)."""
        query = "UPDATE jobs SET state = 'queued', worker = NULL WHERE id = ? AND state = 'running'"
        args: Tuple[Any, ...] = (job_id,)
        if lost_after_s is not None:
            query += " AND COALESCE(heartbeat, started, created) < ?"
            args += (time.time() - lost_after_s,)
        return self._connect().execute(query, args).rowcount == 1

    def finish(self, job_id: str, state: str, **changes: Any) -> None:
        self.update(job_id, state=state, finished=time.time(), **changes)

    def request_cancel(self, job_id: str, lost_after_s: Optional[float] = None) -> Job:
        """Ask a job to stop at its next step; a queued job is cancelled at once, and so is a
        running one whose worker has sent no heartbeat for ``lost_after_s`` seconds (gone)."""
        job = self.get(job_id)
        if job.state in FINISHED:
            raise Conflict("Job {} has already {}; nothing to cancel.".format(job_id, job.state))
        db = self._connect()
        now = time.time()
        db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        db.execute(
            "UPDATE jobs SET state = 'cancelled', finished = ? WHERE id = ? AND state = 'queued'",
            (now, job_id),
        )
        if lost_after_s is not None:
            db.execute(
                "UPDATE jobs SET state = 'cancelled', finished = ?, error = ? "
                "WHERE id = ? AND state = 'running' AND COALESCE(heartbeat, started, created) < ?",
                (now, "Cancelled; its worker had stopped.", job_id, now - lost_after_s),
            )
        return self.get(job_id)

    def stats(self) -> Dict[str, Tuple[int, float]]:
        """(jobs, seconds from start to finish summed) per state, for metrics."""
        rows = self._connect().execute(
            "SELECT state, COUNT(*), SUM(COALESCE(finished - started, 0)) FROM jobs GROUP BY state"
        )
        return {state: (int(count), float(seconds or 0.0)) for state, count, seconds in rows}

    def cancel_requested(self, job_id: str) -> bool:
        row = self._connect().execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row[0])
