"""The TF 2.6 op check, the runtimes poets.json records, and the refusal to serve too-new versions."""

import json

import pytest
import tensorflow as tf

from poets.engine.errors import IncompatibleModel, ModelLoadError
from poets.engine.export import compat
from poets.engine.export.frozen import _needed_only, share_constants

pytestmark = pytest.mark.unit


def node(graph_def, name, op, inputs=(), **attrs):  # type: ignore[no-untyped-def]
    added = graph_def.node.add(name=name, op=op, input=list(inputs))
    for key, value in attrs.items():
        added.attr[key].CopyFrom(value)
    return added


FLOAT = tf.compat.v1.AttrValue(type=tf.float32.as_datatype_enum)


def const(graph_def, name, values=(1.0, 2.0), inputs=()):  # type: ignore[no-untyped-def]
    value = tf.compat.v1.AttrValue(tensor=tf.make_tensor_proto(list(values)))
    return node(graph_def, name, "Const", inputs, value=value, dtype=FLOAT)


def test_versions_parse_like_jetson_and_rc_builds() -> None:
    assert compat.version_tuple("2.7.0+nv22.1") == (2, 7, 0)
    assert compat.version_tuple("2.21.0-rc1") == (2, 21, 0)
    assert compat.version_tuple("2.6") == (2, 6, 0)
    assert compat.newest("2.6.0", "1.14.0", "2.10.1") == "2.10.1"


def test_the_op_registry_is_tensorflow_2_6() -> None:
    data = json.loads(compat.OPS_FILE.read_text())
    assert data["tensorflow"] == "2.6.2"
    ops = compat.oldest_ops()
    assert "dtype" in ops["Const"] and "DecodeImage" in ops
    assert "DisableCopyOnRead" not in ops


def test_graph_problems_name_unknown_ops_and_attrs() -> None:
    graph_def = tf.compat.v1.GraphDef()
    node(graph_def, "c", "Const", dtype=FLOAT)
    node(graph_def, "v", "DisableCopyOnRead")
    node(
        graph_def,
        "h",
        "VarHandleOp",
        debug_name=tf.compat.v1.AttrValue(s=b"x"),
        _class=tf.compat.v1.AttrValue(s=b"y"),
    )
    fn = graph_def.library.function.add()
    fn.node_def.add(name="f", op="NoSuchOp")
    assert compat.graph_problems(graph_def) == [
        "attr debug_name of op VarHandleOp",
        "op DisableCopyOnRead",
        "op NoSuchOp",
    ]
    needed, problems = compat.min_tensorflow_for_graphs([graph_def])
    assert needed == compat.plain_version(tf.__version__) and len(problems) == 3


def test_todays_saved_model_graph_is_flagged(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """What tf.saved_model.save writes today (tensorflow/tensorflow#62229) fails the check."""
    from tensorflow.core.protobuf import saved_model_pb2

    module = tf.Module()
    module.v = tf.Variable(1.0)
    module.f = tf.function(lambda x: x * module.v, input_signature=[tf.TensorSpec([], tf.float32)])
    tf.saved_model.save(module, str(tmp_path), signatures=module.f)
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((tmp_path / "saved_model.pb").read_bytes())
    assert "op DisableCopyOnRead" in compat.graph_problems(saved.meta_graphs[0].graph_def)


def test_share_constants_keeps_one_copy_of_free_constants_only() -> None:
    graph_def = tf.compat.v1.GraphDef()
    const(graph_def, "a/w")
    const(graph_def, "b/w")
    const(graph_def, "loop/w", inputs=["^pivot"])  # in a loop frame
    node(graph_def, "b/use", "Identity", ["b/w:0", "^b/w"])
    shared = share_constants(graph_def)
    names = [n.name for n in shared.node]
    assert names == ["a/w", "loop/w", "b/use"]
    assert list(shared.node[2].input) == ["a/w:0", "^a/w"]


def _hint(*names: str) -> tf.compat.v1.AttrValue:
    return tf.compat.v1.AttrValue(
        list=tf.compat.v1.AttrValue.ListValue(s=[b"loc:@" + n.encode() for n in names])
    )


def test_colocation_hints_follow_the_shared_constant() -> None:
    graph_def = tf.compat.v1.GraphDef()
    const(graph_def, "a/w")
    const(graph_def, "b/w")
    node(graph_def, "b/read", "Identity", ["b/w"], T=FLOAT, _class=_hint("b/w"))
    shared = share_constants(graph_def)
    read = next(n for n in shared.node if n.name == "b/read")
    assert list(read.input) == ["a/w"] and list(read.attr["_class"].list.s) == [b"loc:@a/w"]
    with tf.Graph().as_default():
        tf.compat.v1.import_graph_def(shared, name="")  # refused if a hint names a missing node


def test_pruning_keeps_what_the_outputs_need_and_valid_colocation_hints() -> None:
    graph_def = tf.compat.v1.GraphDef()
    const(graph_def, "w", [1.0])
    const(graph_def, "anchor", [1.0])
    node(graph_def, "unused", "Identity", ["w"], T=FLOAT, _class=_hint("gone"))
    node(graph_def, "read", "Identity", ["w"], T=FLOAT, _class=_hint("anchor", "gone"))
    node(graph_def, "out", "Identity", ["read"], T=FLOAT, _class=_hint("gone"))
    pruned = _needed_only(graph_def, ["out"])
    by_name = {n.name: n for n in pruned.node}
    assert sorted(by_name) == ["anchor", "out", "read", "w"]  # anchor: read is colocated with it
    assert list(by_name["read"].attr["_class"].list.s) == [b"loc:@anchor"]
    assert "_class" not in by_name["out"].attr
    with tf.Graph().as_default():
        tf.compat.v1.import_graph_def(pruned, name="")


def test_serving_refuses_a_version_that_needs_newer_tensorflow() -> None:
    meta = {
        "runtimes": {"saved_model": {"min_tensorflow": "99.0.0"}, "tflite_int8": {"min_tensorflow": "2.6.0"}},
        "exported_with": {"tensorflow": "99.0.0"},
    }
    with pytest.raises(
        IncompatibleModel, match=r"needs TensorFlow 99\.0\.0 or newer for its saved_model"
    ) as caught:
        compat.check_loadable(meta, ["saved_model"], "flowers/3")
    assert isinstance(caught.value, ModelLoadError) and caught.value.code == "incompatible_model"
    compat.check_loadable(meta, ["tflite_int8"], "flowers/3")
    compat.check_loadable({}, ["saved_model"], "flowers/1")  # exported before runtimes were recorded
