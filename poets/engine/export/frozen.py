"""A SavedModel that old TensorFlow loads: signatures frozen to constants, TF1 layout.

``tf.saved_model.save`` in today's TensorFlow writes ops that TF 2.6/2.7 do not know
(``DisableCopyOnRead`` in the variables' save function, tensorflow/tensorflow#62229).
Here each signature is frozen (variables become constants, control flow is lowered to
TF1 ops), the graphs are joined into one with the weight constants they share stored
once, and ``tf.compat.v1.saved_model.Builder`` writes it with default-valued attrs
stripped: no variables, no checkpoint ops, an empty ``variables/`` folder. TF 1.x,
every TF 2.x and TF Serving load it; ``tf.saved_model.load`` returns the signatures.
"""

import hashlib
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.python.framework import meta_graph
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

SERVE_TAG = "serve"


def _frozen_signature(name: str, function: Any) -> Tuple[Any, Dict[str, str], Dict[str, str]]:
    """(GraphDef, input key to tensor name, output key to tensor name) of one signature."""
    concrete = function.get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete)
    inputs = {tensor.op.name: tensor.name for tensor in frozen.inputs}
    outputs_structure = concrete.structured_outputs
    if not isinstance(outputs_structure, Mapping):
        raise TypeError("signature {} must return a dict of tensors".format(name))
    # Frozen outputs come in tf.nest order: a dict's keys sorted.
    outputs = {key: tensor.name for key, tensor in zip(sorted(outputs_structure), frozen.outputs)}
    return frozen.graph.as_graph_def(), inputs, outputs


def strip_default_attrs(graph_def: Any) -> Any:
    """A copy without attrs at their default values: old runtimes know fewer attrs."""
    meta_graph_def = meta_graph_pb2.MetaGraphDef()
    meta_graph_def.graph_def.CopyFrom(graph_def)
    meta_graph.strip_graph_default_valued_attrs(meta_graph_def)
    return meta_graph_def.graph_def


def _input_name(reference: str) -> str:
    return reference.lstrip("^").split(":")[0]


def share_constants(graph_def: Any) -> Any:
    """Keep one copy of each distinct constant that depends on nothing (the weights).

    Each frozen signature carries its own copy of the backbone's weights. Constants
    with control inputs are left alone: in lowered loops those place the constant in
    the loop's frame.
    """
    first: Dict[bytes, str] = {}
    replaced: Dict[str, str] = {}
    for node in graph_def.node:
        if node.op != "Const" or node.input:
            continue
        key = hashlib.sha256(
            node.attr["value"].SerializeToString(deterministic=True)
            + node.attr["dtype"].SerializeToString(deterministic=True)
        ).digest()
        if key in first:
            replaced[node.name] = first[key]
        else:
            first[key] = node.name
    shared = tf.compat.v1.GraphDef()
    shared.versions.CopyFrom(graph_def.versions)
    shared.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        if node.name in replaced:
            continue
        copy = shared.node.add()
        copy.CopyFrom(node)
        for i, reference in enumerate(copy.input):
            target = replaced.get(_input_name(reference))
            if target is not None:
                copy.input[i] = reference.replace(_input_name(reference), target, 1)
    return shared


def frozen_graph(signatures: Mapping[str, Any]) -> Tuple[Any, Dict[str, Any]]:
    """One variable-free GraphDef holding every signature, and their SignatureDefs.

    Args:
        signatures: signature key to a ``tf.function`` with an input signature that
            returns a dict of tensors.
    """
    # Freezing reads the variables' values: eagerly, outside any graph context.
    parts = [(key, *_frozen_signature(key, function)) for key, function in signatures.items()]
    joined = tf.Graph()
    with joined.as_default():
        for key, graph_def, _, _ in parts:
            tf.compat.v1.import_graph_def(graph_def, name=key)
    graph_def = share_constants(joined.as_graph_def())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
        build = tf.compat.v1.saved_model.build_tensor_info
        signature_defs = {}
        for key, _, inputs, outputs in parts:
            prefix = key + "/"
            signature_defs[key] = tf.compat.v1.saved_model.build_signature_def(
                inputs={k: build(graph.get_tensor_by_name(prefix + t)) for k, t in inputs.items()},
                outputs={k: build(graph.get_tensor_by_name(prefix + t)) for k, t in outputs.items()},
                method_name=tf.compat.v1.saved_model.PREDICT_METHOD_NAME,
            )
    return graph_def, signature_defs


def write(folder: Path, signatures: Mapping[str, Any]) -> Any:
    """Write ``saved_model.pb`` and an empty ``variables/`` into ``folder``; returns its GraphDef.

    ``folder`` may already hold other files (the Builder wants an empty folder, so it
    writes into a sub-folder that is moved up).
    """
    graph_def, signature_defs = frozen_graph(signatures)
    staging = folder / ".saved_model"
    if staging.exists():
        shutil.rmtree(str(staging))
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as session:
            builder = tf.compat.v1.saved_model.Builder(str(staging))
            builder.add_meta_graph_and_variables(
                session,
                [SERVE_TAG],
                signature_def_map=signature_defs,
                strip_default_attrs=True,
                clear_devices=True,
            )
            builder.save()
    for entry in staging.iterdir():
        target = folder / entry.name
        if target.is_dir():
            shutil.rmtree(str(target))
        entry.rename(target)
    staging.rmdir()
    (folder / "variables").mkdir(exist_ok=True)
    return strip_default_attrs(graph_def)  # what the Builder wrote
