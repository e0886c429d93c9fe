"""Exporting a trained head with its backbone as a self-describing SavedModel.

A version directory holds:

* ``saved_model.pb`` + ``variables/``: signatures ``serving_default`` (a batch of
  encoded images, as TF Serving clients send them), ``predict_pixels`` (the
  ``uint8`` input Poets' own server feeds after :func:`engine.images.prepare`) and
  ``features`` (the backbone alone; used to check training/serving skew);
* ``labels.txt``: one label per line, in score order;
* ``poets.json``: :data:`METADATA_FILE`, what the model is and how it was made.
"""

import json
from pathlib import Path
from typing import Any, Dict, Sequence

import tensorflow as tf

from engine.backbones import Backbone
from engine.training import Head

METADATA_FILE = "poets.json"
LABELS_FILE = "labels.txt"
FORMAT_VERSION = 1


def _decode(encoded: tf.Tensor, size: int, resize: str) -> tf.Tensor:
    """TF-only decode for TF Serving clients: the in-graph twin of ``images.prepare``.

    ``prepare`` (Pillow) is the reference path; this one agrees to within resize
    rounding, but cannot read WebP or honour EXIF orientation.
    """
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    if resize == "center_crop":
        shape = tf.shape(image)
        side = tf.minimum(shape[0], shape[1])
        image = tf.image.crop_to_bounding_box(image, (shape[0] - side) // 2,
                                              (shape[1] - side) // 2, side, side)
    resized = tf.image.resize(tf.cast(image, tf.float32), [size, size], method="bilinear",
                              antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)


class ServingModel(tf.Module):
    """Backbone + head + labels, with the signatures a version exports."""

    def __init__(self, backbone: Backbone, head: Head, labels: Sequence[str]) -> None:
        super().__init__(name="poets_model")
        self.backbone = backbone
        self.head = head
        self.label_names = tf.constant(list(labels))
        prep = backbone.preprocessing
        pixels = tf.TensorSpec([None, prep.size, prep.size, 3], tf.uint8, name="pixels")
        self.predict_pixels = tf.function(self._predict_pixels, input_signature=[pixels])
        self.features = tf.function(self._features, input_signature=[pixels])
        self.serve_images = tf.function(
            self._serve_images, input_signature=[tf.TensorSpec([None], tf.string, name="images")])

    def _predict_pixels(self, pixels: tf.Tensor) -> Dict[str, tf.Tensor]:
        return {"scores": tf.nn.softmax(self.head(self.backbone.extract(pixels)))}

    def _features(self, pixels: tf.Tensor) -> Dict[str, tf.Tensor]:
        return {"features": self.backbone.extract(pixels)}

    def _serve_images(self, images: tf.Tensor) -> Dict[str, tf.Tensor]:
        prep = self.backbone.preprocessing
        pixels = tf.map_fn(lambda data: _decode(data, prep.size, prep.resize), images,
                           fn_output_signature=tf.TensorSpec([prep.size, prep.size, 3], tf.uint8))
        scores = self._predict_pixels(pixels)["scores"]
        labels = tf.tile(self.label_names[tf.newaxis], [tf.shape(images)[0], 1])
        return {"scores": scores, "labels": labels}


def write_version(folder: Path, backbone: Backbone, head: Head, labels: Sequence[str],
                  metadata: Dict[str, Any]) -> None:
    """Write a complete version into ``folder`` (a staging folder; the store renames it)."""
    model = ServingModel(backbone, head, labels)
    signatures = {"serving_default": model.serve_images, "predict_pixels": model.predict_pixels,
                  "features": model.features}
    tf.saved_model.save(model, str(folder), signatures=signatures)
    (folder / LABELS_FILE).write_text("\n".join(labels) + "\n", encoding="utf-8")
    meta = dict(metadata)
    meta.update({
        "format": FORMAT_VERSION,
        "labels": list(labels),
        "architecture": backbone.architecture.name,
        "bottleneck": backbone.bottleneck,
        "backbone_source": backbone.source,
        "backbone_fingerprint": backbone.fingerprint,
        "preprocessing": backbone.preprocessing.to_dict(),
    })
    (folder / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True),
                                        encoding="utf-8")
