"""``poets serve``, ``poets worker`` and ``poets up``.

``serve`` runs the API only, ``worker`` one Celery worker only (scale each on its
own), ``up`` both on one machine: the worker as a child process, the API in this
one. All state lives under ``$POETS_HOME``; without ``POETS_BROKER_URL`` the
broker is the embedded SQLite one there, so ``poets up`` needs nothing else.
"""

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, List, Optional

from poets.engine.settings import Settings

log = logging.getLogger(__name__)

POOLS = ("solo", "prefork", "threads")
# How long ``up`` lets a worker finish its current job step before forcing it down.
WORKER_STOP_GRACE_S = 30.0


def register(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the HTTP API only (jobs go to separate workers)")
    _add_bind_flags(serve)
    serve.set_defaults(run=run_serve)

    worker = commands.add_parser(
        "worker",
        help="run a retraining worker only",
        description="A Celery worker running retraining jobs. The prefork pool (default) runs "
        "them in N child processes (--concurrency, default 1), each setting "
        "TensorFlow up after the fork (this process never imports it) and replaced "
        "after POETS_WORKER_MAX_TASKS_PER_CHILD jobs or POETS_WORKER_MAX_MEMORY_MB. "
        "--pool solo runs jobs in this process and never recycles it.",
    )
    worker.add_argument(
        "--concurrency", type=int, default=1, metavar="N", help="jobs run at once (default: 1)"
    )
    worker.add_argument(
        "--pool",
        choices=POOLS,
        default=None,
        help="Celery pool (default: prefork; solo and threads never recycle)",
    )
    worker.add_argument("--loglevel", default=None, help="worker log level (default: $POETS_LOG_LEVEL)")
    worker.add_argument(
        "--beat",
        action="store_true",
        help="also run the scheduler of retrain policies (Celery beat) in this worker: "
        "only where no other worker or `poets beat` runs it",
    )
    # Used by ``poets up``: stop when the parent process is gone, so a killed ``up``
    # leaves no worker behind.
    worker.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    worker.set_defaults(run=run_worker)

    beat = commands.add_parser(
        "beat",
        help="run the scheduler of retrain policies (Celery beat): exactly one per deployment",
    )
    beat.add_argument("--loglevel", default=None, help="log level (default: $POETS_LOG_LEVEL)")
    beat.set_defaults(run=run_beat)

    up = commands.add_parser("up", help="run the API and one worker together on this machine")
    _add_bind_flags(up)
    up.set_defaults(run=run_up)


def _add_bind_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")


class _Terminated(Exception):
    """SIGTERM reached ``poets serve`` or ``poets up``: a requested stop, not an error."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated()


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    # uvicorn handles SIGTERM itself while it runs (graceful shutdown) and, in recent
    # versions, re-raises the signal afterwards with the handler it found: this one,
    # so a requested stop exits 0 instead of dying by the signal.
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        from app.server import run  # FastAPI and TensorFlow only for this command

        run(settings, args.host, args.port)
    except _Terminated:
        log.info("stopped on SIGTERM")
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def worker_argv(args: argparse.Namespace, settings: Settings) -> List[str]:
    """Celery's ``worker`` arguments for ``poets worker``'s flags."""
    if args.concurrency < 1:
        raise SystemExit("poets worker: --concurrency must be at least 1")
    pool = args.pool or "prefork"
    argv = [
        "worker",
        "--pool",
        pool,
        "--loglevel",
        (args.loglevel or settings.log_level).upper(),
        "--hostname",
        "poets-{}@%h".format(os.getpid()),
        # Workers need not talk to each other: jobs coordinate through the job store,
        # and the embedded SQLite broker has no broadcast for gossip/mingle.
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--concurrency",
        str(args.concurrency),
    ]
    if getattr(args, "beat", False):
        argv += ["--beat", "--schedule", str(settings.home / "beat-schedule")]
    return argv


def run_beat(args: argparse.Namespace, settings: Settings) -> int:
    from worker.celery_app import app

    settings.home.mkdir(parents=True, exist_ok=True)
    app.start(["beat", "--loglevel", (args.loglevel or settings.log_level).upper()])
    return 0


def _exit_with_parent() -> None:
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        log.warning("parent process %d is gone; stopping the worker", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    # The module's app, built from the same environment as ``settings``: the tasks are
    # registered on it.
    from worker.celery_app import app

    argv = worker_argv(args, settings)
    if args.exit_with_parent:
        _exit_with_parent()
    app.worker_main(argv)
    return 0


class WorkerProcess:
    """``poets worker`` as a child of ``poets up``: started, watched, restarted, stopped."""

    def __init__(self, settings: Settings, grace_s: float = WORKER_STOP_GRACE_S) -> None:
        self.settings = settings
        self.grace_s = grace_s
        self.process: Optional[subprocess.Popen[bytes]] = None
        self._stopping = threading.Event()
        self._watcher: Optional[threading.Thread] = None

    @property
    def command(self) -> List[str]:
        # The one worker of ``up`` runs the policies' scheduler too: nothing else does here.
        return [sys.executable, "-m", "poets", "worker", "--beat", "--exit-with-parent"]

    def start(self) -> None:
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="worker-watch", daemon=True)
        self._watcher.start()

    def _spawn(self) -> None:
        env = dict(os.environ, POETS_HOME=str(self.settings.home))
        self.process = subprocess.Popen(self.command, env=env)
        log.info("started worker (pid %d)", self.process.pid)

    def _watch(self) -> None:
        """Restart a worker that died (OOM kill...); its unacknowledged job is redelivered."""
        delay = 1.0
        while not self._stopping.is_set():
            process = self.process
            if process is None:
                return
            code = process.wait()
            if self._stopping.is_set():
                return
            log.error("worker (pid %d) exited with %s; restarting in %.0f s", process.pid, code, delay)
            if self._stopping.wait(delay):
                return
            started = time.monotonic()
            self._spawn()
            # Back off when it keeps dying at once; reset once it stayed up.
            delay = 1.0 if time.monotonic() - started > 60 else min(delay * 2, 30.0)

    def stop(self) -> Optional[int]:
        """Warm shutdown (finish the current step), then cold, then kill."""
        self._stopping.set()
        process = self.process
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        for sig, wait_s in ((signal.SIGTERM, self.grace_s), (signal.SIGQUIT, 10.0), (signal.SIGKILL, 10.0)):
            try:
                process.send_signal(sig)
            except ProcessLookupError:
                break
            try:
                process.wait(wait_s)
                break
            except subprocess.TimeoutExpired:
                log.warning("worker (pid %d) still running after %s", process.pid, sig.name)
        log.info("worker stopped (exit %s)", process.returncode)
        return process.returncode


def run_up(args: argparse.Namespace, settings: Settings) -> int:
    worker = WorkerProcess(settings)

    # As in run_serve; either way the ``finally`` below stops the worker.
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    worker.start()
    try:
        from app.server import run

        run(settings, args.host, args.port)
    except _Terminated:
        log.info("stopped on SIGTERM")
    finally:
        # A second SIGTERM must not abort stopping the worker (stop() escalates itself).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        worker.stop()
        signal.signal(signal.SIGTERM, previous)
    return 0
