"""Exporting a model version: a self-describing SavedModel, plus optional formats.

A version directory holds:

* ``saved_model.pb`` + ``variables/`` (always; frozen to constants in the TF1 layout
  so TensorFlow 2.6 and 2.7, the Jetson TX2's, load it too: :mod:`.frozen`), with signatures
  ``serving_default`` (a batch of encoded images, as TF Serving clients send
  them: input ``images`` DT_STRING [-1]; outputs ``scores`` [-1, labels] and
  ``labels`` [-1, labels]), ``predict_pixels`` (the ``uint8`` input Poets' own
  server feeds after :func:`poets.engine.data.images.prepare`) and, for trained models,
  ``features`` (the backbone alone; used to check training/serving skew);
* ``labels.txt``: one label per line, in score order;
* ``poets.json``: :data:`METADATA_FILE`, what the model is and how it was made, and
  under ``runtimes`` the oldest TensorFlow each format loads on (:mod:`.compat`);
* ``poets/retrained_graph.pb`` + ``poets/retrained_labels.txt`` with the
  ``poets_graph`` format: a TensorFlow for Poets frozen graph for label_image.py
  and the poets mobile apps;
* ``tflite/model_fp16.tflite`` and ``tflite/model_int8.tflite`` with the ``tflite``
  format, with TFLite metadata (labels, normalisation, tensors: :mod:`.tflite_metadata`);
* ``onnx/model_poets.onnx`` and ``onnx/model_imagenet.onnx`` with the ``onnx`` format
  (:mod:`.onnx_export`);
* ``assets.extra/tf_serving_warmup_requests``: TF Serving's warm-up records (:mod:`.warmup`).

``poets.json``'s ``files`` lists each file with its format, input convention and the
runtimes it is checked against (:mod:`.files`).
"""

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from poets.engine.data.images import Preprocessing
from poets.engine.export import compat, files, frozen, poets_graph, warmup
from poets.engine.model.backbones import Backbone
from poets.engine.model.config import EXPORT_FORMATS, parse_formats
from poets.engine.model.training import Head
from poets.engine.store.models import LABELS_FILE, METADATA_FILE

__all__ = [
    "EXPORT_FORMATS",
    "LABELS_FILE",
    "METADATA_FILE",
    "ServingModel",
    "parse_formats",
    "save_model",
    "write_version",
]

FORMAT_VERSION = 1
log = logging.getLogger(__name__)


def _decode(encoded: tf.Tensor, size: int, resize: str) -> tf.Tensor:
    """TF-only decode for TF Serving clients: the in-graph twin of ``images.prepare``.

    ``prepare`` (Pillow) is the reference path; this one agrees to within resize
    rounding, but cannot read WebP or honour EXIF orientation.
    """
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    if resize == "center_crop":
        shape = tf.shape(image)
        side = tf.minimum(shape[0], shape[1])
        image = tf.image.crop_to_bounding_box(
            image, (shape[0] - side) // 2, (shape[1] - side) // 2, side, side
        )
    resized = tf.image.resize(tf.cast(image, tf.float32), [size, size], method="bilinear", antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)


class Classifier(tf.Module):
    """A trained model: backbone + head, ``uint8`` pixels in, softmax scores out."""

    def __init__(self, backbone: Backbone, head: Head) -> None:
        super().__init__(name="classifier")
        self.backbone = backbone
        self.head = head

    def __call__(self, pixels: tf.Tensor) -> tf.Tensor:
        return self.scores(self.features(pixels))

    def features(self, pixels: tf.Tensor) -> tf.Tensor:
        return self.backbone.extract(pixels)

    def scores(self, features: tf.Tensor) -> tf.Tensor:
        return tf.nn.softmax(self.head(features))


class ServingModel(tf.Module):
    """The signatures every version exports, around any pixels-to-scores module.

    Args:
        model: callable on a ``uint8`` (N, size, size, 3) batch, returning (N, labels)
            scores; with ``features`` (pixels to backbone features) and ``scores``
            (features to scores) methods, the features are exported too.
        labels: label names in score order.
        preprocessing: size and resize mode of the model's input.
    """

    def __init__(self, model: Any, labels: Sequence[str], preprocessing: Preprocessing) -> None:
        super().__init__(name="poets_model")
        self.model = model
        self.preprocessing = preprocessing
        self.label_names = tf.constant(list(labels))
        size = preprocessing.size
        pixels = tf.TensorSpec([None, size, size, 3], tf.uint8, name="pixels")
        # One function for the pixel signatures: predict_pixels (scores) and features
        # share one frozen graph. No Python control flow to convert: no autograph (it
        # was a sixth of an export's time).
        self.pixels = tf.function(self._pixels, input_signature=[pixels], autograph=False)
        self.serve_images = tf.function(
            self._serve_images,
            input_signature=[tf.TensorSpec([None], tf.string, name="images")],
            autograph=False,
        )
        self.has_features = hasattr(model, "features") and hasattr(model, "scores")

    def _pixels(self, pixels: tf.Tensor) -> Dict[str, tf.Tensor]:
        if not self.has_features:
            return {"scores": self.model(pixels)}
        features = self.model.features(pixels)
        return {"scores": self.model.scores(features), "features": features}

    def _serve_images(self, images: tf.Tensor) -> Dict[str, tf.Tensor]:
        prep = self.preprocessing
        pixels = tf.map_fn(
            lambda data: _decode(data, prep.size, prep.resize),
            images,
            fn_output_signature=tf.TensorSpec([prep.size, prep.size, 3], tf.uint8),
        )
        scores = self.model(pixels)
        labels = tf.tile(self.label_names[tf.newaxis], [tf.shape(images)[0], 1])
        return {"scores": scores, "labels": labels}

    def signatures(self) -> Dict[str, Any]:
        """For :func:`.frozen.write`: key to a function, or to (function, its outputs)."""
        found: Dict[str, Any] = {
            "serving_default": self.serve_images,
            "predict_pixels": (self.pixels, ("scores",)),
        }
        if self.has_features:
            found["features"] = (self.pixels, ("features",))
        return found


def _graph_runtime(fmt: str, graph_defs: Sequence[Any]) -> Dict[str, Any]:
    """``{"min_tensorflow": ...}`` for graphs; says why in the log when TF 2.6 cannot load them."""
    needed, problems = compat.min_tensorflow_for_graphs(graph_defs)
    if problems:
        log.warning(
            "The %s needs TensorFlow %s: TensorFlow %s lacks %s",
            fmt,
            needed,
            compat.OLDEST_TENSORFLOW,
            ", ".join(problems),
        )
    return {"min_tensorflow": needed}


def save_model(
    folder: Path, model: Any, labels: Sequence[str], preprocessing: Preprocessing, metadata: Dict[str, Any]
) -> None:
    """Write the SavedModel, ``labels.txt`` and ``poets.json`` of a version into ``folder``."""
    serving = ServingModel(model, labels, preprocessing)
    graph_def = frozen.write(folder, serving.signatures())
    warmup.write(folder, str(metadata.get("name") or "default"), preprocessing.size)
    (folder / LABELS_FILE).write_text("\n".join(labels) + "\n", encoding="utf-8")
    meta = dict(metadata)
    meta.update(
        {
            "format": FORMAT_VERSION,
            "labels": list(labels),
            "preprocessing": preprocessing.to_dict(),
            "exported_with": {"tensorflow": compat.plain_version(tf.__version__)},
        }
    )
    meta["runtimes"] = dict(
        meta.get("runtimes") or {}, saved_model=_graph_runtime("saved_model", [graph_def])
    )
    meta["files"] = files.listing(folder, meta)
    (folder / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")


def _write_format(
    fmt: str,
    folder: Path,
    backbone: Backbone,
    head: Head,
    classifier: Classifier,
    labels: Sequence[str],
    meta: Dict[str, Any],
    test_pixels: Optional[np.ndarray],
    test_labels: Optional[np.ndarray],
    calibration_pixels: Optional[np.ndarray],
) -> Dict[str, Any]:
    """Write one optional format into ``folder``; returns its ``runtimes`` entries."""
    if fmt == "poets_graph":
        graph_def = poets_graph.write(folder / poets_graph.FOLDER, backbone, head, labels)
        return {"poets_graph": _graph_runtime("poets_graph", [graph_def])}
    if fmt == "tflite":
        from poets.engine.export import tflite, tflite_metadata

        results = tflite.write(
            folder / tflite.FOLDER,
            classifier,
            backbone.preprocessing.size,
            test_pixels,
            test_labels,
            calibration_pixels,
        )
        meta["metrics"] = dict(meta.get("metrics") or {}, tflite=results)
        written = {}
        for variant in tflite.VARIANTS:
            try:
                written[variant] = tflite_metadata.add(
                    folder / tflite.FOLDER / tflite.file_name(variant), labels
                )
            except Exception as exc:  # the file still runs without metadata: keep it, say why
                log.exception("No TFLite metadata for the %s model", variant)
                written[variant] = {"written": False, "why": "{}: {}".format(type(exc).__name__, exc)}
        found = tflite.runtimes(folder / tflite.FOLDER)
        for variant, entry in written.items():
            found["tflite_" + variant]["metadata"] = entry
        return found
    if fmt == "onnx":
        from poets.engine.export import onnx_export

        return onnx_export.write(folder / onnx_export.FOLDER, backbone, head, labels)
    raise KeyError(fmt)


# Where each optional format writes, removed again when it fails half-way.
_FOLDERS = {"poets_graph": "poets", "tflite": "tflite", "onnx": "onnx"}


def write_version(
    folder: Path,
    backbone: Backbone,
    head: Head,
    labels: Sequence[str],
    metadata: Dict[str, Any],
    formats: Sequence[str] = ("saved_model",),
    test_pixels: Optional[np.ndarray] = None,
    test_labels: Optional[np.ndarray] = None,
    calibration_pixels: Optional[np.ndarray] = None,
) -> None:
    """Write a complete trained version into ``folder`` (a staging folder; the store renames it).

    A format that cannot be written does not fail the version: the others are written,
    and ``metrics.export_failures`` (which the job's result shows) names it and says why.

    Args:
        formats: from :data:`EXPORT_FORMATS`; ``saved_model`` is always written.
        test_pixels: the test images, prepared; TFLite models report their accuracy on them.
        test_labels: their class indices.
        calibration_pixels: training images, prepared: the int8 TFLite model's activation
            ranges are measured on them (default: ``test_pixels``).
    """
    classifier = Classifier(backbone, head)
    meta = dict(metadata)
    meta.update(
        {
            "architecture": backbone.architecture.name,
            "bottleneck": backbone.bottleneck,
            "backbone_source": backbone.source,
            "backbone_fingerprint": backbone.fingerprint,
        }
    )
    runtimes: Dict[str, Any] = {}
    written = ["saved_model"]
    failures: List[Dict[str, str]] = []
    for fmt in formats:
        if fmt == "saved_model":
            continue
        try:
            runtimes.update(
                _write_format(
                    fmt,
                    folder,
                    backbone,
                    head,
                    classifier,
                    labels,
                    meta,
                    test_pixels,
                    test_labels,
                    calibration_pixels,
                )
            )
            written.append(fmt)
        except Exception as exc:  # a conversion failure must not lose the trained model
            log.exception("The %s export failed; the version is published without it", fmt)
            shutil.rmtree(str(folder / _FOLDERS.get(fmt, fmt)), ignore_errors=True)
            # No figures for files that are not published.
            meta["metrics"] = {k: v for k, v in (meta.get("metrics") or {}).items() if k != fmt}
            failures.append(
                {
                    "format": fmt,
                    "error": getattr(exc, "code", type(exc).__name__),
                    "detail": getattr(exc, "detail", None) or str(exc) or type(exc).__name__,
                }
            )
    meta["formats"] = sorted(written)
    if failures:
        meta["metrics"] = dict(meta.get("metrics") or {}, export_failures=failures)
    meta["runtimes"] = runtimes
    save_model(folder, classifier, labels, backbone.preprocessing, meta)
