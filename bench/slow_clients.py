"""Slow clients against normal ones: does trickling hurt everyone else?

    .venv/bin/python -m bench.slow_clients [--model VERSION_DIR] [--seconds 10] [--slow 20] [--normal 8]

Starts ``poets serve`` (the uvicorn limits and the body deadline of the settings in
effect) with one model and measures the ``/label`` latency of ``--normal`` keep-alive
clients, each sending one photo at a time:

1. alone, for ``--seconds``;
2. while ``--slow`` clients trickle their request bodies, a byte every ``--trickle-s``
   seconds (each starts again on a new connection when the server cuts it off).

It prints both p50/p99 and their ratio (goal: p99 with slow clients <= 2x p99 without),
the normal clients' errors, and what the slow clients got (408s, closed connections).
Without ``--model`` a model is trained first with ``poets retrain`` (200 steps).
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.service import Client, percentile  # noqa: E402
from tests import assets  # noqa: E402
from tests.net import free_port  # noqa: E402

MODEL = "flowers"


def serve(home: Path, env: Dict[str, str], log: Path) -> "subprocess.Popen[bytes]":
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "poets", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=str(REPO),
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    process.port = port  # type: ignore[attr-defined]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("poets serve exited with {}; see {}".format(process.returncode, log))
        try:
            status, _ = Client(port, 2.0).json("GET", "/readyz")
            if status == 200:
                return process
        except (OSError, ValueError):
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError("poets serve was not ready in 180 s; see {}".format(log))


def normal_clients(
    port: int, photos: Sequence[bytes], clients: int, seconds: float, warmup: float = 1.0
) -> Dict[str, float]:
    latencies: List[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + warmup + seconds
    measure_from = time.perf_counter() + warmup

    def work(index: int) -> None:
        client = Client(port, timeout=60.0)
        i = index
        while True:
            started = time.perf_counter()
            if started >= stop_at:
                break
            try:
                client.label(photos[i % len(photos)])
                took = time.perf_counter() - started
                if started >= measure_from:
                    with lock:
                        latencies.append(took)
            except Exception:
                with lock:
                    errors[0] += 1
            i += 1
        client.close()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "p50_ms": 1000 * percentile(latencies, 50),
        "p99_ms": 1000 * percentile(latencies, 99),
        "requests": float(len(latencies)),
        "errors": float(errors[0]),
    }


class SlowClients:
    """``count`` connections, each trickling a /label body a byte every ``pause_s``."""

    def __init__(self, port: int, body: bytes, count: int, pause_s: float) -> None:
        self.port = port
        self.body = body
        self.pause_s = pause_s
        self.stop = threading.Event()
        self.answers: Dict[str, int] = {}
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(count)]

    def _count(self, what: str) -> None:
        with self.lock:
            self.answers[what] = self.answers.get(what, 0) + 1

    def _run(self) -> None:
        head = (
            "POST /label HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
            "Content-Length: {}\r\n\r\n".format(len(self.body))
        ).encode()
        while not self.stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                    sock.sendall(head)
                    sock.settimeout(self.pause_s)
                    what = self._trickle(sock)
            except OSError as exc:
                what = "connect failed ({})".format(type(exc).__name__)
            self._count(what)

    def _trickle(self, sock: socket.socket) -> str:
        for index in range(len(self.body)):
            if self.stop.is_set():
                return "still trickling at the end"
            try:
                sock.sendall(self.body[index : index + 1])
                answer = sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return "closed by the server"
            if not answer:
                return "closed by the server"
            return "answered {}".format(answer.split(b" ", 2)[1].decode(errors="replace"))
        return "body sent"

    def __enter__(self) -> "SlowClients":
        for thread in self.threads:
            thread.start()
        time.sleep(min(2.0, 20 * self.pause_s))  # all connected and trickling
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)


def trained_model(home: Path, env: Dict[str, str]) -> Path:
    flowers = assets.datasets_dir() / "flowers_small"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "poets",
            "retrain",
            "--image_dir",
            str(flowers),
            "--how_many_training_steps",
            "200",
            "--name",
            MODEL,
        ],
        cwd=str(REPO),
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return home / "models" / MODEL / "1"


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, default=None, help="a published version folder to serve (default: train one)"
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--slow", type=int, default=20)
    parser.add_argument("--normal", type=int, default=8)
    parser.add_argument(
        "--trickle-s", type=float, default=0.5, help="seconds between two bytes of a slow body"
    )
    args = parser.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="poets-bench-slow-"))
    env = dict(
        os.environ,
        POETS_HOME=str(home),
        POETS_BACKBONE_DIR=str(assets.backbone_dir()),
        POETS_LOG_LEVEL="WARNING",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
        POETS_DEFAULT_MODEL=MODEL,
    )
    process = None
    try:
        if args.model is None:
            print("training a model (200 steps)...", file=sys.stderr)
            trained_model(home, env)
        else:
            shutil.copytree(str(args.model), str(home / "models" / MODEL / "1"))
        photos = [
            p.read_bytes() for p in sorted((assets.datasets_dir() / "flowers_small").glob("*/*.jpg"))[:40]
        ]
        process = serve(home, env, home / "serve.log")
        port = process.port  # type: ignore[attr-defined]
        alone = normal_clients(port, photos, args.normal, args.seconds)
        with SlowClients(port, photos[0], args.slow, args.trickle_s) as slow:
            crowded = normal_clients(port, photos, args.normal, args.seconds)
        settings = {
            k: v
            for k, v in os.environ.items()
            if k in ("POETS_BODY_TIMEOUT_S", "POETS_MAX_CONNECTIONS", "POETS_KEEP_ALIVE_S")
        }
        print(
            "Slow clients: {} normal clients, {} slow ones trickling a byte every {} s; {} cores; "
            "settings {}".format(
                args.normal, args.slow, args.trickle_s, os.cpu_count(), settings or "default"
            )
        )
        print("| normal clients | p50 ms | p99 ms | requests | errors |")
        print("|---|---:|---:|---:|---:|")
        for label, result in (("alone", alone), ("with slow clients", crowded)):
            print(
                "| {} | {:.1f} | {:.1f} | {:.0f} | {:.0f} |".format(
                    label, result["p50_ms"], result["p99_ms"], result["requests"], result["errors"]
                )
            )
        ratio = crowded["p99_ms"] / alone["p99_ms"]
        print(
            "p99 ratio {:.2f} (goal <= 2.0: {}); slow clients: {}".format(
                ratio, "met" if ratio <= 2.0 else "NOT met", slow.answers
            )
        )
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(str(home), ignore_errors=True)


if __name__ == "__main__":
    main()
