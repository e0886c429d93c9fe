"""Shared bottlenecks (POETS_BOTTLENECK_STORE_URL): does pulling them pay, against computing them?

    .venv/bin/python -m bench.bottleneck_store [--images 400] [--repeats 3] [--views 1]

For flowers_small with the real MobileNet, the time until every bottleneck is in the local
cache, the median of ``--repeats`` runs, each as a ratio to the baseline of this same run:

* compute, empty cache, no bucket: the baseline (``compute`` as a worker without sharing runs it);
* compute + push, empty cache, empty bucket: what the first worker pays for sharing;
* pull, empty cache, the bucket holds them: a second worker (a TX2 after an x86, say);
* warm local cache, bucket set: nothing asked of the bucket;
* per-image objects, for comparison: one GET of one vector per image, ``THREADS`` at a
  time: what packs replace.

Each row also gives the MB and requests sent to the bucket and this process's CPU time (the
client's share of the work, which is what grows on a slower CPU such as the TX2's). The S3
endpoint is moto in server mode on this machine (``tests/s3.py``), a Python process that takes
CPU from the same cores, so the bucket rows are pessimistic for MinIO or S3 on another host.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from poets.engine.data.images import Distortion
from poets.engine.model import backbones
from poets.engine.model.bottlenecks import BottleneckCache, BottleneckResult, compute
from poets.engine.model.shared_bottlenecks import THREADS, SharedBottlenecks
from poets.engine.store.bucket import Bucket
from tests import assets
from tests.s3 import MotoServer, use_credentials


class Requests:
    """Counts the requests a bucket's boto3 client sends (a botocore event hook)."""

    def __init__(self, bucket: Bucket) -> None:
        self.count = 0
        bucket._client().meta.events.register("before-send.s3", self._seen)

    def _seen(self, **_: Any) -> None:
        self.count += 1


def measure(fn: Callable[[], Any]) -> Dict[str, Any]:
    """Wall and CPU seconds of ``fn()``, and what it returned."""
    cpu, started = time.process_time(), time.perf_counter()
    value = fn()
    return {"s": time.perf_counter() - started, "cpu": time.process_time() - cpu, "value": value}


def row(name: str, runs: List[Dict[str, Any]], baseline: Dict[str, float], note: str = "") -> None:
    wall = statistics.median(r["s"] for r in runs)
    cpu = statistics.median(r["cpu"] for r in runs)
    mb = statistics.median(r.get("mb", 0.0) for r in runs)
    requests = statistics.median(r.get("requests", 0) for r in runs)
    print(
        "| {} | {:.2f} s | {:.3f} | {:.2f} s | {:.3f} | {:.2f} | {:.0f} | {} |".format(
            name, wall, wall / baseline["s"], cpu, cpu / baseline["cpu"], mb, requests, note
        )
    )


def per_image_objects(server: MotoServer, count: int, dim: int) -> Dict[str, Any]:
    """What packs replace: one object per vector, fetched THREADS at a time."""
    objects = Bucket(server.bucket("objects"), server.url)
    payload = os.urandom(dim * 4 + 32)
    keys = ["{:064x}".format(i) for i in range(count)]
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda key: objects.put(key, payload), keys))
    counter = Requests(objects)

    def get_all() -> int:
        with ThreadPoolExecutor(THREADS) as pool:
            return sum(len(data or b"") for data in pool.map(objects.get, keys))

    found = measure(get_all)
    found["mb"] = found["value"] / 1e6
    found["requests"] = counter.count
    return found


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400, help="flower photos (flowers_small has 400)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--views", type=int, default=1, help="views per image (1 + distorted views)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="decode threads")
    args = parser.parse_args(argv)

    photos = sorted((assets.datasets_dir() / "flowers_small").glob("*/*.jpg"))[: args.images]
    views = [args.views] * len(photos)
    vectors = len(photos) * args.views
    backbone = backbones.load("mobilenet_1.0_224", assets.backbone_dir(), "prelogits", allow_download=False)
    dim = backbone.feature_dim
    use_credentials()
    runs: Dict[str, List[Dict[str, Any]]] = {k: [] for k in ("a0", "a1", "b", "c", "objects")}
    with tempfile.TemporaryDirectory(prefix="poets-bench-") as tmp:
        server = MotoServer(Path(tmp) / "moto").start()
        try:

            def run(cache: BottleneckCache) -> BottleneckResult:
                distortion = Distortion(flip_left_right=args.views > 1)
                return compute(photos, views, backbone, cache, distortion, threads=args.threads)

            compute(photos[:32], [1] * 32, backbone, BottleneckCache(Path(tmp) / "warm-up"))  # tracing
            for repeat in range(args.repeats):
                print("round {}...".format(repeat + 1), file=sys.stderr, flush=True)
                root = Path(tmp) / str(repeat)
                bucket = Bucket(server.bucket("bottlenecks"), server.url)
                requests = Requests(bucket)
                shared = SharedBottlenecks(bucket)
                # The baseline and the first worker alternate, so that other load hits both alike.
                order = ["a0", "a1"] if repeat % 2 == 0 else ["a1", "a0"]
                for key in [*order, "b", "c"]:
                    cache = BottleneckCache(
                        root / ("b" if key == "c" else key), None if key == "a0" else shared
                    )
                    before = requests.count
                    found = measure(lambda cache=cache: run(cache))  # type: ignore[misc]
                    result = found["value"]
                    assert result.computed == (vectors if key in ("a0", "a1") else 0), (key, result.computed)
                    moved = result.shared
                    found["mb"] = (moved.bytes_pulled + moved.bytes_pushed) / 1e6 if moved else 0.0
                    found["requests"] = requests.count - before
                    found["transfer"] = moved
                    runs[key].append(found)

                runs["objects"].append(per_image_objects(server, vectors, dim))
        finally:
            server.stop()

    baseline = {k: statistics.median(r[k] for r in runs["a0"]) for k in ("s", "cpu")}
    pull = runs["b"][len(runs["b"]) // 2]["transfer"]
    push = runs["a1"][len(runs["a1"]) // 2]["transfer"]
    print()
    print(
        "Shared bottlenecks: {} photos x {} view(s) of flowers_small, MobileNet v1 1.0 224 "
        "({} floats), {} cores, load average {}; median of {} runs; bucket: moto on this host".format(
            len(photos),
            args.views,
            dim,
            os.cpu_count(),
            " ".join("{:.2f}".format(x) for x in os.getloadavg()),
            args.repeats,
        )
    )
    print()
    print(
        "| how the local cache gets every bottleneck | wall | wall / baseline | CPU (this process) "
        "| CPU / baseline | MB moved | requests | notes |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    row(
        "compute, empty cache, no bucket (baseline)",
        runs["a0"],
        baseline,
        "decode + MobileNet + cache writes",
    )
    row(
        "compute + push, empty cache, empty bucket",
        runs["a1"],
        baseline,
        "the first worker's cost of sharing: the photos hashed first, a listing, the push ({:.2f} s)".format(
            push.push_s
        ),
    )
    row(
        "pull, empty cache, bucket holds them",
        runs["b"],
        baseline,
        "{} pack(s); the bucket's part (list, index, packs into the local cache) {:.2f} s, the rest "
        "is hashing the photos and reading the cache".format(pull.packs_pulled, pull.pull_s),
    )
    row("warm local cache, bucket set", runs["c"], baseline, "the bucket is not asked")
    row(
        "per-image objects instead (not used)",
        runs["objects"],
        baseline,
        "{} GETs of one vector, {} at a time: the transfer alone".format(vectors, THREADS),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
