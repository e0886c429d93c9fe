"""An existing TensorFlow for Poets graph, published as a version Poets serves (``poets import``).

The arguments are label_image.py's flags; the graph (input ``input``, output ``final_result`` by
default) is wrapped in a SavedModel like any trained version, so ``/label`` serves it unchanged.
"""

from pathlib import Path
from typing import Any, Dict, List

import tensorflow as tf

from poets.engine.data.images import Preprocessing
from poets.engine.errors import InvalidInput
from poets.engine.export.saved_model import save_model
from poets.engine.predictor import Predictor
from poets.engine.store.models import VersionStore


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
    store: VersionStore,
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
