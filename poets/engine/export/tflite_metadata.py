"""TFLite metadata for the exported .tflite files, so MediaPipe and the Task Library need no code.

MediaPipe's ``ImageClassifier`` (and the TFLite Task Library) read a model's metadata for
the category names, the input normalisation and which tensor is the image and which the
scores; without it every category comes back with no name.

The writer is MediaPipe's (``mediapipe.tasks.python.metadata.metadata_writers``): the
maintained one. ``tflite-support``, which had the same writers, was last released in 2023
and pins protobuf < 4, which no TensorFlow from 2.16 on co-installs with. MediaPipe has
no wheel for the TX2's Python 3.6: where it is missing, the .tflite files are written
without metadata and ``poets.json`` says so.

MediaPipe's wheels from 0.10.30 on ship the writer's Python but not the native helper it
imports to compute the metadata's ``min_parser_version``
(``mediapipe.tasks.cc.metadata.python._pywrap_metadata_version``), and the older wheels
that have it pin protobuf < 5 and numpy < 2. Where it is missing, :func:`min_parser_version`
(the same rule, in Python: the newest schema member the metadata uses) stands in for it.

The inputs stay ``uint8`` pixels (the graph normalises them), so the normalisation options
are mean 0 and std 1: the pixels go in as they are.
"""

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

WRITER = "mediapipe"
INPUT_MEAN = 0.0
INPUT_STD = 1.0
LABELS_FILE = "labels.txt"


def available() -> bool:
    return importlib.util.find_spec("mediapipe") is not None


_NATIVE = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"


def min_parser_version(metadata_buffer: bytes) -> str:
    """The oldest metadata parser that reads every field of ``metadata_buffer``.

    What MediaPipe's native ``GetMinimumMetadataParserVersion`` computes: 1.0.0, raised to
    the version that introduced each later schema member the metadata uses.
    """
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    found: Tuple[int, int, int] = (1, 0, 0)

    def need(version: Tuple[int, int, int]) -> None:
        nonlocal found
        found = max(found, version)

    def files(table: Any, count: int) -> None:
        for i in range(count):
            entry = table.AssociatedFiles(i)
            if entry.Type() == fb.AssociatedFileType.VOCABULARY:
                need((1, 0, 1))
            if entry.Type() == fb.AssociatedFileType.SCANN_INDEX_FILE:
                need((1, 4, 0))
            if entry.Version() is not None:
                need((1, 4, 1))

    def units(get: Any, count: int) -> None:
        options = fb.ProcessUnitOptions
        since = {
            options.BertTokenizerOptions: (1, 1, 0),
            options.SentencePieceTokenizerOptions: (1, 1, 0),
            options.RegexTokenizerOptions: (1, 2, 1),
        }
        for i in range(count):
            need(since.get(get(i).OptionsType(), (1, 0, 0)))

    def tensor(table: Any) -> None:
        files(table, table.AssociatedFilesLength())
        units(table.ProcessUnits, table.ProcessUnitsLength())
        content = table.Content()
        if content is not None and content.ContentPropertiesType() == fb.ContentProperties.AudioProperties:
            need((1, 3, 0))

    model = fb.ModelMetadata.GetRootAs(metadata_buffer, 0)
    for s in range(model.SubgraphMetadataLength()):
        subgraph = model.SubgraphMetadata(s)
        for i in range(subgraph.InputTensorMetadataLength()):
            tensor(subgraph.InputTensorMetadata(i))
        for i in range(subgraph.OutputTensorMetadataLength()):
            tensor(subgraph.OutputTensorMetadata(i))
        files(subgraph, subgraph.AssociatedFilesLength())
        if not subgraph.InputProcessUnitsIsNone():
            need((1, 1, 0))
            units(subgraph.InputProcessUnits, subgraph.InputProcessUnitsLength())
        if not subgraph.OutputProcessUnitsIsNone():
            need((1, 1, 0))
            units(subgraph.OutputProcessUnits, subgraph.OutputProcessUnitsLength())
        if not subgraph.InputTensorGroupsIsNone() or not subgraph.OutputTensorGroupsIsNone():
            need((1, 2, 0))
        if not subgraph.CustomMetadataIsNone():
            need((1, 5, 0))
    files(model, model.AssociatedFilesLength())
    return "{}.{}.{}".format(*found)


def _provide_native_helper() -> None:
    """Register :func:`min_parser_version` where MediaPipe's writer imports its native helper."""
    try:
        importlib.import_module(_NATIVE)
        return
    except ImportError:
        pass
    parts = _NATIVE.split(".")
    for depth in range(3, len(parts)):  # mediapipe.tasks.cc ... .python: empty packages
        name = ".".join(parts[:depth])
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = []
            sys.modules[name] = package
    helper = types.ModuleType(_NATIVE)
    helper.GetMinimumMetadataParserVersion = min_parser_version  # type: ignore[attr-defined]
    sys.modules[_NATIVE] = helper
    setattr(sys.modules[".".join(parts[:-1])], parts[-1], helper)


def add(path: Path, labels: Sequence[str]) -> Dict[str, Any]:
    """Write metadata into the .tflite at ``path`` in place; returns ``poets.json``'s entry."""
    if not available():
        return {
            "written": False,
            "why": "mediapipe is not installed (pip install 'poets[onnx]'; none for Python 3.6)",
        }
    import mediapipe

    _provide_native_helper()
    from mediapipe.tasks.python.metadata.metadata_writers import image_classifier, metadata_writer

    writer = image_classifier.MetadataWriter.create(
        bytearray(path.read_bytes()),
        input_norm_mean=[INPUT_MEAN],
        input_norm_std=[INPUT_STD],
        labels=metadata_writer.Labels().add(list(labels), exported_filename=LABELS_FILE),
    )
    data, _ = writer.populate()
    # Now, not at interpreter exit: its __del__ removes a temporary folder, and fails
    # when the os module is already gone.
    del writer
    path.write_bytes(bytes(data))
    return {
        "written": True,
        "writer": "{} {}".format(WRITER, getattr(mediapipe, "__version__", "")),
        "associated_files": [LABELS_FILE],
        "input": {"name": "image", "normalization": {"mean": [INPUT_MEAN], "std": [INPUT_STD]}},
        "output": {"name": "score"},
    }


def read(path: Path) -> Any:
    """The metadata of a .tflite file as JSON text (MediaPipe's reader)."""
    _provide_native_helper()
    from mediapipe.tasks.python.metadata import metadata

    return metadata.MetadataDisplayer.with_model_file(str(path)).get_metadata_json()
