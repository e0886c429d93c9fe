"""The :class:`DatasetLibrary`: datasets, classes and images as a resource, on disk.

It holds the pieces (:mod:`.layout`, :mod:`.locking`, :mod:`.summary`, :mod:`.intake`)
and does each change under the dataset's lock.
"""

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from poets.engine.data import archives, leftovers
from poets.engine.data.images import DEFAULT_MAX_PIXELS
from poets.engine.data.library import archive_import
from poets.engine.data.library.export import stream_zip
from poets.engine.data.library.intake import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_IMAGES,
    Intake,
)
from poets.engine.data.library.layout import DELETING, INCOMING, Layout
from poets.engine.data.library.locking import DatasetLocks
from poets.engine.data.library.names import ImageInfo, check_dataset_name, check_label, image_id, shown
from poets.engine.data.library.snapshot import copy_images, reviewed_in, write_origin
from poets.engine.data.library.summary import Summaries
from poets.engine.data.thumbnails import ThumbnailCache
from poets.engine.errors import Conflict


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

    :meth:`describe` is cached per dataset (:class:`~.summary.Summaries`), so listing
    costs the same whatever a dataset holds.
    """

    def __init__(
        self,
        root: Path,
        thumbnails: ThumbnailCache,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
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
        self.layout = Layout(self.root)
        self.locks = DatasetLocks(self.root)
        self.summaries = Summaries(self.layout, self.locks)
        self.intake = Intake(
            self.layout, self.summaries, self._lock, max_pixels, max_file_bytes, max_images, max_bytes
        )

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        """The dataset's lock; once released, the dataset's cached summary is stale."""
        try:
            with self.locks.exclusive(name):
                yield
        finally:
            self.summaries.changed(name)

    def _dir(self, name: str) -> Path:
        return self.layout.dataset_dir(name)

    # -- leftovers ----------------------------------------------------------------------------
    def clean_leftovers(self, older_than_s: float = leftovers.STALE_S) -> List[str]:
        """Remove what crashes and deletes left behind; returns it, relative to the root.

        Deleted datasets and classes still being removed (``.deleting-*``), import work
        folders (``.incoming-*``) and partial files (``.incoming/``) unchanged for
        ``older_than_s`` and no longer in use, and the lock files of datasets that no
        longer exist (each removed while locked, see :class:`~.locking.DatasetLocks`).
        """
        if not self.root.is_dir():
            return []
        doomed: List[Path] = []
        stale: List[Path] = []
        folders = [self.root] + [self.root / name for name in self.names()]
        for folder in folders:
            with contextlib.suppress(OSError):
                for entry in os.scandir(str(folder)):
                    if entry.name.startswith(DELETING):
                        doomed.append(Path(entry.path))
                    elif entry.name.startswith(INCOMING + "-"):
                        stale.append(Path(entry.path))
                    elif entry.name == INCOMING and entry.is_dir(follow_symlinks=False):
                        stale.extend(Path(e.path) for e in os.scandir(entry.path))
        for path in doomed:  # renamed away to be removed: nothing uses them any more
            shutil.rmtree(str(path), ignore_errors=True)
        removed = doomed + leftovers.remove_abandoned(stale, older_than_s)
        removed.extend(self.locks.clean())
        return sorted(os.path.relpath(str(path), str(self.root)) for path in removed)

    # -- datasets ------------------------------------------------------------------------------
    def names(self) -> List[str]:
        return self.layout.names()

    def create(self, name: str) -> Dict[str, Any]:
        check_dataset_name(name)
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            (self.root / name).mkdir()
        except FileExistsError:
            raise Conflict(
                "Dataset {} exists already: add images to it, or pick another name.".format(shown(name))
            ) from None
        return self.describe(name)

    def describe(self, name: str) -> Dict[str, Any]:
        """``{"name", "classes": {label: count}, "images", "bytes", "fingerprint"}``, cached."""
        summary = self.summaries.get(name, self._dir(name))
        return dict(summary, classes=dict(summary["classes"]))

    def cached_summary(self, name: str) -> Optional[Dict[str, Any]]:
        """:meth:`describe` if its cached summary still holds, else None; a few stats, never a scan."""
        return self.summaries.cached(name)

    def image_names(self, name: str) -> List[str]:
        """The file names (content-addressed) of every image of the dataset, in any class."""
        return [filename for _, filename in self._members(self._dir(name))]

    def delete(self, name: str) -> None:
        self._dir(name)
        with self._lock(name):
            folder = self._dir(name)  # again, under the lock: a delete may have come first
            # Renamed away first: the dataset disappears at once, whatever rmtree meets.
            doomed = self.root / "{}{}-{}".format(DELETING, name, uuid.uuid4().hex[:8])
            os.rename(str(folder), str(doomed))
            shutil.rmtree(str(doomed), ignore_errors=True)
            self.locks.drop(name)
        self.summaries.forget(name)

    # -- images --------------------------------------------------------------------------------
    def images(
        self, name: str, label: Optional[str] = None, offset: int = 0, limit: int = 100
    ) -> Tuple[int, List[ImageInfo]]:
        """(total, one page) of the images, by class then file name; ``label`` filters."""
        folder = self._dir(name)
        layout = self.layout
        labels = [layout.existing_class(folder, label)] if label is not None else layout.classes(folder)
        rows = [(lab, filename) for lab in labels for filename in self.layout.files(folder, lab)]
        page = rows[max(0, offset) : max(0, offset) + max(0, limit)]
        return len(rows), [ImageInfo(image_id(filename), lab, filename) for lab, filename in page]

    def image_path(self, name: str, image: str) -> Tuple[str, Path]:
        """(label, path) of an image."""
        return self.layout.locate(self._dir(name), image)

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
        return self.intake.add(name, label, files, reviewed)

    def move(self, name: str, image: str, label: str) -> ImageInfo:
        """Move an image to class ``label`` (created if needed)."""
        folder = self._dir(name)
        label = check_label(label)
        with self._lock(name):
            folder = self._dir(name)
            current, path = self.layout.locate(folder, image)
            if current != label:
                target = self.layout.class_dir(folder, label) / path.name
                if os.path.lexists(str(target)):
                    raise Conflict(
                        "Class {} already holds a file named {}: delete one of them.".format(
                            shown(label), shown(path.name)
                        )
                    )
                os.rename(str(path), str(target))
                self.layout.drop_if_empty(path.parent)
        return ImageInfo(image_id(path.name), label, path.name)

    def delete_image(self, name: str, image: str) -> ImageInfo:
        self._dir(name)
        with self._lock(name):
            label, path = self.layout.locate(self._dir(name), image)
            path.unlink()
            self.layout.drop_if_empty(path.parent)
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
            label = self.layout.existing_class(folder, label)
            if new_label != label:
                self.layout.refuse_link(folder / new_label)
                if not os.path.lexists(str(folder / new_label)):
                    os.rename(str(folder / label), str(folder / new_label))
                else:
                    self._merge(folder, label, new_label)
        return self.describe(name)

    def _merge(self, folder: Path, label: str, new_label: str) -> None:
        """Move every image of ``label`` into ``new_label``, all or none (the caller holds the lock)."""
        files = self.layout.files(folder, label)
        # Every clash is found before anything moves: a 409 leaves both classes as they were.
        clashes = [filename for filename in files if os.path.lexists(str(folder / new_label / filename))]
        if clashes:
            raise Conflict(
                "Both classes hold a file named {}{}: delete one of each pair first; "
                "nothing was moved.".format(
                    ", ".join(shown(f) for f in clashes[:5]),
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
        self.layout.drop_if_empty(folder / label)

    def delete_class(self, name: str, label: str) -> int:
        """Delete class ``label`` and its images; how many images went."""
        self._dir(name)
        with self._lock(name):
            folder = self._dir(name)
            label = self.layout.existing_class(folder, label)
            count = len(self.layout.files(folder, label))
            doomed = folder / "{}{}".format(DELETING, uuid.uuid4().hex)
            os.rename(str(folder / label), str(doomed))
            shutil.rmtree(str(doomed), ignore_errors=True)
        return count

    # -- archives and snapshots ----------------------------------------------------------------
    def import_archive(self, name: str, archive: Path) -> Dict[str, Any]:
        """Add the images of a zip or tar(.gz) in the poets layout (see :mod:`.archive_import`)."""
        added, duplicates, skipped = archive_import.import_archive(
            self.intake, name, archive, self.archive_limits
        )
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

    def _members(self, folder: Path) -> List[Tuple[str, str]]:
        """Every image of the dataset at ``folder`` as (label, file name)."""
        layout = self.layout
        return [
            (label, filename) for label in layout.classes(folder) for filename in layout.files(folder, label)
        ]

    def export(self, name: str) -> Iterator[bytes]:
        """The dataset as a zip (``label/file``), streamed a file at a time."""
        folder = self._dir(name)
        return stream_zip(folder, self._members(folder))

    def snapshot(self, name: str, target: Path) -> Path:
        """A frozen copy of the dataset at ``target`` (hard links where possible) for training."""
        folder = self._dir(name)
        target = Path(target)
        with self._lock(name):
            copy_images(folder, self._members(folder), target)
            reviewed = reviewed_in(folder)
        write_origin(target, name, reviewed)
        return target
