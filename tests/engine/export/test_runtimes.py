"""The exported files in the runtimes people deploy them with, with no Poets code.

* onnxruntime (CPU) runs both ONNX files; the jetson-inference one is fed what its
  ``imageNet`` feeds an ONNX model (``cudaTensorNormMeanRGB``, reimplemented in numpy).
* MediaPipe's ``ImageClassifier`` classifies with the fp16 and int8 .tflite and their metadata.
* tensorflow-serving-api's protos parse the warm-up file, and each record runs in TensorFlow.

On 20 real photos (4 per label) each must give TensorFlow's top label on at least 19, and
the ONNX scores must stay within 0.02 of TensorFlow's.
"""

import json
from pathlib import Path
from typing import Any, List

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from poets.engine.export import onnx_export, tflite_metadata, warmup
from poets.engine.predictor import Predictor

pytestmark = pytest.mark.integration

PHOTOS_PER_LABEL = 4
MIN_AGREEING = 19
MAX_SCORE_DIFF = 0.02


def photos(flowers_dir: Path) -> List[Path]:
    labels = sorted(p for p in flowers_dir.iterdir() if p.is_dir())
    return [photo for label in labels for photo in sorted(label.glob("*.jpg"))[:PHOTOS_PER_LABEL]]


def tf_scores(folder: Path, pixels: np.ndarray) -> np.ndarray:
    """Scores of the SavedModel's ``predict_pixels`` (TensorFlow, the reference)."""
    loaded = tf.saved_model.load(str(folder))
    return loaded.signatures["predict_pixels"](pixels=tf.constant(pixels))["scores"].numpy()  # type: ignore[no-any-return]


def jetson_preprocess(rgb: np.ndarray, size: int) -> np.ndarray:
    """jetson-inference's ``gpuTensorNormMean`` (c/tensorConvert.cu) for ONNX classifiers.

    Point sampling (``dx = (int)(x * inputWidth / outputWidth)``), planar RGB, pixel * (1/255)
    (range (0, 1)), then ``(v - mean) / std`` per channel; one (1, 3, size, size) batch.
    """
    height, width = rgb.shape[:2]
    scale_x = np.float32(width) / np.float32(size)
    scale_y = np.float32(height) / np.float32(size)
    xs = (np.arange(size, dtype=np.float32) * scale_x).astype(np.int32)
    ys = (np.arange(size, dtype=np.float32) * scale_y).astype(np.int32)
    sampled = rgb[ys][:, xs].astype(np.float32)
    multiplier = np.float32(1.0 / 255.0)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    normalised = (sampled * multiplier + np.float32(0.0) - mean) / std
    return normalised.transpose(2, 0, 1)[np.newaxis]


def point_sampled(rgb: np.ndarray, size: int) -> np.ndarray:
    """The uint8 pixels that :func:`jetson_preprocess` samples, for TensorFlow to score."""
    height, width = rgb.shape[:2]
    xs = (np.arange(size, dtype=np.float32) * (np.float32(width) / np.float32(size))).astype(np.int32)
    ys = (np.arange(size, dtype=np.float32) * (np.float32(height) / np.float32(size))).astype(np.int32)
    return rgb[ys][:, xs]


def agreement(got: np.ndarray, want: np.ndarray) -> Any:
    same_top = int(np.sum(got.argmax(axis=1) == want.argmax(axis=1)))
    return same_top, float(np.abs(got - want).max())


def test_onnx_files_pass_the_checker_and_fit_tensorrt_8_2(exported) -> None:  # type: ignore[no-untyped-def]
    import onnx

    meta = json.loads((exported.path / "poets.json").read_text())
    assert "onnx" in meta["formats"]
    for convention in onnx_export.CONVENTIONS:
        path = exported.path / onnx_export.FOLDER / onnx_export.file_name(convention)
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        opset = max(e.version for e in model.opset_import if e.domain in ("", "ai.onnx"))
        # TensorRT 8.2's parser takes opsets up to 13 (onnx-tensorrt release/8.2-GA operators.md).
        assert opset == onnx_export.OPSET == 13
        assert model.ir_version <= 7
        assert onnx_export.check_tensorrt_8_2(model) == []
        assert [i.name for i in model.graph.input] == [onnx_export.NAMES[convention][0]]
        assert [o.name for o in model.graph.output] == [onnx_export.NAMES[convention][1]]
        entry = meta["runtimes"]["onnx_" + convention]
        assert entry["tensorrt_8_2"] == {"parses": True, "problems": []}
    imagenet = onnx.load(str(exported.path / "onnx" / "model_imagenet.onnx"))
    dims = [d.dim_value for d in imagenet.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 224, 224]  # fixed: jetson-inference builds no optimisation profile


def test_tensorrt_8_2_check_names_what_its_parser_lacks(exported) -> None:  # type: ignore[no-untyped-def]
    import onnx

    model = onnx.load(str(exported.path / "onnx" / "model_poets.onnx"))
    model.opset_import[0].version = 17
    model.graph.node[0].op_type = "LayerNormalization"  # opset 17, TensorRT 8.6
    problems = onnx_export.check_tensorrt_8_2(model)
    assert "opset 17 > 13" in problems
    assert "op LayerNormalization" in problems


def test_onnxruntime_runs_both_conventions_like_tensorflow(exported, flowers_dir) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime

    folder = exported.path
    images = photos(flowers_dir)
    assert len(images) == 20
    predictor = Predictor(folder)
    pixels = np.stack([predictor.prepare(p.read_bytes()) for p in images])
    want = tf_scores(folder, pixels)

    # (a) Poets' convention: NHWC float in [-1, 1], a whole batch at once.
    poets = onnxruntime.InferenceSession(
        str(folder / "onnx" / "model_poets.onnx"), providers=["CPUExecutionProvider"]
    )
    got = poets.run(["scores"], {"pixels": pixels.astype(np.float32) / 127.5 - 1.0})[0]
    same_top, diff = agreement(got, want)
    assert same_top >= MIN_AGREEING and diff <= MAX_SCORE_DIFF, (same_top, diff)

    # (b) jetson-inference's imageNet: the photo as it decodes it (RGB), its preprocessing.
    imagenet = onnxruntime.InferenceSession(
        str(folder / "onnx" / "model_imagenet.onnx"), providers=["CPUExecutionProvider"]
    )
    rgb = [np.asarray(Image.open(str(p)).convert("RGB")) for p in images]
    got = np.concatenate(
        [imagenet.run(["output_0"], {"input_0": jetson_preprocess(image, 224)})[0] for image in rgb]
    )
    want = tf_scores(folder, np.stack([point_sampled(image, 224) for image in rgb]))
    same_top, diff = agreement(got, want)
    assert same_top >= MIN_AGREEING and diff <= MAX_SCORE_DIFF, (same_top, diff)
    assert exported.labels == (folder / "labels.txt").read_text().split("\n")[:-1]


@pytest.mark.parametrize("variant", ["fp16", "int8"])
def test_mediapipe_classifies_with_the_tflite_metadata(exported, flowers_dir, variant) -> None:  # type: ignore[no-untyped-def]
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions
    from mediapipe.tasks.python.vision import ImageClassifier, ImageClassifierOptions

    folder = exported.path
    path = folder / "tflite" / "model_{}.tflite".format(variant)
    images = photos(flowers_dir)
    predictor = Predictor(folder)
    want = tf_scores(folder, np.stack([predictor.prepare(p.read_bytes()) for p in images]))
    options = ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)), max_results=1)
    names = []
    with ImageClassifier.create_from_options(options) as classifier:
        for photo in images:
            result = classifier.classify(mp.Image.create_from_file(str(photo)))
            names.append(result.classifications[0].categories[0].category_name)
    expected = [exported.labels[i] for i in want.argmax(axis=1)]
    assert set(names) <= set(exported.labels), names  # named categories: the metadata's labels
    assert sum(a == b for a, b in zip(names, expected)) >= MIN_AGREEING, list(zip(names, expected))
    meta = json.loads((folder / "poets.json").read_text())
    assert meta["runtimes"]["tflite_" + variant]["metadata"]["written"] is True
    described = json.loads(tflite_metadata.read(path))
    assert described["min_parser_version"] == "1.0.0"
    [subgraph] = described["subgraph_metadata"]
    [image] = subgraph["input_tensor_metadata"]
    assert image["name"] == "image" and image["content"]["content_properties"]["color_space"] == "RGB"
    assert image["process_units"][0]["options"] == {"mean": [0.0], "std": [1.0]}
    [score] = subgraph["output_tensor_metadata"]
    assert score["name"] == "score"
    assert score["associated_files"][0]["name"] == "labels.txt"
    assert score["associated_files"][0]["type"] == "TENSOR_AXIS_LABELS"


def test_warmup_records_parse_with_tf_serving_protos_and_run(exported) -> None:  # type: ignore[no-untyped-def]
    from tensorflow_serving.apis import prediction_log_pb2

    folder = exported.path
    path = folder / "assets.extra" / "tf_serving_warmup_requests"
    loaded = tf.saved_model.load(str(folder))
    seen: List[str] = []
    for raw in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(raw.numpy())
        request = log.predict_log.request
        assert request.model_spec.name == "flowers"
        signature = request.model_spec.signature_name
        seen.append(signature)
        inputs = {key: tf.constant(tf.make_ndarray(value)) for key, value in request.inputs.items()}
        outputs = loaded.signatures[signature](**inputs)
        batch = next(iter(inputs.values())).shape[0]
        assert all(output.shape[0] == batch for output in outputs.values())
    assert sorted(seen) == sorted(
        key for key in ("serving_default", "predict_pixels", "features") for _ in warmup.BATCH_SIZES
    )


def test_poets_json_lists_each_file(exported) -> None:  # type: ignore[no-untyped-def]
    folder = exported.path
    meta = json.loads((folder / "poets.json").read_text())
    listed = {entry["file"]: entry for entry in meta["files"]}
    assert set(listed) == {
        "saved_model.pb",
        "assets.extra/tf_serving_warmup_requests",
        "poets/retrained_graph.pb",
        "tflite/model_fp16.tflite",
        "tflite/model_int8.tflite",
        "onnx/model_poets.onnx",
        "onnx/model_imagenet.onnx",
    }
    for name, entry in listed.items():
        assert (folder / name).stat().st_size == entry["bytes"]
        assert entry["format"] and entry["input_convention"] and entry["checked_with"]
    assert listed["onnx/model_imagenet.onnx"]["input_convention"] == "imagenet"
    assert listed["onnx/model_poets.onnx"]["checked_with"]["tensorrt_8_2_parser"] is True
    assert "2.6.2" in listed["saved_model.pb"]["checked_with"]["tensorflow"]
