"""Load with hot swaps: /label at a steady rate while new model versions keep arriving.

    .venv/bin/python -m bench.load [--rate 20] [--minutes 2] [--threads 4] [--swaps 20]
                                   [--mode publish|activate] [--keep]

Starts its own ``poets serve`` in a temporary POETS_HOME (real MobileNet from
``tests.assets.backbone_dir()``, a head trained here on a few flowers_small photos),
then drives /label at ``--rate`` requests per second from ``--threads`` client threads
for ``--minutes``, while a swapper makes ``--swaps`` new versions current, spread over
the run: ``publish`` writes a new version into the store (``ModelStore.publish``, as a
finished job does) and the API's poller loads it; ``activate`` flips between two
versions with ``POST /models/{name}/versions/{v}/activate``. Each swap counts once the
API reports the new version loaded.

Prints requests, errors, latency percentiles, swaps, and the API process' RSS at
start, after a warm-up (traffic plus two swaps: the steady state holds two models
during a swap), and at the end. Exits 1 when any request failed or the RSS grew more
than 10% over the warm-up baseline. Not a test: run it on demand; numbers depend on
what else the machine is doing (the load average is printed).
"""

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List, Optional, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from poets.engine.store.models import ModelStore  # noqa: E402
from tests import assets  # noqa: E402
from tests.net import free_port  # noqa: E402

NAME = "flowers"
LABELS = ("daisy", "dandelion", "roses", "sunflowers", "tulips")
MAX_RSS_GROWTH = 0.10


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` from /proc (Linux)."""
    with open("/proc/{}/status".format(pid)) as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS for pid {}".format(pid))


def train_first_version(home: Path, backbone_dir: Path, photos_root: Path, per_label: int) -> None:
    """A real head on a few photos, published as ``flowers`` v1 (in this process)."""
    from poets.engine.model.bottlenecks import BottleneckCache
    from poets.engine.model.training import TrainConfig
    from poets.engine.retrain import retrain

    data = home / "data"
    for label in LABELS:
        (data / label).mkdir(parents=True)
        for photo in sorted((photos_root / label).glob("*.jpg"))[:per_label]:
            shutil.copy(str(photo), str(data / label / photo.name))
    retrain(
        data,
        TrainConfig(how_many_training_steps=200),
        ModelStore(home / "models"),
        BottleneckCache(home / "bottlenecks"),
        backbone_dir,
        name=NAME,
        allow_download=False,
    )


def copy_version(store: ModelStore, source: int, tag: str) -> int:
    """Publish a copy of ``source`` as a new current version (written aside, renamed)."""

    def write(folder: Path) -> None:
        for entry in store.path(NAME, source).iterdir():
            target = folder / entry.name
            if entry.is_dir():
                shutil.copytree(str(entry), str(target))
            else:
                shutil.copy(str(entry), str(target))

    return store.publish(NAME, write, job_id="bench-{}".format(tag))


class Clients:
    """``threads`` clients sending /label at ``rate`` per second in total, on a fixed schedule."""

    def __init__(self, url: str, photos: List[bytes], rate: float, threads: int) -> None:
        self.url = url
        self.photos = photos
        self.rate = rate
        self.threads = threads
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.results: List[Tuple[float, float, int, Optional[int], str]] = []
        self._workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def start(self) -> None:
        self.started = time.monotonic()
        for worker in self._workers:
            worker.start()

    def stop(self) -> None:
        self.stopping.set()
        for worker in self._workers:
            worker.join(120)

    def take(self) -> List[Tuple[float, float, int, Optional[int], str]]:
        with self.lock:
            taken, self.results = self.results, []
        return taken

    def _run(self, index: int) -> None:
        interval = self.threads / self.rate
        due = self.started + index / self.rate
        pick = random.Random(index)
        with httpx.Client(base_url=self.url, timeout=60.0) as client:
            while not self.stopping.is_set():
                wait = due - time.monotonic()
                if wait > 0 and self.stopping.wait(wait):
                    break
                due = max(due + interval, time.monotonic() - interval)  # no catch-up bursts
                started = time.perf_counter()
                try:
                    response = client.post(
                        "/label",
                        content=pick.choice(self.photos),
                        params={"model": NAME},
                        headers={"Content-Type": "image/jpeg"},
                    )
                    status = response.status_code
                    version = response.json()["model"]["version"] if status == 200 else None
                    detail = "" if status == 200 else response.text[:200]
                except httpx.HTTPError as exc:
                    status, version, detail = 0, None, repr(exc)
                took = time.perf_counter() - started
                with self.lock:
                    self.results.append((time.time(), took, status, version, detail))


def wait_loaded(client: httpx.Client, version: int, timeout: float = 120.0) -> float:
    """Seconds until the API reports ``version`` loaded."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        if models.get(NAME, {}).get("loaded_version") == version:
            return time.monotonic() - started
        time.sleep(0.05)
    raise RuntimeError("version {} not loaded after {:.0f} s".format(version, timeout))


def swap(client: httpx.Client, store: ModelStore, mode: str, tag: str) -> Tuple[int, float]:
    """One swap; returns the new version and the seconds until the API served it."""
    started = time.monotonic()
    if mode == "publish":
        version = copy_version(store, 1, tag)
        # Keep the disk bounded: versions two behind are never loaded again.
        for old in store.versions(NAME):
            if 1 < old < version - 2:
                shutil.rmtree(str(store.path(NAME, old)), ignore_errors=True)
    else:
        current = store.current(NAME)
        version = 2 if current == 1 else 1
        response = client.post("/models/{}/versions/{}/activate".format(NAME, version))
        response.raise_for_status()
    wait_loaded(client, version)
    return version, time.monotonic() - started


def percentile(values: List[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=20.0, help="/label requests per second")
    parser.add_argument("--minutes", type=float, default=2.0, help="length of the measured run")
    parser.add_argument("--threads", type=int, default=4, help="client threads")
    parser.add_argument("--swaps", type=int, default=20, help="version swaps during the run")
    parser.add_argument("--mode", choices=("publish", "activate"), default="publish")
    parser.add_argument("--warmup-s", type=float, default=15.0, help="traffic before the baseline")
    parser.add_argument("--per-label", type=int, default=20, help="photos per label for the head")
    parser.add_argument("--keep", action="store_true", help="keep the temporary POETS_HOME")
    args = parser.parse_args(argv)

    photos_root = assets.datasets_dir() / "flowers_small"
    backbone_dir = assets.backbone_dir()
    photos = [p.read_bytes() for label in LABELS for p in sorted((photos_root / label).glob("*.jpg"))[-10:]]
    home = Path(tempfile.mkdtemp(prefix="poets-load-"))
    api: Optional[subprocess.Popen[bytes]] = None
    log_path = home / "api.log"
    try:
        print("training v1 in {} ...".format(home), flush=True)
        train_first_version(home, backbone_dir, photos_root, args.per_label)
        store = ModelStore(home / "models")
        if args.mode == "activate":
            copy_version(store, 1, "second")
            store.activate(NAME, 1)
        env = {k: v for k, v in os.environ.items() if not k.startswith("POETS_")}
        env.update(
            POETS_HOME=str(home),
            POETS_BACKBONE_DIR=str(backbone_dir),
            POETS_MODEL_POLL_S="0.5",
            POETS_LOG_LEVEL="INFO",
            TF_CPP_MIN_LOG_LEVEL="2",
            PYTHONUNBUFFERED="1",
        )
        port = free_port()
        with open(str(log_path), "wb") as log:
            api = subprocess.Popen(
                [sys.executable, "-m", "poets", "serve", "--host", "127.0.0.1", "--port", str(port)],
                cwd=str(REPO),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        client = httpx.Client(base_url="http://127.0.0.1:{}".format(port), timeout=60.0)
        deadline = time.monotonic() + 180
        while True:
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if api.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the API did not start:\n" + log_path.read_text()[-3000:])
            time.sleep(0.2)
        rss_start = rss_mib(api.pid)
        load_start = os.getloadavg()

        clients = Clients(client.base_url.__str__().rstrip("/"), photos, args.rate, args.threads)
        clients.start()
        print("warm-up: {:.0f} s of traffic and 2 swaps ...".format(args.warmup_s), flush=True)
        time.sleep(args.warmup_s / 2)
        for i in range(2):
            swap(client, store, args.mode, "warm{}".format(i))
        time.sleep(args.warmup_s / 2)
        warm = clients.take()
        rss_base = rss_mib(api.pid)

        run_s = args.minutes * 60.0
        print(
            "measuring: {:.1f} min at {:.0f}/s with {} swaps ...".format(args.minutes, args.rate, args.swaps),
            flush=True,
        )
        started = time.monotonic()
        swap_times: List[float] = []
        versions_seen = set()
        for i in range(args.swaps):
            due = started + (i + 0.5) * run_s / args.swaps
            time.sleep(max(0.0, due - time.monotonic()))
            version, took = swap(client, store, args.mode, "run{}".format(i))
            swap_times.append(took)
            versions_seen.add(version)
        time.sleep(max(0.0, started + run_s - time.monotonic()))
        clients.stop()
        elapsed = time.monotonic() - started
        results = clients.take()
        time.sleep(2.0)  # let the last retired model be released
        rss_end = rss_mib(api.pid)
        load_end = os.getloadavg()
    finally:
        if api is not None and api.poll() is None:
            api.send_signal(signal.SIGTERM)
            try:
                api.wait(60)
            except subprocess.TimeoutExpired:
                api.kill()
        if not args.keep:
            shutil.rmtree(str(home), ignore_errors=True)

    latencies = [took * 1000.0 for _, took, status, _, _ in results if status == 200]
    errors = [r for r in results if r[2] != 200]
    served = sorted({r[3] for r in results if r[3] is not None})
    growth = (rss_end - rss_base) / rss_base
    rows = [
        ("requests (measured run)", "{}".format(len(results))),
        (
            "achieved rate",
            "{:.1f}/s (target {:.0f}/s, {} threads)".format(len(results) / elapsed, args.rate, args.threads),
        ),
        ("errors", "{}".format(len(errors))),
        (
            "latency p50 / p90 / p99 / max",
            "{:.0f} / {:.0f} / {:.0f} / {:.0f} ms".format(
                percentile(latencies, 0.5),
                percentile(latencies, 0.9),
                percentile(latencies, 0.99),
                max(latencies) if latencies else float("nan"),
            ),
        ),
        (
            "swaps ({})".format(args.mode),
            "{} (+2 in warm-up); {} versions answered; swap p50 {:.2f} s, max {:.2f} s".format(
                len(swap_times), len(served), percentile(swap_times, 0.5), max(swap_times or [0.0])
            ),
        ),
        ("warm-up requests / errors", "{} / {}".format(len(warm), sum(1 for r in warm if r[2] != 200))),
        (
            "API RSS start / baseline / end",
            "{:.0f} / {:.0f} / {:.0f} MiB".format(rss_start, rss_base, rss_end),
        ),
        ("RSS growth over baseline", "{:+.1f}% (limit +{:.0f}%)".format(100 * growth, 100 * MAX_RSS_GROWTH)),
        (
            "load average (1 min) start / end",
            "{:.2f} / {:.2f} on {} cores".format(load_start[0], load_end[0], os.cpu_count()),
        ),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print("{}  {}".format(name.ljust(width), value))
    for _, _, status, _, detail in errors[:5]:
        print("error: {} {}".format(status, detail))
    failed = bool(errors) or growth > MAX_RSS_GROWTH
    print("\n" + ("FAIL" if failed else "OK"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
