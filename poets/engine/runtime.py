"""Process-level TensorFlow setup, shared by the API and the worker."""

import functools
import logging

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
