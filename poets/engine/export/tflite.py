"""TFLite exports (float16 weights, and full int8) and a TFLite scorer for serving.

Both keep the ``uint8`` (1, size, size, 3) pixel input and float scores out. The int8
model's backbone is integer (activation ranges calibrated on training images): that is what
small CPUs run fastest. Its head (the dense layers and the softmax, a few KB) stays float:
integer kernels round differently from one TFLite release to the next (TF 2.6's optimized
kernels against today's XNNPACK), MobileNet carries those one-step differences through to
its features, and an int8 softmax turns them into scores in steps of 1/256. With a float
head the scores of TF 2.6 and today's TF agree to 0.02 on 19 of 20 photos (0.039 apart on
one photo, two out of 0.02, with an int8 head); integer dense layers would also need
per-tensor weights, as today's default, per-channel, is FULLY_CONNECTED v12 (TF 2.17),
which TF 2.6/2.7 refuse or, at v4, compute wrongly. Each file's own ``min_runtime_version``
and op versions go into ``poets.json`` (:func:`runtimes`).
"""

import inspect
import threading
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import tensorflow as tf

from poets.engine.errors import InvalidDataset
from poets.engine.export import compat

FOLDER = "tflite"
VARIANTS = ("fp16", "int8")
# Calibration images for int8: more adds conversion time, not accuracy.
CALIBRATION_IMAGES = 100
# Ops the int8 model keeps in float: the head, where integer rounding shows in the scores.
FLOAT_HEAD_OPS = ("FULLY_CONNECTED", "SOFTMAX")


def file_name(variant: str) -> str:
    return "model_{}.tflite".format(variant)


def convert(model: Any, size: int, variant: str, calibration_pixels: Optional[np.ndarray] = None) -> bytes:
    """Convert a pixels-to-scores module (batch 1, uint8 input) to TFLite.

    Args:
        calibration_pixels: (N, size, size, 3) ``uint8`` images for ``int8``.
    """
    fn = tf.function(
        lambda pixels: {"scores": model(pixels)},
        input_signature=[tf.TensorSpec([1, size, size, 3], tf.uint8, name="pixels")],
    )
    concrete = fn.get_concrete_function()
    try:
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    except TypeError:  # TF before 2.7 takes no trackable object
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "int8":
        if calibration_pixels is None or not len(calibration_pixels):
            raise InvalidDataset("The int8 TFLite export needs calibration images; the dataset gave none.")
        images = calibration_pixels[:CALIBRATION_IMAGES]
        converter.representative_dataset = lambda: ([image[np.newaxis]] for image in images)
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
            tf.lite.OpsSet.TFLITE_BUILTINS,
        ]
        return _quantize_but_head(converter)
    return converter.convert()  # type: ignore[no-any-return]


def _quantize_but_head(converter: Any) -> bytes:
    """Calibrate, then quantize every op but :data:`FLOAT_HEAD_OPS` (float in, float out).

    What ``tf.lite.experimental.QuantizationDebugger`` does for its denylisted ops, without
    its instrumented debug model.
    """
    from tensorflow.lite.python import convert as lite_convert

    converter._experimental_calibrate_only = True
    calibrated = converter.convert()
    # TF 2.6 names the argument blocklisted_ops; TF 2.7 on, denylisted_ops.
    parameters = inspect.signature(lite_convert.mlir_quantize).parameters
    denylist = "denylisted_ops" if "denylisted_ops" in parameters else "blocklisted_ops"
    return lite_convert.mlir_quantize(  # type: ignore[no-any-return]
        calibrated, disable_per_channel=False, fully_quantize=False, **{denylist: list(FLOAT_HEAD_OPS)}
    )


def describe(data: bytes) -> Dict[str, Any]:
    """A .tflite file's ``min_runtime_version`` metadata and the version of each op it uses."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(data, 0)
    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    ops: Dict[str, int] = {}
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        # Codes above 127 live in builtin_code; older files only set the deprecated field.
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = names.get(builtin, str(builtin))
        if builtin == schema.BuiltinOperator.CUSTOM:
            name = "CUSTOM:" + (code.CustomCode() or b"").decode("utf-8", "replace")
        ops[name] = max(ops.get(name, 0), code.Version())
    min_runtime = None
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == b"min_runtime_version":
            raw = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
            min_runtime = raw.split(b"\0")[0].decode("ascii", "replace")
    return {"min_tflite_runtime": min_runtime, "op_versions": ops}


def runtimes(folder: Path) -> Dict[str, Dict[str, Any]]:
    """``poets.json`` runtime entries (``tflite_fp16``...) for the files in ``folder``."""
    found = {}
    for variant in VARIANTS:
        path = folder / file_name(variant)
        if path.is_file():
            info = describe(path.read_bytes())
            needed = compat.OLDEST_TENSORFLOW
            if info["min_tflite_runtime"]:
                needed = compat.newest(needed, info["min_tflite_runtime"])
            found["tflite_" + variant] = dict(info, min_tensorflow=needed)
    return found


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
        output = self._interpreter.get_output_details()[0]
        self._output = output["index"]
        self._output_quantization = output["quantization"]
        self._lock = threading.Lock()  # an interpreter is not thread-safe

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        rows = []
        with self._lock:
            for image in pixels:
                self._interpreter.set_tensor(self._input, image[np.newaxis])
                self._interpreter.invoke()
                rows.append(np.array(self._interpreter.get_tensor(self._output)[0]))
        if not rows:
            return np.zeros((0, 0), np.float32)
        scores = np.stack(rows)
        if scores.dtype != np.float32:  # an integer output: back to scores
            scale, zero_point = self._output_quantization
            scores = (scores.astype(np.float32) - zero_point) * scale
        return scores


def write(
    folder: Path,
    model: Any,
    size: int,
    test_pixels: Optional[np.ndarray],
    test_labels: Optional[np.ndarray],
    calibration_pixels: Optional[np.ndarray] = None,
) -> Dict[str, Dict[str, Any]]:
    """Write every variant into ``folder``; returns the size and test figures of each.

    On the test images each variant reports its accuracy, how often its top label is the
    float model's (``agreement``) and its largest score difference from it.

    Args:
        calibration_pixels: images for int8 calibration (default: ``test_pixels``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    if calibration_pixels is None:
        calibration_pixels = test_pixels
    reference = None
    if test_pixels is not None and len(test_pixels):
        reference = np.asarray(model(tf.constant(test_pixels)))
    results = {}
    for variant in VARIANTS:
        path = folder / file_name(variant)
        path.write_bytes(convert(model, size, variant, calibration_pixels))
        entry: Dict[str, Any] = {
            "file": "{}/{}".format(FOLDER, path.name),
            "bytes": path.stat().st_size,
            "test_accuracy": None,
        }
        if reference is not None and test_pixels is not None:
            scores = TFLiteScorer(path)(test_pixels)
            entry["agreement"] = float(np.mean(scores.argmax(axis=1) == reference.argmax(axis=1)))
            entry["max_score_diff"] = float(np.abs(scores - reference).max())
            if test_labels is not None and len(test_labels):
                entry["test_accuracy"] = float(np.mean(scores.argmax(axis=1) == test_labels))
        results[variant] = entry
    return results
