"""Several machines: how long from a job done to every API node serving its version, and what
a cold download of a version costs against a local store.

Trains one real version of flowers_small (MobileNet v1, in this process), starts moto in
server mode (the S3 endpoint) and a Redis of its own, then two ``poets serve`` nodes twice:
each with its own POETS_HOME on the bucket (``s3``), and both on one local store, the shared
folder of a single machine (``local``: the baseline, measured in the same run). Each round
publishes a new version the way a worker does (the store's publish, then the Redis notice)
and times until both nodes' /label answer from it. Then one version downloaded into an
empty cache and checked against its manifest, next to loading it from a local folder.

    .venv/bin/python -m bench.several_machines [--rounds 5] [--steps 200]
"""

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import httpx

from poets.engine.model.bottlenecks import BottleneckCache
from poets.engine.model.training import TrainConfig
from poets.engine.predictor import Predictor
from poets.engine.retrain import retrain
from poets.engine.settings import Settings
from poets.engine.store import events
from poets.engine.store.bucket import Bucket
from poets.engine.store.bucket_models import BucketModelStore
from poets.engine.store.models import ModelStore, VersionStore
from tests import assets
from tests.integration.machines import version_copier
from tests.net import free_port
from tests.s3 import CREDENTIALS, MotoServer
from tests.worker import helpers

NAME = "flowers"


def serving(client: httpx.Client, photo: bytes) -> int:
    response = client.post(
        "/label", content=photo, params={"model": NAME}, headers={"Content-Type": "image/jpeg"}
    )
    return int(response.json()["model"]["version"]) if response.status_code == 200 else -1


def swaps(
    store: VersionStore, envs: List[Dict[str, str]], source: Path, photo: bytes, rounds: int, logs: Path
) -> List[float]:
    """Seconds from each publish (+ notice) to both nodes answering from the new version."""
    settings = Settings.from_env(envs[0])
    version = store.publish(NAME, version_copier(source))
    nodes = []
    for n, env in enumerate(envs):
        port = free_port()
        process = helpers.spawn(
            ["serve", "--host", "127.0.0.1", "--port", str(port)], env, logs / "api-{}.log".format(n)
        )
        nodes.append((process, httpx.Client(base_url="http://127.0.0.1:{}".format(port), timeout=30)))
    try:
        for process, client in nodes:
            deadline = time.monotonic() + 180
            while serving_safe(client, photo) != version:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("a node did not start: see {}".format(logs))
                time.sleep(0.2)
        took: List[float] = []
        for _ in range(rounds):
            version = store.publish(NAME, version_copier(source))
            events.publish(settings, NAME, version)
            done = time.monotonic()
            waiting = {n for n in range(len(nodes))}
            while waiting:
                for n in list(waiting):
                    if serving(nodes[n][1], photo) == version:
                        waiting.discard(n)
                time.sleep(0.005)
            took.append(time.monotonic() - done)
        return took
    finally:
        for process, client in nodes:
            client.close()
            process.send_signal(signal.SIGTERM)
            process.wait(60)


def serving_safe(client: httpx.Client, photo: bytes) -> int:
    try:
        return serving(client, photo)
    except httpx.HTTPError:
        return -1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--logs", type=Path, help="keep the API nodes' logs in this folder")
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)
    flowers = assets.datasets_dir() / "flowers_small"
    backbones = assets.backbone_dir()
    photo = sorted((flowers / "daisy").glob("*.jpg"))[-1].read_bytes()
    with tempfile.TemporaryDirectory(prefix="poets-bench-") as folder:
        root = Path(folder)
        print("training one version...", file=sys.stderr)
        trained = retrain(
            flowers,
            TrainConfig(how_many_training_steps=args.steps),
            ModelStore(root / "trained"),
            BottleneckCache(root / "bottlenecks"),
            backbones,
            name=NAME,
        )
        source = Path(trained.path)
        size = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
        moto = MotoServer(root / "moto").start()
        redis = helpers.redis_server(root / "redis")
        redis_url = next(redis)
        try:
            url = moto.bucket("poets")
            base = helpers.service_env(
                root / "unused", backbones, redis_url, POETS_MODEL_POLL_S="1.0", **CREDENTIALS
            )
            s3_envs = [
                dict(
                    base,
                    POETS_HOME=str(root / "s3-{}".format(n)),
                    POETS_STORE_URL=url,
                    POETS_S3_ENDPOINT_URL=moto.url,
                )
                for n in range(2)
            ]
            local_envs = [dict(base, POETS_HOME=str(root / "local")) for _ in range(2)]
            bucket = Bucket(url, moto.url)
            print("s3: {} rounds...".format(args.rounds), file=sys.stderr)
            logs = args.logs or root
            logs.mkdir(parents=True, exist_ok=True)
            on_s3 = swaps(
                BucketModelStore(bucket, root / "worker-cache", 1 << 32),
                s3_envs,
                source,
                photo,
                args.rounds,
                logs / "s3",
            )
            print("local: {} rounds...".format(args.rounds), file=sys.stderr)
            on_disk = swaps(
                ModelStore(root / "local" / "models"), local_envs, source, photo, args.rounds, logs / "local"
            )
            cold: List[float] = []
            load: List[float] = []
            for n in range(args.rounds):
                fresh = BucketModelStore(bucket, root / "cold-{}".format(n), 1 << 32)
                started = time.perf_counter()
                folder_ = fresh.path(NAME, 1)
                cold.append(time.perf_counter() - started)
                started = time.perf_counter()
                Predictor(folder_, NAME, 1).warm()
                load.append(time.perf_counter() - started)
        finally:
            moto.stop()
            next(redis, None)
    rows = [
        ("job done to both API nodes serving, local store (baseline)", on_disk, on_disk),
        ("job done to both API nodes serving, bucket (moto)", on_s3, on_disk),
        ("load + warm from a local folder (baseline)", load, load),
        ("cold download + manifest check", cold, load),
    ]
    print(
        "| {} rounds, a version of {:.1f} MB | median | min | max | ratio |".format(args.rounds, size / 1e6)
    )
    print("|---|---:|---:|---:|---:|")
    for what, found, baseline in rows:
        median = statistics.median(found)
        print(
            "| {} | {:.2f} s | {:.2f} s | {:.2f} s | {:.2f} |".format(
                what, median, min(found), max(found), median / statistics.median(baseline)
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
