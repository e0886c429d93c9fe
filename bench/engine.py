"""Engine throughput, each number as a ratio to the backbone's own ceiling measured in this run.

    .venv/bin/python -m bench.engine [--images N] [--threads T] [--batch B]

Prints: the raw backbone forward rate at batch 1, 8 and 32 on random ``uint8`` input
(the ceiling: nothing but ``Backbone.features``), the decode rate of
``poets.engine.data.images.prepare`` on the flower photos and on generated 1280x720 JPEG frames,
the bottleneck rate on flowers_small with a fresh cache (decode + model + cache
writes, the real job phase), and the time to train a head for 4000 steps.
"""

import argparse
import io
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, List

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image

from poets.engine.data.images import Preprocessing, prepare
from poets.engine.model import backbones
from poets.engine.model.bottlenecks import BottleneckCache, compute
from poets.engine.model.training import TrainConfig, train_head
from tests import assets


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def timed(fn: Callable[[], int], min_seconds: float = 2.0) -> float:
    """Images per second of ``fn`` (which returns how many it did), repeated for a while."""
    fn()  # warm-up: graph tracing, caches
    done, started = 0, time.perf_counter()
    while True:
        done += fn()
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return rate(done, elapsed)


def line(name: str, value: float, ceiling: float, unit: str = "img/s") -> None:
    print("{:48} {:9.1f} {:6}  {:5.0f}% of ceiling".format(name, value, unit, 100.0 * value / ceiling))


def frames(photos: List[Path], count: int) -> List[bytes]:
    """1280x720 JPEGs made from the flower photos (camera-like content, not noise)."""
    out = []
    for photo in photos[:count]:
        image = Image.open(str(photo)).convert("RGB").resize((1280, 720), Image.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def decode_all(items: List[bytes], prep: Preprocessing, threads: int) -> int:
    """Decode and resize every encoded image, on ``threads`` threads; returns the count."""
    if threads <= 1:
        for item in items:
            prepare(item, prep)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda item: prepare(item, prep), items))
    return len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400, help="flower photos for the bottleneck run")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="decode threads")
    parser.add_argument("--batch", type=int, default=32, help="bottleneck batch size")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per ceiling measurement")
    parser.add_argument("--repeats", type=int, default=3, help="bottleneck runs per mode")
    args = parser.parse_args()

    backbone = backbones.load("mobilenet_1.0_224", assets.backbone_dir(), "prelogits", allow_download=False)
    size = backbone.preprocessing.size
    print(
        "cores: {}, decode threads: {}, bottleneck batch: {}".format(os.cpu_count(), args.threads, args.batch)
    )

    rng = np.random.RandomState(0)
    ceilings = {}
    for batch in (1, 8, 32):
        pixels = rng.randint(0, 256, (batch, size, size, 3)).astype(np.uint8)
        ceilings[batch] = timed(lambda p=pixels: len(backbone.features(p)), args.seconds)
    ceiling = ceilings[32]
    for batch, value in ceilings.items():
        line("backbone forward, batch {}".format(batch), value, ceiling)

    flowers = assets.datasets_dir() / "flowers_small"
    photos = sorted(flowers.glob("*/*.jpg"))[: args.images]
    data = [p.read_bytes() for p in photos]
    prep = Preprocessing(size)

    line("decode flowers (1 thread)", timed(lambda: decode_all(data, prep, 1), 1.0), ceiling)
    line(
        "decode flowers ({} threads)".format(args.threads),
        timed(lambda: decode_all(data, prep, args.threads), 1.0),
        ceiling,
    )
    hd = frames(photos, 24)
    line("decode 1280x720 JPEG (1 thread)", timed(lambda: decode_all(hd, 1), 1.0), ceiling)
    line(
        "decode 1280x720 JPEG ({} threads)".format(args.threads),
        timed(lambda: decode_all(hd, args.threads), 1.0),
        ceiling,
    )

    # Other processes share the cores: each bottleneck run is compared with the batch-32
    # ceiling measured just before and after it, and the median of a few runs is shown.
    pixels32 = rng.randint(0, 256, (32, size, size, 3)).astype(np.uint8)
    result = None
    for overlap in (True, False):
        ratios, rates = [], []
        for _ in range(args.repeats):
            before = timed(lambda: len(backbone.features(pixels32)), 1.0)
            with tempfile.TemporaryDirectory(prefix="poets-bench-") as tmp:
                cache = BottleneckCache(Path(tmp) / "cache")
                started = time.perf_counter()
                result = compute(
                    photos,
                    [1] * len(photos),
                    backbone,
                    cache,
                    batch_size=args.batch,
                    threads=args.threads,
                    overlap=overlap,
                )
                seconds = time.perf_counter() - started
                assert result.computed == len(photos) and not result.failures
                if not overlap and len(ratios) == args.repeats - 1:
                    started = time.perf_counter()
                    again = compute(photos, [1] * len(photos), backbone, cache, threads=args.threads)
                    cached_rate = rate(len(photos), time.perf_counter() - started)
                    assert again.computed == 0
            after = timed(lambda: len(backbone.features(pixels32)), 1.0)
            rates.append(rate(len(photos), seconds))
            ratios.append(rates[-1] / ((before + after) / 2))
        order = np.argsort(ratios)[len(ratios) // 2]
        print(
            "{:48} {:9.1f} img/s  {:5.0f}% of adjacent ceiling (runs: {})".format(
                "bottlenecks, fresh cache, {} ({} photos)".format(
                    "decode overlaps model" if overlap else "decode, then model", len(photos)
                ),
                rates[order],
                100 * ratios[order],
                " ".join("{:.0f}%".format(100 * r) for r in ratios),
            )
        )
    line("bottlenecks, all cached", cached_rate, ceiling)
    assert result is not None

    features = np.stack(result.features)
    names = sorted({p.parent.name for p in photos})
    labels = np.array([names.index(p.parent.name) for p in photos], np.int32)
    config = TrainConfig()
    started = time.perf_counter()
    train_head(features, labels, features[:50, 0], labels[:50], int(labels.max()) + 1, config)
    seconds = time.perf_counter() - started
    print(
        "{:48} {:9.2f} s       ({} steps, batch {}, {} images x {} dims)".format(
            "head training",
            seconds,
            config.how_many_training_steps,
            config.train_batch_size,
            len(features),
            features.shape[-1],
        )
    )
    print(
        "{:48} {:9.2f} s       (400 images at the batch-32 ceiling)".format(
            "  for scale: ceiling time for 400 bottlenecks", 400 / ceiling
        )
    )


if __name__ == "__main__":
    main()
