"""Retraining end to end: dataset, bottlenecks, head, evaluation, export, publish.

This is the one function the CLI and the worker both call.
"""

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from poets.engine import gate, phases
from poets.engine.data import datasets, library
from poets.engine.data.images import DEFAULT_MAX_PIXELS, Distortion, prepare
from poets.engine.errors import Cancelled, InvalidDataset
from poets.engine.export import tflite
from poets.engine.export.saved_model import parse_formats, write_version
from poets.engine.model import backbones
from poets.engine.model.bottlenecks import BottleneckCache, compute
from poets.engine.model.crossval import cross_validate_splits
from poets.engine.model.training import TrainConfig, TrainResult, evaluate, train_head, training_metrics
from poets.engine.promotion import GatePolicy, write_record
from poets.engine.results import RetrainResult
from poets.engine.store.models import VersionStore

log = logging.getLogger(__name__)

__all__ = ["RetrainResult", "retrain"]

ProgressFn = Callable[[Dict[str, Any]], None]


def retrain(
    image_dir: Path,
    config: TrainConfig,
    store: VersionStore,
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
    promote: GatePolicy = GatePolicy(mode="always"),
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
        activate: make the new version current, if the gate lets it.
        confine_to: a folder no dataset entry may lead out of through a symbolic link
            (:class:`~poets.engine.errors.Forbidden` otherwise): POETS_DATA_ROOT, or the
            job's upload; None reads the folder as it is (the CLI on the user's own files).
        dataset: ``image_dir`` as scanned at submit time, used instead of scanning again
            (with ``config``'s percentages and ``max_pixels``). Only for a folder that
            cannot change after the scan: a job's upload or ``dataset=NAME`` snapshot. Those
            cannot hold links that lead out either (archives refuse links and snapshots are
            hard links, :meth:`Dataset.load` refuses any link), so skipping the scan keeps
            ``confine_to``'s promise.
        promote: the promotion gate's policy: current only if it passes (``poets.json`` says).
    """
    config.validate()
    run = _Run(config, name, job_id, progress or (lambda event: None), should_stop, max_pixels)
    dataset = _scan(run, image_dir, confine_to, dataset)
    existing = _published_by(run, store)
    if existing is not None:  # a redelivered job that already published
        return existing
    backbone = backbones.load(
        config.architecture, backbone_dir, config.bottleneck, config.resize, allow_download
    )
    run.timings["load_backbone_s"] = time.time() - run.started
    features = _bottlenecks(run, dataset, backbone, cache, threads)
    trained = _train(run, features, len(dataset.labels), summaries_dir)
    metrics = _evaluate(run, trained, features, dataset)
    judged = _judge(run, store, promote, trained, features, dataset, metrics)
    version, metrics = _export(run, store, activate, backbone, trained, features, dataset, metrics, judged)
    run.timings["total_s"] = time.time() - run.started
    run.report({"phase": phases.PUBLISHED, "version": version})
    return RetrainResult(
        name,
        version,
        store.path(name, version),
        metrics,
        dataset.labels,
        features.skipped,
        features.computed,
        features.cached,
        run.timings,
        root=dataset.root,
        bottlenecks_shared=features.shared,
        promotion=judged.outcome,
    )


@dataclass
class _Run:
    """What the phases of one retrain share."""

    config: TrainConfig
    name: str
    job_id: Optional[str]
    report: ProgressFn
    should_stop: Optional[Callable[[], bool]]
    max_pixels: int
    started: float = field(default_factory=time.time)
    timings: Dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def timed(self, key: str) -> Iterator[None]:
        """Time the block as ``timings[key]`` (seconds), when it ends without raising."""
        start = time.time()
        yield
        self.timings[key] = time.time() - start


Row = Tuple[Any, int, str]  # one image's bottleneck views, label index and path


@dataclass
class _Features:
    """The bottlenecks of the readable images, by split, and the phase's counts."""

    by_split: Dict[str, List[Row]]
    dim: int
    views: int  # per training image: 1 + the distorted views
    skipped: List[Tuple[str, str]]
    computed: int
    cached: int
    digests: Dict[str, str]  # each readable image's path to its content's SHA-256
    shared: Optional[Dict[str, Any]] = None  # the exchange with the shared bucket, if any

    def arrays(self, split: str, all_views: bool) -> Tuple[np.ndarray, np.ndarray, List[str]]:
        """A split's features (every view, or the undistorted one), label indexes and paths."""
        rows = self.by_split[split]
        if not rows:
            shape = (0, self.views, self.dim) if all_views else (0, self.dim)
            return np.zeros(shape, np.float32), np.zeros((0,), np.int32), []
        feats = np.stack([f if all_views else f[0] for f, _, _ in rows])
        return feats, np.array([label for _, label, _ in rows], np.int32), [p for _, _, p in rows]


def _scan(
    run: _Run, image_dir: Path, confine_to: Optional[Path], dataset: Optional[datasets.Dataset]
) -> datasets.Dataset:
    """The dataset's images and splits: as scanned at submit time, else scanned now."""
    run.report({"phase": phases.SCANNING})
    if dataset is not None:
        return dataset
    config = run.config
    return datasets.scan(
        Path(image_dir),
        config.testing_percentage,
        config.validation_percentage,
        run.max_pixels,
        confine_to=confine_to,
    )


def _published_by(run: _Run, store: VersionStore) -> Optional[RetrainResult]:
    """The version this job already published (a redelivered job), if any."""
    name, job_id = run.name, run.job_id
    existing = store.find_job(name, job_id) if job_id is not None else None
    if existing is None:
        return None
    log.info("job %s already published %s/%s", job_id, name, existing)
    meta = store.metadata(name, existing)
    return RetrainResult(
        name, existing, store.path(name, existing), meta.get("metrics", {}), meta.get("labels", [])
    )


def _bottlenecks(
    run: _Run, dataset: datasets.Dataset, backbone: Any, cache: BottleneckCache, threads: int
) -> _Features:
    """Every image's bottlenecks (cached, or computed through the backbone), by split."""
    config = run.config
    distortion = Distortion(
        config.flip_left_right, config.random_crop, config.random_scale, config.random_brightness
    )
    extra_views = config.distorted_views if distortion.active else 0
    records = dataset.images
    # Cross-validation trains on every image in some fold: all need their views.
    views = [1 + extra_views if r.split == "training" or config.cross_validate else 1 for r in records]
    label_index = {label: i for i, label in enumerate(dataset.labels)}

    def counted(done: int, total: int) -> None:
        run.report({"phase": phases.BOTTLENECKS, "done": done, "total": total})

    with run.timed("bottlenecks_s"):
        counted(0, len(records))
        result = compute(
            [r.path for r in records],
            views,
            backbone,
            cache,
            distortion,
            threads=threads or (os.cpu_count() or 2),
            max_pixels=run.max_pixels,
            progress=counted,
            should_stop=run.should_stop,
        )
    by_split: Dict[str, List[Row]] = {s: [] for s in datasets.SPLITS}
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
    skipped = list(dataset.skipped) + result.failures
    digests = {str(r.path): d for r, d in zip(records, result.digests) if d is not None}
    return _Features(
        by_split,
        backbone.feature_dim,
        1 + extra_views,
        skipped,
        result.computed,
        result.cached,
        digests,
        result.shared.to_dict() if result.shared is not None else None,
    )


def _train(run: _Run, features: _Features, classes: int, summaries_dir: Optional[Path]) -> TrainResult:
    """The new head, trained on the training split's views, validated on the validation split."""
    train_x, train_y, _ = features.arrays("training", True)
    val_x, val_y, _ = features.arrays("validation", False)
    with run.timed("training_s"):
        return train_head(
            train_x,
            train_y,
            val_x,
            val_y,
            classes,
            run.config,
            summaries_dir,
            progress=lambda entry: run.report(dict(entry, phase=phases.TRAINING)),
            should_stop=run.should_stop,
        )


def _evaluate(
    run: _Run, trained: TrainResult, features: _Features, dataset: datasets.Dataset
) -> Dict[str, Any]:
    """The head's metrics on the test split (and across folds, with cross_validate)."""
    run.report({"phase": phases.EVALUATING})
    test_x, test_y, test_paths = features.arrays("testing", False)
    # Misclassified images are named relative to the dataset (the version's metadata too).
    metrics = evaluate(
        trained.head,
        test_x,
        test_y,
        dataset.labels,
        [os.path.relpath(p, str(dataset.root)) for p in test_paths],
    )
    metrics.update(training_metrics(trained, len(features.by_split["validation"]), run.config))
    metrics["images"] = {s: len(features.by_split[s]) for s in datasets.SPLITS}
    if run.config.cross_validate:
        with run.timed("cross_validation_s"):
            metrics["cross_validation"] = cross_validate_splits(
                features.by_split,
                dataset.labels,
                run.config,
                lambda fold, folds: run.report(
                    {"phase": phases.CROSS_VALIDATING, "fold": fold, "folds": folds}
                ),
                run.should_stop,
            )
    return metrics


def _judge(
    run: _Run,
    store: VersionStore,
    policy: GatePolicy,
    trained: TrainResult,
    features: _Features,
    dataset: datasets.Dataset,
    metrics: Dict[str, Any],
) -> gate.Judged:
    """The promotion gate: is the candidate at least as good as the version now serving?"""
    run.report({"phase": phases.JUDGING})
    test_x, test_y, test_paths = features.arrays("testing", False)
    seen = [p for split in ("training", "validation") for _, _, p in features.by_split[split]]
    with run.timed("judging_s"):
        return gate.judge(
            store,
            run.name,
            policy,
            trained.head,
            test_x,
            test_y,
            test_paths,
            features.digests,
            dataset.labels,
            dataset.root,
            [r.path.name for r in dataset.images],
            {
                "testing_percentage": run.config.testing_percentage,
                "validation_percentage": run.config.validation_percentage,
            },
            metrics.get("test_accuracy"),
            training_paths=seen,
            max_pixels=run.max_pixels,
        )


def _export(
    run: _Run,
    store: VersionStore,
    activate: bool,
    backbone: Any,
    trained: TrainResult,
    features: _Features,
    dataset: datasets.Dataset,
    metrics: Dict[str, Any],
    judged: gate.Judged,
) -> Tuple[int, Dict[str, Any]]:
    """Publish the version (SavedModel, the configured formats, what the gate recorded); its
    number and metrics. It becomes current only when the gate promoted it."""
    if run.should_stop is not None and run.should_stop():
        raise Cancelled("Cancelled before export.")
    run.report({"phase": phases.EXPORTING})
    with run.timed("export_s"):
        formats = parse_formats(run.config.export)
        _, test_y, test_paths = features.arrays("testing", False)
        test_pixels = calibration_pixels = None
        if "tflite" in formats:
            test_pixels, calibration_pixels = _tflite_pixels(run, backbone, features, test_paths)
        metadata = dict(
            _metadata(run, metrics, dataset), promotion=judged.outcome, drift_reference=judged.drift_reference
        )

        def write(folder: Path) -> None:
            write_record(folder, judged.record)
            write_version(
                folder,
                backbone,
                trained.head,
                dataset.labels,
                metadata,
                formats,
                test_pixels,
                test_y,
                calibration_pixels,
            )

        version = store.publish(run.name, write, job_id=run.job_id, activate=activate and judged.promoted)
    return version, store.metadata(run.name, version).get("metrics", metrics)  # with TFLite's, if any


def _tflite_pixels(
    run: _Run, backbone: Any, features: _Features, test_paths: List[str]
) -> Tuple[Optional[np.ndarray], np.ndarray]:
    """TFLite accuracy is measured on the real test images, through the real decode; int8
    ranges are calibrated on training images drawn across the labels."""

    def pixels(paths: List[str]) -> np.ndarray:
        return np.stack(
            [prepare(Path(p).read_bytes(), backbone.preprocessing, run.max_pixels) for p in paths]
        )

    train_paths = [p for _, _, p in features.by_split["training"]]
    test_pixels = pixels(test_paths) if test_paths else None
    step = max(1, len(train_paths) // tflite.CALIBRATION_IMAGES)
    return test_pixels, pixels(train_paths[::step][: tflite.CALIBRATION_IMAGES])


def _metadata(run: _Run, metrics: Dict[str, Any], dataset: datasets.Dataset) -> Dict[str, Any]:
    """The version's ``poets.json``: who made it, from what, and how well it did."""
    metadata: Dict[str, Any] = {
        "name": run.name,
        "job_id": run.job_id,
        "hyperparameters": run.config.to_dict(),
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
    return metadata
