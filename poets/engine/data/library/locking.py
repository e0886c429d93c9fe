"""Each dataset's lock: a thread lock for this process, an ``flock`` on a lock file for others.

Every change to a dataset holds its lock. The lock files (``<root>/.locks/<name>.lock``)
also count the changes made through them, one byte each, so that other processes'
libraries see a change in the file's size (:meth:`DatasetLocks.stamp`).
"""

import contextlib
import os
import threading
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

# The lock files' folder, under the library's root.
LOCKS = ".locks"


class _InUse:
    """A dataset's thread lock, and how many threads hold it or wait for it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


class DatasetLocks:
    """The locks of the datasets under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # An entry goes with its last user: the table holds the datasets in use, not every
        # one ever named.
        self._locks: Dict[str, _InUse] = {}
        self._locks_lock = threading.Lock()

    def _path(self, name: str) -> Path:
        return self.root / LOCKS / (name + ".lock")

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """The dataset's lock: a thread lock, and a file lock for other processes on the folder."""
        with self._locks_lock:
            entry = self._locks.get(name)
            if entry is None:
                entry = self._locks[name] = _InUse()
            entry.users += 1
        try:
            with entry.lock:
                if fcntl is None:  # not POSIX: one process only
                    yield
                    return
                handle = self._lock_file(name)
                try:
                    yield
                finally:
                    handle.close()  # drops the flock
        finally:
            with self._locks_lock:
                entry.users -= 1
                if entry.users == 0:
                    del self._locks[name]

    def _lock_file(self, name: str) -> IO[str]:
        """The dataset's lock file, open and locked (flock) for this process.

        Lock files are removed (with their dataset, or by :meth:`clean`) by whoever
        holds them: a process that locked a file meanwhile unlinked holds nothing, sees that
        the path now names another file (or none), and locks again.
        """
        path = self._path(name)
        while True:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(str(path), "a")  # noqa: SIM115 - returned open, or closed below
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                if os.path.samestat(os.fstat(handle.fileno()), os.stat(str(path))):
                    return handle
            except FileNotFoundError:
                pass  # removed after we opened it: lock the new one
            except BaseException:
                handle.close()
                raise
            handle.close()

    def drop(self, name: str) -> None:
        """Remove the dataset's lock file (the caller holds it: see :meth:`_lock_file`)."""
        with contextlib.suppress(OSError):
            self._path(name).unlink()

    def count_change(self, name: str) -> None:
        """Add a byte to the dataset's lock file, for :meth:`stamp` in other processes."""
        if fcntl is not None and (self.root / name).is_dir():  # a deleted one keeps no lock file
            # One byte per change, so other processes' libraries see it in the lock file's
            # size (a directory's mtime can miss two changes within one clock tick).
            with contextlib.suppress(OSError), open(str(self._path(name)), "a") as handle:
                if handle.tell() > 65536:
                    handle.truncate(0)
                handle.write(".")

    def stamp(self, name: str) -> Any:
        """The lock file's size and mtime (None without one): moves with every change counted."""
        try:
            info = os.stat(str(self._path(name)))
        except OSError:
            return None
        return (info.st_size, info.st_mtime_ns)

    def clean(self) -> List[Path]:
        """Remove the lock files of datasets that no longer exist (each while locked); returns them."""
        removed: List[Path] = []
        locks = self.root / LOCKS
        if fcntl is None or not locks.is_dir():
            return removed
        for path in sorted(locks.glob("*.lock")):
            name = path.name[: -len(".lock")]
            if (self.root / name).is_dir():
                continue
            try:
                handle = open(str(path), "a")  # noqa: SIM115 - closed below
            except OSError:
                continue
            with handle:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # in use: its holder may be creating the dataset
                if not (self.root / name).is_dir():
                    with contextlib.suppress(OSError):
                        path.unlink()
                        removed.append(path)
        return removed
