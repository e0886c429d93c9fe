"""Training the new head on cached bottlenecks, as a compiled loop.

The head is a softmax layer (optionally behind one hidden ReLU layer) trained on
in-memory features. Steps run inside ``tf.function`` in chunks of
``eval_step_interval``, so Python only wakes up to report progress, write
TensorBoard summaries and check for cancellation. Plain TF ops throughout (no
Keras), so the same code runs on TensorFlow 2.7 and today's.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from poets.engine.errors import Cancelled
from poets.engine.model.config import OPTIMIZERS, TrainConfig
from poets.engine.model.metrics import accuracy_entry, confusion_matrix, per_class

__all__ = ["OPTIMIZERS", "Head", "TrainConfig", "TrainResult", "evaluate", "predict", "train_head"]

log = logging.getLogger(__name__)

# Share of the steps over which the cosine schedule's learning rate rises from zero.
WARMUP_FRACTION = 0.05

# What tensorboard's tf.summary.scalar writes, without needing tensorboard installed.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
).SerializeToString()


def _scalar(name: str, value: float, step: int) -> None:
    tf.summary.write(name, tf.constant(value, tf.float32), step=step, metadata=_SCALAR_METADATA)


ProgressFn = Callable[[Dict[str, Any]], None]


class Head(tf.Module):
    """The new top layer(s): features in, logits out."""

    def __init__(self, feature_dim: int, classes: int, hidden_units: int = 0, seed: int = 0) -> None:
        super().__init__(name="head")
        generator = tf.random.Generator.from_seed(seed)
        self.layers: List[Tuple[tf.Variable, tf.Variable]] = []
        sizes = [feature_dim] + ([hidden_units] if hidden_units else []) + [classes]
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            last = i == len(sizes) - 2
            # poets initialises the final layer with stddev 0.001; hidden layers get He.
            stddev = 0.001 if last else float(np.sqrt(2.0 / fan_in))
            weights = tf.Variable(
                generator.truncated_normal([fan_in, fan_out], stddev=stddev), name="weights_{}".format(i)
            )
            biases = tf.Variable(tf.zeros([fan_out]), name="biases_{}".format(i))
            self.layers.append((weights, biases))

    def __call__(self, features: tf.Tensor) -> tf.Tensor:
        x = features
        for i, (weights, biases) in enumerate(self.layers):
            x = tf.matmul(x, weights) + biases
            if i < len(self.layers) - 1:
                x = tf.nn.relu(x)
        return x


def learning_rate_at(step: tf.Tensor, base: float, schedule: str, total_steps: int) -> tf.Tensor:
    """The learning rate of (1-based) ``step``: constant, or warm-up then cosine decay.

    ``cosine`` rises linearly over the first 5% of the steps (Adam's first moments are
    poor estimates then), then follows half a cosine down to zero at ``total_steps``.
    """
    if schedule != "cosine":
        return tf.constant(base, tf.float32)
    warmup = max(1.0, round(WARMUP_FRACTION * total_steps))
    rising = step / warmup
    progress = tf.clip_by_value((step - warmup) / max(1.0, total_steps - warmup), 0.0, 1.0)
    falling = 0.5 * (1.0 + tf.cos(np.pi * progress))
    return base * tf.where(step < warmup, rising, falling)


class _Optimizer(tf.Module):
    """SGD, momentum (0.9) or Adam on plain variables: the same on every TF 2.x."""

    def __init__(
        self,
        kind: str,
        learning_rate: float,
        variables: Sequence[tf.Variable],
        schedule: str = "constant",
        total_steps: int = 1,
    ) -> None:
        super().__init__(name="optimizer")
        self.kind = kind
        self.learning_rate = learning_rate
        self.schedule = schedule
        self.total_steps = total_steps
        self.targets = list(variables)
        self.step = tf.Variable(0.0, trainable=False)
        self.m = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.targets]
        self.v = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.targets]

    def apply(self, gradients: Sequence[tf.Tensor]) -> None:
        self.step.assign_add(1.0)
        lr = learning_rate_at(self.step, self.learning_rate, self.schedule, self.total_steps)
        for var, grad, m, v in zip(self.targets, gradients, self.m, self.v):
            if self.kind == "sgd":
                var.assign_sub(lr * grad)
            elif self.kind == "momentum":
                m.assign(0.9 * m + grad)
                var.assign_sub(lr * m)
            else:
                m.assign(0.9 * m + 0.1 * grad)
                v.assign(0.999 * v + 0.001 * tf.square(grad))
                m_hat = m / (1.0 - tf.pow(0.9, self.step))
                v_hat = v / (1.0 - tf.pow(0.999, self.step))
                var.assign_sub(lr * m_hat / (tf.sqrt(v_hat) + 1e-7))


@dataclass
class TrainResult:
    """The trained head and one history entry per evaluation.

    With early stopping, ``head`` holds the weights of ``best_step`` (lowest
    validation cross-entropy), not the last step's; ``stopped_step`` is where
    training ended.
    """

    head: Head
    history: List[Dict[str, Any]] = field(default_factory=list)
    best_step: Optional[int] = None
    stopped_step: int = 0


def _accuracy_and_xent(logits: tf.Tensor, labels: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    xent = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    correct = tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), labels)
    return tf.reduce_mean(tf.cast(correct, tf.float32)), xent


def _smoothed_xent(logits: tf.Tensor, labels: tf.Tensor, classes: int, smoothing: float) -> tf.Tensor:
    """Cross-entropy against targets of 1 - smoothing (+ smoothing / classes everywhere).

    Keeps the logits bounded: without it a linear head on separable features drives
    the training loss towards 0 by growing its weights, and grows overconfident.
    """
    targets = tf.one_hot(labels, classes) * (1.0 - smoothing) + smoothing / classes
    return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits))


# A compiled function: one int32 tensor in (steps, or validation rows), accuracy and cross-entropy out.
_Compiled = Callable[[tf.Tensor], Tuple[tf.Tensor, tf.Tensor]]


def _compiled_steps(
    head: Head,
    variables: List[tf.Variable],
    train_features: np.ndarray,
    train_labels: np.ndarray,
    classes: int,
    config: TrainConfig,
) -> _Compiled:
    """The training loop as one ``tf.function``: it runs the number of steps it is given
    and returns the last batch's accuracy and cross-entropy."""
    features = tf.constant(train_features, tf.float32)
    labels = tf.constant(train_labels, tf.int32)
    count, views, _ = train_features.shape
    optimizer = _Optimizer(
        config.optimizer,
        config.learning_rate,
        variables,
        config.learning_rate_schedule,
        config.how_many_training_steps,
    )
    generator = tf.random.Generator.from_seed(config.seed + 1)
    batch = config.train_batch_size
    smoothing = float(config.label_smoothing)

    @tf.function
    def run_steps(steps: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        accuracy, xent = tf.constant(0.0), tf.constant(0.0)
        for _ in tf.range(steps):
            rows = generator.uniform([batch], 0, count, dtype=tf.int32)
            cols = generator.uniform([batch], 0, views, dtype=tf.int32)
            x = tf.gather_nd(features, tf.stack([rows, cols], axis=1))
            y = tf.gather(labels, rows)
            with tf.GradientTape() as tape:
                logits = head(x)
                accuracy, xent = _accuracy_and_xent(logits, y)
                loss = _smoothed_xent(logits, y, classes, smoothing) if smoothing else xent
            optimizer.apply(tape.gradient(loss, variables))
        return accuracy, xent

    return run_steps  # type: ignore[no-any-return]


def _compiled_validation(
    head: Head, validation_features: np.ndarray, validation_labels: np.ndarray, dim: int
) -> _Compiled:
    """Accuracy and cross-entropy of the head on the given validation rows, as a ``tf.function``."""
    val_x = tf.constant(validation_features.reshape(-1, dim), tf.float32)
    val_y = tf.constant(validation_labels, tf.int32)

    @tf.function
    def validate(rows: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        return _accuracy_and_xent(head(tf.gather(val_x, rows)), tf.gather(val_y, rows))

    return validate  # type: ignore[no-any-return]


def _summary_writers(summaries_dir: Optional[Path]) -> Dict[str, Any]:
    """TensorBoard writers for ``train`` and ``validation`` under ``summaries_dir``, or none."""
    writers = {}
    if summaries_dir is not None:
        writers = {
            name: tf.summary.create_file_writer(str(Path(summaries_dir) / name))
            for name in ("train", "validation")
        }
    return writers


def _history_entry(done: int, steps_total: int, train_accuracy: float, xent: float) -> Dict[str, Any]:
    return {
        "step": done,
        "steps": steps_total,
        "train_accuracy": train_accuracy,
        "cross_entropy": xent,
        "validation_accuracy": None,
    }


def _score_validation(
    entry: Dict[str, Any],
    validate: _Compiled,
    validation_n: int,
    size: int,
    patience: int,
    rng: np.random.RandomState,
) -> float:
    """Put the validation accuracy and cross-entropy in ``entry``; return the cross-entropy."""
    # Choosing a checkpoint on a random batch would pick lucky batches: score all.
    rows = np.arange(validation_n) if size == -1 or patience else rng.randint(0, validation_n, size)
    val_accuracy, val_xent = (float(t) for t in validate(tf.constant(rows, tf.int32)))
    entry["validation_accuracy"] = val_accuracy
    entry["validation_cross_entropy"] = val_xent
    return val_xent


def _write_summaries(writers: Dict[str, Any], entry: Dict[str, Any]) -> None:
    """One evaluation's figures to TensorBoard (nothing without writers)."""
    if not writers:
        return
    done = entry["step"]
    with writers["train"].as_default():
        _scalar("accuracy", entry["train_accuracy"], done)
        _scalar("cross_entropy", entry["cross_entropy"], done)
    if entry["validation_accuracy"] is not None:
        with writers["validation"].as_default():
            _scalar("accuracy", entry["validation_accuracy"], done)
            _scalar("cross_entropy", entry["validation_cross_entropy"], done)


def _out_of_patience(done: int, best_step: Optional[int], best_xent: float, patience: int) -> bool:
    """Whether early stopping ends training now (logged when it does)."""
    if patience and best_step is not None and done - best_step >= patience:
        log.info(
            "early stop at step %d: best validation cross-entropy %.4f at step %d",
            done,
            best_xent,
            best_step,
        )
        return True
    return False


def train_head(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    validation_features: np.ndarray,
    validation_labels: np.ndarray,
    classes: int,
    config: TrainConfig,
    summaries_dir: Optional[Path] = None,
    progress: Optional[ProgressFn] = None,
    should_stop: Optional[Callable[[], bool]] = None,
) -> TrainResult:
    """Train a head on bottlenecks.

    Args:
        train_features: (N, V, D): V cached views per training image; each step draws
            random images and, for each, a random view (poets' distortions, cached).
        train_labels: (N,) class indices.
        validation_features: (M, D), plain views; may be empty.
        validation_labels: (M,).
        classes: number of labels.
        config: the hyper-parameters. With ``early_stopping_patience`` > 0 and a
            validation set, every evaluation scores the whole validation set, the
            weights with the lowest validation cross-entropy are kept, and training
            ends once that many steps pass without a new best.
        summaries_dir: TensorBoard event files go to its ``train`` and ``validation``.
        progress: called every ``eval_step_interval`` steps with step, steps,
            train_accuracy, cross_entropy and validation_accuracy.
        should_stop: polled between chunks; true raises :class:`Cancelled`.
    """
    _, _, dim = train_features.shape
    head = Head(dim, classes, config.hidden_units, config.seed)
    variables = [var for layer in head.layers for var in layer]
    steps_total = config.how_many_training_steps
    run_steps = _compiled_steps(head, variables, train_features, train_labels, classes, config)
    validate = _compiled_validation(head, validation_features, validation_labels, dim)
    writers = _summary_writers(summaries_dir)
    rng = np.random.RandomState(config.seed)
    result = TrainResult(head)
    patience = config.early_stopping_patience if len(validation_labels) else 0
    best_xent = float("inf")
    best_weights: List[np.ndarray] = []
    done = 0
    while done < steps_total:
        if should_stop is not None and should_stop():
            raise Cancelled("Cancelled during training at step {}.".format(done))
        chunk = min(config.eval_step_interval, steps_total - done)
        train_accuracy, xent = (float(t) for t in run_steps(tf.constant(chunk)))
        done += chunk
        entry = _history_entry(done, steps_total, train_accuracy, xent)
        if len(validation_labels):
            size = config.validation_batch_size
            val_xent = _score_validation(entry, validate, len(validation_labels), size, patience, rng)
            if patience and val_xent < best_xent:
                best_xent, result.best_step = val_xent, done
                best_weights = [var.numpy() for var in variables]
        result.history.append(entry)
        _write_summaries(writers, entry)
        if progress is not None:
            progress(entry)
        if _out_of_patience(done, result.best_step, best_xent, patience):
            break
    result.stopped_step = done
    if best_weights:
        for var, value in zip(variables, best_weights):
            var.assign(value)
    for writer in writers.values():
        writer.flush()
    return result


def predict(head: Head, features: np.ndarray) -> np.ndarray:
    """Softmax scores of the head for (N, D) features."""
    if not len(features):
        return np.zeros((0, 0), np.float32)
    return tf.nn.softmax(head(tf.constant(features, tf.float32))).numpy()  # type: ignore[no-any-return]


def evaluate(
    head: Head, features: np.ndarray, labels: np.ndarray, label_names: Sequence[str], paths: Sequence[str]
) -> Dict[str, Any]:
    """Test accuracy with its N and 95% Wilson interval, the confusion matrix (rows:
    truth), per-class precision and recall, and the misclassified images."""
    classes = len(label_names)
    predicted = predict(head, features).argmax(axis=1) if len(labels) else np.zeros((0,), np.int64)
    confusion = confusion_matrix(labels, predicted, classes)
    correct = int(np.sum(predicted == labels))
    entry = accuracy_entry(correct, len(labels))
    misclassified = [
        {"path": str(path), "label": label_names[truth], "predicted": label_names[guess]}
        for path, truth, guess in zip(paths, labels, predicted)
        if truth != guess
    ]
    return {
        "test_accuracy": entry["accuracy"],
        "test_n": entry["n"],
        "test_correct": correct,
        "test_interval": entry["interval"],
        "confusion_matrix": confusion.tolist(),
        "per_class": per_class(confusion, label_names),
        "misclassified": misclassified,
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
