"""TF Serving layout and signature, the TensorFlow for Poets graph, TFLite."""

import json
from pathlib import Path
from typing import List

import numpy as np
import pytest
import tensorflow as tf

from poets.engine.data.datasets import scan
from poets.engine.data.images import prepare
from poets.engine.errors import InvalidInput, UnsupportedExport
from poets.engine.export import onnx_export, tflite
from poets.engine.export import saved_model as export
from poets.engine.export.poets_graph import GRAPH_FILE, LABELS_FILE
from poets.engine.model import config
from poets.engine.model.bottlenecks import BottleneckCache
from poets.engine.model.training import TrainConfig
from poets.engine.predictor import Predictor
from poets.engine.retrain import retrain
from poets.engine.store.models import ModelStore


@pytest.fixture(scope="module")
def test_photos(flowers_dir) -> List[Path]:  # type: ignore[no-untyped-def]
    return [record.path for record in scan(flowers_dir).split("testing")]


def test_store_uses_tf_serving_layout(exported) -> None:  # type: ignore[no-untyped-def]
    model_dir = exported.path.parent
    assert exported.path.name == "1"
    assert (exported.path / "saved_model.pb").is_file()
    assert (exported.path / "variables").is_dir()
    # TF Serving only looks at integer folders; nothing half-written or staged is there.
    entries = {p.name for p in model_dir.iterdir()}
    assert entries <= {"1", "CURRENT"}


def test_tf_serving_signature(exported, test_photos) -> None:  # type: ignore[no-untyped-def]
    loaded = tf.saved_model.load(str(exported.path))
    signature = loaded.signatures["serving_default"]
    inputs = signature.structured_input_signature[1]
    assert list(inputs) == ["images"]
    assert inputs["images"].dtype == tf.string and inputs["images"].shape.as_list() == [None]
    assert set(signature.structured_outputs) == {"scores", "labels"}

    # What a TF Serving client sends: {"instances": [{"b64": ...}]} becomes this string batch.
    batch = [path.read_bytes() for path in test_photos[:8]]
    out = signature(images=tf.constant(batch))
    assert out["scores"].shape == (8, 5)
    names = out["labels"].numpy()[0].astype(str).tolist()
    assert names == exported.labels
    reference = Predictor(exported.path).label(batch, k=1)
    served = [names[i] for i in out["scores"].numpy().argmax(axis=1)]
    agree = np.mean([ref[0][0] == got for ref, got in zip(reference, served)])
    assert agree >= 0.85  # TF decode/resize vs Pillow: same labels but for borderline photos


def test_poets_graph_runs_as_a_tf1_graph(exported, test_photos) -> None:  # type: ignore[no-untyped-def]
    folder = exported.path / "poets"
    assert (folder / LABELS_FILE).read_text().split() == exported.labels
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((folder / GRAPH_FILE).read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="import")
    size = 224
    prep = Predictor(exported.path).preprocessing
    # label_image.py's preprocessing: resized float pixels, (x - 128) / 128.
    pixels = np.stack([prepare(p.read_bytes(), prep) for p in test_photos]).astype(np.float32)
    with tf.compat.v1.Session(graph=graph) as session:
        scores = session.run("import/final_result:0", {"import/input:0": (pixels - 128.0) / 128.0})
    assert scores.shape == (len(test_photos), len(exported.labels))
    truth = [exported.labels.index(p.parent.name) for p in test_photos]
    accuracy = float(np.mean(scores.argmax(axis=1) == truth))
    assert accuracy >= exported.metrics["test_accuracy"] - 0.05
    assert pixels.shape[1] == size


def test_tflite_variants_report_accuracy_and_serve(exported, test_photos) -> None:  # type: ignore[no-untyped-def]
    results = exported.metrics["tflite"]
    assert set(results) == set(tflite.VARIANTS) == {"fp16", "int8"}
    for variant, entry in results.items():
        assert (exported.path / entry["file"]).is_file()
        assert entry["test_accuracy"] >= exported.metrics["test_accuracy"] - 0.05, variant
    meta = json.loads((exported.path / export.METADATA_FILE).read_text())
    assert meta["metrics"]["tflite"]["int8"]["bytes"] < meta["metrics"]["tflite"]["fp16"]["bytes"]

    reference = Predictor(exported.path)
    served = Predictor(exported.path, runtime="tflite_int8")
    assert served.runtime == "tflite_int8"
    batch = [p.read_bytes() for p in test_photos[:6]]
    assert [r[0][0] for r in served.label(batch, 1)] == [r[0][0] for r in reference.label(batch, 1)]


def test_int8_backbone_is_integer_and_head_float(exported) -> None:  # type: ignore[no-untyped-def]
    """Integer convolutions; dense layers and softmax in float, at versions TF 2.6 runs."""
    from tensorflow.lite.python import schema_py_generated as schema

    data = (exported.path / tflite.FOLDER / tflite.file_name("int8")).read_bytes()
    model = schema.Model.GetRootAsModel(data, 0)
    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    types = {code: name for name, code in vars(schema.TensorType).items() if not name.startswith("_")}
    graph = model.Subgraphs(0)
    input_types: dict = {}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        input_types.setdefault(name, set()).add(types[graph.Tensors(op.Inputs(0)).Type()])
    assert input_types["CONV_2D"] == input_types["DEPTHWISE_CONV_2D"] == {"INT8"}
    assert input_types["FULLY_CONNECTED"] == input_types["SOFTMAX"] == {"FLOAT32"}
    versions = tflite.describe(data)["op_versions"]
    assert versions["FULLY_CONNECTED"] == versions["SOFTMAX"] == 1


def test_tflite_runtime_falls_back_without_export(trained) -> None:  # type: ignore[no-untyped-def]
    predictor = Predictor(trained.path, runtime="tflite_fp16")
    assert predictor.runtime == "saved_model"


def test_unknown_export_format_is_refused() -> None:
    with pytest.raises(InvalidInput, match="tflite, onnx"):
        TrainConfig(export="saved_model,coreml").validate()
    assert export.parse_formats("tflite") == ("saved_model", "tflite")
    assert export.parse_formats("onnx,tflite") == ("saved_model", "tflite", "onnx")


def test_onnx_without_its_converter_is_refused_at_submit(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    TrainConfig(export="onnx").validate()  # the onnx extra is installed here
    monkeypatch.setitem(config.EXPORT_NEEDS, "onnx", (("poets_no_such_converter",), "onnx"))
    with pytest.raises(UnsupportedExport, match=r"poets_no_such_converter.*pip install 'poets\[onnx\]'"):
        TrainConfig(export="tflite,onnx").validate()
    TrainConfig(export="tflite").validate()


def test_onnx_refuses_a_model_without_backbone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An imported poets graph has no backbone and head to convert."""
    with pytest.raises(UnsupportedExport, match="model Poets trained") as caught:
        onnx_export.write(tmp_path, object(), object(), ["a", "b"])
    assert caught.value.code == "unsupported_export"
    assert isinstance(caught.value, InvalidInput)  # a 422 (app/errors.py)


def test_a_format_that_cannot_be_converted_is_named_and_the_rest_published(  # type: ignore[no-untyped-def]
    tmp_path, monkeypatch, session_home, backbone_dir, flowers_dir
) -> None:
    # An opset tf2onnx does not know: a real converter failure, after training.
    monkeypatch.setattr(onnx_export, "OPSET", 99)
    store = ModelStore(tmp_path / "store")
    result = retrain(
        flowers_dir,
        TrainConfig(export="poets_graph,onnx", how_many_training_steps=50),
        store,
        BottleneckCache(session_home / "bottlenecks"),
        backbone_dir,
        name="flowers",
    )
    meta = json.loads((result.path / export.METADATA_FILE).read_text())
    assert meta["formats"] == ["poets_graph", "saved_model"]
    assert (result.path / "poets" / GRAPH_FILE).is_file()
    assert not (result.path / onnx_export.FOLDER).exists()
    [failure] = result.summary()["metrics"]["export_failures"]
    assert failure["format"] == "onnx" and "Opset 99 is not supported" in failure["detail"], failure
    assert Predictor(result.path).label([next((flowers_dir / "daisy").glob("*.jpg")).read_bytes()])
