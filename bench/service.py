"""Poets as a service, measured through HTTP against real processes.

    .venv/bin/python -m bench.service [--seconds 6] [--clients 1,4,8,16] [--mode up|split]

Starts ``poets up`` (or ``poets serve`` + ``poets worker`` with ``--mode split``) in a
fresh ``POETS_HOME`` and measures, in order:

* retraining through ``POST /retrain`` with a zip of ``flowers_small``: cold (empty
  bottleneck cache, first job of a fresh worker) and warm (same photos again), with the
  phase times the worker wrote into the job record;
* hot-swap: from the job's ``finished`` time (written by the worker when it published)
  to the first ``/label`` answer from the new version, seen by a client that reads
  ``GET /models`` every ``--swap-poll-ms`` and labels a photo as soon as a new version
  shows; and from ``POST /models/{name}/versions/{v}/activate`` (rollback)
  to the first answer from ``v``;
* ``/label`` latency of one client sending one photo at a time (p50, p99);
* the served model's own forward ceiling (``Predictor.predict`` on ``uint8`` input at
  batch 1 and 32, in this process, same version): what ``/label`` is compared with;
* ``/label`` throughput with 1, 4, 8, 16 concurrent keep-alive clients, for 500x333
  flower photos and for 1280x720 and 1920x1080 camera frames (goal at 8 clients: at
  least 0.65 of the model's batch-32 ceiling), and the one-client p50 against the
  batch-1 model time (goal: at most +3 ms);
* the peak RSS (``VmHWM``) of the API process and of the worker process.

The clients are ``http.client`` keep-alive connections in threads of this process:
almost all their time is spent waiting in ``recv`` with the GIL released, so they cost
little CPU next to the server (the CPU they used is printed as ``client_cpu``).

``--model DIR`` serves a published version folder instead of training (the retrain and
hot-swap rows are skipped): the ``/label`` figures alone, in a minute or two.

Run alone this prints its own rows; ``python -m bench`` runs it after the engine
rows and prints every figure as a ratio to the backbone ceiling measured in that run.
"""

import argparse
import http.client
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import assets  # noqa: E402
from tests.net import free_port  # noqa: E402

MODEL = "flowers"


# -- small helpers ------------------------------------------------------------------------------
def load_average() -> str:
    return " ".join("{:.2f}".format(x) for x in os.getloadavg())


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[index]


def peak_rss_mib(pid: int) -> Optional[float]:
    """``VmHWM``: the most resident memory the process ever had."""
    try:
        with open("/proc/{}/status".format(pid)) as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def children(pid: int) -> List[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/{}/stat".format(entry)) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    try:
        with open("/proc/{}/stat".format(pid)) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))


def parse_time(text: Optional[str]) -> Optional[float]:
    return datetime.fromisoformat(text).timestamp() if text else None


def flower_zip(root: Path) -> bytes:
    """The dataset as the zip a user would upload (JPEGs stored, not recompressed)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(root.glob("*/*")):
            if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
                archive.write(str(path), "flowers/{}/{}".format(path.parent.name, path.name))
    return buffer.getvalue()


def camera_frames(photos: Sequence[Path], count: int, size: Tuple[int, int] = (1280, 720)) -> List[bytes]:
    """JPEGs of ``size`` (1280x720 by default) made from flower photos (camera-like content)."""
    from PIL import Image

    out = []
    for photo in photos[:count]:
        bicubic = getattr(Image, "Resampling", Image).BICUBIC
        image = Image.open(str(photo)).convert("RGB").resize(size, bicubic)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def multipart(fields: Dict[str, str], files: Dict[str, Tuple[str, bytes, str]]) -> Tuple[bytes, str]:
    boundary = "poetsbench{}".format(os.getpid())
    parts = []
    for name, value in fields.items():
        parts.append(
            '--{}\r\nContent-Disposition: form-data; name="{}"\r\n\r\n{}\r\n'.format(
                boundary, name, value
            ).encode()
        )
    for name, (filename, data, ctype) in files.items():
        parts.append(
            '--{}\r\nContent-Disposition: form-data; name="{}"; filename="{}"\r\n'
            "Content-Type: {}\r\n\r\n".format(boundary, name, filename, ctype).encode()
        )
        parts.append(data)
        parts.append(b"\r\n")
    parts.append("--{}--\r\n".format(boundary).encode())
    return b"".join(parts), "multipart/form-data; boundary={}".format(boundary)


class Client:
    """One keep-alive HTTP/1.1 connection (what a camera or a batch labeller holds)."""

    def __init__(self, port: int, timeout: float = 120.0) -> None:
        self.port = port
        self.timeout = timeout
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def call(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        content_type: str = "application/octet-stream",
    ) -> Tuple[int, bytes]:
        headers = {"Content-Type": content_type} if body is not None else {}
        try:
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
            return response.status, response.read()
        except (http.client.HTTPException, OSError):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            raise

    def json(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        content_type: str = "application/octet-stream",
    ) -> Tuple[int, Any]:
        status, data = self.call(method, path, body, content_type)
        return status, json.loads(data.decode() or "null")

    def label(self, image: bytes) -> Dict[str, Any]:
        status, data = self.call("POST", "/label", image, "image/jpeg")
        if status != 200:
            raise RuntimeError("/label answered {}: {!r}".format(status, data[:300]))
        return json.loads(data.decode())  # type: ignore[no-any-return]

    def close(self) -> None:
        self.conn.close()


# -- the processes ------------------------------------------------------------------------------
class Stack:
    """The API and one worker, as a user runs them, in a fresh ``POETS_HOME``."""

    def __init__(self, home: Path, mode: str = "up", env: Optional[Dict[str, str]] = None) -> None:
        self.home = home
        self.mode = mode
        self.port = free_port()
        self.env = dict(
            os.environ,
            POETS_HOME=str(home),
            POETS_BACKBONE_DIR=str(assets.backbone_dir()),
            POETS_DEFAULT_MODEL=MODEL,
            POETS_LOG_LEVEL="WARNING",
            TF_CPP_MIN_LOG_LEVEL="2",
            PYTHONUNBUFFERED="1",
        )
        self.env.update(env or {})
        self.processes: List[subprocess.Popen] = []  # type: ignore[type-arg]
        self.log = (home / "bench-service.log").open("wb")
        self.started_s = 0.0

    def _spawn(self, *argv: str) -> "subprocess.Popen[bytes]":
        process = subprocess.Popen(
            [sys.executable, "-m", "poets", *argv],
            cwd=str(REPO),
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def start(self, timeout: float = 180.0) -> "Stack":
        started = time.perf_counter()
        bind = ["--host", "127.0.0.1", "--port", str(self.port)]
        if self.mode == "up":
            self._spawn("up", *bind)
        else:
            self._spawn("serve", *bind)
            self._spawn("worker")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(
                        "poets {} exited with {}; see {}".format(self.mode, process.returncode, self.log.name)
                    )
            try:
                status, _ = Client(self.port, 2.0).call("GET", "/healthz")
                if status == 200:
                    self.started_s = time.perf_counter() - started
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the API did not answer in {}s; see {}".format(timeout, self.log.name))

    @property
    def api_pid(self) -> int:
        return self.processes[0].pid

    def worker_pids(self) -> List[int]:
        if self.mode == "up":
            roots = children(self.api_pid)
        else:
            roots = [self.processes[1].pid]
        # A prefork pool runs jobs in children of the worker: count them too.
        return roots + [c for r in roots for c in children(r)]

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        self.log.close()


# -- measurements -------------------------------------------------------------------------------
class Watcher(threading.Thread):
    """Sees each new version's first ``/label`` answer, cheaply.

    It reads ``GET /models`` every ``interval_s`` (no decode, no model run, so the job
    being timed keeps its CPU) and, as soon as a new loaded version shows, labels one
    photo and records (time, version) of that answer.
    """

    def __init__(self, port: int, image: bytes, interval_s: float) -> None:
        super().__init__(name="swap-watcher", daemon=True)
        self.port = port
        self.image = image
        self.interval_s = interval_s
        self.seen: List[Tuple[float, int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        client = Client(self.port)
        labelled = None
        while not self.stopped.is_set():
            try:
                status, models = client.json("GET", "/models")
                loaded = (
                    [
                        m.get("loaded_version")
                        for m in (models or {}).get("models", [])
                        if m.get("name") == MODEL
                    ]
                    if status == 200
                    else []
                )
                if loaded and loaded[0] is not None and loaded[0] != labelled:
                    status, data = client.call("POST", "/label", self.image, "image/jpeg")
                    if status == 200:
                        labelled = int(json.loads(data.decode())["model"]["version"])
                        self.seen.append((time.time(), labelled))
            except (OSError, http.client.HTTPException, ValueError):
                pass
            self.stopped.wait(self.interval_s)
        client.close()

    def first(self, version: int, after: float = 0.0) -> Optional[float]:
        for when, seen in list(self.seen):
            if seen == version and when >= after:
                return when
        return None


def retrain(port: int, archive: bytes, steps: int, timeout: float = 1800.0) -> Dict[str, Any]:
    client = Client(port)
    body, ctype = multipart(
        {"name": MODEL, "how_many_training_steps": str(steps)},
        {"file": ("flowers.zip", archive, "application/zip")},
    )
    sent = time.time()
    status, job = client.json("POST", "/retrain", body, ctype)
    if status != 202:
        raise RuntimeError("POST /retrain answered {}: {}".format(status, job))
    deadline = time.monotonic() + timeout
    while job["state"] not in ("succeeded", "failed", "cancelled"):
        if time.monotonic() > deadline:
            raise RuntimeError("job {} still {} after {}s".format(job["id"], job["state"], timeout))
        time.sleep(0.1)
        status, job = client.json("GET", "/jobs/{}".format(job["id"]))
    seen_done = time.time()
    client.close()
    if job["state"] != "succeeded":
        raise RuntimeError("job {} {}: {}".format(job["id"], job["state"], job.get("error")))
    job["_sent"] = sent
    job["_seen_done"] = seen_done
    return job


def throughput(
    port: int, images: Sequence[bytes], clients: int, seconds: float, warmup: float = 1.0, server_pid: int = 0
) -> Dict[str, float]:
    """Images per second answered with ``clients`` connections each sending one at a time."""
    counts = [0] * clients
    errors = [0] * clients
    latencies: List[List[float]] = [[] for _ in range(clients)]
    start = threading.Event()
    state = {"measure_from": 0.0, "stop_at": 0.0}

    def work(index: int) -> None:
        client = Client(port)
        i = index * 7
        start.wait()
        while True:
            now = time.perf_counter()
            if now >= state["stop_at"]:
                break
            try:
                client.label(images[i % len(images)])
                done = time.perf_counter()
                if now >= state["measure_from"] and done <= state["stop_at"]:
                    counts[index] += 1
                    latencies[index].append(done - now)
            except (OSError, RuntimeError, http.client.HTTPException):
                errors[index] += 1
            i += 1
        client.close()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    now = time.perf_counter()
    state["measure_from"] = now + warmup
    state["stop_at"] = now + warmup + seconds
    start.set()
    time.sleep(warmup)
    cpu0, server0 = time.process_time(), cpu_seconds(server_pid)
    for thread in threads:
        thread.join()
    cpu = time.process_time() - cpu0
    server_cpu = cpu_seconds(server_pid) - server0
    flat = [x for row in latencies for x in row]
    # Requests that started in the window and finished in it, over the window's length.
    return {
        "img_s": sum(counts) / seconds,
        "errors": float(sum(errors)),
        "p50_ms": 1000 * percentile(flat, 50),
        "p99_ms": 1000 * percentile(flat, 99),
        "client_cpu": cpu / seconds,
        "server_ms_per_img": 1000 * server_cpu / max(1, sum(counts)),
    }


def latency(port: int, images: Sequence[bytes], count: int) -> Dict[str, float]:
    client = Client(port)
    for image in images[:5]:
        client.label(image)
    took, server = [], []
    for i in range(count):
        started = time.perf_counter()
        answer = client.label(images[i % len(images)])
        took.append(time.perf_counter() - started)
        server.append(answer["took_ms"])
    client.close()
    return {
        "p50_ms": 1000 * percentile(took, 50),
        "p99_ms": 1000 * percentile(took, 99),
        "server_p50_ms": percentile(server, 50),
    }


def model_ceiling(folder: Path, seconds: float) -> Dict[int, float]:
    """img/s of the served model alone (``Predictor.predict`` on random ``uint8``), batch 1 and 32."""
    import numpy as np

    from poets.engine.predictor import Predictor

    predictor = Predictor(folder)
    size = predictor.size
    rng = np.random.RandomState(0)
    found = {}
    for batch in (1, 32):
        pixels = rng.randint(0, 256, (batch, size, size, 3)).astype(np.uint8)
        predictor.predict(pixels)
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            predictor.predict(pixels)
            done += batch
        found[batch] = done / (time.perf_counter() - started)
    return found


# -- the run ------------------------------------------------------------------------------------
Row = Dict[str, Any]


def row(name: str, value: float, unit: str, kind: str = "", note: str = "") -> Row:
    """``kind`` says what the value is compared with: ``rate`` (img/s vs the ceiling),
    ``ms1`` (latency vs the batch-1 model time), ``e2e`` (seconds for ``count`` photos,
    as img/s vs the ceiling), or empty (shown as is). ``poets`` names the TensorFlow for
    Poets figure it is also compared with, when that ran."""
    return {"name": name, "value": value, "unit": unit, "kind": kind, "note": note, "load": load_average()}


def run(args: argparse.Namespace, say: Any = print) -> List[Row]:
    flowers = assets.datasets_dir() / "flowers_small"
    photos = sorted(flowers.glob("*/*.jpg"))
    # The 500x333 photos (what the issue calls a photo), in label order, mixed.
    from PIL import Image

    standard = [p for p in photos if Image.open(str(p)).size == (500, 333)]
    photo_bytes = [p.read_bytes() for p in standard]
    frames = camera_frames(standard, 16)
    full_hd = camera_frames(standard, 16, (1920, 1080))
    archive = flower_zip(flowers)
    rows: List[Row] = []
    count = len(photos)
    home = Path(tempfile.mkdtemp(prefix="poets-bench-service-"))
    extra_env = {}
    if args.poll_s is not None:
        extra_env["POETS_MODEL_POLL_S"] = str(args.poll_s)
    if args.model is not None:
        import shutil

        shutil.copytree(str(args.model), str(home / "models" / MODEL / "1"))
    stack = Stack(home, args.mode, extra_env)
    say("service: poets {} in {} (log: {})".format(args.mode, home, stack.log.name))
    stack.start()
    watcher = None
    try:
        rows.append(row("API start to first /healthz", stack.started_s, "s"))
        if args.model is None:
            watcher = Watcher(stack.port, photo_bytes[0], args.swap_poll_ms / 1000.0)
            watcher.start()
            rows += retrain_rows(args, stack, archive, count, watcher, photo_bytes, say)
        rows += label_rows(args, stack, home, photo_bytes, frames, full_hd, say)
        api = peak_rss_mib(stack.api_pid)
        workers = [(pid, peak_rss_mib(pid)) for pid in stack.worker_pids()]
        rows.append(row("peak RSS, API process", api or float("nan"), "MiB"))
        for pid, rss in workers:
            rows.append(row("peak RSS, worker process (pid {})".format(pid), rss or float("nan"), "MiB"))
    finally:
        if watcher is not None:
            watcher.stopped.set()
        stack.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(str(home), ignore_errors=True)
    return rows


def retrain_rows(
    args: argparse.Namespace,
    stack: Stack,
    archive: bytes,
    count: int,
    watcher: Watcher,
    photo_bytes: List[bytes],
    say: Any,
) -> List[Row]:
    """Cold and warm retrains through the API, and the hot-swaps they cause."""
    rows: List[Row] = []
    jobs = []
    for label in ("cold", "warm"):
        say("service: retrain {} ({} photos, {} steps)...".format(label, count, args.steps))
        job = retrain(stack.port, archive, args.steps)
        jobs.append(job)
        created, started, finished = (parse_time(job[k]) for k in ("created", "started", "finished"))
        result = job["result"] or {}
        timings = result.get("timings", {})
        total = job["_seen_done"] - job["_sent"]
        assert created is not None and started is not None and finished is not None
        phases = " ".join("{}={:.1f}s".format(k[:-2], v) for k, v in timings.items() if k != "total_s")
        total_row = row(
            "retrain {}, POST to job seen done ({} photos)".format(label, count),
            total,
            "s",
            "e2e",
            "queue wait {:.1f}s; {}".format(started - created, phases),
        )
        total_row.update(count=count, poets="retrain_" + label)
        rows.append(total_row)
        bottleneck_s = timings.get("bottlenecks_s")
        if bottleneck_s:
            computed = result.get("bottlenecks_computed") or 0
            rows.append(
                row(
                    "  retrain {}: bottleneck phase".format(label),
                    count / bottleneck_s,
                    "img/s",
                    "rate" if computed else "",
                    "{} computed, {} cached, {:.1f}s".format(
                        result.get("bottlenecks_computed"), result.get("bottlenecks_cached"), bottleneck_s
                    ),
                )
            )
        if label == "cold" and bottleneck_s:
            # The full flower_photos set is not available offline: the fixed costs
            # (start, backbone, training steps, export) do not grow with the photo
            # count, the bottleneck phase does, at the rate just measured.
            estimate = total - bottleneck_s + 3670 / (count / bottleneck_s)
            est_row = row(
                "  retrain cold, 3670 photos (estimate)",
                estimate,
                "s",
                "e2e",
                "fixed {:.1f}s + 3670 photos at the bottleneck rate above".format(total - bottleneck_s),
            )
            est_row.update(count=3670, poets="retrain_cold_3670")
            rows.append(est_row)
        # Hot-swap: the worker wrote `finished` when it published; the watcher saw the
        # new version answer at `first`.
        deadline = time.monotonic() + 30
        version = int(job["version"])
        first = None
        while first is None and time.monotonic() < deadline:
            first = watcher.first(version)
            time.sleep(0.05)
        swap = (first - finished) if first is not None else float("nan")
        rows.append(
            row(
                "  hot-swap after job {} (v{}): success to first answer".format(label, version),
                swap,
                "s",
                "",
                "goal <= 2 s; API polls the store every {} s "
                "(POETS_MODEL_POLL_S); watcher polls /models every {:.0f} ms".format(
                    args.poll_s if args.poll_s is not None else "default", args.swap_poll_ms
                ),
            )
        )
    watcher.stopped.set()
    watcher.join()
    # Rollback: activate v1 and time to its first answer.
    client = Client(stack.port)
    before = time.time()
    status, body = client.json("POST", "/models/{}/versions/1/activate".format(MODEL))
    if status != 200:
        raise RuntimeError("activate answered {}: {}".format(status, body))
    while int(client.label(photo_bytes[0])["model"]["version"]) != 1:
        pass
    rows.append(
        row(
            "  hot-swap on activate (rollback to v1): to first answer",
            time.time() - before,
            "s",
            "",
            "POST .../activate included",
        )
    )
    client.close()

    return rows


def label_rows(
    args: argparse.Namespace,
    stack: Stack,
    home: Path,
    photo_bytes: List[bytes],
    frames: List[bytes],
    full_hd: List[bytes],
    say: Any,
) -> List[Row]:
    """/label latency and throughput, each against the served model's own ceiling."""
    rows: List[Row] = []
    client = Client(stack.port)
    served = client.label(photo_bytes[0])["model"]
    client.close()
    folder = home / "models" / served["name"] / str(served["version"])
    say("service: the served model's forward ceiling ({} v{})...".format(served["name"], served["version"]))
    model = model_ceiling(folder, min(args.seconds, 5.0))
    model_ms = 1000.0 / model[1]
    for batch in (1, 32):
        rows.append(
            row(
                "ceiling: served model forward, batch {}".format(batch),
                model[batch],
                "img/s",
                "",
                "Predictor.predict on random uint8; {:.1f} ms per batch".format(
                    1000.0 * batch / model[batch]
                ),
            )
        )
    say("service: /label latency, 1 client...")
    for kind, images, count in (
        ("500x333 photo", photo_bytes, args.latency_requests),
        ("1280x720 frame", frames, args.latency_requests // 2),
        ("1920x1080 frame", full_hd, args.latency_requests // 2),
    ):
        single = latency(stack.port, images, count)
        latency_row = row(
            "/label p50, 1 client, {}".format(kind),
            single["p50_ms"],
            "ms",
            "ms1",
            "p99 {:.1f} ms; server took_ms p50 {:.1f}; vs the served model at "
            "batch 1 ({:.1f} ms): {:+.1f} ms (goal <= +3)".format(
                single["p99_ms"], single["server_p50_ms"], model_ms, single["p50_ms"] - model_ms
            ),
        )
        if kind == "500x333 photo":
            latency_row["poets"] = "label_image"
        rows.append(latency_row)
    for kind, images in (
        ("500x333 photo", photo_bytes),
        ("1280x720 frame", frames),
        ("1920x1080 frame", full_hd),
    ):
        for clients in args.clients:
            say("service: /label throughput, {} clients, {}...".format(clients, kind))
            result = throughput(stack.port, images, clients, args.seconds, server_pid=stack.api_pid)
            share = result["img_s"] / model[32]
            rows.append(
                row(
                    "/label {:2d} clients, {}".format(clients, kind),
                    result["img_s"],
                    "img/s",
                    "rate",
                    "{:.2f} of the served model's batch-32 ceiling{}; p50 {:.0f} ms, p99 "
                    "{:.0f} ms, API cpu {:.1f} ms/img, client cpu {:.0f}%{}".format(
                        share,
                        " (goal >= 0.65)" if clients == 8 else "",
                        result["p50_ms"],
                        result["p99_ms"],
                        result["server_ms_per_img"],
                        100 * result["client_cpu"],
                        ", {:.0f} errors".format(result["errors"]) if result["errors"] else "",
                    ),
                )
            )
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode",
        choices=("up", "split"),
        default="up",
        help="'up': poets up; 'split': poets serve + poets worker",
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="time per throughput point")
    parser.add_argument(
        "--clients",
        type=lambda t: [int(x) for x in t.split(",")],
        default=[1, 4, 8, 16],
        help="concurrent clients, comma-separated",
    )
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--steps", type=int, default=4000, help="how_many_training_steps per job")
    parser.add_argument("--swap-poll-ms", type=float, default=50.0)
    parser.add_argument(
        "--poll-s",
        type=float,
        default=None,
        help="POETS_MODEL_POLL_S for the API (default: the setting's default)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the POETS_HOME afterwards")
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="serve this published version folder instead of training (skips the retrain and hot-swap rows)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args()
    for r in run(args):
        print("{:58} {:9.2f} {:6} {}".format(r["name"], r["value"], r["unit"], r["note"]))


if __name__ == "__main__":
    main()
