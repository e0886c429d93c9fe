"""Retraining end to end: dataset, bottlenecks, head, evaluation, export, publish.

This is the one function the CLI and the worker both call.
"""

import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from poets.engine.data import datasets, library
from poets.engine.data.images import DEFAULT_MAX_PIXELS, Distortion, prepare
from poets.engine.errors import Cancelled, InvalidDataset
from poets.engine.export import tflite
from poets.engine.export.saved_model import parse_formats, write_version
from poets.engine.model import backbones
from poets.engine.model.bottlenecks import BottleneckCache, compute
from poets.engine.model.crossval import cross_validate
from poets.engine.model.metrics import accuracy_entry
from poets.engine.model.training import TrainConfig, TrainResult, evaluate, train_head
from poets.engine.store.models import ModelStore

log = logging.getLogger(__name__)

ProgressFn = Callable[[Dict[str, Any]], None]


@dataclass
class RetrainResult:
    name: str
    version: int
    path: Path
    metrics: Dict[str, Any]
    labels: List[str]
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    bottlenecks_computed: int = 0
    bottlenecks_cached: int = 0
    timings: Dict[str, float] = field(default_factory=dict)
    root: Optional[Path] = None  # the dataset folder: listed paths are relative to it

    def summary(self, max_listed: int = 100) -> Dict[str, Any]:
        """JSON-friendly result, as jobs report it: small whatever the dataset's size.

        Paths are relative to the dataset (the version as ``<name>/<version>``, relative to
        the store); the skipped and misclassified lists hold at most ``max_listed`` entries
        (POETS_MAX_LISTED_FILES), with their full counts beside them.
        """

        def relative(path: str) -> str:
            if self.root is None or not os.path.isabs(path):
                return path
            return os.path.relpath(path, str(self.root))

        metrics = dict(self.metrics)
        misclassified = list(metrics.get("misclassified") or [])
        metrics["misclassified"] = [
            dict(entry, path=relative(str(entry["path"]))) for entry in misclassified[:max_listed]
        ]
        metrics["misclassified_count"] = len(misclassified)
        return {
            "name": self.name,
            "version": self.version,
            "path": "{}/{}".format(self.name, self.version),
            "metrics": metrics,
            "labels": self.labels,
            "skipped": [{"path": relative(p), "reason": r} for p, r in self.skipped[:max_listed]],
            "skipped_count": len(self.skipped),
            "bottlenecks_computed": self.bottlenecks_computed,
            "bottlenecks_cached": self.bottlenecks_cached,
            "timings": self.timings,
        }


def training_metrics(trained: TrainResult, validation_n: int, config: TrainConfig) -> Dict[str, Any]:
    """What training reports beside the test figures: the kept step's validation
    accuracy (with N and interval when the whole validation set was scored), where
    training stopped, and the last batch's training accuracy and loss."""
    history = trained.history
    last = history[-1] if history else {}
    kept = next((e for e in history if e["step"] == trained.best_step), last)
    accuracy = kept.get("validation_accuracy")
    whole = config.validation_batch_size == -1 or config.early_stopping_patience > 0
    validation: Dict[str, Any] = {
        "validation_accuracy": accuracy,
        "validation_n": 0,
        "validation_interval": None,
    }
    if accuracy is not None and whole:
        entry = accuracy_entry(round(accuracy * validation_n), validation_n)
        validation.update(validation_n=validation_n, validation_interval=entry["interval"])
    elif accuracy is not None:
        validation["validation_n"] = min(config.validation_batch_size, validation_n)
    return dict(
        validation,
        train_accuracy=last.get("train_accuracy"),
        train_n=config.train_batch_size,
        cross_entropy=last.get("cross_entropy"),
        best_step=trained.best_step,
        stopped_step=trained.stopped_step,
    )


def _cross_validate(
    by_split: Dict[str, List[Tuple[Any, int, str]]],
    label_names: List[str],
    config: TrainConfig,
    report: ProgressFn,
    should_stop: Optional[Callable[[], bool]],
) -> Dict[str, Any]:
    rows = [row for split in datasets.SPLITS for row in by_split[split]]
    features = np.stack([f for f, _, _ in rows])
    labels = np.array([label for _, label, _ in rows], np.int32)
    names = [os.path.basename(path) for _, _, path in rows]
    return cross_validate(
        features,
        labels,
        names,
        label_names,
        config,
        progress=lambda fold, folds: report({"phase": "cross_validating", "fold": fold, "folds": folds}),
        should_stop=should_stop,
    )


def retrain(
    image_dir: Path,
    config: TrainConfig,
    store: ModelStore,
    cache: BottleneckCache,
    backbone_dir: Path,
    name: str = "default",
    job_id: Optional[str] = None,
    summaries_dir: Optional[Path] = None,
    progress: Optional[ProgressFn] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    threads: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allow_download: bool = True,
    activate: bool = True,
    confine_to: Optional[Path] = None,
    dataset: Optional[datasets.Dataset] = None,
) -> RetrainResult:
    """Retrain a head on ``image_dir`` and publish it as the next version of ``name``.

    Args:
        image_dir: poets layout, one sub-folder per label.
        config: hyper-parameters (validated here).
        store: where the version is published.
        cache: bottleneck cache shared by every job.
        backbone_dir: weights, see :mod:`poets.engine.model.backbones`.
        name: model name in the store.
        job_id: recorded in the version's metadata; a redelivered job with the same
            id returns the version already published instead of publishing twice.
        summaries_dir: TensorBoard event files.
        progress: receives dicts with ``phase`` and phase-specific fields.
        should_stop: polled at every batch and training chunk; true cancels the job
            before anything is published.
        threads: decode threads (0: one per core).
        max_pixels: larger images are skipped.
        allow_download: fetch missing backbone weights.
        activate: make the new version current.
        confine_to: a folder no dataset entry may lead out of through a symbolic link
            (:class:`~poets.engine.errors.Forbidden` otherwise): POETS_DATA_ROOT, or the
            job's upload; None reads the folder as it is (the CLI on the user's own files).
        dataset: ``image_dir`` as scanned at submit time, used instead of scanning again
            (with ``config``'s percentages and ``max_pixels``). Only for a folder that
            cannot change after the scan: a job's upload or ``dataset=NAME`` snapshot. Those
            cannot hold links that lead out either (archives refuse links and snapshots are
            hard links, :meth:`Dataset.load` refuses any link), so skipping the scan keeps
            ``confine_to``'s promise.
    """
    config.validate()
    store_name = name
    timings: Dict[str, float] = {}
    report: ProgressFn = progress or (lambda event: None)
    started = time.time()

    report({"phase": "scanning"})
    if dataset is None:
        dataset = datasets.scan(
            Path(image_dir),
            config.testing_percentage,
            config.validation_percentage,
            max_pixels,
            confine_to=confine_to,
        )
    if job_id is not None:
        existing = store.find_job(store_name, job_id)
        if existing is not None:
            log.info("job %s already published %s/%s", job_id, store_name, existing)
            meta = store.metadata(store_name, existing)
            return RetrainResult(
                store_name,
                existing,
                store.path(store_name, existing),
                meta.get("metrics", {}),
                meta.get("labels", []),
            )
    backbone = backbones.load(
        config.architecture, backbone_dir, config.bottleneck, config.resize, allow_download
    )
    timings["load_backbone_s"] = time.time() - started

    distortion = Distortion(
        config.flip_left_right, config.random_crop, config.random_scale, config.random_brightness
    )
    extra_views = config.distorted_views if distortion.active else 0
    records = dataset.images
    # Cross-validation trains on every image in some fold: all need their views.
    views = [1 + extra_views if r.split == "training" or config.cross_validate else 1 for r in records]
    label_index = {label: i for i, label in enumerate(dataset.labels)}

    phase_start = time.time()
    report({"phase": "bottlenecks", "done": 0, "total": len(records)})
    result = compute(
        [r.path for r in records],
        views,
        backbone,
        cache,
        distortion,
        threads=threads or (os.cpu_count() or 2),
        max_pixels=max_pixels,
        progress=lambda done, total: report({"phase": "bottlenecks", "done": done, "total": total}),
        should_stop=should_stop,
    )
    timings["bottlenecks_s"] = time.time() - phase_start
    skipped = list(dataset.skipped) + result.failures
    by_split: Dict[str, List[Tuple[Any, int, str]]] = {s: [] for s in datasets.SPLITS}
    for record, features in zip(records, result.features):
        if features is not None:
            by_split[record.split].append((features, label_index[record.label], str(record.path)))
    present = {label for split in by_split.values() for _, label, _ in split}
    missing = [label for label, i in label_index.items() if i not in present]
    if missing:
        raise InvalidDataset(
            "No readable image left in class(es) {}: see the skipped files.".format(
                ", ".join(repr(m) for m in missing)
            )
        )
    if not by_split["training"]:
        raise InvalidDataset(
            "No training images: lower testing_percentage and validation_percentage or add images."
        )

    def arrays(split: str, all_views: bool) -> Tuple[np.ndarray, np.ndarray, List[str]]:
        rows = by_split[split]
        dim = backbone.feature_dim
        if not rows:
            shape = (0, 1 + extra_views, dim) if all_views else (0, dim)
            return np.zeros(shape, np.float32), np.zeros((0,), np.int32), []
        feats = np.stack([f if all_views else f[0] for f, _, _ in rows])
        return feats, np.array([label for _, label, _ in rows], np.int32), [p for _, _, p in rows]

    train_x, train_y, train_paths = arrays("training", True)
    val_x, val_y, _ = arrays("validation", False)
    test_x, test_y, test_paths = arrays("testing", False)

    phase_start = time.time()
    trained = train_head(
        train_x,
        train_y,
        val_x,
        val_y,
        len(dataset.labels),
        config,
        summaries_dir,
        progress=lambda entry: report(dict(entry, phase="training")),
        should_stop=should_stop,
    )
    timings["training_s"] = time.time() - phase_start
    report({"phase": "evaluating"})
    # Misclassified images are named relative to the dataset (the version's metadata too).
    metrics = evaluate(
        trained.head,
        test_x,
        test_y,
        dataset.labels,
        [os.path.relpath(p, str(dataset.root)) for p in test_paths],
    )
    metrics.update(training_metrics(trained, len(val_y), config))
    metrics["images"] = {s: len(by_split[s]) for s in datasets.SPLITS}
    if config.cross_validate:
        phase_start = time.time()
        metrics["cross_validation"] = _cross_validate(by_split, dataset.labels, config, report, should_stop)
        timings["cross_validation_s"] = time.time() - phase_start
    if should_stop is not None and should_stop():
        raise Cancelled("Cancelled before export.")

    report({"phase": "exporting"})
    phase_start = time.time()
    formats = parse_formats(config.export)
    test_pixels = calibration_pixels = None
    if "tflite" in formats:

        def pixels(paths: List[str]) -> np.ndarray:
            return np.stack(
                [prepare(Path(p).read_bytes(), backbone.preprocessing, max_pixels) for p in paths]
            )

        # TFLite accuracy is measured on the real test images, through the real decode;
        # int8 ranges are calibrated on training images drawn across the labels.
        if test_paths:
            test_pixels = pixels(test_paths)
        step = max(1, len(train_paths) // tflite.CALIBRATION_IMAGES)
        calibration_pixels = pixels(train_paths[::step][: tflite.CALIBRATION_IMAGES])
    metadata: Dict[str, Any] = {
        "name": store_name,
        "job_id": job_id,
        "hyperparameters": config.to_dict(),
        "metrics": metrics,
        "dataset": {
            "fingerprint": dataset.fingerprint(),
            "counts": dataset.counts(),
            "root": str(dataset.root),
        },
        "created": datetime.now(timezone.utc).isoformat(),
    }
    origin = library.snapshot_origin(dataset.root)
    if origin is not None:  # a /datasets dataset: its name, and its fingerprint as GET shows it
        metadata["dataset"].update(
            name=origin,
            fingerprint=library.content_fingerprint(
                dataset.root, [(r.label, r.path) for r in dataset.images]
            ),
        )
    version = store.publish(
        store_name,
        lambda folder: write_version(
            folder,
            backbone,
            trained.head,
            dataset.labels,
            metadata,
            formats,
            test_pixels,
            test_y,
            calibration_pixels,
        ),
        job_id=job_id,
        activate=activate,
    )
    timings["export_s"] = time.time() - phase_start
    metrics = store.metadata(store_name, version).get("metrics", metrics)  # with TFLite's, if any
    timings["total_s"] = time.time() - started
    report({"phase": "published", "version": version})
    return RetrainResult(
        store_name,
        version,
        store.path(store_name, version),
        metrics,
        dataset.labels,
        skipped,
        result.computed,
        result.cached,
        timings,
        root=dataset.root,
    )
