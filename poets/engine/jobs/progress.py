"""A running job's side of its record: throttled progress, the heartbeat, the cancel check.

Retrain reports progress events and polls ``should_stop``; these turn both into job-record
reads and writes (:class:`poets.engine.store.jobs.JobRecords`), at a pace the record can bear.
None of them stops a job when the records cannot be reached for a while (Redis restarting):
progress is written again at the next event, the cancel flag and the heartbeat read again later.
"""

import json
import logging
import threading
import time
from typing import Any, Callable, Dict, Optional

from poets.engine.errors import StoreUnavailable
from poets.engine.jobs.history import TrainingHistory
from poets.engine.phases import TRAINING
from poets.engine.store.jobs import FINISHED, JobRecords

log = logging.getLogger(__name__)

# Most progress writes per second to the job record (phase changes always go through).
PROGRESS_WRITES_PER_S = 5.0
# How often the job record is read to see whether the owner cancelled the job.
CANCEL_POLL_S = 0.5


class ProgressWriter:
    """Turns retrain's progress events into throttled job-record updates."""

    def __init__(
        self,
        jobs: JobRecords,
        job_id: str,
        min_interval_s: float = 1.0 / PROGRESS_WRITES_PER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.phase: Optional[str] = None
        self.writes = 0
        self._last = float("-inf")
        self._pending: Optional[Dict[str, Any]] = None
        self.history = TrainingHistory()  # the curves: kept in every later write
        self.unwritten = 0  # writes missed since the records were last reachable

    def __call__(self, event: Dict[str, Any]) -> None:
        event = jsonable(event)
        phase = event.pop("phase", None) or self.phase
        if phase == TRAINING and "step" in event:
            self.history.add(event)
        now = self.clock()
        if phase == self.phase and now - self._last < self.min_interval_s and not _complete(event):
            self._pending = event
            return
        if phase != self.phase and self._pending is not None:
            self._write(self.phase, self._pending)  # the previous phase's last word
        self.phase = phase
        self._write(phase, event)
        self._last = now

    def flush(self) -> None:
        if self._pending is not None:
            self._write(self.phase, self._pending)

    def _write(self, phase: Optional[str], event: Dict[str, Any]) -> None:
        self._pending = None
        self.writes += 1
        shown = dict(event, history=self.history.points()) if len(self.history) else event
        try:
            self.jobs.update(self.job_id, phase=phase, progress=shown)
        except StoreUnavailable as exc:
            # Training goes on; a later event (or flush) writes again.
            if not self.unwritten:
                log.warning("job %s: progress not written: %s", self.job_id, exc.detail)
            self.unwritten += 1
            self._pending = event
            return
        if self.unwritten:
            log.info("job %s: progress written again (%d update(s) missed)", self.job_id, self.unwritten)
            self.unwritten = 0


class Heartbeat:
    """Refreshes the running job's heartbeat every ``interval_s`` on a thread of its own.

    Other workers requeue a job whose heartbeat stopped (its process died). ``lost``
    turns true when the record is no longer this process's (it was requeued after a
    long stall, or ended): the job must then stop and leave the record alone.
    """

    def __init__(self, jobs: JobRecords, job_id: str, worker: str, interval_s: float) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self.worker = worker
        self.interval_s = interval_s
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(10.0)

    def _run(self) -> None:
        beating = False  # the first beats may come before this delivery has started the job
        unreachable = False  # warned once per outage of the job records
        while not self._stop.wait(self.interval_s):
            try:
                beat = self.jobs.beat(self.job_id, self.worker)
                if unreachable:
                    log.info("job %s: heartbeat written again", self.job_id)
                    unreachable = False
                if beat:
                    beating = True
                    continue
                if not beating or self._stop.is_set():
                    continue
                job = self.jobs.get(self.job_id)
                if job.worker == self.worker and job.state in FINISHED:
                    return  # this process has just finished it
                log.warning(
                    "job %s is no longer run by this process (%s by %s); stopping it",
                    self.job_id,
                    job.state,
                    job.worker,
                )
                self.lost = True
                return
            except StoreUnavailable as exc:  # Redis restarting: beat again later
                if not unreachable:
                    log.warning("job %s: heartbeat not written: %s", self.job_id, exc.detail)
                unreachable = True
            except Exception:  # a busy job store: beat again later
                log.exception("job %s: heartbeat not written", self.job_id)


class CancelCheck:
    """``should_stop`` for retrain: the record's cancel flag, read at most every ``interval_s``
    (and true at once when ``heartbeat`` lost the job to another worker)."""

    def __init__(
        self,
        jobs: JobRecords,
        job_id: str,
        interval_s: float = CANCEL_POLL_S,
        heartbeat: Optional[Heartbeat] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self.interval_s = interval_s
        self.heartbeat = heartbeat
        self.clock = clock  # injectable, as in ProgressWriter, so tests need no real waits
        self._checked = float("-inf")
        self._cancelled = False
        self._unread = False  # the last read failed: warned once per outage
        self._lock = threading.Lock()  # bottlenecks are computed on several threads

    def __call__(self) -> bool:
        if self.heartbeat is not None and self.heartbeat.lost:
            return True
        with self._lock:
            now = self.clock()
            if not self._cancelled and now - self._checked >= self.interval_s:
                self._checked = now
                try:
                    self._cancelled = self.jobs.cancel_requested(self.job_id)
                    self._unread = False
                except StoreUnavailable as exc:  # read again at the next interval
                    if not self._unread:
                        log.warning("job %s: cancel flag not read: %s", self.job_id, exc.detail)
                    self._unread = True
            return self._cancelled


def _complete(event: Dict[str, Any]) -> bool:
    """The last event of a counted phase, which must not be dropped by the throttle."""
    for done, total in (("done", "total"), ("step", "steps")):
        if done in event and event.get(done) == event.get(total):
            return True
    return False


def jsonable(value: Any) -> Any:
    """Plain JSON types (numpy scalars, paths...) for the record."""
    return json.loads(json.dumps(value, default=_to_plain))


def _to_plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
