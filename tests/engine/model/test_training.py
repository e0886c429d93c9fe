"""poets.engine.model.training: option checking, the head's training loop, cancellation, evaluation."""

from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import pytest

from poets.engine.errors import Cancelled, InvalidInput
from poets.engine.model.training import TrainConfig, evaluate, predict, train_head


def blobs(seed: int = 0, per_class: int = 40, dim: int = 16, classes: int = 3,
          views: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    centres = rng.normal(0, 3, (classes, dim))
    labels = np.repeat(np.arange(classes), per_class).astype(np.int32)
    features = centres[labels][:, None, :] + rng.normal(0, 1, (len(labels), views, dim))
    return features.astype(np.float32), labels


def test_defaults_keep_poets_names_and_values() -> None:
    config = TrainConfig()
    assert (config.learning_rate, config.how_many_training_steps, config.train_batch_size) == (
        0.01, 4000, 100)
    assert (config.testing_percentage, config.validation_percentage) == (10, 10)
    assert config.architecture == "mobilenet_1.0_224"
    config.validate()


@pytest.mark.parametrize("changes, message", [
    ({"architecture": "vgg16"}, "mobilenet_1.0_224"),
    ({"bottleneck": "pool5"}, "bottleneck"),
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"learning_rate": -1.0}, "learning_rate"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"how_many_training_steps": 0}, "how_many_training_steps"),
    ({"how_many_training_steps": 100001}, "how_many_training_steps"),
    ({"train_batch_size": 0}, "train_batch_size"),
    ({"eval_step_interval": 0}, "eval_step_interval"),
    ({"validation_batch_size": 0}, "validation_batch_size"),
    ({"testing_percentage": 60, "validation_percentage": 40}, "percentage"),
    ({"testing_percentage": -1}, "percentage"),
    ({"random_crop": 101}, "random_crop"),
    ({"random_scale": -5}, "random_scale"),
    ({"random_brightness": 200}, "random_brightness"),
    ({"distorted_views": 33}, "distorted_views"),
    ({"optimizer": "rmsprop"}, "optimizer"),
    ({"hidden_units": -1}, "hidden_units"),
    ({"resize": "stretch"}, "resize"),
])
def test_out_of_range_options_are_invalid(changes: Dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        TrainConfig(**changes).validate()


def test_max_steps_comes_from_settings() -> None:
    with pytest.raises(InvalidInput, match="between 1 and 500"):
        TrainConfig(how_many_training_steps=501).validate(max_steps=500)


def test_from_dict_checks_names_and_types() -> None:
    config = TrainConfig.from_dict({"learning_rate": "0.1", "flip_left_right": "true",
                                    "how_many_training_steps": "20"})
    assert (config.learning_rate, config.flip_left_right, config.how_many_training_steps) == (
        0.1, True, 20)
    with pytest.raises(InvalidInput, match="learning_rat"):
        TrainConfig.from_dict({"learning_rat": 0.1})
    with pytest.raises(InvalidInput, match="how_many_training_steps must be a int"):
        TrainConfig.from_dict({"how_many_training_steps": "many"})
    with pytest.raises(InvalidInput, match="flip_left_right"):
        TrainConfig.from_dict({"flip_left_right": "maybe"})


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
