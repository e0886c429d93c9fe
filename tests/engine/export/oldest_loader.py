"""Load every format of a version with the TensorFlow this runs under, and score images.

Run under the Python 3.6 + TensorFlow 2.6.2 venv (scripts/test-oldest builds it) with
PYTHONPATH at the repository, by ``test_oldest_runtime.py``; it must stay valid Python 3.6.

    python oldest_loader.py --version DIR --pixels PIXELS.npy --out RESULT.json PHOTO...
    python oldest_loader.py --dump-ops OPS.json

The first form writes, per format, the scores (or an error) for the prepared pixels,
plus the serving_default signature on the photos' bytes. The second writes this
TensorFlow's op registry (op name to attr names) as poets/engine/export/tf_2_6_ops.json.
"""

import argparse
import json
import sys
import traceback
from pathlib import Path


def _registry():
    from tensorflow.core.framework import op_def_pb2
    from tensorflow.python.client import pywrap_tf_session as c_api
    from tensorflow.python.util import compat

    ops = op_def_pb2.OpList()
    ops.ParseFromString(compat.as_bytes(c_api.TF_GetBuffer(c_api.TF_GetAllOpList())))
    return {op.name: sorted(attr.name for attr in op.attr) for op in ops.op}


def dump_ops(path):
    import tensorflow as tf

    items = sorted(_registry().items())
    lines = ['{{"tensorflow": "{}", "ops": {{'.format(tf.__version__)]
    for i, (name, attrs) in enumerate(items):
        lines.append(
            "  {}: {}{}".format(json.dumps(name), json.dumps(attrs), "," if i < len(items) - 1 else "")
        )
    lines.append("}}")
    Path(path).write_text("\n".join(lines) + "\n")


def unknown_to_this_runtime(graph_def):
    """Ops and attrs of a GraphDef (and its functions) that this TensorFlow does not register."""
    registry = _registry()
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    problems = set()
    for node in nodes:
        if node.op not in registry:
            problems.add("op " + node.op)
            continue
        for attr in node.attr:
            if not attr.startswith("_") and attr not in registry[node.op]:
                problems.add("attr {} of {}".format(attr, node.op))
    return sorted(problems)


def run_formats(folder, pixels, photos):
    import numpy as np
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    from poets.engine.predictor import Predictor

    results = {}

    def attempt(name, fn):
        try:
            results[name] = fn()
        except Exception:
            results[name] = {"error": traceback.format_exc(limit=3)[-1500:]}

    def saved_model_graph():
        saved = saved_model_pb2.SavedModel()
        saved.ParseFromString((folder / "saved_model.pb").read_bytes())
        return {"unknown": unknown_to_this_runtime(saved.meta_graphs[0].graph_def)}

    def predictor(runtime):
        def score():
            served = Predictor(folder, runtime=runtime)
            if served.runtime != runtime:
                raise RuntimeError("asked for {}, got {}".format(runtime, served.runtime))
            return {"scores": served.predict(pixels).tolist()}

        return score

    def serving_default():
        loaded = tf.saved_model.load(str(folder))
        out = loaded.signatures["serving_default"](images=tf.constant([p.read_bytes() for p in photos]))
        return {
            "scores": out["scores"].numpy().tolist(),
            "labels": [label.decode("utf-8") for label in out["labels"].numpy()[0]],
        }

    def features():
        loaded = tf.saved_model.load(str(folder))
        out = loaded.signatures["features"](pixels=tf.constant(pixels))
        return {"features": out["features"].numpy().tolist()}

    def poets_graph():
        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString((folder / "poets" / "retrained_graph.pb").read_bytes())
        graph = tf.Graph()
        with graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as session:
            scores = session.run("final_result:0", {"input:0": (pixels.astype(np.float32) - 128.0) / 128.0})
        return {"scores": scores.tolist(), "unknown": unknown_to_this_runtime(graph_def)}

    attempt("saved_model_graph", saved_model_graph)
    attempt("saved_model", predictor("saved_model"))
    attempt("serving_default", serving_default)
    attempt("features", features)
    attempt("poets_graph", poets_graph)
    attempt("tflite_fp16", predictor("tflite_fp16"))
    attempt("tflite_int8", predictor("tflite_int8"))
    return {"tensorflow": tf.__version__, "python": sys.version.split()[0], "formats": results}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dump-ops")
    parser.add_argument("--version")
    parser.add_argument("--pixels")
    parser.add_argument("--out")
    parser.add_argument("photos", nargs="*")
    args = parser.parse_args(argv)
    if args.dump_ops:
        dump_ops(args.dump_ops)
        return 0
    import numpy as np

    result = run_formats(Path(args.version), np.load(args.pixels), [Path(p) for p in args.photos])
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
