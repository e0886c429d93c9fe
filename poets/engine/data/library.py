"""Datasets kept on disk as a resource: create, browse, add, move, delete, import, export.

Each dataset is a folder under the library's root in the poets layout (a folder per
class), so ``poets retrain --image_dir`` and ``/retrain`` read it as it is. Images the
library writes are named after their content (``<sha-256 prefix>.<format>``): the
same photo added twice is stored once, and names are unique across a dataset, so an
image keeps its id when it moves between classes.

An image id is its file name when that name is plain (letters, digits, ``_``, ``-``
and one extension), else ``~`` and the URL-safe base64 of the name: ids are stable,
safe in URLs and never show a path. Every change to a dataset holds that dataset's
lock, and files land by atomic rename (written aside in the hidden ``.incoming``
folder first), so concurrent moves and uploads never lose or duplicate an image.
"""

import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
import unicodedata
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, Union

from poets.engine.data import archives, datasets, leftovers
from poets.engine.data.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, SUFFIX_BY_FORMAT, open_image, to_rgb
from poets.engine.data.thumbnails import ThumbnailCache
from poets.engine.errors import (
    Conflict,
    DatasetFull,
    Forbidden,
    InvalidArchive,
    InvalidImage,
    InvalidInput,
    NotFound,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

# An export hands the zip out in pieces of about this size: a member is never held whole.
EXPORT_CHUNK = 256 * 1024
DEFAULT_MAX_IMAGES = 50000
DEFAULT_MAX_BYTES = 8 * 1024 * 1024 * 1024

# The split a dataset's fingerprint is computed with: /retrain's defaults.
FINGERPRINT_TESTING_PERCENTAGE = 10
FINGERPRINT_VALIDATION_PERCENTAGE = 10

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_LABEL = re.compile(r"\w(?:[\w .+-]{0,98}[\w+-])?")
_PLAIN_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,150}\.[A-Za-z0-9]{1,5}")
_INCOMING = ".incoming"
# Where a deleted dataset or class goes before it is removed; the lock files' folder.
_DELETING = ".deleting-"
_LOCKS = ".locks"
# Written into a snapshot: which dataset it is (the scan ignores dot files).
ORIGIN_FILE = ".poets-dataset.json"
# In a dataset's folder: the ids of the images a person filed from the review inbox, one a line.
# The promotion gate trusts their labels (a person's word, from where the model is deployed).
REVIEWED_FILE = ".poets-reviewed"
_NAME_RULE = "1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit, without '..'"
_LABEL_RULE = (
    "1 to 100 letters, digits, spaces, '_', '.', '+' or '-', starting with a letter, "
    "digit or '_', without '..' or a trailing space or dot"
)


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:80] + "...")


def check_dataset_name(name: str) -> str:
    """``name`` if it is a usable dataset name, else :class:`InvalidInput` saying why."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise InvalidInput("Dataset name {} is not usable: use {}.".format(_shown(str(name)), _NAME_RULE))
    return name


def check_label(label: str) -> str:
    """The NFC form of ``label`` if it is a usable class name, else :class:`InvalidInput`."""
    if not isinstance(label, str):
        raise InvalidInput("The label must be a string: use {}.".format(_LABEL_RULE))
    normal = unicodedata.normalize("NFC", label)
    if not _LABEL.fullmatch(normal) or ".." in normal:
        raise InvalidInput(
            "Label {} is not usable as a class name: use {}.".format(_shown(label), _LABEL_RULE)
        )
    if datasets.is_ignored(normal):
        raise InvalidInput(
            "Label {} is reserved: the dataset scan ignores folders of that name, so its images "
            "would vanish. Pick another class name.".format(_shown(label))
        )
    return normal


def image_id(filename: str) -> str:
    """The URL-safe id of an image file name."""
    if _PLAIN_FILE.fullmatch(filename):
        return filename
    encoded = base64.urlsafe_b64encode(filename.encode("utf-8", "surrogateescape"))
    return "~" + encoded.decode("ascii").rstrip("=")


def filename_of(image: str) -> str:
    """The file name an id stands for; :class:`InvalidInput` for anything else."""
    bad = InvalidInput(
        "{} is not an image id: use an image's 'id' from the dataset's image list.".format(_shown(str(image)))
    )
    if not isinstance(image, str) or not image or len(image) > 400:
        raise bad
    if image.startswith("~"):
        encoded = image[1:]
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            name = raw.decode("utf-8", "surrogateescape")
        except (binascii.Error, ValueError):
            raise bad from None
    elif _PLAIN_FILE.fullmatch(image):
        name = image
    else:
        raise bad
    if not name or name.startswith(".") or any(c in name for c in "/\\\x00") or len(name) > 255:
        raise bad
    return name


def content_fingerprint(root: Path, images: Iterable[Tuple[str, Path]]) -> str:
    """A dataset's fingerprint: labels, file names and sizes, with /retrain's default split.

    It is :meth:`poets.engine.data.datasets.Dataset.fingerprint` of the dataset as
    ``/retrain`` would split it with the default percentages, so a version trained with
    those on an unchanged dataset records the same value.
    """
    by_label: Dict[str, List[Path]] = {}
    for label, path in images:
        by_label.setdefault(label, []).append(Path(path))
    records: List[datasets.ImageRecord] = []
    for label, paths in by_label.items():
        paths.sort(key=lambda p: p.name)
        splits = datasets.assign_splits(
            [p.name for p in paths], FINGERPRINT_TESTING_PERCENTAGE, FINGERPRINT_VALIDATION_PERCENTAGE
        )
        records.extend(datasets.ImageRecord(p, label, s) for p, s in zip(paths, splits))
    return datasets.Dataset(Path(root), sorted(by_label), records).fingerprint()


def check_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """The file suffix for encoded ``data`` after decoding it fully; InvalidImage if unusable."""
    image = open_image(data, max_pixels)
    suffix = SUFFIX_BY_FORMAT[str(image.format)]
    to_rgb(image)
    return suffix


def stored_name(data: bytes, suffix: str) -> str:
    """The content-addressed file name the library stores ``data`` under."""
    return hashlib.sha256(data).hexdigest()[:20] + suffix


@dataclass(frozen=True)
class ImageInfo:
    id: str
    label: str
    filename: str
    duplicate: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return {"id": self.id, "label": self.label, "filename": self.filename, "duplicate": self.duplicate}


class _InUse:
    """A dataset's thread lock, and how many threads hold it or wait for it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


class DatasetLibrary:
    """The datasets under ``root``.

    Args:
        root: one folder per dataset (created on first use).
        thumbnails: cache for :meth:`thumbnail`.
        max_pixels: larger images are refused.
        max_file_bytes: larger files are refused.
        archive_limits: what an imported archive may hold.
        max_images: most images one dataset may hold (POETS_DATASET_MAX_IMAGES).
        max_bytes: largest total size of one dataset's images (POETS_DATASET_MAX_BYTES).

    :meth:`describe` is cached per dataset, so listing costs the same whatever a dataset
    holds: an entry is used while the dataset's stamp (:meth:`_stamp`) is unchanged, and
    every change the library makes moves the stamp when it releases the dataset's lock.
    """

    def __init__(
        self,
        root: Path,
        thumbnails: ThumbnailCache,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_file_bytes: int = 64 * 1024 * 1024,
        archive_limits: Optional[archives.Limits] = None,
        max_images: int = DEFAULT_MAX_IMAGES,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.root = Path(root)
        self.thumbnails = thumbnails
        self.max_pixels = max_pixels
        self.max_file_bytes = max_file_bytes
        self.archive_limits = archive_limits or archives.Limits()
        self.max_images = max_images
        self.max_bytes = max_bytes
        # An entry goes with its last user: the table holds the datasets in use, not every
        # one ever named.
        self._locks: Dict[str, _InUse] = {}
        self._locks_lock = threading.Lock()
        # describe()'s cache: name -> (stamp, summary); the generation of each dataset moves
        # on every change this library makes; one computation per dataset at a time.
        self._summaries: Dict[str, Tuple[Any, Dict[str, Any]]] = {}
        self._generations: Dict[str, int] = {}
        self._computing: Dict[str, threading.Lock] = {}
        self._cache_lock = threading.Lock()

    # -- locations -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        """:meth:`_exclusive`; once released, the dataset's cached summary is stale."""
        try:
            with self._exclusive(name):
                yield
        finally:
            self._changed(name)

    @contextlib.contextmanager
    def _exclusive(self, name: str) -> Iterator[None]:
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

        Lock files are removed (with their dataset, or by :meth:`clean_leftovers`) by whoever
        holds them: a process that locked a file meanwhile unlinked holds nothing, sees that
        the path now names another file (or none), and locks again.
        """
        path = self.root / _LOCKS / (name + ".lock")
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

    def _drop_lock_file(self, name: str) -> None:
        """Remove the dataset's lock file (the caller holds it: see :meth:`_lock_file`)."""
        with contextlib.suppress(OSError):
            (self.root / _LOCKS / (name + ".lock")).unlink()

    def _changed(self, name: str) -> None:
        """Move the dataset's stamp: its cached summary is stale (see :meth:`_stamp`)."""
        with self._cache_lock:
            self._generations[name] = self._generations.get(name, 0) + 1
            self._summaries.pop(name, None)
        if fcntl is not None and (self.root / name).is_dir():  # a deleted one keeps no lock file
            # One byte per change, so other processes' libraries see it in the lock file's
            # size (a directory's mtime can miss two changes within one clock tick).
            with contextlib.suppress(OSError), open(
                str(self.root / ".locks" / (name + ".lock")), "a"
            ) as handle:
                if handle.tell() > 65536:
                    handle.truncate(0)
                handle.write(".")

    def _stamp(self, name: str, folder: Path) -> Any:
        """What must stay the same for a cached summary to hold; costs one stat per class.

        This library's own changes (the generation), another process's library (the lock
        file) and files put in by hand (the class folders' mtimes).
        """
        with self._cache_lock:
            generation = self._generations.get(name, 0)
        try:
            info = os.stat(str(self.root / ".locks" / (name + ".lock")))
            lock_file: Any = (info.st_size, info.st_mtime_ns)
        except OSError:
            lock_file = None
        classes = []
        for entry in os.scandir(str(folder)):
            with contextlib.suppress(OSError):
                if entry.is_dir() and not entry.name.startswith("."):  # not .incoming's traffic
                    classes.append((entry.name, entry.stat().st_mtime_ns))
        return (generation, lock_file, tuple(sorted(classes)))

    # -- symbolic links ------------------------------------------------------------------------
    def _leads_out(self, path: Path) -> bool:
        """Whether ``path`` is a symbolic link leading outside the root (its parents are checked
        where they are found: a dataset, class or image that leads out is never followed)."""
        if not os.path.islink(str(path)):
            return False
        root = os.path.realpath(str(self.root))
        real = os.path.realpath(str(path))
        return real != root and not real.startswith(root.rstrip(os.sep) + os.sep)

    def _refuse_link(self, path: Path) -> None:
        """:class:`Forbidden` for ``path`` if it is a symbolic link leading out of the root."""
        if self._leads_out(path):
            raise Forbidden(
                "The dataset entry {} leads outside the datasets folder through a symbolic link: "
                "copy the images into the dataset instead of linking them.".format(
                    _shown(os.path.relpath(str(path), str(self.root)))
                )
            )

    def _class_dir(self, folder: Path, label: str) -> Path:
        """Class ``label``'s folder, made if needed, to write into; never a link leading out."""
        target = folder / label
        self._refuse_link(target)
        target.mkdir(exist_ok=True)
        return target

    def _dir(self, name: str) -> Path:
        """The dataset's folder: :class:`NotFound` when there is none (ask again under the
        dataset's lock before changing it: a delete may have come in between)."""
        folder = self.root / check_dataset_name(name)
        self._refuse_link(folder)
        if not folder.is_dir():
            known = ", ".join(self.names()) or "none yet"
            raise NotFound("No dataset {}: create it first (the datasets: {}).".format(_shown(name), known))
        return folder

    def _classes(self, folder: Path) -> List[str]:
        try:
            entries = list(os.scandir(str(folder)))
        except FileNotFoundError:  # deleted meanwhile
            raise NotFound("No dataset {}: it was deleted meanwhile.".format(_shown(folder.name))) from None
        return sorted(
            entry.name
            for entry in entries
            if entry.is_dir()
            and not datasets.is_ignored(entry.name)
            and not (entry.is_symlink() and self._leads_out(Path(entry.path)))
        )

    def _files(self, folder: Path, label: str) -> List[str]:
        try:
            entries = os.scandir(str(folder / label))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(
            entry.name
            for entry in entries
            if not entry.name.startswith(".")
            and entry.is_file()
            and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES
            and not (entry.is_symlink() and self._leads_out(Path(entry.path)))
        )

    def _existing_class(self, folder: Path, label: str) -> str:
        if isinstance(label, str):
            normal = unicodedata.normalize("NFC", label)
            if normal in self._classes(folder):
                return normal
            if _LABEL.fullmatch(normal):
                self._refuse_link(folder / normal)
        raise NotFound(
            "Dataset {} has no class {}: its classes are {}.".format(
                _shown(folder.name), _shown(str(label)), ", ".join(self._classes(folder)) or "none yet"
            )
        )

    def _locate(self, folder: Path, image: str) -> Tuple[str, Path]:
        filename = filename_of(image)
        found = [label for label in self._classes(folder) if self._is_image(folder / label / filename)]
        if not found:  # behind a link leading out (never followed): say so
            for entry in os.scandir(str(folder)):
                if not datasets.is_ignored(entry.name):
                    if entry.is_symlink() and os.path.lexists(os.path.join(entry.path, filename)):
                        self._refuse_link(Path(entry.path))
                    self._refuse_link(Path(entry.path) / filename)
            raise NotFound(
                "Dataset {} has no image {}: it was moved or deleted; list the images again.".format(
                    _shown(folder.name), _shown(image)
                )
            )
        if len(found) > 1:
            raise Conflict(
                "Image {} is in several classes of dataset {} ({}): keep one copy and "
                "delete the others by hand.".format(_shown(image), _shown(folder.name), ", ".join(found))
            )
        return found[0], folder / found[0] / filename

    def _where(self, folder: Path, filename: str) -> Optional[str]:
        for label in self._classes(folder):
            if self._is_image(folder / label / filename):
                return label
        return None

    def _is_image(self, path: Path) -> bool:
        return path.is_file() and not self._leads_out(path)

    @staticmethod
    def _drop_if_empty(folder: Path) -> None:
        # An empty class folder would make /retrain refuse the dataset.
        with contextlib.suppress(OSError):
            folder.rmdir()

    # -- leftovers ----------------------------------------------------------------------------
    def clean_leftovers(self, older_than_s: float = leftovers.STALE_S) -> List[str]:
        """Remove what crashes and deletes left behind; returns it, relative to the root.

        Deleted datasets and classes still being removed (``.deleting-*``), import work
        folders (``.incoming-*``) and partial files (``.incoming/``) unchanged for
        ``older_than_s`` and no longer in use, and the lock files of datasets that no
        longer exist (each removed while locked, see :meth:`_lock_file`).
        """
        if not self.root.is_dir():
            return []
        doomed: List[Path] = []
        stale: List[Path] = []
        folders = [self.root] + [self.root / name for name in self.names()]
        for folder in folders:
            with contextlib.suppress(OSError):
                for entry in os.scandir(str(folder)):
                    if entry.name.startswith(_DELETING):
                        doomed.append(Path(entry.path))
                    elif entry.name.startswith(_INCOMING + "-"):
                        stale.append(Path(entry.path))
                    elif entry.name == _INCOMING and entry.is_dir(follow_symlinks=False):
                        stale.extend(Path(e.path) for e in os.scandir(entry.path))
        for path in doomed:  # renamed away to be removed: nothing uses them any more
            shutil.rmtree(str(path), ignore_errors=True)
        removed = doomed + leftovers.remove_abandoned(stale, older_than_s)
        removed.extend(self._clean_lock_files())
        return sorted(os.path.relpath(str(path), str(self.root)) for path in removed)

    def _clean_lock_files(self) -> List[Path]:
        removed: List[Path] = []
        locks = self.root / _LOCKS
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

    # -- datasets ------------------------------------------------------------------------------
    def names(self) -> List[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            entry.name
            for entry in os.scandir(str(self.root))
            if entry.is_dir()
            and not entry.name.startswith(".")
            and _NAME.fullmatch(entry.name)
            and ".." not in entry.name
            and not (entry.is_symlink() and self._leads_out(Path(entry.path)))
        )

    def create(self, name: str) -> Dict[str, Any]:
        check_dataset_name(name)
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            (self.root / name).mkdir()
        except FileExistsError:
            raise Conflict(
                "Dataset {} exists already: add images to it, or pick another name.".format(_shown(name))
            ) from None
        return self.describe(name)

    def describe(self, name: str) -> Dict[str, Any]:
        """``{"name", "classes": {label: count}, "images", "bytes", "fingerprint"}``, cached."""
        summary = self._summary(name, self._dir(name))
        return dict(summary, classes=dict(summary["classes"]))

    def cached_summary(self, name: str) -> Optional[Dict[str, Any]]:
        """:meth:`describe` if its cached summary still holds, else None; a few stats, never a scan."""
        try:
            folder = self._dir(name)
            stamp = self._stamp(name, folder)
        except (NotFound, InvalidInput, OSError):
            return None
        with self._cache_lock:
            cached = self._summaries.get(name)
        if cached is None or cached[0] != stamp:
            return None
        return dict(cached[1], classes=dict(cached[1]["classes"]))

    def _summary(self, name: str, folder: Path) -> Dict[str, Any]:
        stamp = self._stamp(name, folder)
        with self._cache_lock:
            cached = self._summaries.get(name)
            computing = self._computing.setdefault(name, threading.Lock())
        if cached is not None and cached[0] == stamp:
            return cached[1]
        with computing:  # many callers of a stale dataset: one computes, the others wait
            stamp = self._stamp(name, folder)
            with self._cache_lock:
                cached = self._summaries.get(name)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            summary = self._settled_summary(name, folder)
            with self._cache_lock:
                self._summaries[name] = (stamp, summary)
        return summary

    def _settled_summary(self, name: str, folder: Path, attempts: int = 5) -> Dict[str, Any]:
        """:meth:`_compute_summary`, again when a file it listed was moved or deleted meanwhile
        (it reads without the lock, so that listings never wait for a long import)."""
        for _ in range(attempts - 1):
            try:
                return self._compute_summary(name, folder)
            except FileNotFoundError:
                self._dir(name)  # the dataset itself gone: 404
        try:
            return self._compute_summary(name, folder)
        except FileNotFoundError:
            raise Conflict("Dataset {} is being changed right now: retry.".format(_shown(name))) from None

    def _compute_summary(self, name: str, folder: Path) -> Dict[str, Any]:
        files = {label: self._files(folder, label) for label in self._classes(folder)}
        fingerprint = content_fingerprint(
            folder,
            ((label, folder / label / filename) for label, names in files.items() for filename in names),
        )
        size = 0
        for label, names in files.items():
            for filename in names:
                with contextlib.suppress(OSError):
                    size += os.stat(str(folder / label / filename)).st_size
        return {
            "name": name,
            "classes": {label: len(names) for label, names in files.items()},
            "images": sum(len(names) for names in files.values()),
            "bytes": size,
            "fingerprint": fingerprint,
        }

    def image_names(self, name: str) -> List[str]:
        """The file names (content-addressed) of every image of the dataset, in any class."""
        folder = self._dir(name)
        return [filename for label in self._classes(folder) for filename in self._files(folder, label)]

    def _check_room(self, name: str, folder: Path, new: Sequence[Tuple[str, int]]) -> None:
        """:class:`DatasetFull` unless the images ``new`` (stored name, size) fit; under the lock."""
        unique: Dict[str, int] = {}
        for stored, size in new:
            if stored not in unique and self._where(folder, stored) is None:
                unique[stored] = size
        if not unique:
            return
        summary = self._summary(name, folder)
        images, size = summary["images"] + len(unique), summary["bytes"] + sum(unique.values())
        if images > self.max_images:
            raise DatasetFull(
                "Dataset {} holds {} images; {} more would pass the limit of {} "
                "(POETS_DATASET_MAX_IMAGES): delete images or use another dataset. Nothing was "
                "added.".format(_shown(name), summary["images"], len(unique), self.max_images)
            )
        if size > self.max_bytes:
            raise DatasetFull(
                "Dataset {} holds {} bytes of images; {} more would pass the limit of {} "
                "(POETS_DATASET_MAX_BYTES): delete images or use another dataset. Nothing was "
                "added.".format(_shown(name), summary["bytes"], size - summary["bytes"], self.max_bytes)
            )

    def delete(self, name: str) -> None:
        self._dir(name)
        with self._lock(name):
            folder = self._dir(name)  # again, under the lock: a delete may have come first
            # Renamed away first: the dataset disappears at once, whatever rmtree meets.
            doomed = self.root / "{}{}-{}".format(_DELETING, name, uuid.uuid4().hex[:8])
            os.rename(str(folder), str(doomed))
            shutil.rmtree(str(doomed), ignore_errors=True)
            self._drop_lock_file(name)
        with self._cache_lock:
            self._summaries.pop(name, None)

    # -- images --------------------------------------------------------------------------------
    def images(
        self, name: str, label: Optional[str] = None, offset: int = 0, limit: int = 100
    ) -> Tuple[int, List[ImageInfo]]:
        """(total, one page) of the images, by class then file name; ``label`` filters."""
        folder = self._dir(name)
        labels = [self._existing_class(folder, label)] if label is not None else self._classes(folder)
        rows = [(lab, filename) for lab in labels for filename in self._files(folder, lab)]
        page = rows[max(0, offset) : max(0, offset) + max(0, limit)]
        return len(rows), [ImageInfo(image_id(filename), lab, filename) for lab, filename in page]

    def image_path(self, name: str, image: str) -> Tuple[str, Path]:
        """(label, path) of an image."""
        return self._locate(self._dir(name), image)

    def add(
        self,
        name: str,
        label: str,
        files: Sequence[Tuple[Optional[str], Union[bytes, IO[bytes]]]],
        reviewed: bool = False,
    ) -> List[ImageInfo]:
        """Add encoded images to class ``label`` (created if needed); all or none.

        A file is given as its bytes or as a binary file to read (an upload spooled to
        disk): each is read, checked and written aside in turn, so a request holds one
        image in memory at a time, not all of them. An image already in the dataset is not
        stored twice: its entry says ``duplicate`` and where it is. ``reviewed``: a person
        filed them from the review inbox (recorded for the promotion gate).

        Raises:
            InvalidImage: a file is not a readable image (nothing is added).
            DatasetFull: the images would pass POETS_DATASET_MAX_IMAGES or _BYTES (nothing is added).
        """
        folder = self._dir(name)
        label = check_label(label)
        if not files:
            raise InvalidInput("No images: send one or more files.")
        written: List[Tuple[str, int, Path]] = []  # (stored name, size, written aside at)
        try:
            for index, (filename, source) in enumerate(files):
                where = _shown(filename) if filename else "number {}".format(index + 1)
                data = source if isinstance(source, bytes) else _read_file(source, self.max_file_bytes)
                if len(data) > self.max_file_bytes:
                    raise InvalidImage(
                        "File {} is over the limit of {} bytes (POETS_MAX_FILE_BYTES): "
                        "nothing was added.".format(where, self.max_file_bytes)
                    )
                try:
                    suffix = check_image(data, self.max_pixels)
                except InvalidImage as exc:
                    raise InvalidImage("File {}: {} Nothing was added.".format(where, exc.detail)) from None
                partial = self._aside(name, folder, data)
                written.append((stored_name(data, suffix), len(data), partial))
                del data
            added = []
            with self._lock(name):
                folder = self._dir(name)  # again, under the lock: it may have been deleted meanwhile
                self._check_room(name, folder, [(stored, size) for stored, size, _ in written])
                for stored, _, partial in written:
                    try:
                        added.append(self._store(folder, label, stored, partial))
                    except FileNotFoundError:  # the dataset went and came back meanwhile
                        self._dir(name)
                        raise
                if reviewed:
                    with open(str(folder / REVIEWED_FILE), "a", encoding="utf-8") as record:
                        record.writelines(info.filename + "\n" for info in added if not info.duplicate)
            return added
        finally:
            for _, _, partial in written:  # what was not stored: a duplicate, or nothing added
                with contextlib.suppress(OSError):
                    partial.unlink()

    def _aside(self, name: str, folder: Path, data: bytes) -> Path:
        """``data`` written to a new file in the dataset's ``.incoming`` folder (404 if the
        dataset was deleted meanwhile)."""
        incoming = folder / _INCOMING
        partial = incoming / uuid.uuid4().hex
        try:
            incoming.mkdir(exist_ok=True)
            partial.write_bytes(data)
        except FileNotFoundError:
            self._dir(name)
            raise
        return partial

    def _store(self, folder: Path, label: str, stored: str, partial: Path) -> ImageInfo:
        existing = self._where(folder, stored)
        if existing is not None:
            return ImageInfo(image_id(stored), existing, stored, duplicate=True)
        target = self._class_dir(folder, label)
        os.replace(str(partial), str(target / stored))
        return ImageInfo(image_id(stored), label, stored)

    def move(self, name: str, image: str, label: str) -> ImageInfo:
        """Move an image to class ``label`` (created if needed)."""
        folder = self._dir(name)
        label = check_label(label)
        with self._lock(name):
            folder = self._dir(name)
            current, path = self._locate(folder, image)
            if current != label:
                target = self._class_dir(folder, label) / path.name
                if os.path.lexists(str(target)):
                    raise Conflict(
                        "Class {} already holds a file named {}: delete one of them.".format(
                            _shown(label), _shown(path.name)
                        )
                    )
                os.rename(str(path), str(target))
                self._drop_if_empty(path.parent)
        return ImageInfo(image_id(path.name), label, path.name)

    def delete_image(self, name: str, image: str) -> ImageInfo:
        self._dir(name)
        with self._lock(name):
            label, path = self._locate(self._dir(name), image)
            path.unlink()
            self._drop_if_empty(path.parent)
        return ImageInfo(image_id(path.name), label, path.name)

    def thumbnail(self, name: str, image: str) -> bytes:
        _, path = self.image_path(name, image)
        info = path.stat()
        key = "dataset|{}|{}|{}|{}".format(name, path.name, info.st_size, info.st_mtime_ns)
        return self.thumbnails.get(key, path)

    # -- classes -------------------------------------------------------------------------------
    def rename_class(self, name: str, label: str, new_label: str) -> Dict[str, Any]:
        """Rename class ``label``; into an existing class, the images are merged."""
        self._dir(name)
        new_label = check_label(new_label)
        with self._lock(name):
            folder = self._dir(name)
            label = self._existing_class(folder, label)
            if new_label != label:
                self._refuse_link(folder / new_label)
                if not os.path.lexists(str(folder / new_label)):
                    os.rename(str(folder / label), str(folder / new_label))
                else:
                    self._merge(folder, label, new_label)
        return self.describe(name)

    def _merge(self, folder: Path, label: str, new_label: str) -> None:
        """Move every image of ``label`` into ``new_label``, all or none (the caller holds the lock)."""
        files = self._files(folder, label)
        # Every clash is found before anything moves: a 409 leaves both classes as they were.
        clashes = [filename for filename in files if os.path.lexists(str(folder / new_label / filename))]
        if clashes:
            raise Conflict(
                "Both classes hold a file named {}{}: delete one of each pair first; "
                "nothing was moved.".format(
                    ", ".join(_shown(f) for f in clashes[:5]),
                    " and {} more".format(len(clashes) - 5) if len(clashes) > 5 else "",
                )
            )
        moved: List[str] = []
        try:
            for filename in files:
                os.rename(str(folder / label / filename), str(folder / new_label / filename))
                moved.append(filename)
        except OSError:
            for filename in reversed(moved):  # undo: the merge is all or none
                with contextlib.suppress(OSError):
                    os.rename(str(folder / new_label / filename), str(folder / label / filename))
            raise
        self._drop_if_empty(folder / label)

    def delete_class(self, name: str, label: str) -> int:
        """Delete class ``label`` and its images; how many images went."""
        self._dir(name)
        with self._lock(name):
            folder = self._dir(name)
            label = self._existing_class(folder, label)
            count = len(self._files(folder, label))
            doomed = folder / "{}{}".format(_DELETING, uuid.uuid4().hex)
            os.rename(str(folder / label), str(doomed))
            shutil.rmtree(str(doomed), ignore_errors=True)
        return count

    # -- archives ------------------------------------------------------------------------------
    def import_archive(self, name: str, archive: Path) -> Dict[str, Any]:
        """Add the images of a zip or tar(.gz) in the poets layout.

        The archive is extracted safely (:func:`poets.engine.data.archives.extract`),
        every file is decoded, and files that are not images or not in a class folder
        are skipped and listed. A class folder whose name is not usable refuses the
        whole archive before anything is added.
        """
        folder = self._dir(name)
        work = folder / "{}-{}".format(_INCOMING, uuid.uuid4().hex)
        try:
            work.mkdir()
        except FileNotFoundError:
            self._dir(name)  # deleted meanwhile: 404
            raise
        # Claimed while in use: a crash leaves it to clean_leftovers, a live import never.
        claimed = leftovers.Claim(work)
        try:
            try:
                top = archives.extract(Path(archive), work / "archive", self.archive_limits)
            except InvalidArchive:
                self._dir(name)  # the dataset was deleted under the extraction: 404, not a bad archive
                raise
            skipped: List[Dict[str, str]] = []
            ready: List[Tuple[str, str, Path]] = []
            for entry in sorted(top.iterdir()):
                relative = os.path.relpath(str(entry), str(top))
                if entry.name.startswith("."):
                    continue
                if not entry.is_dir():
                    skipped.append({"path": relative, "reason": "not inside a class folder"})
                    continue
                label = check_label(entry.name)
                for dirpath, dirnames, filenames in os.walk(str(entry)):
                    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                    for filename in sorted(filenames):
                        path = Path(dirpath) / filename
                        shown = os.path.relpath(str(path), str(top))
                        try:
                            suffix = check_image(path.read_bytes(), self.max_pixels)
                        except InvalidImage as exc:
                            skipped.append({"path": shown, "reason": exc.detail})
                            continue
                        ready.append((label, stored_name(path.read_bytes(), suffix), path))
            added = duplicates = 0
            with self._lock(name):
                folder = self._dir(name)  # again, under the lock: it may have been deleted meanwhile
                self._check_room(name, folder, [(stored, path.stat().st_size) for _, stored, path in ready])
                for label, stored, path in ready:
                    if self._where(folder, stored) is not None:
                        duplicates += 1
                        continue
                    os.replace(str(path), str(self._class_dir(folder, label) / stored))
                    added += 1
        except FileNotFoundError:
            self._dir(name)  # the dataset, and the work folder in it, deleted meanwhile: 404
            raise
        finally:
            claimed.release()
            shutil.rmtree(str(work), ignore_errors=True)
        summary = self.describe(name)
        summary.update(
            {
                "added": added,
                "duplicates": duplicates,
                "skipped": skipped[:100],
                "skipped_count": len(skipped),
            }
        )
        return summary

    def export(self, name: str) -> Iterator[bytes]:
        """The dataset as a zip (``label/file``), streamed a file at a time."""
        folder = self._dir(name)
        members = [
            (label, filename) for label in self._classes(folder) for filename in self._files(folder, label)
        ]
        return _stream_zip(folder, members)

    def snapshot(self, name: str, target: Path) -> Path:
        """A frozen copy of the dataset at ``target`` (hard links where possible) for training."""
        folder = self._dir(name)
        target = Path(target)
        with self._lock(name):
            for label in self._classes(folder):
                for filename in self._files(folder, label):
                    (target / label).mkdir(parents=True, exist_ok=True)
                    source, copy = folder / label / filename, target / label / filename
                    try:
                        os.link(str(source), str(copy))
                    except OSError:
                        shutil.copy2(str(source), str(copy))
            reviewed = _reviewed(folder)
        target.mkdir(parents=True, exist_ok=True)
        origin = {"name": name, "reviewed": sorted(reviewed)}
        (target / ORIGIN_FILE).write_text(json.dumps(origin), encoding="utf-8")
        return target


def _reviewed(folder: Path) -> Set[str]:
    try:
        return {line.strip() for line in (folder / REVIEWED_FILE).read_text(encoding="utf-8").splitlines()}
    except OSError:
        return set()


def snapshot_reviewed(root: Path) -> Set[str]:
    """File names of the images in a :meth:`DatasetLibrary.snapshot` at ``root`` that a person
    filed from the review inbox (empty for any other folder)."""
    try:
        names = json.loads((Path(root) / ORIGIN_FILE).read_text(encoding="utf-8")).get("reviewed")
    except (OSError, ValueError, AttributeError):
        return set()
    return {str(n) for n in names} if isinstance(names, list) else set()


def snapshot_origin(root: Path) -> Optional[str]:
    """The dataset name a :meth:`DatasetLibrary.snapshot` at ``root`` was taken from, if any."""
    try:
        name = json.loads((Path(root) / ORIGIN_FILE).read_text(encoding="utf-8")).get("name")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


class _Chunks:
    """A write-only file collecting what zipfile writes, handed out in pieces."""

    def __init__(self) -> None:
        self.parts: List[bytes] = []
        self.position = 0
        self.handed = 0  # position at the last take()

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts = []
        self.handed = self.position
        return out


def _stream_zip(
    folder: Path, members: List[Tuple[str, str]], chunk_size: int = EXPORT_CHUNK
) -> Iterator[bytes]:
    """The zip of ``members``, in pieces of about ``chunk_size`` bytes (a member is read a
    piece at a time: a client that reads slowly holds one piece, never a whole file)."""
    sink = _Chunks()
    # Stored, not deflated: photos do not compress, and the CPU is better spent elsewhere.
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as archive:  # type: ignore[call-overload]
        for label, filename in members:
            path = str(folder / label / filename)
            try:
                source = open(path, "rb")  # noqa: SIM115 - closed by the with below
                # Its size decides zip64 before the data is written (the sink cannot seek).
                info = zipfile.ZipInfo.from_file(path, "{}/{}".format(label, filename))
            except FileNotFoundError:
                continue  # moved or deleted while streaming
            info.compress_type = zipfile.ZIP_STORED
            with source, archive.open(info, "w") as member:
                while True:
                    block = source.read(chunk_size)
                    if not block:
                        break
                    member.write(block)
                    if sink.position - sink.handed >= chunk_size:
                        yield sink.take()
            chunk = sink.take()
            if chunk:
                yield chunk
    chunk = sink.take()
    if chunk:
        yield chunk


def _read_file(source: IO[bytes], limit: int) -> bytes:
    """The rest of ``source``, or ``limit + 1`` bytes when it holds more (without a buffer of
    ``limit`` bytes for a small file, as ``read(limit + 1)`` would allocate)."""
    try:  # Python 3.6's SpooledTemporaryFile (an upload) has no seekable(), and seek returns None
        start = source.tell()
        source.seek(0, os.SEEK_END)
        size = source.tell() - start
        source.seek(start)
    except (AttributeError, OSError, ValueError):
        return source.read(limit + 1)
    return source.read(min(size, limit + 1))


def read_limited(source: IO[bytes], limit: int) -> bytes:
    """Read ``source`` to the end, refusing more than ``limit`` bytes."""
    data = source.read(limit + 1)
    if len(data) > limit:
        raise InvalidImage(
            "The file is over the limit of {} bytes (POETS_MAX_FILE_BYTES): send a smaller image.".format(
                limit
            )
        )
    return bytes(data)
