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

__all__ = ["OPTIMIZERS", "Head", "TrainConfig", "TrainResult", "evaluate", "predict", "train_head"]

log = logging.getLogger(__name__)

# What tensorboard's tf.summary.scalar writes, without needing tensorboard installed.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")).SerializeToString()


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
            weights = tf.Variable(generator.truncated_normal([fan_in, fan_out], stddev=stddev),
                                  name="weights_{}".format(i))
            biases = tf.Variable(tf.zeros([fan_out]), name="biases_{}".format(i))
            self.layers.append((weights, biases))

    def __call__(self, features: tf.Tensor) -> tf.Tensor:
        x = features
        for i, (weights, biases) in enumerate(self.layers):
            x = tf.matmul(x, weights) + biases
            if i < len(self.layers) - 1:
                x = tf.nn.relu(x)
        return x


class _Optimizer(tf.Module):
    """SGD, momentum (0.9) or Adam on plain variables: the same on every TF 2.x."""

    def __init__(self, kind: str, learning_rate: float, variables: Sequence[tf.Variable]) -> None:
        super().__init__(name="optimizer")
        self.kind = kind
        self.learning_rate = learning_rate
        self.targets = list(variables)
        self.step = tf.Variable(0.0, trainable=False)
        self.m = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.targets]
        self.v = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.targets]

    def apply(self, gradients: Sequence[tf.Tensor]) -> None:
        self.step.assign_add(1.0)
        lr = self.learning_rate
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
    head: Head
    history: List[Dict[str, Any]] = field(default_factory=list)


def _accuracy_and_xent(logits: tf.Tensor, labels: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    xent = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    correct = tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), labels)
    return tf.reduce_mean(tf.cast(correct, tf.float32)), xent


def train_head(train_features: np.ndarray, train_labels: np.ndarray,
               validation_features: np.ndarray, validation_labels: np.ndarray,
               classes: int, config: TrainConfig, summaries_dir: Optional[Path] = None,
               progress: Optional[ProgressFn] = None,
               should_stop: Optional[Callable[[], bool]] = None) -> TrainResult:
    """Train a head on bottlenecks.

    Args:
        train_features: (N, V, D): V cached views per training image; each step draws
            random images and, for each, a random view (poets' distortions, cached).
        train_labels: (N,) class indices.
        validation_features: (M, D), plain views; may be empty.
        validation_labels: (M,).
        classes: number of labels.
        config: the hyper-parameters.
        summaries_dir: TensorBoard event files go to its ``train`` and ``validation``.
        progress: called every ``eval_step_interval`` steps with step, steps,
            train_accuracy, cross_entropy and validation_accuracy.
        should_stop: polled between chunks; true raises :class:`Cancelled`.
    """
    features = tf.constant(train_features, tf.float32)
    labels = tf.constant(train_labels, tf.int32)
    count, views, dim = train_features.shape
    head = Head(dim, classes, config.hidden_units, config.seed)
    variables = [var for layer in head.layers for var in layer]
    optimizer = _Optimizer(config.optimizer, config.learning_rate, variables)
    generator = tf.random.Generator.from_seed(config.seed + 1)
    batch = config.train_batch_size

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
            optimizer.apply(tape.gradient(xent, variables))
        return accuracy, xent

    val_x = tf.constant(validation_features.reshape(-1, dim), tf.float32)
    val_y = tf.constant(validation_labels, tf.int32)

    @tf.function
    def validate(rows: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        return _accuracy_and_xent(head(tf.gather(val_x, rows)), tf.gather(val_y, rows))

    writers = {}
    if summaries_dir is not None:
        writers = {name: tf.summary.create_file_writer(str(Path(summaries_dir) / name))
                   for name in ("train", "validation")}
    rng = np.random.RandomState(config.seed)
    result = TrainResult(head)
    steps_total = config.how_many_training_steps
    done = 0
    while done < steps_total:
        if should_stop is not None and should_stop():
            raise Cancelled("Cancelled during training at step {}.".format(done))
        chunk = min(config.eval_step_interval, steps_total - done)
        train_accuracy, xent = (float(t) for t in run_steps(tf.constant(chunk)))
        done += chunk
        entry: Dict[str, Any] = {"step": done, "steps": steps_total,
                                 "train_accuracy": train_accuracy, "cross_entropy": xent,
                                 "validation_accuracy": None}
        if len(validation_labels):
            size = config.validation_batch_size
            rows = (np.arange(len(validation_labels)) if size == -1
                    else rng.randint(0, len(validation_labels), size))
            val_accuracy, val_xent = (float(t) for t in validate(tf.constant(rows, tf.int32)))
            entry["validation_accuracy"] = val_accuracy
            entry["validation_cross_entropy"] = val_xent
        result.history.append(entry)
        if writers:
            with writers["train"].as_default():
                _scalar("accuracy", train_accuracy, done)
                _scalar("cross_entropy", xent, done)
            if entry["validation_accuracy"] is not None:
                with writers["validation"].as_default():
                    _scalar("accuracy", entry["validation_accuracy"], done)
                    _scalar("cross_entropy", entry["validation_cross_entropy"], done)
        if progress is not None:
            progress(entry)
    for writer in writers.values():
        writer.flush()
    return result


def predict(head: Head, features: np.ndarray) -> np.ndarray:
    """Softmax scores of the head for (N, D) features."""
    if not len(features):
        return np.zeros((0, 0), np.float32)
    return tf.nn.softmax(head(tf.constant(features, tf.float32))).numpy()  # type: ignore[no-any-return]


def evaluate(head: Head, features: np.ndarray, labels: np.ndarray, label_names: Sequence[str],
             paths: Sequence[str]) -> Dict[str, Any]:
    """Test accuracy with N, the confusion matrix (rows: truth) and the misclassified images."""
    classes = len(label_names)
    if not len(labels):
        return {"test_accuracy": None, "test_n": 0,
                "confusion_matrix": [[0] * classes for _ in range(classes)], "misclassified": []}
    predicted = predict(head, features).argmax(axis=1)
    confusion = np.zeros((classes, classes), dtype=np.int64)
    for truth, guess in zip(labels, predicted):
        confusion[truth, guess] += 1
    misclassified = [{"path": str(path), "label": label_names[truth], "predicted": label_names[guess]}
                     for path, truth, guess in zip(paths, labels, predicted) if truth != guess]
    return {"test_accuracy": float(np.mean(predicted == labels)), "test_n": len(labels),
            "confusion_matrix": confusion.tolist(), "misclassified": misclassified}
