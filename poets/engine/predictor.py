"""Loading a published version and labelling images with it."""

import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from poets.engine.data.images import DEFAULT_MAX_PIXELS, Preprocessing, prepare
from poets.engine.errors import IncompatibleModel, ModelLoadError
from poets.engine.export import compat
from poets.engine.settings import Settings
from poets.engine.store.models import METADATA_FILE

log = logging.getLogger(__name__)

RUNTIMES = ("saved_model", "tflite_fp16", "tflite_int8", "tftrt")


def _signature_runner(signature: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``predict_pixels`` of a SavedModel loaded with ``tf.saved_model.load``, as pixels to scores."""

    def run(pixels: np.ndarray) -> np.ndarray:
        return signature(pixels=tf.constant(pixels))["scores"].numpy()  # type: ignore[no-any-return]

    return run


def _frozen_session(folder: Path, memory_growth: bool) -> Tuple[Any, Callable[[np.ndarray], np.ndarray]]:
    """(session, pixels to scores) for a frozen version (:mod:`.export.frozen`).

    The frozen SavedModel is a TF1 graph of constants: a session runs it as fast as
    ``tf.saved_model.load`` does, loads it four times faster and holds its weights once
    (that loader keeps a copy per signature): here 0.45 s and about 60 MiB more per
    loaded version, against 1.8 s and 120 MiB.
    """
    config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
    config.gpu_options.allow_growth = memory_growth
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph, config=config)
    try:
        with graph.as_default():
            meta_graph = _load_meta_graph(session, folder)
        signature = meta_graph.signature_def["predict_pixels"]
        run = session.make_callable(signature.outputs["scores"].name, [signature.inputs["pixels"].name])
    except BaseException:
        session.close()
        raise
    return session, run


def _load_meta_graph(session: Any, folder: Path) -> Any:
    from tensorflow.python.util import deprecation

    with deprecation.silence():  # "use tf.saved_model.load": not for a TF1 graph
        return tf.compat.v1.saved_model.loader.load(session, ["serve"], str(folder))


class Predictor:
    """One loaded model version.

    ``prepare`` (Pillow, in the caller's threads) and ``predict`` (a batch of
    ``uint8`` pixels through the ``predict_pixels`` signature) are separate so a
    server can decode in parallel and batch the model runs.
    """

    def __init__(
        self,
        folder: Path,
        name: str = "",
        version: int = 0,
        runtime: str = "saved_model",
        settings: Optional[Settings] = None,
    ) -> None:
        """Load a version.

        Args:
            folder: the version folder.
            name: model name, for reports.
            version: version number, for reports.
            runtime: ``saved_model``, or ``tflite_fp16`` / ``tflite_int8`` to score with
                the version's TFLite export where it has one (faster on some edge CPUs), or
                ``tftrt`` for TF-TRT engines built on this GPU (:mod:`.export.tftrt`).
            settings: for ``tftrt``, its workspace bound, batch size and $POETS_HOME
                (default: from the environment); GPU memory growth
                (``POETS_TF_MEMORY_GROWTH``, default on).

        Raises:
            IncompatibleModel: ``poets.json`` says this TensorFlow is too old for the format.
            ModelLoadError: the version is unusable.
        """
        if runtime not in RUNTIMES:
            raise ModelLoadError("Unknown runtime {!r}: use one of {}.".format(runtime, ", ".join(RUNTIMES)))
        self.folder = Path(folder)
        self.name = name
        self.version = version
        self.runtime = "saved_model"
        try:
            self.metadata: Dict[str, Any] = json.loads(
                (self.folder / METADATA_FILE).read_text(encoding="utf-8")
            )
            self.labels: List[str] = list(self.metadata["labels"])
            self.preprocessing = Preprocessing.from_dict(self.metadata["preprocessing"])
        except Exception as exc:  # a broken version may fail in many ways; all mean "unusable"
            raise ModelLoadError("Cannot load model version {}: {}".format(self.folder, exc)) from exc
        tflite_path = self._tflite_path(runtime)
        compat.check_loadable(
            self.metadata, ["saved_model"] + ([runtime] if tflite_path else []), str(self.folder)
        )
        self._model: Any = None
        self._run: Callable[[np.ndarray], np.ndarray]
        if runtime == "tftrt":
            self._load_tftrt(settings or Settings.from_env())
        if self._model is None:
            self._load_saved_model(settings)
        self._tflite = None
        if tflite_path is not None:
            from poets.engine.export import tflite

            self._tflite = tflite.TFLiteScorer(tflite_path)
            self.runtime = runtime
        elif runtime.startswith("tflite"):
            log.info("%s has no %s export; serving its SavedModel", self.folder, runtime)

    def _tflite_path(self, runtime: str) -> Optional[Path]:
        if not runtime.startswith("tflite_"):
            return None
        from poets.engine.export import tflite

        path = self.folder / tflite.FOLDER / tflite.file_name(runtime.split("_", 1)[1])
        return path if path.is_file() else None

    def _load_saved_model(self, settings: Optional[Settings]) -> None:
        try:
            if (self.folder / "variables" / "variables.index").is_file():
                # Written by tf.saved_model.save (versions exported before the frozen layout).
                self._model = tf.saved_model.load(str(self.folder))
                self._run = _signature_runner(self._model.signatures["predict_pixels"])
            else:
                memory_growth = settings.tf_memory_growth if settings is not None else True
                self._model, self._run = _frozen_session(self.folder, memory_growth)
        except Exception as exc:  # a broken version may fail in many ways; all mean "unusable"
            if "Op type not registered" in str(exc):  # exported before poets.json said so
                raise IncompatibleModel(
                    "Model version {} was exported with a newer TensorFlow than this process's "
                    "{}: {}. Retrain or re-export it with this Poets release.".format(
                        self.folder, tf.__version__, str(exc).split("\n")[0]
                    )
                ) from exc
            raise ModelLoadError("Cannot load model version {}: {}".format(self.folder, exc)) from exc

    def _load_tftrt(self, settings: Settings) -> None:
        from poets.engine.export import tftrt

        converted = tftrt.load(
            self.folder,
            settings.home,
            settings.tftrt_max_workspace_bytes,
            settings.max_batch_size,
            self.preprocessing.size,
        )
        if converted is not None:
            self._model, self._run = converted[0], _signature_runner(converted[1])
            self.runtime = "tftrt"

    @property
    def size(self) -> int:
        return self.preprocessing.size

    def prepare(self, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        return prepare(data, self.preprocessing, max_pixels)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Scores (N, labels) for a (N, size, size, 3) uint8 batch."""
        if self._tflite is not None:
            return self._tflite(pixels)
        return self._run(pixels)

    def warm(self) -> None:
        """Run once so the first real request does not pay for graph setup."""
        check = self.predict(np.zeros((1, self.size, self.size, 3), np.uint8))
        if check.shape != (1, len(self.labels)) or not np.all(np.isfinite(check)):
            raise ModelLoadError(
                "Model version {} gives scores of shape {} for {} labels.".format(
                    self.folder, check.shape, len(self.labels)
                )
            )

    def top_k(self, scores: np.ndarray, k: int = 5) -> List[Tuple[str, float]]:
        order = np.argsort(-scores)[: max(1, k)]
        return [(self.labels[i], float(scores[i])) for i in order]

    def label(
        self, images: Sequence[bytes], k: int = 5, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> List[List[Tuple[str, float]]]:
        """Best-first (label, score) lists for encoded images."""
        pixels = np.stack([self.prepare(data, max_pixels) for data in images])
        return [self.top_k(row, k) for row in self.predict(pixels)]
