"""``poets serve``, ``poets worker`` and ``poets up`` as real processes."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List
from urllib import error, request

import pytest

from poets.cli.main import build_parser
from poets.cli.service_commands import worker_argv
from poets.engine.settings import Settings
from tests.worker import helpers


def _help(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "poets", *args, "--help"],
        cwd=str(helpers.REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=60,
        check=True,
    )
    return out.stdout.decode()


def test_help_lists_the_service_commands() -> None:
    text = _help()
    for command in ("serve", "worker", "up"):
        assert command in text


def test_worker_help() -> None:
    text = _help("worker")
    assert "--concurrency" in text and "--pool" in text and "prefork" in text
    assert "--exit-with-parent" not in text  # internal to ``poets up``


@pytest.mark.parametrize("command", ["serve", "up"])
def test_serve_and_up_help(command: str) -> None:
    text = _help(command)
    assert "--host" in text and "--port" in text


@pytest.mark.parametrize(
    "flags, pool, concurrency",
    [
        ([], "prefork", "1"),
        (["--concurrency", "3"], "prefork", "3"),
        (["--pool", "threads", "--concurrency", "2"], "threads", "2"),
    ],
)
def test_worker_pool_choice(flags: List[str], pool: str, concurrency: str) -> None:
    args = build_parser().parse_args(["worker", *flags])
    argv = worker_argv(args, Settings.from_env({}))
    assert argv[0] == "worker"
    assert argv[argv.index("--pool") + 1] == pool
    assert argv[argv.index("--concurrency") + 1] == concurrency


def test_worker_refuses_zero_concurrency() -> None:
    args = build_parser().parse_args(["worker", "--concurrency", "0"])
    with pytest.raises(SystemExit):
        worker_argv(args, Settings.from_env({}))


def test_worker_starts_on_the_embedded_broker_and_stops_on_sigterm(
    tmp_path: Path, backbone_dir: Path
) -> None:
    log = tmp_path / "worker.log"
    worker = helpers.start_worker(helpers.service_env(tmp_path / "home", backbone_dir), log)
    assert (tmp_path / "home" / "broker" / "broker.sqlite3").is_file()
    assert helpers.stop(worker, signal.SIGTERM) == 0
    text = log.read_text()
    assert "poets.retrain" in text and "(prefork)" in text


def _children(pid: int) -> List[int]:
    """Live children of ``pid``, whichever of its threads started them."""
    found = []
    for path in Path("/proc/{}/task".format(pid)).glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in path.read_text().split()]
    return [child for child in found if _alive(child)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose (its parent just has not reaped it yet).
    try:
        return Path("/proc/{}/stat".format(pid)).read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def _get(url: str) -> int:
    try:
        with request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


class Up:
    """``poets up`` on a free port, its worker found among its children."""

    def __init__(self, tmp_path: Path, backbone_dir: Path) -> None:
        self.port = helpers.free_port()
        self.log = tmp_path / "up.log"
        self.process = helpers.spawn(
            ["up", "--host", "127.0.0.1", "--port", str(self.port)],
            helpers.service_env(tmp_path / "home", backbone_dir),
            self.log,
        )
        helpers.wait_for_log(self.log, helpers.READY, self.process, timeout=120)
        deadline = time.time() + 120
        while _get(self.url("/healthz")) != 200:
            if self.process.poll() is not None or time.time() > deadline:
                pytest.fail("API did not answer /healthz:\n" + self.log.read_text()[-4000:])
            time.sleep(0.2)

    def url(self, path: str) -> str:
        return "http://127.0.0.1:{}{}".format(self.port, path)

    def worker_pid(self) -> int:
        children = _children(self.process.pid)
        assert len(children) == 1, children
        return children[0]


def test_up_runs_api_and_worker_and_stops_both_on_sigterm(tmp_path: Path, backbone_dir: Path) -> None:
    up = Up(tmp_path, backbone_dir)
    worker = up.worker_pid()
    # No model in this new home: not ready for that reason alone (the embedded broker answers,
    # the storage is writable).
    with pytest.raises(error.HTTPError) as answer:
        request.urlopen(up.url("/readyz"), timeout=30)
    assert answer.value.code == 503
    assert json.loads(answer.value.read().decode()) == {
        "error": "not_ready",
        "detail": "no model is loaded (train one with POST /retrain).",
    }
    assert helpers.stop(up.process, signal.SIGTERM, timeout=90) == 0
    assert _wait_gone(worker, 5), "worker left running after poets up stopped"
    assert _get(up.url("/healthz")) == 0


def test_up_stops_on_sigint(tmp_path: Path, backbone_dir: Path) -> None:
    up = Up(tmp_path, backbone_dir)
    worker = up.worker_pid()
    code = helpers.stop(up.process, signal.SIGINT, timeout=90)
    assert code in (0, 130)
    assert _wait_gone(worker, 5)


def test_up_restarts_a_dead_worker(tmp_path: Path, backbone_dir: Path) -> None:
    up = Up(tmp_path, backbone_dir)
    first = up.worker_pid()
    os.kill(first, signal.SIGKILL)
    start = len(up.log.read_text())
    helpers.wait_for_log(up.log, helpers.READY, up.process, timeout=120, start=start)
    second = up.worker_pid()
    assert second != first
    assert _get(up.url("/healthz")) == 200
    assert helpers.stop(up.process, signal.SIGTERM, timeout=90) == 0
    assert _wait_gone(second, 5)


def test_worker_of_a_killed_up_exits_by_itself(tmp_path: Path, backbone_dir: Path) -> None:
    up = Up(tmp_path, backbone_dir)
    worker = up.worker_pid()
    up.process.kill()
    up.process.wait(10)
    assert _wait_gone(worker, 30), "orphaned worker kept running"
