"""poets.engine.model.training: the head's training loop, cancellation, evaluation.

The options themselves are tested in test_config.py."""

from pathlib import Path
from typing import Tuple

import numpy as np
import pytest

from poets.engine.errors import Cancelled
from poets.engine.model.training import TrainConfig, evaluate, predict, train_head


def blobs(seed: int = 0, per_class: int = 40, dim: int = 16, classes: int = 3,
          views: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    centres = rng.normal(0, 3, (classes, dim))
    labels = np.repeat(np.arange(classes), per_class).astype(np.int32)
    features = centres[labels][:, None, :] + rng.normal(0, 1, (len(labels), views, dim))
    return features.astype(np.float32), labels


@pytest.mark.parametrize("optimizer, hidden", [("sgd", 0), ("momentum", 0), ("adam", 0), ("adam", 32)])
def test_head_learns_separable_features(optimizer: str, hidden: int, tmp_path: Path) -> None:
    x, y = blobs(views=2)
    val_x, val_y = blobs(seed=0, per_class=10)
    config = TrainConfig(how_many_training_steps=200, eval_step_interval=50, optimizer=optimizer,
                         hidden_units=hidden, learning_rate=0.01)
    events = []
    result = train_head(x, y, val_x[:, 0], val_y, 3, config, summaries_dir=tmp_path / "logs",
                        progress=events.append)
    assert [e["step"] for e in events] == [50, 100, 150, 200]
    assert events[-1]["validation_accuracy"] is not None
    assert events[-1]["cross_entropy"] < events[0]["cross_entropy"]
    metrics = evaluate(result.head, val_x[:, 0], val_y, ["a", "b", "c"], ["p"] * len(val_y))
    assert metrics["test_accuracy"] >= 0.9 and metrics["test_n"] == 30
    assert np.sum(metrics["confusion_matrix"]) == 30
    assert list((tmp_path / "logs" / "train").iterdir())
    assert list((tmp_path / "logs" / "validation").iterdir())
    scores = predict(result.head, val_x[:4, 0])
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)


def test_training_is_reproducible_with_a_seed() -> None:
    x, y = blobs()
    config = TrainConfig(how_many_training_steps=30, seed=5)
    empty = np.zeros((0, 16), np.float32), np.zeros((0,), np.int32)
    first = train_head(x, y, *empty, 3, config)
    second = train_head(x, y, *empty, 3, config)
    for (w1, b1), (w2, b2) in zip(first.head.layers, second.head.layers):
        np.testing.assert_array_equal(w1.numpy(), w2.numpy())
        np.testing.assert_array_equal(b1.numpy(), b2.numpy())
    assert first.history[-1]["validation_accuracy"] is None


def test_cancel_during_training() -> None:
    x, y = blobs()
    polls = []

    def should_stop() -> bool:
        polls.append(1)
        return len(polls) > 2

    with pytest.raises(Cancelled, match="step 20"):
        train_head(x, y, x[:, 0], y, 3, TrainConfig(how_many_training_steps=1000), should_stop=should_stop)
