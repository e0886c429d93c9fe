"""Soak: memory of the API and the worker over many retrains while clients label.

``python -m bench.soak [--jobs 30] [--steps 200] [--clients 4] [--names 3]``

Starts ``poets serve`` and ``poets worker`` (embedded broker, a fresh POETS_HOME) and
runs ``--jobs`` retraining jobs on ``../shared/datasets/flowers_small`` through the API,
one after the other, cycling over ``--names`` model names, while ``--clients`` threads
post photos to /label across those names. After jobs 5, 10, 20 and 30 it prints the RSS
of the API's and the worker's whole process trees (the worker's job runs in a child),
and at the end the failed /label count. A 503 with Retry-After (a model loading) is
retried by the client, as a camera would, and counted apart; anything else that is not
a 200 is a failure.

Goal (issue 11): RSS after the last job at most 1.10 x RSS after job 5, 0 failed /label.
A benchmark, not a test: it takes minutes.
"""

import argparse
import itertools
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import httpx

from tests.net import free_port

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
DATASET = "flowers_small"
CHECKPOINTS = (5, 10, 20, 30)


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, in MiB (from /proc)."""
    total_kb = 0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            for line in Path("/proc/{}/status".format(current)).read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
            for task in Path("/proc/{}/task".format(current)).iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return total_kb / 1024.0


class Labeller(threading.Thread):
    """One client posting photos to /label in a loop, over several model names."""

    def __init__(self, url: str, photos: List[Path], names: List[str], stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.url, self.photos, self.names, self.stop = url, photos, names, stop
        self.ok = self.failed = self.retried = 0
        self.errors: Dict[str, int] = {}
        self.ready: List[str] = []  # names with a version; set by the main thread

    def run(self) -> None:
        rng = random.Random(id(self))
        with httpx.Client(base_url=self.url, timeout=60.0) as client:
            while not self.stop.is_set():
                names = list(self.ready)
                if not names:
                    time.sleep(0.2)
                    continue
                name = rng.choice(names)
                photo = rng.choice(self.photos)
                try:
                    response = client.post(
                        "/label",
                        params={"model": name},
                        content=photo.read_bytes(),
                        headers={"Content-Type": "image/jpeg"},
                    )
                except httpx.HTTPError as exc:
                    self._fail(type(exc).__name__)
                    continue
                if response.status_code == 200:
                    self.ok += 1
                elif response.status_code == 503 and response.headers.get("Retry-After"):
                    self.retried += 1
                    time.sleep(min(float(response.headers["Retry-After"]), 1.0))
                else:
                    self._fail("{} {}".format(response.status_code, response.text[:80]))

    def _fail(self, what: str) -> None:
        self.failed += 1
        self.errors[what] = self.errors.get(what, 0) + 1


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--names", type=int, default=3)
    parser.add_argument(
        "--backbone_dir",
        type=Path,
        default=Path(os.environ.get("POETS_BACKBONE_DIR") or REPO / ".cache" / "test-assets" / "backbones"),
    )
    args = parser.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="poets-soak-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("POETS_")}
    env.update(
        POETS_HOME=str(home),
        POETS_BACKBONE_DIR=str(args.backbone_dir),
        POETS_DATA_ROOT=str(DATASETS),
        POETS_LOG_LEVEL="WARNING",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    for name in ("POETS_MAX_LOADED_MODELS", "POETS_WORKER_MAX_TASKS_PER_CHILD", "POETS_WORKER_MAX_MEMORY_MB"):
        if name in os.environ:
            env[name] = os.environ[name]
    port = free_port()
    url = "http://127.0.0.1:{}".format(port)
    logs = home / "logs-soak"
    logs.mkdir()
    with open(str(logs / "api.log"), "wb") as api_log, open(str(logs / "worker.log"), "wb") as worker_log:
        # The children keep their own copies of the log descriptors.
        api = subprocess.Popen(
            [sys.executable, "-m", "poets", "serve", "--port", str(port)],
            cwd=str(REPO),
            env=env,
            stdout=api_log,
            stderr=subprocess.STDOUT,
        )
        worker = subprocess.Popen(
            [sys.executable, "-m", "poets", "worker"],
            cwd=str(REPO),
            env=env,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
        )
    stop = threading.Event()
    names = ["soak{}".format(i) for i in range(args.names)]
    photos = sorted((DATASETS / DATASET).rglob("*.jpg"))
    clients = [Labeller(url, photos, names, stop) for _ in range(args.clients)]
    rows = []
    failed_jobs = 0
    try:
        with httpx.Client(base_url=url, timeout=60.0) as client:
            deadline = time.time() + 180
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.time() > deadline or api.poll() is not None:
                    print("the API did not start; see", logs / "api.log")
                    return 1
                time.sleep(0.5)
            for thread in clients:
                thread.start()
            started = time.time()
            for number, name in zip(range(1, args.jobs + 1), itertools.cycle(names)):
                response = client.post(
                    "/retrain",
                    files={"name": (None, name)},
                    data={"image_dir": DATASET, "how_many_training_steps": str(args.steps)},
                )
                response.raise_for_status()
                job_id = response.json()["job_id"]
                while True:
                    job = client.get("/jobs/{}".format(job_id)).json()
                    if job["state"] in ("succeeded", "failed", "cancelled"):
                        break
                    time.sleep(0.5)
                if job["state"] != "succeeded":
                    failed_jobs += 1
                    print("job {} {}: {}".format(number, job["state"], job.get("error")))
                elif name not in clients[0].ready:
                    for thread in clients:
                        thread.ready.append(name)
                if number in CHECKPOINTS or number == args.jobs:
                    time.sleep(2.0)  # let a recycled worker child settle
                    row = (
                        number,
                        tree_rss_mb(api.pid),
                        tree_rss_mb(worker.pid),
                        sum(c.failed for c in clients),
                        time.time() - started,
                    )
                    rows.append(row)
                    print(
                        "after job {:>2}: API {:7.0f} MiB   worker {:7.0f} MiB   failed /label {}  "
                        "({:.0f} s)".format(*row),
                        flush=True,
                    )
    finally:
        stop.set()
        for thread in clients:
            thread.join(70)
        for process in (api, worker):
            process.send_signal(signal.SIGTERM)
        for process in (api, worker):
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
    ok = sum(c.ok for c in clients)
    failed = sum(c.failed for c in clients)
    retried = sum(c.retried for c in clients)
    errors: Dict[str, int] = {}
    for thread in clients:
        for what, count in thread.errors.items():
            errors[what] = errors.get(what, 0) + count
    print("\n| after job | API RSS MiB | worker RSS MiB (tree) |")
    print("|---:|---:|---:|")
    for number, api_mb, worker_mb, _, _ in rows:
        print("| {} | {:.0f} | {:.0f} |".format(number, api_mb, worker_mb))
    print(
        "\n/label: {} ok, {} failed, {} answered 503 Retry-After and retried; jobs failed: {}".format(
            ok, failed, retried, failed_jobs
        )
    )
    if errors:
        print("failures:", errors)
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        for label, index in (("API", 1), ("worker", 2)):
            print(
                "{}: last / after job {} = {:.2f} (goal <= 1.10)".format(
                    label, first[0], last[index] / first[index]
                )
            )
    print("state and logs:", home)
    return 0 if failed == 0 and failed_jobs == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
