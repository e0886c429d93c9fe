"""Which TensorFlow a version's formats need, recorded at export and checked before serving.

The Jetson TX2 runs NVIDIA's TensorFlow 2.7 (Python 3.6); the oldest TensorFlow Poets
tests against is 2.6.2, the newest with Python 3.6 wheels. A graph loads there only if
every node's op, and every attr it sets, is registered in that runtime:
``tf_2_6_ops.json`` is TF 2.6.2's op registry (op name to attr names), written by
``tests/engine/export/oldest_loader.py --dump-ops`` under that TensorFlow.

``poets.json`` then says, per format, the oldest TensorFlow that loads it::

    "runtimes": {"saved_model": {"min_tensorflow": "2.6.0"},
                 "tflite_int8": {"min_tensorflow": "2.6.0", "min_tflite_runtime": "1.14.0",
                                 "op_versions": {"CONV_2D": 3, ...}}, ...},
    "exported_with": {"tensorflow": "2.21.0"}
"""

import functools
import json
import re
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Tuple

from poets.engine.errors import IncompatibleModel

OLDEST_TENSORFLOW = "2.6.0"
OPS_FILE = Path(__file__).with_name("tf_2_6_ops.json")


def version_tuple(text: str) -> Tuple[int, int, int]:
    """``"2.7.0+nv22.1"`` or ``"2.21.0-rc1"`` to ``(2, 7, 0)``; missing parts are 0."""
    parts = [int(p) for p in re.findall(r"\d+", str(text).split("+")[0].split("-")[0])[:3]]
    parts += [0] * (3 - len(parts))
    return parts[0], parts[1], parts[2]


def plain_version(text: str) -> str:
    return "{}.{}.{}".format(*version_tuple(text))


def newest(*versions: str) -> str:
    return plain_version(max(versions, key=version_tuple))


def running_tensorflow() -> str:
    import tensorflow as tf

    return str(tf.__version__)


@functools.lru_cache(maxsize=None)
def oldest_ops() -> Dict[str, FrozenSet[str]]:
    """TF 2.6.2's op registry: op name to the attr names it knows."""
    data = json.loads(OPS_FILE.read_text(encoding="utf-8"))
    return {name: frozenset(attrs) for name, attrs in data["ops"].items()}


def graph_problems(graph_def: Any) -> List[str]:
    """What in a GraphDef (nodes and function library) TF 2.6 would refuse, sorted.

    Attrs starting with ``_`` are runtime hints that loaders ignore.
    """
    known = oldest_ops()
    nodes: List[Any] = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    problems = set()
    for node in nodes:
        attrs = known.get(node.op)
        if attrs is None:
            problems.add("op {}".format(node.op))
            continue
        for attr in node.attr:
            if not attr.startswith("_") and attr not in attrs:
                problems.add("attr {} of op {}".format(attr, node.op))
    return sorted(problems)


def min_tensorflow_for_graphs(graph_defs: Iterable[Any]) -> Tuple[str, List[str]]:
    """The oldest TensorFlow that loads these graphs, and why not older when it is not 2.6."""
    problems = sorted({p for graph_def in graph_defs for p in graph_problems(graph_def)})
    if problems:
        return plain_version(running_tensorflow()), problems
    return OLDEST_TENSORFLOW, []


def check_loadable(metadata: Mapping[str, Any], formats: Iterable[str], where: str) -> None:
    """Refuse a version that this process's TensorFlow cannot load in one of ``formats``.

    Versions exported before ``runtimes`` was recorded are not checked here.

    Raises:
        IncompatibleModel: naming the format, the version it needs and the one running.
    """
    runtimes = metadata.get("runtimes") or {}
    running = running_tensorflow()
    for fmt in formats:
        needed = (runtimes.get(fmt) or {}).get("min_tensorflow")
        if needed and version_tuple(running) < version_tuple(needed):
            raise IncompatibleModel(
                "Model version {} needs TensorFlow {} or newer for its {} (it was exported with "
                "TensorFlow {}); this process runs TensorFlow {}. Retrain or re-export it with "
                "this Poets release, or serve it where TensorFlow is newer.".format(
                    where,
                    needed,
                    fmt,
                    (metadata.get("exported_with") or {}).get("tensorflow", "unknown"),
                    running,
                )
            )
