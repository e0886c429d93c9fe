"""Do Poets' default settings beat TensorFlow for Poets' on the same backbone?

    .venv/bin/python -m bench.accuracy [--splits 10] [--steps 4000]

On flowers_small with the real MobileNet v1 1.0 224, every candidate is trained on
cached bottlenecks (``poets.engine.model.training.train_head``/``evaluate``, the code a job runs)
over several train/validation/test splits: split 0 is poets' own (SHA-1 of the file
name), split k > 0 hashes the name with a salt added here only. The test split is
~42 images, so one split says little; the mean and standard deviation over splits
are what to compare. Bottlenecks are cached under ``.cache/bench/bottlenecks``.
"""

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from poets.engine.data import datasets
from poets.engine.data.images import Distortion
from poets.engine.model import backbones
from poets.engine.model.bottlenecks import BottleneckCache, compute
from poets.engine.model.training import TrainConfig, evaluate, train_head
from tests import assets

# TensorFlow for Poets' retrain.py defaults (MobileNet: the 1001 logits as bottleneck).
POETS = TrainConfig(bottleneck="logits", optimizer="sgd", learning_rate=0.01,
                    how_many_training_steps=4000, train_batch_size=100)
OURS = TrainConfig()
CANDIDATES: List[Tuple[str, TrainConfig]] = [
    ("(a) poets: logits, sgd 0.01", POETS),
    ("(b) Poets default: " + "{}, {} {}".format(OURS.bottleneck, OURS.optimizer, OURS.learning_rate),
     OURS),
    ("prelogits, sgd 0.01", replace(OURS, optimizer="sgd", learning_rate=0.01)),
    ("prelogits, adam 0.001", replace(OURS, optimizer="adam", learning_rate=0.001)),
    ("prelogits, adam 0.01", replace(OURS, optimizer="adam", learning_rate=0.01)),
    ("logits, adam 0.01", replace(OURS, bottleneck="logits", optimizer="adam", learning_rate=0.01)),
    ("prelogits, adam 0.01, flip+crop10 x4 views",
     replace(OURS, optimizer="adam", learning_rate=0.01, flip_left_right=True, random_crop=10,
             distorted_views=4)),
    ("prelogits, adam 0.01, center_crop",
     replace(OURS, optimizer="adam", learning_rate=0.01, resize="center_crop")),
    ("prelogits, adam 0.001, hidden 256",
     replace(OURS, optimizer="adam", learning_rate=0.001, hidden_units=256)),
]


def salted_splits(names: List[str], salt: int) -> List[str]:
    if salt == 0:
        return datasets.assign_splits(names, 10, 10)
    return datasets.assign_splits(["{}~{}".format(salt, n) for n in names], 10, 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--steps", type=int, default=4000)
    args = parser.parse_args()

    flowers = assets.datasets_dir() / "flowers_small"
    dataset = datasets.scan(flowers)
    labels = dataset.labels
    paths = [r.path for r in dataset.images]
    truth = np.array([labels.index(r.label) for r in dataset.images], np.int32)
    cache = BottleneckCache(assets.REPO / ".cache" / "bench" / "bottlenecks")

    features: Dict[Tuple[str, str, bool], np.ndarray] = {}
    for config in (c for _, c in CANDIDATES):
        distortion = Distortion(config.flip_left_right, config.random_crop, config.random_scale,
                                config.random_brightness)
        key = (config.bottleneck, config.resize, distortion.active)
        if key in features:
            continue
        backbone = backbones.load(config.architecture, assets.backbone_dir(), config.bottleneck,
                                  config.resize, allow_download=False)
        views = 1 + config.distorted_views if distortion.active else 1
        started = time.time()
        result = compute(paths, [views] * len(paths), backbone, cache, distortion,
                         threads=os.cpu_count() or 2)
        assert not result.failures, result.failures
        features[key] = np.stack(result.features)  # type: ignore[arg-type]
        print("bottlenecks {}: {} computed, {} cached, {:.1f}s".format(
            key, result.computed, result.cached, time.time() - started), file=sys.stderr)

    by_class: Dict[str, List[int]] = {}
    for i, record in enumerate(dataset.images):
        by_class.setdefault(record.label, []).append(i)
    splits = []
    for salt in range(args.splits):
        split = [""] * len(paths)
        for rows in by_class.values():
            for row, name in zip(rows, salted_splits([paths[r].name for r in rows], salt)):
                split[row] = name
        splits.append(np.array(split))

    print("flowers_small, MobileNet v1 1.0 224, {} steps, {} splits (test N per split: {})".format(
        args.steps, args.splits, ", ".join(str(int(np.sum(s == "testing"))) for s in splits)))
    print("{:46} {:>15} {:>8}  {}".format("settings", "test acc mean±sd", "split 0", "per split"))
    for name, config in CANDIDATES:
        config = replace(config, how_many_training_steps=args.steps)
        distortion = Distortion(config.flip_left_right, config.random_crop, config.random_scale,
                                config.random_brightness)
        feats = features[(config.bottleneck, config.resize, distortion.active)]
        scores = []
        for split in splits:
            train, val, test = (split == "training"), (split == "validation"), (split == "testing")
            result = train_head(feats[train], truth[train], feats[val][:, 0], truth[val],
                                len(labels), config)
            metrics = evaluate(result.head, feats[test][:, 0], truth[test], labels,
                               [str(p) for p in np.array(paths)[test]])
            scores.append(100.0 * metrics["test_accuracy"])
        print("{:46} {:8.1f} ± {:4.1f} {:8.1f}  {}".format(
            name, np.mean(scores), np.std(scores), scores[0], " ".join("{:.0f}".format(s) for s in scores)),
            flush=True)


if __name__ == "__main__":
    main()
