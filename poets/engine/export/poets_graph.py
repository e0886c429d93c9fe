"""Writing a TensorFlow for Poets frozen graph.

``retrained_graph.pb`` (input ``input``: float (N, size, size, 3) normalised as label_image.py
does, output ``final_result``: softmax scores) and ``retrained_labels.txt``, so label_image.py
and the poets Android/iOS apps keep working. Reading such a graph back in is not an export:
:mod:`poets.engine.graph_import`.
"""

from pathlib import Path
from typing import Any, Sequence

import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from poets.engine.export.frozen import strip_default_attrs
from poets.engine.model.backbones import Backbone
from poets.engine.model.training import Head

FOLDER = "poets"
GRAPH_FILE = "retrained_graph.pb"
LABELS_FILE = "retrained_labels.txt"
# label_image.py's defaults for MobileNet graphs; the graph undoes them, so the
# backbone sees exactly what it saw in training.
INPUT_MEAN = 128.0
INPUT_STD = 128.0


def write(folder: Path, backbone: Backbone, head: Head, labels: Sequence[str]) -> Any:
    """Freeze backbone + head into a poets graph in ``folder``; returns its GraphDef.

    Attrs at their default values are left out, as TF1 graphs had them, so older
    TensorFlow (the TX2's 2.7) reads attrs that newer releases added.
    """
    size = backbone.preprocessing.size

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="input")])
    def graph(input: tf.Tensor) -> tf.Tensor:
        pixels = input * INPUT_STD + INPUT_MEAN
        scores = tf.nn.softmax(head(backbone.features_from_float(pixels)))
        return tf.identity(scores, name="final_result")

    frozen = convert_variables_to_constants_v2(graph.get_concrete_function())
    graph_def = strip_default_attrs(frozen.graph.as_graph_def())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / GRAPH_FILE).write_bytes(graph_def.SerializeToString())
    (folder / LABELS_FILE).write_text("\n".join(labels) + "\n", encoding="utf-8")
    return graph_def
