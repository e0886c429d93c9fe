"""TensorFlow for Poets frozen graphs, out and in.

Out: ``retrained_graph.pb`` (input ``input``: float (N, size, size, 3) normalised as
label_image.py does, output ``final_result``: softmax scores) and
``retrained_labels.txt``, so label_image.py and the poets Android/iOS apps keep working.

In: an existing poets graph registered as a version Poets serves (``poets import``),
with label_image.py's flags.
"""

from pathlib import Path
from typing import Any, Dict, List, Sequence

import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from poets.engine.data.images import Preprocessing
from poets.engine.errors import InvalidInput
from poets.engine.export.frozen import strip_default_attrs
from poets.engine.model.backbones import Backbone
from poets.engine.model.training import Head
from poets.engine.store.models import ModelStore

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


class ImportedGraph(tf.Module):
    """A poets graph as a pixels-to-scores module for :class:`.saved_model.ServingModel`."""

    def __init__(
        self, graph_path: Path, input_layer: str, output_layer: str, size: int, mean: float, std: float
    ) -> None:
        super().__init__(name="imported_graph")
        graph_def = tf.compat.v1.GraphDef()
        try:
            graph_def.ParseFromString(Path(graph_path).read_bytes())
        except Exception as exc:
            raise InvalidInput("{} is not a TensorFlow GraphDef: {}".format(graph_path, exc)) from exc
        input_name = input_layer if ":" in input_layer else input_layer + ":0"
        output_name = output_layer if ":" in output_layer else output_layer + ":0"

        def imported(images: tf.Tensor) -> tf.Tensor:
            return tf.compat.v1.import_graph_def(
                graph_def, input_map={input_name: images}, return_elements=[output_name], name=""
            )[0]

        try:
            self._graph = tf.compat.v1.wrap_function(
                imported, [tf.TensorSpec([None, size, size, 3], tf.float32)]
            )
        except (ValueError, KeyError) as exc:
            raise InvalidInput(
                "The graph has no tensors {} and {} (check --input_layer and --output_layer): {}".format(
                    input_name, output_name, exc
                )
            ) from exc
        self._mean = mean
        self._std = std

    def __call__(self, pixels: tf.Tensor) -> tf.Tensor:
        x = (tf.cast(pixels, tf.float32) - self._mean) / self._std
        scores = self._graph(x)
        return tf.reshape(scores, [tf.shape(pixels)[0], -1])


def read_labels(path: Path) -> List[str]:
    labels = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    labels = [label for label in labels if label]
    if len(labels) < 2:
        raise InvalidInput(
            "{} lists {} label(s); a poets labels file has one label per line.".format(path, len(labels))
        )
    return labels


def import_graph(
    store: ModelStore,
    name: str,
    graph_path: Path,
    labels_path: Path,
    input_layer: str = "input",
    output_layer: str = "final_result",
    input_height: int = 224,
    input_width: int = 224,
    input_mean: float = 128.0,
    input_std: float = 128.0,
) -> int:
    """Publish an existing TensorFlow for Poets model as the next version of ``name``.

    The arguments are label_image.py's flags. Returns the new version.
    """
    from poets.engine.export.saved_model import save_model
    from poets.engine.predictor import Predictor

    if input_height != input_width:
        raise InvalidInput("Poets serves square inputs: input_height and input_width must match.")
    labels = read_labels(labels_path)
    prep = Preprocessing(input_height, "squash", input_mean, input_std)
    model = ImportedGraph(graph_path, input_layer, output_layer, input_height, input_mean, input_std)
    metadata: Dict[str, Any] = {
        "name": name,
        "architecture": "imported",
        "imported_from": str(graph_path),
        "hyperparameters": {
            "input_layer": input_layer,
            "output_layer": output_layer,
            "input_height": input_height,
            "input_width": input_width,
            "input_mean": input_mean,
            "input_std": input_std,
        },
        "metrics": {},
        "formats": ["saved_model"],
    }

    def write(folder: Path) -> None:
        save_model(folder, model, labels, prep, metadata)
        Predictor(folder).warm()  # refuse a graph whose outputs do not match the labels

    return store.publish(name, write)
