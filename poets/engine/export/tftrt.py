"""TF-TRT on the device (``POETS_SERVE_RUNTIME=tftrt``): convert at load time, cache the engines.

TensorRT engines belong to one GPU model and one TensorRT release, so they are built
where the model is served, never shipped: the first load converts the version's
``predict_pixels`` signature (FP16, bounded workspace) and runs ``build()`` on a
warm-up batch before ``save()`` (else the engines are rebuilt at every start). The
result is cached beside the version as ``<version>/tftrt/<key>/``, ``key`` naming
the device, TensorRT and TensorFlow; a different key converts again. The cache is
written aside and renamed, so a reader sees a complete one or none; it is no part of
the published version (nothing else reads ``tftrt/``). On a read-only store it
lives under ``$POETS_HOME/tftrt/`` instead.

Where TF-TRT is missing (no TensorRT in this TensorFlow, libnvinfer not loadable,
no GPU), the plain SavedModel serves, with one warning per process.
"""

import contextlib
import hashlib
import logging
import os
import re
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)

FOLDER = "tftrt"
SIGNATURE = "predict_pixels"
PRECISION = "FP16"


class _Once:
    """True the first time it is called, then False: for one warning per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = False

    def __call__(self) -> bool:
        with self._lock:
            first, self._done = not self._done, True
            return first


fallback_warning = _Once()


def _trt_convert() -> Any:
    from tensorflow.python.compiler.tensorrt import trt_convert

    return trt_convert


def unavailable_reason() -> Optional[str]:
    """Why TF-TRT cannot convert here, or None when it can."""
    try:
        utils = _trt_convert()._pywrap_py_utils
        enabled = bool(utils.is_tensorrt_enabled())
        loaded = tuple(utils.get_loaded_tensorrt_version())
    except Exception as exc:  # an import or a missing native library, in many forms
        return "TF-TRT is not importable ({}: {})".format(type(exc).__name__, exc)
    if not enabled:
        return "this TensorFlow {} is built without TensorRT".format(tf.__version__)
    if not any(loaded):
        return "the TensorRT libraries (libnvinfer) are not loadable"
    if not tf.config.list_physical_devices("GPU"):
        return "no GPU is visible to TensorFlow"
    return None


def tensorrt_version() -> str:
    return ".".join(str(part) for part in _trt_convert()._pywrap_py_utils.get_loaded_tensorrt_version())


def device_name() -> str:
    """The first GPU's model name, e.g. ``NVIDIA Tegra X2``."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "cpu"
    details = tf.config.experimental.get_device_details(gpus[0]) or {}
    return str(details.get("device_name") or gpus[0].name)


def cache_key(device: str, trt_version: str, tf_version: str) -> str:
    """A folder name for one device model, TensorRT release and TensorFlow release."""
    text = "{}-trt{}-tf{}-{}".format(device, trt_version, tf_version, PRECISION.lower())
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def home_cache_root(home: Path, folder: Path) -> Path:
    """Where the engines of ``folder`` go when its store is read-only.

    Named by the version's path and its ``poets.json``, so a version number that
    comes back with new files does not find the old engines.
    """
    digest = hashlib.sha256(str(folder.resolve()).encode("utf-8"))
    with contextlib.suppress(OSError):
        digest.update((folder / "poets.json").read_bytes())
    return home / FOLDER / "{}-{}-{}".format(folder.parent.name, folder.name, digest.hexdigest()[:16])


def convert(source: Path, target: Path, max_workspace_bytes: int, batch_size: int, size: int) -> None:
    """Convert ``source``'s :data:`SIGNATURE`, build its engines on a warm-up batch, save to ``target``."""
    trt = _trt_convert()
    params = trt.TrtConversionParams(
        precision_mode=PRECISION, max_workspace_size_bytes=int(max_workspace_bytes), maximum_cached_engines=1
    )
    converter = trt.TrtGraphConverterV2(
        input_saved_model_dir=str(source), input_saved_model_signature_key=SIGNATURE, conversion_params=params
    )
    converter.convert()

    def warm_up() -> Iterator[Tuple[np.ndarray]]:
        # Implicit batch mode: an engine built for this batch serves every smaller one.
        yield (np.zeros((batch_size, size, size, 3), np.uint8),)

    converter.build(input_fn=warm_up)
    converter.save(str(target))


def _writable_root(roots: Sequence[Path]) -> Path:
    last: Optional[OSError] = None
    for root in roots:
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / ".tmp-probe-{}".format(uuid.uuid4().hex)
            probe.mkdir()
            probe.rmdir()
            return root
        except OSError as exc:  # read-only store, or not ours to write
            log.info("TF-TRT cache cannot go under %s: %s", root, exc)
            last = exc
    raise last or OSError("no folder for the TF-TRT cache")


def cached_engines(
    folder: Path, key: str, fallback_root: Path, build: Callable[[Path], None]
) -> Tuple[Path, bool]:
    """The converted SavedModel for ``key``: (its folder, whether it was built now).

    Looks beside the version, then under ``fallback_root``; builds with
    ``build(folder)`` into a temporary folder renamed into place.
    """
    roots = [folder / FOLDER, fallback_root]
    for root in roots:
        if (root / key / "saved_model.pb").is_file():
            return root / key, False
    root = _writable_root(roots)
    staging = root / ".tmp-{}".format(uuid.uuid4().hex)
    try:
        build(staging)
        try:
            os.rename(str(staging), str(root / key))
        except OSError:
            if not (root / key / "saved_model.pb").is_file():
                raise
            log.info("Another process cached %s first; using it", root / key)
    finally:
        if staging.exists():
            shutil.rmtree(str(staging), ignore_errors=True)
    return root / key, True


def load(
    folder: Path, home: Path, max_workspace_bytes: int, batch_size: int, size: int
) -> Optional[Tuple[Any, Any]]:
    """(loaded SavedModel, its converted ``predict_pixels``), or None to serve plain TF.

    None when TF-TRT is unavailable (warned once per process) or the conversion failed
    (warned for this version).
    """
    reason = unavailable_reason()
    if reason is not None:
        if fallback_warning():
            log.warning("POETS_SERVE_RUNTIME=tftrt, but %s: serving with plain TensorFlow.", reason)
        return None
    key = cache_key(device_name(), tensorrt_version(), tf.__version__)
    try:
        path, built = cached_engines(
            folder,
            key,
            home_cache_root(home, folder),
            lambda target: convert(folder, target, max_workspace_bytes, batch_size, size),
        )
        loaded = tf.saved_model.load(str(path))
        predict = loaded.signatures[SIGNATURE]
    except Exception as exc:  # conversion can fail in TensorRT in many ways, memory first
        log.warning(
            "TF-TRT conversion of %s failed (%s: %s): serving with plain TensorFlow.",
            folder,
            type(exc).__name__,
            exc,
        )
        return None
    log.info("%s TF-TRT engines for %s in %s", "Built" if built else "Loaded", folder, path)
    return loaded, predict
