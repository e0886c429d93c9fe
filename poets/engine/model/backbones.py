"""Frozen feature extractors: load from disk, or download once and cache.

``$POETS_BACKBONE_DIR/<architecture>/`` holds either

* ``frozen_graph.pb``: a TF1 frozen graph in the TF-slim / TensorFlow for Poets layout
  (its batch-1 input is rebound to a batched placeholder), or
* ``<bottleneck>/``: a SavedModel, e.g. a TF Hub module, with an optional
  ``backbone.json`` giving its input normalisation (default: pixels scaled to [0, 1],
  the TF Hub convention).

What is missing is downloaded (TF Hub first, then Keras applications) into
``<architecture>/<bottleneck>/``, written aside and renamed into place.
"""

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import numpy as np
import tensorflow as tf

from poets.engine.data.images import Preprocessing
from poets.engine.errors import BackboneUnavailable, InvalidInput
from poets.engine.model import architectures
from poets.engine.model.architectures import Architecture

log = logging.getLogger(__name__)

GRAPH_FILE = "frozen_graph.pb"
META_FILE = "backbone.json"


class Backbone(tf.Module):
    """A frozen feature extractor that takes ``uint8`` pixels.

    Normalisation lives here, inside the graph, so every caller (bottleneck
    computation, the exported model) runs exactly the same computation.

    Attributes:
        architecture: what it is.
        bottleneck: ``prelogits`` or ``logits``.
        preprocessing: size, resize mode and normalisation its inputs get.
        feature_dim: length of one feature vector.
        source: where the weights came from, for model metadata.
        fingerprint: identifies the weights and output tensor; part of cache keys.
    """

    def __init__(
        self,
        architecture: Architecture,
        bottleneck: str,
        fn: Any,
        preprocessing: Preprocessing,
        source: str,
        fingerprint: str,
    ) -> None:
        super().__init__(name="backbone")
        self.architecture = architecture
        self.bottleneck = bottleneck
        self.preprocessing = preprocessing
        self.source = source
        self.fingerprint = fingerprint
        self.feature_dim = architecture.feature_dim(bottleneck)
        self._fn = fn
        size = preprocessing.size
        self.extract = tf.function(
            self._features, input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)]
        )

    def _features(self, pixels: tf.Tensor) -> tf.Tensor:
        return self.features_from_float(tf.cast(pixels, tf.float32))

    def features_from_float(self, pixels: tf.Tensor) -> tf.Tensor:
        """Features of float pixels in [0, 255] (for graphs whose input is not uint8)."""
        x = (pixels - self.preprocessing.mean) / self.preprocessing.std
        return tf.reshape(self._fn(x), [-1, self.feature_dim])

    def features(self, pixels: np.ndarray) -> np.ndarray:
        """Features of a batch of ``uint8`` images, shape (N, feature_dim)."""
        return self.extract(tf.constant(pixels)).numpy()  # type: ignore[no-any-return]


def _hash_files(paths: List[Path], extra: str) -> str:
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def _graph_function(graph_path: Path, input_name: str, output_name: str, size: int) -> Any:
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph_path.read_bytes())

    def imported(images: tf.Tensor) -> tf.Tensor:
        return tf.compat.v1.import_graph_def(
            graph_def, input_map={input_name: images}, return_elements=[output_name], name=""
        )[0]

    return tf.compat.v1.wrap_function(imported, [tf.TensorSpec([None, size, size, 3], tf.float32)])


def from_frozen_graph(
    architecture: Architecture, bottleneck: str, graph_path: Path, resize: str = "squash"
) -> Backbone:
    """A backbone from a TF-slim frozen graph such as TensorFlow for Poets' downloads."""
    if architecture.family == "inception_v3" and bottleneck == "logits":
        raise InvalidInput(
            "The Inception v3 frozen graph computes logits for one image at a "
            "time only: use bottleneck 'prelogits'."
        )
    output = architecture.prelogits_tensor if bottleneck == "prelogits" else architecture.logits_tensor
    try:
        fn = _graph_function(graph_path, architecture.input_tensor, output, architecture.size)
    except (ValueError, KeyError, tf.errors.OpError) as exc:
        raise BackboneUnavailable(
            "{} is not a {} frozen graph with tensors {} and {}: {}".format(
                graph_path, architecture.name, architecture.input_tensor, output, exc
            )
        ) from exc
    prep = Preprocessing(architecture.size, resize, architecture.mean, architecture.std)
    fingerprint = _hash_files([graph_path], "graph|" + output)
    return Backbone(architecture, bottleneck, fn, prep, "frozen_graph:" + str(graph_path), fingerprint)


def _saved_model_callable(loaded: Any) -> Callable[[tf.Tensor], tf.Tensor]:
    if callable(loaded):
        return loaded  # type: ignore[no-any-return]
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise BackboneUnavailable("The SavedModel is neither callable nor has a serving_default signature.")
    name = next(iter(signature.structured_outputs))
    arg = next(iter(signature.structured_input_signature[1]))
    return lambda images: signature(**{arg: images})[name]


class _SavedModelFunction(tf.Module):
    """Keeps the loaded SavedModel tracked, so an export re-saves its variables."""

    def __init__(self, loaded: Any) -> None:
        super().__init__(name="saved_model_backbone")
        self.loaded = loaded
        self._call = _saved_model_callable(loaded)

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        return self._call(images)


def from_saved_model(
    architecture: Architecture, bottleneck: str, folder: Path, resize: str = "squash"
) -> Backbone:
    """A backbone from a SavedModel (a TF Hub module, or one Poets downloaded)."""
    meta = {}
    if (folder / META_FILE).is_file():
        meta = json.loads((folder / META_FILE).read_text())
    try:
        loaded = tf.saved_model.load(str(folder))
    except Exception as exc:  # TF raises many kinds for a broken SavedModel.
        raise BackboneUnavailable("Cannot load the SavedModel in {}: {}".format(folder, exc)) from exc
    prep = Preprocessing(
        architecture.size, resize, float(meta.get("mean", 0.0)), float(meta.get("std", 255.0))
    )
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != META_FILE)
    # The normalisation from backbone.json runs inside the backbone: it changes every vector,
    # so it is part of the cache key as much as the weights (the folder's path is not).
    fingerprint = _hash_files(files, "saved_model|{}|{!r}|{!r}".format(bottleneck, prep.mean, prep.std))
    source = meta.get("source") or "saved_model:" + str(folder)
    backbone = Backbone(architecture, bottleneck, _SavedModelFunction(loaded), prep, source, fingerprint)
    got = backbone.features(np.zeros((1, prep.size, prep.size, 3), np.uint8)).shape
    if got != (1, backbone.feature_dim):
        raise BackboneUnavailable(
            "The SavedModel in {} gives features of shape {}, expected (1, {}).".format(
                folder, got, backbone.feature_dim
            )
        )
    return backbone


class _KerasBackbone(tf.Module):
    """A Keras application as a plain SavedModel: float pixels in, features out."""

    def __init__(self, model: Any, size: int) -> None:
        super().__init__(name="keras_backbone")
        self.model = model
        self.__call__.get_concrete_function(tf.TensorSpec([None, size, size, 3], tf.float32))

    @tf.function
    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        return self.model(images, training=False)


def _keras_model(architecture: Architecture, bottleneck: str, weights: Optional[str]) -> Any:
    apps = tf.keras.applications
    top = bottleneck == "logits"
    shape = (architecture.size, architecture.size, 3)
    options = dict(input_shape=shape, include_top=top, weights=weights, pooling=None if top else "avg")
    if top:
        options["classifier_activation"] = None
    if architecture.family == "inception_v3":
        return apps.InceptionV3(**options)
    return apps.MobileNet(alpha=architecture.width, **options)


@contextlib.contextmanager
def _hub_cache(folder: Path) -> Iterator[None]:
    """Point tensorflow_hub's download cache here (its default is a fixed /tmp path).

    tensorflow_hub reads only the TFHUB_CACHE_DIR variable; it is set for the
    download and put back after, unless the user set it.
    """
    if "TFHUB_CACHE_DIR" in os.environ:
        yield
        return
    os.environ["TFHUB_CACHE_DIR"] = str(folder)
    try:
        yield
    finally:
        os.environ.pop("TFHUB_CACHE_DIR", None)


def download(
    architecture: Architecture,
    bottleneck: str,
    dest: Path,
    hub_handle: Optional[str] = None,
    keras_weights: Optional[str] = "imagenet",
) -> None:
    """Fetch a backbone's weights and cache them as a SavedModel in ``dest``.

    Tries TF Hub, then Keras applications. The folder appears complete or not at all.

    Raises:
        BackboneUnavailable: neither source could be reached; the message says why.
    """
    handle = hub_handle or architecture.hub_handle(bottleneck)
    tmp = dest.parent / ".download-{}".format(uuid.uuid4().hex)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    problems = []
    try:
        import tensorflow_hub as hub

        with _hub_cache(dest.parent.parent / ".tfhub"):
            shutil.copytree(hub.resolve(handle), str(tmp))
        meta = {"mean": 0.0, "std": 255.0, "source": "tfhub:" + handle}
    except Exception as exc:
        problems.append("TF Hub {}: {}".format(handle, exc))
        shutil.rmtree(str(tmp), ignore_errors=True)
        try:
            model = _keras_model(architecture, bottleneck, keras_weights)
            tf.saved_model.save(_KerasBackbone(model, architecture.size), str(tmp))
            meta = {
                "mean": 127.5,
                "std": 127.5,
                "source": "keras.applications:{}:{}".format(architecture.name, keras_weights),
            }
        except Exception as exc:
            problems.append("Keras applications: {}".format(exc))
            shutil.rmtree(str(tmp), ignore_errors=True)
            raise BackboneUnavailable("; ".join(problems)) from exc
    (tmp / META_FILE).write_text(json.dumps(meta))
    try:
        os.rename(str(tmp), str(dest))
    except OSError:
        # Another process cached it first; theirs is as good as ours.
        shutil.rmtree(str(tmp), ignore_errors=True)
    log.info("cached %s %s backbone in %s (%s)", architecture.name, bottleneck, dest, meta["source"])


def load(
    name: str,
    backbone_dir: Path,
    bottleneck: str = "prelogits",
    resize: str = "squash",
    allow_download: bool = True,
) -> Backbone:
    """Find, or download, the backbone ``name`` for the given bottleneck.

    Raises:
        InvalidInput: unknown architecture or bottleneck.
        BackboneUnavailable: no weights on disk and none downloadable; the message
            names the exact paths to put them at.
    """
    architecture = architectures.get(name)
    if bottleneck not in architectures.BOTTLENECKS:
        raise InvalidInput(
            "Unknown bottleneck {!r}: use one of {}.".format(bottleneck, ", ".join(architectures.BOTTLENECKS))
        )
    folder = Path(backbone_dir) / architecture.name
    if (folder / GRAPH_FILE).is_file():
        return from_frozen_graph(architecture, bottleneck, folder / GRAPH_FILE, resize)
    saved = folder / bottleneck
    if not (saved / "saved_model.pb").is_file():
        reason = "downloads are off"
        if allow_download:
            try:
                download(architecture, bottleneck, saved)
                reason = ""
            except BackboneUnavailable as exc:
                reason = exc.detail
        if reason:
            raise BackboneUnavailable(
                "No {} weights: put a TF-slim frozen graph at {} or a SavedModel (e.g. the TF "
                "Hub module {}) in {} ({}).".format(
                    architecture.name, folder / GRAPH_FILE, architecture.hub_handle(bottleneck), saved, reason
                )
            )
    return from_saved_model(architecture, bottleneck, saved, resize)
