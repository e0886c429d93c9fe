"""Job records: what the API shows of a retraining job and what the worker reports.

:class:`JobRecords` is what the API, the worker and the scheduler use; two stores implement
it with the same semantics. :class:`JobStore` keeps the records in one SQLite file under
``$POETS_HOME`` (WAL mode: one writer at a time, readers never blocked), for the embedded
broker: the API, workers and the CLI on one machine see the same jobs. With a Redis broker
the records live in Redis (:class:`poets.engine.store.redis_jobs.RedisJobStore`), so that
machines sharing nothing but Redis and the bucket see them too. ``Workspace.jobs`` picks.

Records never expire. With a bounded history (``POETS_JOB_HISTORY``), finishing a job
deletes the finished records past that many, the earliest finished first, in one log line
and a persistent count (:meth:`JobRecords.deleted_records`, exported as a metric); queued
and running jobs are never deleted.
"""

import abc
import json
import logging
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from poets.engine.errors import Conflict, NotFound
from poets.engine.store.sqlite import Connections, immediate

log = logging.getLogger(__name__)

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
# Counts kept with the records: "deleted" is how many finished records the bounded history
# deleted, ever (the metrics read it; a count in one process would miss the other processes').
_COUNTERS = """
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
)
"""
# What a cancel records of a running job whose worker had stopped beating.
WORKER_GONE = "Cancelled; its worker had stopped."


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

    @classmethod
    def queued(cls, name: str, params: Dict[str, Any], job_id: Optional[str], trigger: str) -> "Job":
        """A new job's record, as both stores create it."""
        return cls(
            id=job_id or uuid.uuid4().hex,
            name=name,
            state="queued",
            params=params,
            created=time.time(),
            trigger=trigger,
        )


_JSON_COLUMNS = ("progress", "params", "result")


def history_deleted(count: int, history: int) -> None:
    """The one log line of a trim of the bounded history."""
    log.info(
        "deleted the %d earliest finished job record(s): more than POETS_JOB_HISTORY=%d finished jobs",
        count,
        history,
    )


class JobRecords(abc.ABC):
    """Create, update and read job records; safe across threads, processes and machines.

    Two stores implement it with the same semantics: :class:`JobStore` (SQLite) and
    :class:`poets.engine.store.redis_jobs.RedisJobStore`. ``history`` bounds the finished
    records kept (None: all).
    """

    history: Optional[int] = None

    @abc.abstractmethod
    def create(
        self, name: str, params: Dict[str, Any], job_id: Optional[str] = None, trigger: str = "api"
    ) -> Job:
        """A new queued job (Conflict when ``job_id`` exists)."""

    @abc.abstractmethod
    def put_record(self, job: Job) -> bool:
        """Store ``job`` as it is (a copy from another store); False when its id exists."""

    @abc.abstractmethod
    def all_ids(self) -> List[str]:
        """Every job's id, the earliest created first."""

    @abc.abstractmethod
    def active(self, name: str) -> bool:
        """Whether a job for model ``name`` is queued or running."""

    @abc.abstractmethod
    def last_created(self, name: str, trigger: str) -> Optional[float]:
        """When the newest job for ``name`` started by ``trigger`` was created (None: never)."""

    @abc.abstractmethod
    def claim(self, key: str, holder: str, ttl_s: float) -> bool:
        """Hold ``key`` for ``ttl_s`` seconds unless another holder has it: a lease, so that of
        several schedulers (or overlapping ticks of one) only one decides at a time."""

    @abc.abstractmethod
    def release(self, key: str, holder: str) -> None:
        """Give ``key`` up, if ``holder`` holds it."""

    @abc.abstractmethod
    def get(self, job_id: str) -> Job:
        """The job (NotFound when there is none)."""

    @abc.abstractmethod
    def list(self, limit: int = 100) -> List[Job]:
        """The ``limit`` newest jobs, newest created first."""

    @abc.abstractmethod
    def update(self, job_id: str, **changes: Any) -> None:
        """Set fields (None clears one); nothing when the job does not exist."""

    @abc.abstractmethod
    def start(self, job_id: str, worker: Optional[str] = None) -> Job:
        """Mark a delivery of the job as running by ``worker``; counts attempts (redeliveries)."""

    @abc.abstractmethod
    def beat(self, job_id: str, worker: Optional[str]) -> bool:
        """Say that ``worker`` is still running the job; False once the job is no longer its own
        (finished, or requeued because its heartbeat had stopped)."""

    @abc.abstractmethod
    def running(self) -> List[Job]:
        """The running jobs."""

    @abc.abstractmethod
    def lost(self, after_s: float) -> List[Job]:
        """Running jobs whose worker has not sent a heartbeat for ``after_s`` seconds."""

    @abc.abstractmethod
    def requeue(self, job_id: str, lost_after_s: Optional[float] = None) -> bool:
        """Put a running job whose worker died back to queued; False if it moved on meanwhile
        (with ``lost_after_s``: also when a heartbeat came in since it was seen as lost)."""

    @abc.abstractmethod
    def finish(self, job_id: str, state: str, **changes: Any) -> None:
        """End the job in ``state`` (one of FINISHED) with ``changes``; trims the history."""

    @abc.abstractmethod
    def request_cancel(self, job_id: str, lost_after_s: Optional[float] = None) -> Job:
        """Ask a job to stop at its next step; a queued job is cancelled at once, and so is a
        running one whose worker has sent no heartbeat for ``lost_after_s`` seconds (gone).
        Conflict when it has already finished."""

    @abc.abstractmethod
    def stats(self) -> Dict[str, Tuple[int, float]]:
        """(jobs, seconds from start to finish summed) per state, for metrics."""

    @abc.abstractmethod
    def cancel_requested(self, job_id: str) -> bool:
        """Whether the job's owner asked it to stop (False for an unknown job)."""

    @abc.abstractmethod
    def deleted_records(self) -> int:
        """How many finished records the bounded history has deleted, ever."""

    def close(self) -> None:  # noqa: B027 (a no-op unless a store holds connections to let go)
        """Let go of connections (the store is not used afterwards)."""


class JobStore(JobRecords):
    """Job records in SQLite. Safe across threads and processes."""

    def __init__(self, path: Path, history: Optional[int] = None) -> None:
        self.path = Path(path)
        self.history = history
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connections = Connections(self.path)
        for attempt in range(50):
            try:
                self._create()
                return
            except sqlite3.OperationalError as exc:
                # Two processes opening a new file at once: switching it to WAL takes a lock
                # that SQLite's busy timeout does not wait for. The other one is done soon.
                if "locked" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.1)

    def _create(self) -> None:
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            db.execute(_CLAIMS)
            db.execute(_COUNTERS)
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
        job = Job.queued(name, params, job_id, trigger)
        try:
            self._connect().execute(
                "INSERT INTO jobs (id, name, state, params, created, trigger) VALUES (?, ?, ?, ?, ?, ?)",
                (job.id, job.name, job.state, json.dumps(params), job.created, trigger),
            )
        except sqlite3.IntegrityError:
            raise Conflict("Job {} exists already.".format(job.id)) from None
        return job

    def put_record(self, job: Job) -> bool:
        data = job.to_dict()
        for column in _JSON_COLUMNS:
            if data[column] is not None:
                data[column] = json.dumps(data[column])
        data["cancel_requested"] = int(bool(data["cancel_requested"]))
        columns = ", ".join(data)
        cursor = self._connect().execute(
            "INSERT OR IGNORE INTO jobs ({}) VALUES ({})".format(columns, ", ".join("?" * len(data))),
            tuple(data.values()),
        )
        if cursor.rowcount != 1:
            return False
        if job.state in FINISHED:
            self._trim()
        return True

    def all_ids(self) -> List[str]:
        rows = self._connect().execute("SELECT id FROM jobs ORDER BY created, id").fetchall()
        return [str(row[0]) for row in rows]

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
        ended = changes.get("state") in FINISHED
        for column in _JSON_COLUMNS:
            if column in changes and changes[column] is not None:
                changes[column] = json.dumps(changes[column])
        assignments = ", ".join("{} = ?".format(column) for column in changes)
        self._connect().execute(
            "UPDATE jobs SET {} WHERE id = ?".format(assignments), (*changes.values(), job_id)
        )
        if ended:
            self._trim()

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
        cancelled = db.execute(
            "UPDATE jobs SET state = 'cancelled', finished = ? WHERE id = ? AND state = 'queued'",
            (now, job_id),
        ).rowcount
        if lost_after_s is not None:
            cancelled += db.execute(
                "UPDATE jobs SET state = 'cancelled', finished = ?, error = ? "
                "WHERE id = ? AND state = 'running' AND COALESCE(heartbeat, started, created) < ?",
                (now, WORKER_GONE, job_id, now - lost_after_s),
            ).rowcount
        job = self.get(job_id)
        if cancelled:
            self._trim()
        return job

    def stats(self) -> Dict[str, Tuple[int, float]]:
        """(jobs, seconds from start to finish summed) per state, for metrics."""
        rows = self._connect().execute(
            "SELECT state, COUNT(*), SUM(COALESCE(finished - started, 0)) FROM jobs GROUP BY state"
        )
        return {state: (int(count), float(seconds or 0.0)) for state, count, seconds in rows}

    def cancel_requested(self, job_id: str) -> bool:
        row = self._connect().execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    def deleted_records(self) -> int:
        row = self._connect().execute("SELECT value FROM counters WHERE name = 'deleted'").fetchone()
        return int(row[0]) if row else 0

    def _trim(self) -> int:
        """Delete the earliest finished records past ``history``; how many went."""
        if self.history is None:
            return 0
        finished = "state IN ({})".format(", ".join("'{}'".format(state) for state in FINISHED))
        with immediate(self._connect()) as db:
            (count,) = db.execute("SELECT COUNT(*) FROM jobs WHERE " + finished).fetchone()
            excess = int(count) - self.history
            if excess <= 0:
                return 0
            db.execute(
                "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE {} "
                "ORDER BY COALESCE(finished, created), id LIMIT ?)".format(finished),
                (excess,),
            )
            db.execute("INSERT OR IGNORE INTO counters VALUES ('deleted', 0)")
            db.execute("UPDATE counters SET value = value + ? WHERE name = 'deleted'", (excess,))
        history_deleted(excess, self.history)
        return excess
