"""ONNX exports for TensorRT and jetson-inference: one file per input convention.

Both files hold the same backbone + head, converted with tf2onnx from a frozen
``tf.function``; they differ only in the input the graph takes (the conversion to the
backbone's own input is folded into the graph, a transpose and a multiply-add):

* ``onnx/model_poets.onnx`` (:data:`POETS`): NHWC float32 (N, size, size, 3), RGB in
  [-1, 1] (``pixel / 127.5 - 1``), the layout of ``predict_pixels``; any batch size.
* ``onnx/model_imagenet.onnx`` (:data:`IMAGENET`): what jetson-inference's ``imageNet``
  feeds an ONNX classifier (``c/imageNet.cpp`` ``preProcess`` calling
  ``cudaTensorNormMeanRGB`` of ``c/tensorConvert.cu``): NCHW planar RGB float32
  (1, 3, size, size), each pixel scaled to [0, 1], then ``(x - mean) / std`` with
  mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225). Batch 1, fixed: its
  ``tensorNet`` builds engines with no optimisation profile, so a dynamic dimension
  would not build. Input ``input_0``, output ``output_0`` (the names its own
  PyTorch classifier exports use).

Opset 13, IR version 7: TensorRT 8.2 (JetPack 4.6, the TX2's last) parses "operators
up to Opset 13" (onnx-tensorrt ``release/8.2-GA`` ``docs/operators.md``), and opset
13 came with IR version 7 (onnx 1.8). Every node's op must be in that parser's list
(``trt_8_2_onnx_ops.json``): :func:`check_tensorrt_8_2` says which are not.

tf2onnx and onnx are an optional extra (``pip install 'poets[onnx]'``): an ``onnx``
export without them is refused when the job is submitted
(:func:`poets.engine.model.config.check_installed`).
"""

import importlib.util
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import tensorflow as tf

from poets.engine.errors import UnsupportedExport

FOLDER = "onnx"
OPSET = 13
IR_VERSION = 7
POETS = "poets"
IMAGENET = "imagenet"
CONVENTIONS = (POETS, IMAGENET)
TRT_OPS_FILE = Path(__file__).with_name("trt_8_2_onnx_ops.json")
# jetson-inference c/imageNet.cpp, preProcess for MODEL_ONNX.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Tensor names, per convention: (input, output).
NAMES = {POETS: ("pixels", "scores"), IMAGENET: ("input_0", "output_0")}
DESCRIPTIONS = {
    POETS: "NHWC float32 (N, size, size, 3), RGB scaled to [-1, 1]: pixel / 127.5 - 1",
    IMAGENET: (
        "NCHW float32 (1, 3, size, size), planar RGB scaled to [0, 1], then (x - mean) / std with "
        "mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225): jetson-inference imageNet"
    ),
}


def file_name(convention: str) -> str:
    return "model_{}.onnx".format(convention)


def _function(backbone: Any, head: Any, convention: str) -> Any:
    """The pixels-to-scores ``tf.function`` of one convention, with its input signature."""
    size = backbone.preprocessing.size
    input_name, output_name = NAMES[convention]
    if convention == POETS:
        spec = tf.TensorSpec([None, size, size, 3], tf.float32, name=input_name)

        def to_pixels(x: tf.Tensor) -> tf.Tensor:
            return (x + 1.0) * 127.5

    else:
        spec = tf.TensorSpec([1, 3, size, size], tf.float32, name=input_name)

        def to_pixels(x: tf.Tensor) -> tf.Tensor:
            # Constants made inside the function: made outside, they would be captured
            # as extra graph inputs.
            scale = tf.constant([255.0 * s for s in IMAGENET_STD])
            offset = tf.constant([255.0 * m for m in IMAGENET_MEAN])
            return tf.transpose(x, [0, 2, 3, 1]) * scale + offset

    def scores(x: tf.Tensor) -> Dict[str, tf.Tensor]:
        features = backbone.features_from_float(to_pixels(x))
        return {output_name: tf.nn.softmax(head(features))}

    return tf.function(scores, input_signature=[spec], autograph=False)


def _rename(model: Any, old: str, new: str) -> None:
    """Rename a graph input or output (tf2onnx names them after TensorFlow's tensors)."""
    if old == new:
        return
    graph = model.graph
    for value in list(graph.input) + list(graph.output):
        if value.name == old:
            value.name = new
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new


def convert(backbone: Any, head: Any, convention: str, labels: Sequence[str]) -> Any:
    """The ``onnx.ModelProto`` of one convention (opset :data:`OPSET`, IR :data:`IR_VERSION`)."""
    import onnx
    import tf2onnx

    input_name, output_name = NAMES[convention]
    function = _function(backbone, head, convention)
    model, _ = tf2onnx.convert.from_function(function, input_signature=function.input_signature, opset=OPSET)
    _rename(model, model.graph.input[0].name, input_name)
    _rename(model, model.graph.output[0].name, output_name)
    model.ir_version = IR_VERSION
    model.producer_name = "poets"
    model.doc_string = "Poets classifier; input: {}; output: softmax scores over {} labels.".format(
        DESCRIPTIONS[convention], len(labels)
    )
    onnx.helper.set_model_props(model, {"labels": json.dumps(list(labels)), "convention": convention})
    onnx.checker.check_model(model)
    return model


def _trt_ops() -> Dict[str, Any]:
    return json.loads(TRT_OPS_FILE.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def check_tensorrt_8_2(model: Any) -> List[str]:
    """What keeps TensorRT 8.2's ONNX parser from taking ``model``: empty when nothing."""
    supported = _trt_ops()
    problems = []
    opsets = [entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")]
    if any(version > supported["max_opset"] for version in opsets):
        problems.append("opset {} > {}".format(max(opsets), supported["max_opset"]))
    if model.ir_version > supported["max_ir_version"]:
        problems.append("IR version {} > {}".format(model.ir_version, supported["max_ir_version"]))
    known = set(supported["operators"])
    unknown = sorted({node.op_type for node in model.graph.node} - known)
    problems.extend("op {}".format(op) for op in unknown)
    return problems


def write(folder: Path, backbone: Any, head: Any, labels: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """Write both conventions into ``folder``; returns ``poets.json``'s entry for each file."""
    import onnx
    import tf2onnx

    if backbone is None or not hasattr(backbone, "features_from_float"):
        raise UnsupportedExport(
            "The onnx export needs a model Poets trained (backbone and head); this one has none."
        )
    folder.mkdir(parents=True, exist_ok=True)
    entries = {}
    for convention in CONVENTIONS:
        model = convert(backbone, head, convention, labels)
        problems = check_tensorrt_8_2(model)
        path = folder / file_name(convention)
        path.write_bytes(model.SerializeToString())
        input_name, output_name = NAMES[convention]
        entries["onnx_" + convention] = {
            "file": "{}/{}".format(FOLDER, path.name),
            "format": "onnx",
            "input_convention": convention,
            "input": {"name": input_name, "description": DESCRIPTIONS[convention]},
            "output": {"name": output_name, "description": "softmax scores, in labels.txt order"},
            "opset": OPSET,
            "ir_version": model.ir_version,
            "tensorrt_8_2": {"parses": not problems, "problems": problems},
            "converted_with": {"tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__},
        }
    return entries


def describe(path: Path) -> Optional[Dict[str, Any]]:
    """Opset, IR version and ops of an .onnx file (None without the onnx package)."""
    if importlib.util.find_spec("onnx") is None:
        return None
    import onnx

    model = onnx.load(str(path))
    return {
        "opset": max(e.version for e in model.opset_import if e.domain in ("", "ai.onnx")),
        "ir_version": model.ir_version,
        "ops": sorted({node.op_type for node in model.graph.node}),
    }
