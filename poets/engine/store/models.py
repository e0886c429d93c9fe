"""The model store, in TF Serving's layout: ``<root>/<name>/<version>/``.

Versions are integers and immutable once published. A version is written into
``<root>/.staging/`` and renamed into place, so a half-written export is never
visible (TF Serving and Poets only look at integer folder names). Each model's
``CURRENT`` file names the version Poets serves; it is replaced atomically, which
is how rollback works. Without it, the highest version is current, as in TF
Serving. A ``PINNED`` file holds a version the way a TF Serving version label
does: while it exists, that version is current and new versions are only
published (a retrain does not replace it) until it is unpinned.
"""

import abc
import contextlib
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from poets.engine.errors import InvalidInput, NotFound
from poets.engine.store.health import storage_error

CURRENT_FILE = "CURRENT"
PINNED_FILE = "PINNED"
# A staging folder older than this was left by a killed or failed publish.
STALE_STAGING_S = 3600.0
# Inside each version folder (written by poets.engine.export.saved_model): what it is, and its labels.
METADATA_FILE = "poets.json"
LABELS_FILE = "labels.txt"
# Whole-string matches only (fullmatch): "$" would also match before a trailing newline.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Version folders: ASCII digits (str.isdigit() also takes superscripts and other scripts' digits).
_VERSION = re.compile(r"[0-9]{1,18}")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:80] + "..."
        raise InvalidInput(
            "Model name {} is not valid: use 1-64 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit.".format(shown)
        )
    return name


def model_meant(names: Iterable[str], default: str) -> Optional[str]:
    """The model a request or command that names none means: ``default`` (POETS_DEFAULT_MODEL)
    when it is one of ``names``, else the only one; None when there are none or several (the
    caller says which, and how to name one)."""
    known = set(names)
    if default in known:
        return default
    if len(known) == 1:
        return next(iter(known))
    return None


def _fsync_tree(folder: Path) -> None:
    for dirpath, _, filenames in os.walk(str(folder)):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as handle:
                os.fsync(handle.fileno())
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers see the old or the new file, never a mix.

    The file gets the folder's read and write bits (0644 in a 0755 folder), as
    every other file of the store: mkstemp's 0600 would hide it from the other
    readers of the store (TF Serving, a second API under another user).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=".tmp-")
    try:
        os.fchmod(fd, path.parent.stat().st_mode & 0o666)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, str(path))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def fingerprint(folder: Path) -> Tuple[Any, ...]:
    """Cheap identity of a version folder's files: changes when they are replaced.

    The folder's inode (a wiped and restored store makes new folders) and the size and
    modification time of ``saved_model.pb``, ``poets.json`` and the variables' index.
    """
    parts: List[Any] = []
    for path, whole in (
        (folder, False),
        (folder / "saved_model.pb", True),
        (folder / METADATA_FILE, True),
        (folder / "variables" / "variables.index", True),
    ):
        try:
            stat = path.stat()
        except OSError:
            parts.append(None)
            continue
        parts.append((stat.st_size, stat.st_mtime_ns) if whole else stat.st_ino)
    return tuple(parts)


class VersionStore(abc.ABC):
    """Published model versions: what the API, the worker and the CLI read and publish.

    :class:`ModelStore` keeps them on local disk (or a shared volume);
    :class:`~poets.engine.store.bucket_models.BucketModelStore` in an S3-compatible bucket.
    ``root`` is a local folder in the TF Serving layout either way (for the bucket: this
    machine's cache of it).
    """

    root: Path

    @abc.abstractmethod
    def names(self) -> List[str]: ...

    @abc.abstractmethod
    def versions(self, name: str) -> List[int]: ...

    @abc.abstractmethod
    def path(self, name: str, version: int) -> Path:
        """The version's folder on this machine (for the bucket: downloaded and checked)."""

    @abc.abstractmethod
    def current(self, name: str) -> Optional[int]: ...

    @abc.abstractmethod
    def pinned(self, name: str) -> Optional[int]: ...

    # CURRENT and PINNED: the rules that move them are the same in every store, written on
    # three primitives each store has.
    @abc.abstractmethod
    def _require(self, name: str, version: int) -> None:
        """Raise NotFound unless ``version`` of ``name`` is published."""

    @abc.abstractmethod
    def _set_pointer(self, name: str, filename: str, version: Optional[int]) -> None:
        """Write the pointer ``filename`` (CURRENT or PINNED); None deletes it."""

    def _pin_now(self, name: str) -> Optional[int]:
        """The pin as the store holds it, before a pointer moves."""
        return self.pinned(name)

    def activate(self, name: str, version: int) -> None:
        """Make ``version`` current now (rollback). A retrain makes its version current again,
        unless a pin holds; while one holds, the pin moves to ``version``."""
        self._require(name, version)
        if self._pin_now(name) is not None:
            self._set_pointer(name, PINNED_FILE, version)
        self._set_pointer(name, CURRENT_FILE, version)

    def pin(self, name: str, version: int) -> None:
        """Serve ``version`` until :meth:`unpin`: new versions are published, not made current."""
        self._require(name, version)
        self._set_pointer(name, CURRENT_FILE, version)
        self._set_pointer(name, PINNED_FILE, version)

    def unpin(self, name: str) -> Optional[int]:
        """Release the pin; the pinned version stays current until the next version is
        published or activated. Returns the version that was pinned (None: none was)."""
        pinned = self._pin_now(check_name(name))
        self._set_pointer(name, PINNED_FILE, None)
        return pinned

    @abc.abstractmethod
    def metadata(self, name: str, version: int) -> Dict[str, Any]: ...

    @abc.abstractmethod
    def find_job(self, name: str, job_id: str) -> Optional[int]: ...

    @abc.abstractmethod
    def publish(
        self, name: str, write: Callable[[Path], None], job_id: Optional[str] = None, activate: bool = True
    ) -> int: ...

    @abc.abstractmethod
    def state(self) -> Tuple[Tuple[str, Optional[int]], ...]: ...

    @abc.abstractmethod
    def clean_staging(self, older_than_s: float = STALE_STAGING_S) -> List[str]: ...

    @abc.abstractmethod
    def fingerprint(self, name: str, version: int) -> Any:
        """What changes when a version's files are replaced (a failed load is retried then)."""

    def degraded(self) -> Optional[str]:
        """What is wrong with the store while it still serves (for /readyz); None when nothing."""
        return None

    def check(self) -> None:  # noqa: B027 (a hook: a local store has nothing to check)
        """Raise StoreUnavailable when the store cannot take new versions now."""


class ModelStore(VersionStore):
    """Published model versions on disk."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def fingerprint(self, name: str, version: int) -> Any:
        return fingerprint(self.path(name, version))

    def names(self) -> List[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME.fullmatch(p.name))

    def versions(self, name: str) -> List[int]:
        folder = self.root / check_name(name)
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if _VERSION.fullmatch(p.name) and p.is_dir())

    def path(self, name: str, version: int) -> Path:
        return self.root / check_name(name) / str(int(version))

    def _read_version(self, name: str, filename: str, versions: List[int]) -> Optional[int]:
        try:
            version = int((self.root / name / filename).read_text().strip())
        except (OSError, ValueError):
            return None
        return version if version in versions else None

    def current(self, name: str) -> Optional[int]:
        """The version to serve: the pinned one, else the one CURRENT names, else the highest;
        None when there is none."""
        versions = self.versions(name)
        for filename in (PINNED_FILE, CURRENT_FILE):
            version = self._read_version(name, filename, versions)
            if version is not None:
                return version
        return versions[-1] if versions else None

    def pinned(self, name: str) -> Optional[int]:
        """The pinned version of ``name``, or None."""
        return self._read_version(name, PINNED_FILE, self.versions(name))

    def _require(self, name: str, version: int) -> None:
        if int(version) not in self.versions(name):
            versions = ", ".join(str(v) for v in self.versions(name)) or "none"
            raise NotFound("Model {!r} has no version {} (its versions: {}).".format(name, version, versions))

    def _set_pointer(self, name: str, filename: str, version: Optional[int]) -> None:
        path = self.root / name / filename
        try:
            if version is None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            else:
                write_atomic(path, "{}\n".format(int(version)))
        except OSError as exc:
            raise (storage_error(exc, "the model store (POETS_MODEL_DIR)") or exc) from exc

    def metadata(self, name: str, version: int) -> Dict[str, Any]:
        try:
            return json.loads((self.path(name, version) / METADATA_FILE).read_text(encoding="utf-8"))  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def find_job(self, name: str, job_id: str) -> Optional[int]:
        """The version a job already published, if any: makes publishing idempotent."""
        for version in self.versions(name):
            if self.metadata(name, version).get("job_id") == job_id:
                return version
        return None

    def publish(
        self, name: str, write: Callable[[Path], None], job_id: Optional[str] = None, activate: bool = True
    ) -> int:
        """Write a new version aside with ``write(folder)``, then rename it into place.

        When ``job_id`` already published a version (a redelivered job), that
        version is returned and nothing is written. With ``activate`` the new
        version becomes current, unless the model is pinned. A write that fails on
        a read-only or full disk raises StoreUnavailable or InsufficientStorage.
        """
        check_name(name)
        if job_id is not None:
            existing = self.find_job(name, job_id)
            if existing is not None:
                return existing
        staging = self.root / ".staging" / uuid.uuid4().hex
        try:
            staging.mkdir(parents=True)
        except OSError as exc:
            raise (storage_error(exc, "the model store (POETS_MODEL_DIR)") or exc) from exc
        try:
            write(staging)
            _fsync_tree(staging)
            (self.root / name).mkdir(parents=True, exist_ok=True)
            version = (self.versions(name) or [0])[-1] + 1
            while True:
                try:
                    os.rename(str(staging), str(self.path(name, version)))
                    break
                except OSError:
                    if not self.path(name, version).exists():
                        raise
                    version += 1  # another job published this number first
        except BaseException as exc:
            shutil.rmtree(str(staging), ignore_errors=True)
            self.clean_staging()  # and what killed publishes left behind
            clear = storage_error(exc, "the model store (POETS_MODEL_DIR)")
            if clear is not None and clear is not exc:
                raise clear from exc
            raise
        if activate and self.pinned(name) is None:
            self.activate(name, version)
        return version

    def state(self) -> Tuple[Tuple[str, Optional[int]], ...]:
        """Current version of every model: cheap to poll for changes."""
        return tuple((name, self.current(name)) for name in self.names())

    def clean_staging(self, older_than_s: float = STALE_STAGING_S) -> List[str]:
        """Remove exports abandoned by killed or failed publishes; returns their names.

        Only folders untouched for ``older_than_s``: a publish under way in another
        process writes into its folder.
        """
        import time

        removed: List[str] = []
        staging = self.root / ".staging"
        if not staging.is_dir():
            return removed
        for entry in staging.iterdir():
            try:
                if time.time() - entry.stat().st_mtime >= older_than_s:
                    shutil.rmtree(str(entry), ignore_errors=True)
                    removed.append(entry.name)
            except OSError:
                pass
        return removed
