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
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.python.framework import meta_graph
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

SERVE_TAG = "serve"


def _freeze(concrete: Any) -> Tuple[Any, List[str], List[str]]:
    """(GraphDef with variables as constants, input tensor names, output tensor names).

    What ``convert_variables_to_constants_v2`` computes, without the ConcreteFunction it
    then builds from the result (importing and pruning the graph again: 40% of an
    export). Falls back to the public function where the private steps are missing.
    """
    try:
        from tensorflow.python.framework.convert_to_constants import (
            _FunctionConverterDataInEager,
            _replace_variables_by_constants,
        )
    except ImportError:  # pragma: no cover - every TensorFlow from 2.4 to today has them
        frozen = convert_variables_to_constants_v2(concrete)
        return (
            frozen.graph.as_graph_def(),
            [t.name for t in frozen.inputs],
            [t.name for t in frozen.outputs],
        )
    data = _FunctionConverterDataInEager(func=concrete, lower_control_flow=True, aggressive_inlining=False)
    graph_def, converted = _replace_variables_by_constants(converter_data=data)
    # ``converted`` indexes the captured inputs (the variables) that became constants.
    captures = concrete.graph.internal_captures
    constants = {id(captures[index]) for index in converted}
    inputs = [t.name for t in concrete.inputs if id(t) not in constants]
    outputs = [t.name for t in concrete.outputs]
    # Only what the outputs need (a backbone graph may hold unused nodes, whose colocation
    # hints name nodes that freezing dropped).
    return _needed_only(graph_def, [_input_name(name) for name in outputs]), inputs, outputs


_LOC = b"loc:@"  # a colocation hint: ``_class: ["loc:@name"]``


def _colocated_with(node: Any) -> List[str]:
    """The nodes named by ``node``'s colocation hints."""
    if "_class" not in node.attr:
        return []
    return [h[len(_LOC) :].decode("utf-8") for h in node.attr["_class"].list.s if h.startswith(_LOC)]


def _needed_only(graph_def: Any, outputs: List[str]) -> Any:
    """A copy of ``graph_def`` with only the nodes that ``outputs`` depend on.

    Nodes that a kept node is colocated with are kept too; colocation hints naming a
    node that is not in the graph at all (freezing can drop one) are removed, or no
    TensorFlow would import the graph.
    """
    nodes = {node.name: node for node in graph_def.node}
    needed, pending = set(), list(outputs)
    while pending:
        name = pending.pop()
        if name in needed:
            continue
        needed.add(name)
        pending.extend(_input_name(reference) for reference in nodes[name].input)
        pending.extend(target for target in _colocated_with(nodes[name]) if target in nodes)
    pruned = tf.compat.v1.GraphDef()
    pruned.versions.CopyFrom(graph_def.versions)
    pruned.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        if node.name not in needed:
            continue
        copy = pruned.node.add()
        copy.CopyFrom(node)
        targets = _colocated_with(node)
        if any(target not in nodes for target in targets):
            kept = [_LOC + t.encode("utf-8") for t in targets if t in nodes]
            del copy.attr["_class"].list.s[:]
            copy.attr["_class"].list.s.extend(kept)
            if not kept:
                del copy.attr["_class"]
    return pruned


def _frozen_function(function: Any) -> Tuple[Any, Dict[str, str], Dict[str, str]]:
    """(GraphDef, input key to tensor name, output key to tensor name) of a ``tf.function``."""
    concrete = function.get_concrete_function()
    graph_def, input_names, output_names = _freeze(concrete)
    inputs = {_input_name(tensor): tensor for tensor in input_names}
    outputs_structure = concrete.structured_outputs
    if not isinstance(outputs_structure, Mapping):
        raise TypeError("{} must return a dict of tensors".format(function))
    # Outputs come in tf.nest order: a dict's keys sorted.
    outputs = dict(zip(sorted(outputs_structure), output_names))
    return graph_def, inputs, outputs


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
        if "_class" in copy.attr:  # colocation hints follow the kept copy
            hints = copy.attr["_class"].list.s
            for i, hint in enumerate(hints):
                target = replaced.get(hint[len(_LOC) :].decode("utf-8")) if hint.startswith(_LOC) else None
                if target is not None:
                    hints[i] = _LOC + target.encode("utf-8")
    return shared


def frozen_graph(signatures: Mapping[str, Any]) -> Tuple[Any, Dict[str, Any]]:
    """One variable-free GraphDef holding every signature, and their SignatureDefs.

    Args:
        signatures: signature key to a ``tf.function`` with an input signature that
            returns a dict of tensors, or to ``(function, output keys)`` for a signature
            with some of its outputs. Signatures of one function share its frozen graph:
            it is frozen once (freezing is most of an export's time).
    """
    chosen: Dict[str, Tuple[Any, Optional[Sequence[str]]]] = {
        key: value if isinstance(value, tuple) else (value, None) for key, value in signatures.items()
    }
    scopes: Dict[int, str] = {}  # id(function) -> the name its graph is imported under
    for key, (function, _) in chosen.items():
        scopes.setdefault(id(function), key)
    # Freezing reads the variables' values: eagerly, outside any graph context.
    frozen = {scope: _frozen_function(chosen[scope][0]) for scope in scopes.values()}
    joined = tf.Graph()
    with joined.as_default():
        for scope, (graph_def, _, _) in frozen.items():
            tf.compat.v1.import_graph_def(graph_def, name=scope)
    graph_def = share_constants(joined.as_graph_def())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
        build = tf.compat.v1.saved_model.build_tensor_info

        def tensor_info(scope: str, name: str) -> Any:
            return build(graph.get_tensor_by_name(scope + "/" + name))

        signature_defs = {}
        for key, (function, keys) in chosen.items():
            scope = scopes[id(function)]
            _, inputs, outputs = frozen[scope]
            if keys is not None:
                missing = sorted(set(keys) - set(outputs))
                if missing:
                    raise KeyError("signature {} asks for missing outputs {}".format(key, missing))
                outputs = {k: outputs[k] for k in keys}
            signature_defs[key] = tf.compat.v1.saved_model.build_signature_def(
                inputs={k: tensor_info(scope, t) for k, t in inputs.items()},
                outputs={k: tensor_info(scope, t) for k, t in outputs.items()},
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
