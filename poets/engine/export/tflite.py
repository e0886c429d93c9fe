"""TFLite exports (float16 and dynamic-range int8) and a TFLite scorer for serving."""

import threading
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import tensorflow as tf

FOLDER = "tflite"
VARIANTS = ("fp16", "int8")


def file_name(variant: str) -> str:
    return "model_{}.tflite".format(variant)


def convert(model: Any, size: int, variant: str) -> bytes:
    """Convert a pixels-to-scores module (batch 1, uint8 input) to TFLite."""
    fn = tf.function(lambda pixels: {"scores": model(pixels)},
                     input_signature=[tf.TensorSpec([1, size, size, 3], tf.uint8, name="pixels")])
    concrete = fn.get_concrete_function()
    try:
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    except TypeError:  # TF before 2.7 takes no trackable object
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()  # type: ignore[no-any-return]


class TFLiteScorer:
    """Scores images with a .tflite model, one image per invoke (its input is batch 1)."""

    def __init__(self, path: Path) -> None:
        interpreter_class: Any = getattr(tf.lite, "Interpreter", None)
        if interpreter_class is None:  # TF after 2.20 moves it to the ai_edge_litert package
            from ai_edge_litert.interpreter import Interpreter

            interpreter_class = Interpreter
        self._interpreter = interpreter_class(model_path=str(path))
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._lock = threading.Lock()  # an interpreter is not thread-safe

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        rows = []
        with self._lock:
            for image in pixels:
                self._interpreter.set_tensor(self._input, image[np.newaxis])
                self._interpreter.invoke()
                rows.append(np.array(self._interpreter.get_tensor(self._output)[0]))
        return np.stack(rows) if rows else np.zeros((0, 0), np.float32)


def write(folder: Path, model: Any, size: int, test_pixels: Optional[np.ndarray],
          test_labels: Optional[np.ndarray]) -> Dict[str, Dict[str, Any]]:
    """Write every variant into ``folder``; returns size and test accuracy of each."""
    folder.mkdir(parents=True, exist_ok=True)
    results = {}
    for variant in VARIANTS:
        path = folder / file_name(variant)
        path.write_bytes(convert(model, size, variant))
        entry: Dict[str, Any] = {"file": "{}/{}".format(FOLDER, path.name),
                                 "bytes": path.stat().st_size, "test_accuracy": None}
        if test_pixels is not None and test_labels is not None and len(test_labels):
            scores = TFLiteScorer(path)(test_pixels)
            entry["test_accuracy"] = float(np.mean(scores.argmax(axis=1) == test_labels))
        results[variant] = entry
    return results
