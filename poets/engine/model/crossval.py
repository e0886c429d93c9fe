"""K-fold cross-validation of the head: an accuracy estimate over every image.

A small dataset's test split holds a few dozen images: its accuracy is a wide
interval. K-fold scores every image once, by a head that never saw it, so the
estimate rests on all N images. Folds are stratified (each class spread evenly)
and stable: within a class, images are ordered by poets' file-name hash and dealt
out in turn. Inside each fold's training part, the validation images that early
stopping watches are chosen by poets' rule, as for a normal job.
"""

import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from poets.engine.data.datasets import SPLITS, assign_splits, percentage_hash
from poets.engine.errors import Cancelled
from poets.engine.model.config import TrainConfig
from poets.engine.model.metrics import Labels, accuracy_entry, confusion_matrix, per_class
from poets.engine.model.training import predict, train_head

FoldProgress = Callable[[int, int], None]


def assign_folds(names: Sequence[str], labels: Labels, k: int) -> np.ndarray:
    """The fold (0..k-1) of each image: per class, by hash order, dealt in turn."""
    folds = np.zeros(len(names), np.int64)
    by_class: Dict[int, List[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(index)
    offset = 0
    for label in sorted(by_class):
        rows = sorted(by_class[label], key=lambda i: (percentage_hash(names[i]), names[i]))
        for position, row in enumerate(rows):
            # Offsetting each class keeps the fold sizes even when classes are small.
            folds[row] = (position + offset) % k
        offset += len(rows)
    return folds


def cross_validate(
    features: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    label_names: Sequence[str],
    config: TrainConfig,
    progress: Optional[FoldProgress] = None,
    should_stop: Optional[Callable[[], bool]] = None,
) -> Dict[str, Any]:
    """Train ``config.cross_validate`` heads, each scored on the fold it did not see.

    Args:
        features: (N, V, D) bottlenecks of every image; view 0 is the plain one.
        labels: (N,) class indices.
        names: file names (their hash picks folds and validation images).
        label_names: class names.
        config: the hyper-parameters of every fold's head.
        progress: called with (fold, folds) before each fold.
        should_stop: polled between and during trainings; true raises Cancelled.

    Returns:
        ``k``, pooled ``accuracy``, ``n``, ``correct`` and Wilson ``interval``,
        ``fold_accuracies``, ``confusion_matrix`` and ``per_class`` over all N images.
    """
    predicted, fold_accuracies = out_of_fold_predictions(
        features, labels, names, len(label_names), config, progress, should_stop
    )
    matrix = confusion_matrix(labels, predicted, len(label_names))
    entry = accuracy_entry(int(np.sum(predicted == labels)), len(labels))
    return dict(
        entry,
        k=config.cross_validate,
        fold_accuracies=fold_accuracies,
        confusion_matrix=matrix.tolist(),
        per_class=per_class(matrix, label_names),
    )


def out_of_fold_predictions(
    features: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    classes: int,
    config: TrainConfig,
    progress: Optional[FoldProgress] = None,
    should_stop: Optional[Callable[[], bool]] = None,
) -> Tuple[np.ndarray, List[Optional[float]]]:
    """Each image's predicted class from the head of the fold that held it out, and
    each fold's accuracy (what :func:`cross_validate` summarises; benches pair them)."""
    k = config.cross_validate
    folds = assign_folds(names, labels, k)
    predicted = np.zeros(len(labels), np.int64)
    fold_accuracies: List[Optional[float]] = []
    for fold in range(k):
        if should_stop is not None and should_stop():
            raise Cancelled("Cancelled during cross-validation, fold {} of {}.".format(fold + 1, k))
        if progress is not None:
            progress(fold + 1, k)
        test = np.where(folds == fold)[0]
        rest = np.where(folds != fold)[0]
        split = np.array([""] * len(rest), dtype=object)
        for label in range(classes):
            members = np.where(labels[rest] == label)[0]
            split[members] = assign_splits([names[rest[m]] for m in members], 0, config.validation_percentage)
        train, validation = rest[split == "training"], rest[split == "validation"]
        trained = train_head(
            features[train],
            labels[train],
            features[validation][:, 0],
            labels[validation],
            classes,
            config,
            should_stop=should_stop,
        )
        if len(test):
            predicted[test] = predict(trained.head, features[test][:, 0]).argmax(axis=1)
            fold_accuracies.append(float(np.mean(predicted[test] == labels[test])))
        else:
            fold_accuracies.append(None)
    return predicted, fold_accuracies


def cross_validate_splits(
    by_split: Dict[str, List[Tuple[Any, int, str]]],
    label_names: Sequence[str],
    config: TrainConfig,
    progress: Optional[Callable[[int, int], None]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
) -> Dict[str, Any]:
    """:func:`cross_validate` over every split's (bottleneck views, label index, path) rows, as
    retrain holds them; folds follow the file names, as the split does."""
    rows = [row for split in SPLITS for row in by_split[split]]
    features = np.stack([f for f, _, _ in rows])
    labels = np.array([label for _, label, _ in rows], np.int32)
    names = [os.path.basename(path) for _, _, path in rows]
    return cross_validate(
        features, labels, names, list(label_names), config, progress=progress, should_stop=should_stop
    )
