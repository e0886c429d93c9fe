"""Work files and folders that a crash can leave behind, and their safe removal.

An import extracts into a hidden folder and the API saves the uploaded archive aside
first; a process killed mid-way leaves them there for good. Whoever works in such a
place holds a :class:`Claim` on it (an ``flock``, which the kernel drops when the process
dies), and :func:`remove_abandoned` removes only what nobody claims and nobody has
touched for a while (the age covers the instant between creating a place and claiming
it, and systems without ``flock``). The API and the worker sweep at start and then
periodically, like the model store's ``.staging``.
"""

import contextlib
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, List, Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

# What POST /datasets/NAME/archive names the archive it saves in POETS_HOME/uploads.
IMPORT_UPLOAD_PREFIX = "import-"
IMPORT_UPLOAD_SUFFIX = ".upload"
# Left alone for this long after its last change, a work file or folder is abandoned (as
# the model store's STALE_STAGING_S); one still claimed is never removed.
STALE_S = 3600.0


class Claim:
    """Marks the existing file or folder ``path`` as in use until :meth:`release` (or the end
    of a ``with`` block, or the process)."""

    def __init__(self, path: Path) -> None:
        self._fd: Optional[int] = None
        if fcntl is None:  # no flock: the age alone protects it
            return
        fd = os.open(str(path), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the lock
            self._fd = None

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _age_s(path: Path) -> float:
    return time.time() - os.lstat(str(path)).st_mtime


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(str(path), ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_abandoned(paths: Iterable[Path], older_than_s: float = STALE_S) -> List[Path]:
    """Remove those of ``paths`` unchanged for ``older_than_s`` that nobody claims; returns them."""
    removed: List[Path] = []
    for path in paths:
        try:
            if _age_s(path) < older_than_s:
                continue
            if fcntl is None or path.is_symlink():
                _remove(path)
                removed.append(path)
                continue
            fd = os.open(str(path), os.O_RDONLY)
        except OSError:
            continue  # gone meanwhile, or unreadable: not ours to judge
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # claimed: an import or upload is under way
            _remove(path)  # while holding the lock: nobody claims it meanwhile
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def import_upload(uploads: Path) -> Path:
    """A new, empty file in ``uploads`` to save an archive for a dataset import in."""
    uploads = Path(uploads)
    uploads.mkdir(parents=True, exist_ok=True)
    path = uploads / "{}{}{}".format(IMPORT_UPLOAD_PREFIX, uuid.uuid4().hex, IMPORT_UPLOAD_SUFFIX)
    path.touch(exist_ok=False)
    return path


def clean_import_uploads(uploads: Path, older_than_s: float = STALE_S) -> List[Path]:
    """Remove the archives that crashed dataset imports left in ``uploads``; returns them."""
    if not Path(uploads).is_dir():
        return []
    pattern = "{}*{}".format(IMPORT_UPLOAD_PREFIX, IMPORT_UPLOAD_SUFFIX)
    return remove_abandoned(sorted(Path(uploads).glob(pattern)), older_than_s)
