"""``poets.json``'s ``files``: each file of a version, its format, input and checked runtimes.

A deployer picks a file by the runtime they have. ``checked_with`` names the runtime
releases Poets' tests load and run that kind of file on (tests/engine/export), plus, per
file, what the export itself checked (TensorFlow 2.6's op registry for graphs, TensorRT
8.2's ONNX parser list for .onnx files, the .tflite file's own ``min_runtime_version``).
"""

from pathlib import Path
from typing import Any, Dict, List, Mapping

from poets.engine.export import compat

# The releases the tests ran each kind of file on when this table was last checked
# (tests/engine/export/test_oldest_runtime.py, test_runtimes.py); the exporting TensorFlow
# is added to the TensorFlow entries.
TESTED = {
    "saved_model": {"tensorflow": ["2.6.2"], "tensorflow_serving_api": ["2.21"]},
    "poets_graph": {"tensorflow": ["2.6.2"]},
    "tflite": {"tensorflow_lite": ["2.6.2"], "mediapipe": ["1.2"]},
    "onnx": {"onnxruntime": ["1.32"], "tensorrt": ["8.2 (ONNX parser's opset and operator list)"]},
}
INPUTS = {
    "images": "serving_default: encoded images (JPEG, PNG, GIF, BMP), DT_STRING [N]",
    "pixels": "predict_pixels / features: uint8 NHWC (N, size, size, 3) RGB pixels",
    "poets_graph": "NHWC float32 (N, size, size, 3): (pixel - 128) / 128, as label_image.py",
    "tflite": "uint8 NHWC (1, size, size, 3) RGB pixels",
}


def _tested(fmt: str, exported_with: str) -> Dict[str, List[str]]:
    tested = {runtime: list(versions) for runtime, versions in TESTED[fmt].items()}
    for runtime in ("tensorflow", "tensorflow_lite"):
        if runtime in tested and exported_with not in tested[runtime]:
            tested[runtime].append(exported_with)
    return tested


def listing(folder: Path, meta: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The entries for the files in ``folder``, from ``meta``'s ``runtimes``."""
    exported_with = compat.plain_version(str((meta.get("exported_with") or {}).get("tensorflow", "")))
    runtimes = meta.get("runtimes") or {}
    found: List[Dict[str, Any]] = []

    def add(path: str, fmt: str, kind: str, convention: str, checked: Dict[str, Any]) -> None:
        if (folder / path).is_file():
            found.append(
                {
                    "file": path,
                    "format": fmt,
                    "bytes": (folder / path).stat().st_size,
                    "input_convention": convention,
                    "checked_with": dict(_tested(kind, exported_with), **checked),
                }
            )

    saved = runtimes.get("saved_model") or {}
    add(
        "saved_model.pb",
        "saved_model",
        "saved_model",
        "; ".join((INPUTS["images"], INPUTS["pixels"])),
        {"min_tensorflow": saved.get("min_tensorflow")},
    )
    add(
        "assets.extra/tf_serving_warmup_requests",
        "tf_serving_warmup",
        "saved_model",
        "PredictionLog records, two per signature",
        {},
    )
    graph = runtimes.get("poets_graph") or {}
    add(
        "poets/retrained_graph.pb",
        "poets_graph",
        "poets_graph",
        INPUTS["poets_graph"],
        {"min_tensorflow": graph.get("min_tensorflow")},
    )
    for key in ("tflite_fp16", "tflite_int8"):
        entry = runtimes.get(key) or {}
        add(
            "tflite/model_{}.tflite".format(key.split("_")[1]),
            key,
            "tflite",
            INPUTS["tflite"],
            {
                "min_tensorflow": entry.get("min_tensorflow"),
                "min_tflite_runtime": entry.get("min_tflite_runtime"),
                "metadata": bool((entry.get("metadata") or {}).get("written")),
            },
        )
    for key in ("onnx_poets", "onnx_imagenet"):
        entry = runtimes.get(key) or {}
        if entry:
            add(
                str(entry["file"]),
                "onnx",
                "onnx",
                str(entry["input_convention"]),
                {
                    "opset": entry.get("opset"),
                    "ir_version": entry.get("ir_version"),
                    "tensorrt_8_2_parser": (entry.get("tensorrt_8_2") or {}).get("parses"),
                },
            )
    return found
