"""Poets' default head against TensorFlow for Poets' recipe, scored on the same images.

    .venv/bin/python -m bench.accuracy [FOLDER ...] [--folds K] [--repeats R] [--warm-copies 9]

For ``../shared/datasets/flowers_small`` and every FOLDER given (poets layout), both
recipes train on the same images and are scored on the same held-out images, with
the code a job runs (``poets.engine.model.crossval``, ``training.train_head``):

* sets under 2,000 images: K-fold cross-validation (default 5), so every image is
  scored once by a head that never saw it, N = all images;
* larger sets: the job's own split (poets' file-name hash), N = its test split.
  ``--folds K`` forces K-fold; ``--repeats R`` deals the folds R ways (different
  salts on the file-name hash) and prints the mean difference.

Each accuracy has its 95% Wilson interval; the difference has a paired 95% interval
(both recipes judged image by image on the same images). Bottlenecks are cached
under ``--cache`` (default ``.cache/bench/bottlenecks``), so a second run trains only.

Last, the warm retrain time: ``poets.engine.retrain.retrain`` end to end with the
default recipe (scan, cached bottlenecks, training, evaluation, export, publish) on
flowers_small copied ``--warm-copies`` times under new names (9: 3,600 photos, the
size of flower_photos; a photo's copies stay in one split), every bottleneck from the
cache. Wall time on a shared CPU
is noisy: the CPU seconds of the process are printed beside it.
"""

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from poets.engine.data import datasets
from poets.engine.data.images import Distortion
from poets.engine.model import backbones
from poets.engine.model.bottlenecks import BottleneckCache, compute
from poets.engine.model.config import TrainConfig
from poets.engine.model.crossval import out_of_fold_predictions
from poets.engine.model.metrics import Z95, accuracy_entry, format_accuracy
from poets.engine.model.training import predict, train_head
from tests import assets

RECIPES: List[Tuple[str, TrainConfig]] = [
    ("TensorFlow for Poets (--recipe poets)", TrainConfig.from_dict({"recipe": "poets"})),
    ("Poets defaults", TrainConfig()),
]
SMALL = 2000


def features_of(dataset: datasets.Dataset, config: TrainConfig, cache: BottleneckCache) -> np.ndarray:
    """(N, V, D) bottlenecks of every image, all views (for K-fold every image trains)."""
    backbone = backbones.load(
        config.architecture, assets.backbone_dir(), config.bottleneck, config.resize, allow_download=False
    )
    distortion = Distortion(
        config.flip_left_right, config.random_crop, config.random_scale, config.random_brightness
    )
    views = 1 + (config.distorted_views if distortion.active else 0)
    started = time.time()
    result = compute(
        [r.path for r in dataset.images],
        [views] * len(dataset.images),
        backbone,
        cache,
        distortion,
        threads=os.cpu_count() or 2,
    )
    if result.failures:
        raise SystemExit("unreadable images: {}".format(result.failures[:5]))
    print(
        "  bottlenecks {}: {} computed, {} cached, {:.0f} s".format(
            config.bottleneck, result.computed, result.cached, time.time() - started
        ),
        file=sys.stderr,
        flush=True,
    )
    return np.stack(result.features)  # type: ignore[arg-type]


def predictions(
    dataset: datasets.Dataset, features: np.ndarray, config: TrainConfig, folds: int, salt: int = 0
) -> Tuple[np.ndarray, np.ndarray]:
    """Predicted and true class of every scored image (all images with K-fold, else the test split).

    ``salt`` > 0 deals other folds (the file names are hashed with it, here only).
    """
    labels = np.array([dataset.labels.index(r.label) for r in dataset.images], np.int32)
    classes = len(dataset.labels)
    if folds:
        names = [r.path.name if not salt else "{}~{}".format(salt, r.path.name) for r in dataset.images]
        cv = TrainConfig.from_dict(dict(config.to_form(), cross_validate=folds))
        predicted, _ = out_of_fold_predictions(features, labels, names, classes, cv)
        return predicted, labels
    split = np.array([r.split for r in dataset.images])
    train, val, test = (split == "training"), (split == "validation"), (split == "testing")
    trained = train_head(features[train], labels[train], features[val][:, 0], labels[val], classes, config)
    return predict(trained.head, features[test][:, 0]).argmax(axis=1), labels[test]


def paired_difference(a: np.ndarray, b: np.ndarray) -> Tuple[float, float, float]:
    """Mean of b - a (per-image correctness) with a normal 95% interval over the images."""
    diff = b.astype(np.float64) - a.astype(np.float64)
    mean = float(diff.mean())
    half = Z95 * float(diff.std(ddof=1)) / math.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    return mean, mean - half, mean + half


def compare(folder: Path, cache: BottleneckCache, folds: int, repeats: int) -> None:
    dataset = datasets.scan(folder)
    if folds < 0:
        folds = 5 if len(dataset.images) < SMALL else 0
    how = "{}-fold cross-validation".format(folds) if folds else "its test split (poets' hash)"
    print(
        "{}: {} images, {} labels; scored by {}".format(folder, len(dataset.images), len(dataset.labels), how)
    )
    feats = {name: features_of(dataset, config, cache) for name, config in RECIPES}
    differences = []
    for salt in range(repeats if folds else 1):
        if salt:
            print("  other folds ({}):".format(salt))
        correct: Dict[str, np.ndarray] = {}
        for name, config in RECIPES:
            started, cpu = time.time(), time.process_time()
            predicted, truth = predictions(dataset, feats[name], config, folds, salt)
            hits = predicted == truth
            correct[name] = hits
            entry = accuracy_entry(int(hits.sum()), len(hits))
            print(
                "  {:40} {:34} training {:.0f} s ({:.0f} s CPU)".format(
                    name,
                    format_accuracy(entry["accuracy"], entry["n"], entry["interval"]),
                    time.time() - started,
                    time.process_time() - cpu,
                ),
                flush=True,
            )
        (poets_name, _), (ours_name, _) = RECIPES
        mean, low, high = paired_difference(correct[poets_name], correct[ours_name])
        differences.append(mean)
        print(
            "  difference, defaults - poets: {:+.1f} points (paired 95% CI {:+.1f} to {:+.1f})".format(
                100 * mean, 100 * low, 100 * high
            ),
            flush=True,
        )
    if len(differences) > 1:
        print(
            "  mean difference over {} fold assignments: {:+.1f} points".format(
                len(differences), 100 * float(np.mean(differences))
            )
        )


def warm_retrain(source: Path, copies: int, cache: BottleneckCache) -> None:
    """retrain() end to end on ``copies`` renamed copies of ``source``, every bottleneck cached."""
    from poets.engine.retrain import retrain
    from poets.engine.store.models import ModelStore

    with tempfile.TemporaryDirectory(prefix="poets-bench-") as tmp:
        root = Path(tmp) / "data"
        for label_dir in sorted(p for p in source.iterdir() if p.is_dir()):
            target = root / label_dir.name
            target.mkdir(parents=True)
            for photo in sorted(label_dir.iterdir()):
                for copy in range(copies):
                    # _nohash_ keeps a photo's copies in one split (poets' rule), so the
                    # validation set early stopping watches holds no copy of a training photo.
                    name = "{}_nohash_{}{}".format(photo.stem, copy, photo.suffix)
                    shutil.copyfile(str(photo), str(target / name))
        store = ModelStore(Path(tmp) / "models")
        config = TrainConfig()
        retrain(root, config, store, cache, assets.backbone_dir(), name="warmup", allow_download=False)
        started, cpu = time.time(), time.process_time()
        result = retrain(root, config, store, cache, assets.backbone_dir(), name="warm", allow_download=False)
        wall, cpu_s = time.time() - started, time.process_time() - cpu
    t = result.timings
    print(
        "warm retrain, {} photos, defaults: {:.1f} s wall ({:.1f} s CPU; load average {:.1f}): "
        "backbone {:.1f} s, bottlenecks {:.1f} s ({} cached, {} computed), training {:.1f} s "
        "(stopped at step {}), export {:.1f} s".format(
            result.metrics["images"]["training"]
            + result.metrics["images"]["validation"]
            + result.metrics["images"]["testing"],
            wall,
            cpu_s,
            os.getloadavg()[0],
            t.get("load_backbone_s", 0),
            t.get("bottlenecks_s", 0),
            result.bottlenecks_cached,
            result.bottlenecks_computed,
            t.get("training_s", 0),
            result.metrics.get("stopped_step"),
            t.get("export_s", 0),
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, help="more datasets in the poets layout")
    parser.add_argument("--folds", type=int, default=-1, help="K-fold for every set (0: the test split)")
    parser.add_argument("--repeats", type=int, default=1, help="K-fold again with other folds")
    parser.add_argument("--cache", type=Path, default=assets.REPO / ".cache" / "bench" / "bottlenecks")
    parser.add_argument("--warm-copies", type=int, default=9, help="0: skip the warm retrain")
    parser.add_argument("--warm-only", action="store_true", help="only the warm retrain")
    args = parser.parse_args()

    cache = BottleneckCache(args.cache)
    flowers = assets.datasets_dir() / "flowers_small"
    started = time.time()
    for folder in [] if args.warm_only else [flowers, *args.folders]:
        compare(folder, cache, args.folds, max(1, args.repeats))
    if args.warm_copies:
        warm_retrain(flowers, args.warm_copies, cache)
    print("({:.0f} s in all)".format(time.time() - started), file=sys.stderr)


if __name__ == "__main__":
    main()
