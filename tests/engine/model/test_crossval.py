"""poets.engine.model.crossval: stratified, stable folds; every image scored by a head that never saw it."""

import numpy as np
import pytest

from poets.engine.model.config import TrainConfig
from poets.engine.model.crossval import assign_folds, cross_validate

pytestmark = pytest.mark.unit


def test_folds_are_stratified_and_stable() -> None:
    names = ["img_{}.jpg".format(i) for i in range(53)]
    labels = [0] * 30 + [1] * 20 + [2] * 3
    folds = assign_folds(names, labels, 5)
    for label, size in ((0, 30), (1, 20)):
        counts = np.bincount(folds[np.array(labels) == label], minlength=5)
        assert counts.tolist() == [size // 5] * 5
    # A class smaller than K lands in different folds, and fold sizes stay even.
    assert len(set(folds[50:].tolist())) == 3
    assert np.bincount(folds).max() - np.bincount(folds).min() <= 1
    # The same files give the same folds whatever their order.
    order = np.random.RandomState(0).permutation(53)
    again = assign_folds([names[i] for i in order], [labels[i] for i in order], 5)
    assert again.tolist() == folds[order].tolist()


def test_cross_validation_scores_every_image_once() -> None:
    rng = np.random.RandomState(0)
    centres = rng.normal(0, 3, (3, 16))
    labels = np.repeat(np.arange(3), 20).astype(np.int32)
    features = (centres[labels][:, None, :] + rng.normal(0, 1, (60, 2, 16))).astype(np.float32)
    names = ["photo_{}.jpg".format(i) for i in range(60)]
    config = TrainConfig(how_many_training_steps=60, cross_validate=3)
    folds = []
    result = cross_validate(
        features,
        labels,
        names,
        ["a", "b", "c"],
        config,
        progress=lambda fold, total: folds.append((fold, total)),
    )
    assert folds == [(1, 3), (2, 3), (3, 3)]
    assert result["k"] == 3 and result["n"] == 60 and len(result["fold_accuracies"]) == 3
    assert np.sum(result["confusion_matrix"]) == 60
    assert result["accuracy"] >= 0.9
    assert result["interval"][0] <= result["accuracy"] <= result["interval"][1]
    assert [row["recall_n"] for row in result["per_class"]] == [20, 20, 20]
