"""Process-level TensorFlow setup, shared by the API, the worker and the CLI."""

import functools
import importlib
import logging
import os
import sys
from typing import Callable, Optional

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def configure_tensorflow(memory_growth: bool = True) -> None:
    """Import TensorFlow in this process and set GPU memory growth; once per process.

    Memory growth lets the API's models and a worker share a GPU (on a Jetson TX2,
    memory the CPU needs too) instead of the first user reserving it all. Harmless
    without a GPU. Call it before any model is loaded.
    """
    import tensorflow as tf  # imported here: callers decide in which process TF starts

    if not memory_growth:
        return
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError) as exc:  # already initialised: too late to change
            log.warning("cannot set memory growth on %s: %s", gpu.name, exc)


def import_tensorflow_quietly(verbose: bool = False) -> None:
    """Import TensorFlow without its C++ start-up chatter, unless ``verbose``.

    TensorFlow prints CUDA probes and CPU-feature notes to the process's stderr while it
    imports, some before its own log level is even read, so the variable alone cannot hide
    them: stderr's descriptor points at /dev/null for the import. Python errors still
    surface (they are raised, then printed after stderr is back). For the CLI: servers
    keep TensorFlow's log as it is.
    """
    if "tensorflow" in sys.modules:
        return
    if not verbose:  # TensorFlow's Python side logs notes at INFO that mean nothing to a user
        for name in ("tensorflow", "absl"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if verbose:
        importlib.import_module("tensorflow")
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        importlib.import_module("tensorflow")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def release_memory() -> None:
    """Collect garbage, then hand freed heap pages back to the OS (glibc's ``malloc_trim``).

    After a model is unloaded its memory is free but stays in the process's heap arenas, so
    RSS creeps up over many hot-swaps (the TF Serving reports in FIELD_NOTES). Trimming keeps
    it flat. A no-op where the C library has no ``malloc_trim`` (musl, macOS).
    """
    import gc

    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=None)
def _malloc_trim() -> Optional[Callable[[int], int]]:
    # Looked up once: find_library runs ldconfig in a subprocess (a few ms) on every call.
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def trim_heap() -> None:
    """Only the ``malloc_trim`` of :func:`release_memory`: after one large, short-lived buffer
    (a decoded image), where a garbage collection would cost more than it frees."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
