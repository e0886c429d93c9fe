"""Can Poets write where it keeps its state? Clear errors for a read-only or full disk.

A write into a read-only or full filesystem surfaces as a bare ``PermissionError``
or ``OSError(ENOSPC)`` (from TensorFlow: an error whose message says so).
:func:`storage_error` turns either into :class:`StoreUnavailable` (503) or
:class:`InsufficientStorage` (507) naming the setting to look at, and
:class:`StorageCheck` is what ``/readyz`` asks: it probes each folder with a real
write, so readiness turns false when the disk does and true again when it is fixed.
"""

import errno
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from poets.engine.errors import InsufficientStorage, PoetsError, StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
_FULL = (errno.ENOSPC, errno.EDQUOT)
# What TensorFlow's file system layer puts in its errors' messages.
_FULL_TEXT = ("No space left on device", "Disk quota exceeded")
_NOT_WRITABLE_TEXT = ("Read-only file system", "Permission denied")


def storage_error(exc: BaseException, where: str = "Poets' storage") -> Optional[PoetsError]:
    """The clear error for a failed write, or None when ``exc`` is not about the disk."""
    if isinstance(exc, (StoreUnavailable, InsufficientStorage)):
        return exc
    code = exc.errno if isinstance(exc, OSError) else None
    text = str(exc)
    if code in _FULL or (code is None and any(t in text for t in _FULL_TEXT)):
        return InsufficientStorage(
            "No space left on the disk of {}: free some space (old model versions, "
            "$POETS_HOME/bottlenecks, uploads) and retry.".format(where)
        )
    if code in _NOT_WRITABLE or (code is None and any(t in text for t in _NOT_WRITABLE_TEXT)):
        return StoreUnavailable(
            "{} cannot be written ({}): the folder is read-only or not writable by this "
            "process. Check the mount and ownership of POETS_HOME / POETS_MODEL_DIR, then "
            "retry.".format(where, os.strerror(code) if code else text.rsplit(":", maxsplit=1)[-1].strip())
        )
    return None


def probe(folder: Path, min_free_bytes: int = 0) -> Optional[str]:
    """None when a file can be written in ``folder`` (created if missing) and the disk has
    ``min_free_bytes`` free; else why not, in words."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / ".poets-probe-{}".format(uuid.uuid4().hex)
        try:
            with open(str(path), "wb") as handle:
                handle.write(b"ok")
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            if path.exists():
                path.unlink()
        if min_free_bytes > 0:
            stats = os.statvfs(str(folder))
            free = stats.f_bavail * stats.f_frsize
            if free < min_free_bytes:
                return "{} MiB free, under the {} MiB needed (POETS_MIN_FREE_MB)".format(
                    free // (1024 * 1024), min_free_bytes // (1024 * 1024)
                )
    except OSError as exc:
        if exc.errno in _FULL:
            return "disk full"
        if exc.errno in _NOT_WRITABLE:
            return "not writable ({})".format(os.strerror(exc.errno))
        return "unusable ({})".format(os.strerror(exc.errno) if exc.errno else exc)
    return None


class StorageCheck:
    """Probes named folders, at most every ``max_age_s``; thread-safe."""

    def __init__(
        self, folders: Sequence[Tuple[str, Path]], min_free_bytes: int = 0, max_age_s: float = 2.0
    ) -> None:
        self.folders = list(folders)
        self.min_free_bytes = min_free_bytes
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._checked = float("-inf")
        self._problems: List[str] = []

    def problems(self) -> List[str]:
        """What is wrong, one line per folder; empty when every folder is usable (blocking)."""
        with self._lock:
            if time.monotonic() - self._checked >= self.max_age_s:
                found: Dict[str, str] = {}
                for label, folder in self.folders:
                    problem = probe(folder, self.min_free_bytes)
                    if problem is not None:
                        found[label] = problem
                self._problems = ["{}: {}".format(label, problem) for label, problem in found.items()]
                self._checked = time.monotonic()
            return list(self._problems)


def patiently(call: Callable[[], T], patience_s: float, waiting: str) -> T:
    """``call()``, tried again while what it needs cannot be reached (StoreUnavailable: the
    bucket, Redis) for up to ``patience_s``, pausing 0.5 s, then twice as long, up to 10 s.
    ``waiting`` says who waits, for the log."""
    deadline = time.monotonic() + patience_s
    pause = 0.5
    while True:
        try:
            return call()
        except StoreUnavailable as exc:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("%s: %s", waiting, exc.detail)
            time.sleep(pause)
            pause = min(pause * 2, 10.0)
