"""Memory and disk from one client: /datasets under four attacks, and the API's RSS.

    .venv/bin/python -m bench.datasets_memory [--model VERSION_DIR] [--only upload,thumbnails,export,listing]

Each attack runs against a fresh ``poets serve`` (its own POETS_HOME, one model) and
samples the API process's resident memory (``VmRSS``, every 20 ms) from just before the
attack to its end:

- ``upload`` (issue 23, item 6): ``--upload-requests`` concurrent multipart requests to
  ``/datasets/{name}/images``, each with ``--upload-files`` uncompressed noise PNGs of
  ``--upload-side`` pixels square (4000: 48 MB each), streamed from disk by the client.
- ``thumbnails`` (item 7): eight single-colour 6300x6300 PNGs (about 120 KB each, under
  the pixel limit) added, then their eight thumbnails asked for at once; also the API's
  CPU seconds for those eight requests.
- ``export`` (item 8): ``--export-clients`` clients ask for the export of a dataset of
  four 48 MB images and never read; RSS over ``--stall-s`` seconds, then whether the
  server cut them off (``POETS_SEND_TIMEOUT_S`` is set to 5 s here).
- ``listing`` (item 9): ``--listing-images`` tiny images added (1,000 per request), then
  one ``GET /datasets`` alone, ``wrk -c 16`` on ``GET /datasets`` for ``--seconds``, and
  one client's ``/label`` latency alone and while wrk runs.

A benchmark, not a test: minutes, and on a busy machine the times move (the memory
figures much less). Without ``--model`` a model is trained first (200 steps). Needs
``wrk`` on the PATH for the listing attack.
"""

import argparse
import http.client
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench.service import Client, percentile  # noqa: E402
from bench.slow_clients import MODEL, serve, trained_model  # noqa: E402
from tests import assets  # noqa: E402

ATTACKS = ("upload", "thumbnails", "export", "listing")


def rss_mib(pid: int) -> float:
    for line in Path("/proc/{}/status".format(pid)).read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def cpu_s(pid: int) -> float:
    fields = Path("/proc/{}/stat".format(pid)).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))


class Sampler:
    """The RSS of ``pid`` every 20 ms while in the ``with`` block: ``before``, ``peak``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = self.peak = rss_mib(pid)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            try:
                self.peak = max(self.peak, rss_mib(self.pid))
            except OSError:
                return

    def __enter__(self) -> "Sampler":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def row(self, attack: str, notes: str) -> Dict[str, Any]:
        return {"attack": attack, "before": self.before, "peak": self.peak, "notes": notes}


def png(pixels: Any, compress_level: int = 6) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", compress_level=compress_level)
    return out.getvalue()


def noise_files(folder: Path, count: int, side: int) -> List[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(count):
        path = folder / "noise-{}-{}.png".format(side, seed)
        if not path.exists():
            pixels = np.random.RandomState(seed).randint(0, 256, (side, side, 3), dtype=np.uint8)
            path.write_bytes(png(pixels, compress_level=0))
        paths.append(path)
    return paths


def multipart(label: str, parts: Sequence[Tuple[str, Any]], boundary: str) -> Iterator[bytes]:
    """The form a piece at a time; a part is a path (streamed) or bytes."""
    for name, part in parts:
        yield (
            '--{}\r\nContent-Disposition: form-data; name="files"; filename="{}"\r\n'
            "Content-Type: image/png\r\n\r\n".format(boundary, name)
        ).encode()
        if isinstance(part, Path):
            with part.open("rb") as source:
                while True:
                    piece = source.read(1024 * 1024)
                    if not piece:
                        break
                    yield piece
        else:
            yield part
        yield b"\r\n"
    yield '--{}\r\nContent-Disposition: form-data; name="label"\r\n\r\n{}\r\n--{}--\r\n'.format(
        boundary, label, boundary
    ).encode()


def add(port: int, dataset: str, label: str, parts: Sequence[Tuple[str, Any]]) -> int:
    boundary = uuid.uuid4().hex
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    try:
        conn.request(
            "POST",
            "/datasets/{}/images".format(dataset),
            body=multipart(label, parts, boundary),
            headers={
                "Content-Type": "multipart/form-data; boundary={}".format(boundary),
                "Transfer-Encoding": "chunked",
            },
            encode_chunked=True,
        )
        response = conn.getresponse()
        body = response.read()
        if response.status != 201:
            print("  add answered {}: {!r}".format(response.status, body[:200]), file=sys.stderr)
        return response.status
    finally:
        conn.close()


def create(port: int, name: str) -> None:
    status, _ = Client(port, 60).call(
        "POST", "/datasets", b'{"name": "%s"}' % name.encode(), "application/json"
    )
    assert status == 201, status


def in_threads(work: Any, count: int) -> List[Any]:
    out: List[Any] = [None] * count

    def run(index: int) -> None:
        out[index] = work(index)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out


# -- the attacks ----------------------------------------------------------------------------------
def attack_upload(pid: int, port: int, args: Any, scratch: Path) -> Dict[str, Any]:
    per, requests = args.upload_files, args.upload_requests
    files = noise_files(scratch, per * requests, args.upload_side)
    total = sum(p.stat().st_size for p in files)
    create(port, "upload")
    with Sampler(pid) as sampler:
        statuses = in_threads(
            lambda i: add(port, "upload", "noise", [(p.name, p) for p in files[i * per : (i + 1) * per]]),
            requests,
        )
    return sampler.row(
        "upload",
        "{} concurrent requests of {} x {:.0f} MB = {:.0f} MB; answers {}".format(
            requests, per, files[0].stat().st_size / 1e6, total / 1e6, statuses
        ),
    )


def attack_thumbnails(pid: int, port: int, args: Any, scratch: Path) -> Dict[str, Any]:
    create(port, "flat")
    parts = []
    for index in range(8):
        pixels = np.zeros((6300, 6300, 3), dtype=np.uint8)
        pixels[:, :] = (index * 30, 100, 200 - index * 20)
        parts.append(("flat{}.png".format(index), png(pixels, compress_level=9)))
    size = len(parts[0][1])
    assert add(port, "flat", "flat", parts) == 201
    _, listed = Client(port, 60).json("GET", "/datasets/flat/images")
    ids = [item["id"] for item in listed["items"]]
    time.sleep(1.0)  # let the upload's memory settle
    used = cpu_s(pid)
    with Sampler(pid) as sampler:
        answers = in_threads(
            lambda i: Client(port, 300).call("GET", "/datasets/flat/images/{}/thumbnail".format(ids[i]))[0],
            len(ids),
        )
    took = cpu_s(pid) - used
    return sampler.row(
        "thumbnails",
        "8 at once of single-colour 6300x6300 PNGs ({:.0f} KB each): API CPU {:.1f} s; answers {}".format(
            size / 1e3, took, answers
        ),
    )


def attack_export(pid: int, port: int, args: Any, scratch: Path) -> Dict[str, Any]:
    files = noise_files(scratch, 4, 4000)
    create(port, "export")
    assert add(port, "export", "noise", [(p.name, p) for p in files]) == 201
    archive_size = sum(p.stat().st_size for p in files)
    time.sleep(1.0)
    sockets = []
    with Sampler(pid) as sampler:
        for _ in range(args.export_clients):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"GET /datasets/export/archive HTTP/1.1\r\nHost: poets\r\n\r\n")
            sockets.append(sock)
        time.sleep(args.stall_s)  # nobody reads
    cut = 0
    for sock in sockets:  # now read what the server still sends: all of it, or a cut-off part
        sock.settimeout(10)
        got = 0
        try:
            while True:
                data = sock.recv(1 << 20)
                if not data:
                    break
                got += len(data)
        except socket.timeout:
            pass
        cut += got < archive_size
        sock.close()
    return sampler.row(
        "export",
        "{} clients that never read, for {:.0f} s, of a {:.0f} MB export; {} of them cut off "
        "(POETS_SEND_TIMEOUT_S=5)".format(args.export_clients, args.stall_s, archive_size / 1e6, cut),
    )


def wrk(port: int, seconds: float, path: str, connections: int = 16) -> Dict[str, Any]:
    out = subprocess.run(
        [
            "wrk",
            "-t",
            "2",
            "-c",
            str(connections),
            "-d",
            "{}s".format(int(seconds)),
            "--timeout",
            "60s",
            "http://127.0.0.1:{}{}".format(port, path),
        ],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    latency = re.search(r"Latency\s+([\d.]+\w+)", out)
    return {
        "rate": float(rate.group(1)) if rate else float("nan"),
        "latency": latency.group(1) if latency else "?",
    }


def label_latency(port: int, photo: bytes, seconds: float) -> Tuple[float, float, int]:
    client = Client(port, 120)
    took: List[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        started = time.perf_counter()
        client.label(photo)
        took.append(time.perf_counter() - started)
    client.close()
    return 1000 * percentile(took, 50), 1000 * percentile(took, 99), len(took)


def attack_listing(pid: int, port: int, args: Any, scratch: Path) -> Dict[str, Any]:
    create(port, "many")
    count = args.listing_images
    for start in range(0, count, 1000):
        parts = []
        for index in range(start, min(count, start + 1000)):
            pixels = np.frombuffer(index.to_bytes(4, "big") * 48, dtype=np.uint8).reshape(8, 8, 3)
            parts.append(("t{}.png".format(index), png(pixels)))
        assert add(port, "many", "tiny{}".format(start // 5000), parts) == 201
    client = Client(port, 120)
    status, listed = client.json("GET", "/datasets")
    assert status == 200 and listed["datasets"][0]["images"] == count, listed
    single = []
    for _ in range(5):
        started = time.perf_counter()
        client.call("GET", "/datasets")
        single.append(1000 * (time.perf_counter() - started))
    photo = sorted((assets.datasets_dir() / "flowers_small").glob("*/*.jpg"))[0].read_bytes()
    label_latency(port, photo, 1.0)  # warm
    alone = label_latency(port, photo, args.seconds)
    with Sampler(pid) as sampler:
        loaded: Dict[str, Any] = {}
        thread = threading.Thread(target=lambda: loaded.update(wrk(port, args.seconds + 2, args.wrk_path)))
        thread.start()
        time.sleep(1.0)
        crowded = label_latency(port, photo, args.seconds)
        thread.join()
    return sampler.row(
        "listing",
        "{} images; GET /datasets alone {:.1f} ms (median of 5); wrk -c16 on {}: {:.0f} req/s, "
        "mean latency {}; /label p50/p99 alone {:.1f}/{:.1f} ms ({} req), with wrk {:.1f}/{:.1f} ms "
        "({} req)".format(
            count,
            percentile(single, 50),
            args.wrk_path,
            loaded.get("rate", float("nan")),
            loaded.get("latency", "?"),
            alone[0],
            alone[1],
            alone[2],
            crowded[0],
            crowded[1],
            crowded[2],
        ),
    )


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a published version folder to serve")
    parser.add_argument("--only", default=",".join(ATTACKS), help="comma-separated attacks to run")
    parser.add_argument("--upload-requests", type=int, default=3)
    parser.add_argument("--upload-files", type=int, default=4)
    parser.add_argument("--upload-side", type=int, default=4000)
    parser.add_argument("--export-clients", type=int, default=4)
    parser.add_argument("--stall-s", type=float, default=8.0)
    parser.add_argument("--listing-images", type=int, default=20000)
    parser.add_argument(
        "--wrk-path", default="/datasets", help="what wrk loads (/healthz: any cheap route, to compare)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per /label latency measurement")
    args = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="poets-bench-datasets-"))
    env = dict(
        os.environ,
        POETS_BACKBONE_DIR=str(assets.backbone_dir()),
        POETS_LOG_LEVEL="WARNING",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
        POETS_DEFAULT_MODEL=MODEL,
        POETS_BODY_TIMEOUT_S="900",
        POETS_SEND_TIMEOUT_S="5",
    )
    rows = []
    try:
        model = args.model
        if model is None:
            print("training a model (200 steps)...", file=sys.stderr)
            model = trained_model(scratch / "train", dict(env, POETS_HOME=str(scratch / "train")))
        for attack in args.only.split(","):
            home = scratch / attack
            shutil.copytree(str(model), str(home / "models" / MODEL / "1"))
            process = serve(home, dict(env, POETS_HOME=str(home)), home / "serve.log")
            try:
                print("{}...".format(attack), file=sys.stderr)
                function = globals()["attack_" + attack]
                rows.append(function(process.pid, process.port, args, scratch / "files"))  # type: ignore[attr-defined]
                print("  {}".format(rows[-1]), file=sys.stderr)
            finally:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
    finally:
        shutil.rmtree(str(scratch), ignore_errors=True)
    commit = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%h %s"],
        check=False,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout.strip()
    print(
        "/datasets memory: {} ({}); {} cores, load average {:.1f}".format(
            REPO, commit[:60], os.cpu_count(), os.getloadavg()[0]
        )
    )
    print("| attack | API RSS before (MiB) | peak (MiB) | + (MiB) | notes |")
    print("|---|---:|---:|---:|---|")
    for row in rows:
        print(
            "| {} | {:.0f} | {:.0f} | {:+.0f} | {} |".format(
                row["attack"], row["before"], row["peak"], row["peak"] - row["before"], row["notes"]
            )
        )


if __name__ == "__main__":
    main()
