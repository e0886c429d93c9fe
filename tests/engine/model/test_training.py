"""poets.engine.model.training: the head's training loop, cancellation, evaluation.

The options themselves are tested in test_config.py."""

import re
from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
import tensorflow as tf

from poets.engine.errors import Cancelled, InvalidInput
from poets.engine.model.training import (
    TrainConfig,
    _accuracy_and_xent,
    evaluate,
    learning_rate_at,
    predict,
    train_head,
)


def blobs(
    seed: int = 0, per_class: int = 40, dim: int = 16, classes: int = 3, views: int = 1
) -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    centres = rng.normal(0, 3, (classes, dim))
    labels = np.repeat(np.arange(classes), per_class).astype(np.int32)
    features = centres[labels][:, None, :] + rng.normal(0, 1, (len(labels), views, dim))
    return features.astype(np.float32), labels


@pytest.mark.parametrize("optimizer, hidden", [("sgd", 0), ("momentum", 0), ("adam", 0), ("adam", 32)])
def test_head_learns_separable_features(optimizer: str, hidden: int, tmp_path: Path) -> None:
    x, y = blobs(views=2)
    val_x, val_y = blobs(seed=0, per_class=10)
    # Without smoothing, the plain cross-entropy it reports must fall.
    config = TrainConfig(
        how_many_training_steps=200,
        eval_step_interval=50,
        optimizer=optimizer,
        hidden_units=hidden,
        learning_rate=0.01,
        label_smoothing=0.0,
    )
    events = []
    result = train_head(
        x, y, val_x[:, 0], val_y, 3, config, summaries_dir=tmp_path / "logs", progress=events.append
    )
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


def test_cosine_schedule_warms_up_then_decays_to_zero() -> None:
    rates = [
        float(learning_rate_at(tf.constant(float(step)), 0.01, "cosine", 1000))
        for step in (1, 25, 50, 51, 525, 1000)
    ]
    assert rates[0] == pytest.approx(0.01 / 50) and rates[1] == pytest.approx(0.005)
    assert rates[2] == pytest.approx(0.01, rel=1e-3) and rates[3] <= rates[2]
    assert rates[4] == pytest.approx(0.005, rel=0.05) and rates[5] == pytest.approx(0.0, abs=1e-9)
    assert float(learning_rate_at(tf.constant(7.0), 0.01, "constant", 1000)) == pytest.approx(0.01)


def test_label_smoothing_keeps_the_head_from_growing_without_bound() -> None:
    x, y = blobs(views=1)
    empty = np.zeros((0, 16), np.float32), np.zeros((0,), np.int32)
    plain = TrainConfig(how_many_training_steps=400, label_smoothing=0.0, learning_rate_schedule="constant")
    smooth = TrainConfig(how_many_training_steps=400, label_smoothing=0.2, learning_rate_schedule="constant")
    norms = [float(tf.norm(train_head(x, y, *empty, 3, c).head.layers[0][0])) for c in (plain, smooth)]
    assert norms[1] < 0.5 * norms[0]


def test_early_stopping_keeps_the_best_weights_and_stops() -> None:
    # Labels that training cannot learn from the validation's point of view: the
    # validation set disagrees with training, so validation loss only grows.
    x, y = blobs(views=1)
    val_x, val_y = blobs(seed=0, per_class=10)
    val_y = (val_y + 1) % 3
    config = TrainConfig(how_many_training_steps=4000, eval_step_interval=10, early_stopping_patience=200)
    result = train_head(x, y, val_x[:, 0], val_y, 3, config)
    assert result.best_step is not None and result.stopped_step < 4000
    assert result.stopped_step - result.best_step == 200
    kept = next(e for e in result.history if e["step"] == result.best_step)
    assert kept["validation_cross_entropy"] == min(e["validation_cross_entropy"] for e in result.history)
    # The head holds the best step's weights: scoring it again gives that step's figures.
    _, xent = (float(t) for t in _accuracy_and_xent(result.head(tf.constant(val_x[:, 0])), val_y))
    assert xent == pytest.approx(kept["validation_cross_entropy"], rel=1e-4)
    off = train_head(
        x, y, val_x[:, 0], val_y, 3, TrainConfig(how_many_training_steps=300, early_stopping_patience=0)
    )
    assert off.best_step is None and off.stopped_step == 300


def test_evaluate_reports_n_interval_and_per_class_rates() -> None:
    x, y = blobs(views=1)
    result = train_head(x, y, x[:, 0], y, 3, TrainConfig(how_many_training_steps=100))
    metrics = evaluate(result.head, x[:, 0], y, ["a", "b", "c"], ["p"] * len(y))
    low, high = metrics["test_interval"]
    assert low <= metrics["test_accuracy"] <= high and metrics["test_n"] == len(y)
    assert metrics["test_correct"] == round(metrics["test_accuracy"] * len(y))
    assert [r["label"] for r in metrics["per_class"]] == ["a", "b", "c"]
    assert all(r["recall_n"] == 40 for r in metrics["per_class"])
    empty = evaluate(result.head, x[:0, 0], y[:0], ["a", "b", "c"], [])
    assert empty["test_accuracy"] is None and empty["test_interval"] is None and empty["test_n"] == 0


def test_poets_recipe_presets_what_was_not_given() -> None:
    poets = TrainConfig.from_dict({"recipe": "poets"})
    assert (poets.bottleneck, poets.optimizer, poets.learning_rate) == ("logits", "sgd", 0.01)
    assert (poets.learning_rate_schedule, poets.label_smoothing, poets.early_stopping_patience) == (
        "constant",
        0.0,
        0,
    )
    assert TrainConfig.from_dict({"recipe": "poets", "optimizer": "adam"}).optimizer == "adam"
    # Round trip through the form a CLI --url or a queued job sends.
    assert TrainConfig.from_dict(poets.to_form()) == poets
    assert TrainConfig.from_dict({}) == TrainConfig()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"cross_validate": 1}, "cross_validate must be 0 or between 2 and 20"),
        ({"recipe": "keras"}, "recipe must be one of default, poets"),
        ({"label_smoothing": 0.9}, "label_smoothing must be between 0 and 0.5"),
        ({"learning_rate_schedule": "step"}, "learning_rate_schedule must be one of cosine, constant"),
    ],
)
def test_new_options_are_range_checked(options: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidInput, match=re.escape(message)):
        TrainConfig.from_dict(options).validate()


def test_retrain_help_renders_every_option() -> None:
    # argparse %-formats help texts: a stray '%' in a parameter's help breaks --help.
    from poets.cli.main import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.choices and "retrain" in a.choices)
    text = commands.choices["retrain"].format_help()  # type: ignore[index]
    for option in ("--recipe", "--learning_rate_schedule", "--cross_validate", "--early_stopping_patience"):
        assert option in text
