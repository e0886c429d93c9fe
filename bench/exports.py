"""What each export format costs and how each file runs in its own runtime.

    .venv/bin/python -m bench.exports [--steps 1000]

Retrains flowers_small once to warm the bottleneck cache, then once per export set
(warm: training + export only), printing the export time of each; then, for the version
with every format, one row per file: size, runtime, load time, and on 20 photos (4 per
label) the top-1 agreement with TensorFlow's ``predict_pixels`` and the largest score
difference. Needs the ``onnx`` extra and the test extra (onnxruntime).
"""

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
from PIL import Image

from poets.engine.model.bottlenecks import BottleneckCache
from poets.engine.model.training import TrainConfig
from poets.engine.predictor import Predictor
from poets.engine.retrain import retrain
from poets.engine.store.models import ModelStore
from tests import assets
from tests.engine.export.test_runtimes import jetson_preprocess, photos, point_sampled

EXPORT_SETS = ("saved_model", "tflite", "onnx", "poets_graph,tflite,onnx")


def timed(load: Callable[[], Any]) -> Tuple[Any, float]:
    start = time.perf_counter()
    loaded = load()
    return loaded, time.perf_counter() - start


def rows(folder: Path, images: List[Path]) -> List[Dict[str, Any]]:
    import mediapipe as mp
    import onnxruntime
    import tensorflow as tf
    from mediapipe.tasks.python import BaseOptions
    from mediapipe.tasks.python.vision import ImageClassifier, ImageClassifierOptions

    predictor = Predictor(folder)
    pixels = np.stack([predictor.prepare(p.read_bytes()) for p in images])
    rgb = [np.asarray(Image.open(str(p)).convert("RGB")) for p in images]
    sampled = np.stack([point_sampled(image, 224) for image in rgb])
    loaded, load_s = timed(lambda: tf.saved_model.load(str(folder)))

    def reference(batch: np.ndarray) -> np.ndarray:
        return loaded.signatures["predict_pixels"](pixels=tf.constant(batch))["scores"].numpy()  # type: ignore[no-any-return]

    want, want_sampled = reference(pixels), reference(sampled)
    labels = predictor.labels
    found = [dict(file="saved_model.pb", runtime="TensorFlow " + tf.__version__, load_s=load_s, scores=want)]
    for name, feed, target in (
        ("model_poets.onnx", lambda s: {"pixels": pixels.astype(np.float32) / 127.5 - 1.0}, want),
        ("model_imagenet.onnx", None, want_sampled),
    ):
        session, load_s = timed(
            lambda n=name: onnxruntime.InferenceSession(
                str(folder / "onnx" / n), providers=["CPUExecutionProvider"]
            )
        )
        if feed is not None:
            scores = session.run(None, feed(session))[0]
        else:
            scores = np.concatenate(
                [session.run(None, {"input_0": jetson_preprocess(i, 224)})[0] for i in rgb]
            )
        found.append(
            dict(
                file="onnx/" + name,
                runtime="onnxruntime " + onnxruntime.__version__,
                load_s=load_s,
                scores=scores,
                want=target,
            )
        )
    # The same file on the whole photo, as a Jetson would feed it, against Poets' own decode
    # (antialiased resize): what the resize alone changes.
    imagenet = found[-1]
    found.append(
        dict(
            file=imagenet["file"],
            runtime=imagenet["runtime"] + ", whole photo vs Poets' decode",
            load_s=imagenet["load_s"],
            scores=imagenet["scores"],
        )
    )
    for variant in ("fp16", "int8"):
        path = folder / "tflite" / "model_{}.tflite".format(variant)
        tflite, load_s = timed(lambda r="tflite_" + variant: Predictor(folder, runtime=r))
        found.append(
            dict(
                file="tflite/" + path.name,
                runtime="TFLite (TF)",
                load_s=load_s,
                scores=tflite.predict(pixels),
            )
        )
        options = ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)), max_results=1)
        classifier, load_s = timed(lambda o=options: ImageClassifier.create_from_options(o))
        names = [
            classifier.classify(mp.Image.create_from_file(str(p)))
            .classifications[0]
            .categories[0]
            .category_name
            for p in images
        ]
        classifier.close()
        found.append(
            dict(
                file="tflite/" + path.name,
                runtime="MediaPipe ImageClassifier " + mp.__version__,
                load_s=load_s,
                top=[labels.index(n) for n in names],
            )
        )
    for row in found:
        target = row.pop("want", want)
        top = row.pop("top", None)
        scores = row.pop("scores", None)
        if scores is not None:
            top = scores.argmax(axis=1)
            row["max_diff"] = float(np.abs(scores - target).max())
        row["top1"] = int(np.sum(np.asarray(top) == target.argmax(axis=1)))
        row["bytes"] = (folder / row["file"]).stat().st_size
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    flowers = assets.datasets_dir() / "flowers_small"
    backbone_dir = assets.backbone_dir()
    with tempfile.TemporaryDirectory() as home:
        cache = BottleneckCache(Path(home) / "bottlenecks")
        store = ModelStore(Path(home) / "models")

        def run(export: str) -> Any:
            config = TrainConfig(export=export, how_many_training_steps=args.steps)
            return retrain(flowers, config, store, cache, backbone_dir, name="flowers")

        run("saved_model")  # warms the cache and TensorFlow
        print("| export | training s | export s |\n|---|---:|---:|")
        result = None
        for export in EXPORT_SETS:
            result = run(export)
            print(
                "| {} | {:.1f} | {:.1f} |".format(
                    export, result.timings["training_s"], result.timings["export_s"]
                )
            )
        assert result is not None
        print("\n| file | bytes | runtime | load s | top-1 agrees | max score diff |")
        print("|---|---:|---|---:|---:|---:|")
        for row in rows(result.path, photos(flowers)):
            print(
                "| {file} | {bytes} | {runtime} | {load_s:.2f} | {top1}/20 | {diff} |".format(
                    diff="{:.2g}".format(row["max_diff"]) if "max_diff" in row else "(labels only)", **row
                )
            )


if __name__ == "__main__":
    main()
