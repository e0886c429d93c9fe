"""Images coming into a dataset: checked, named after their content, written aside, placed once.

Images the library writes are named after their content (``<sha-256 prefix>.<format>``):
the same photo added twice is stored once, and names are unique across a dataset, so an
image keeps its id when it moves between classes. Files land by atomic rename (written
aside in the dataset's hidden ``.incoming`` folder first), so concurrent moves and uploads
never lose or duplicate an image.
"""

import contextlib
import hashlib
import os
import uuid
from pathlib import Path
from typing import IO, Callable, ContextManager, Dict, List, Optional, Sequence, Tuple, Union

from poets.engine.data.images import DEFAULT_MAX_PIXELS, SUFFIX_BY_FORMAT, open_image, to_rgb
from poets.engine.data.library.layout import INCOMING, Layout
from poets.engine.data.library.names import ImageInfo, check_label, image_id, shown
from poets.engine.data.library.snapshot import record_reviewed
from poets.engine.data.library.summary import Summaries
from poets.engine.errors import DatasetFull, InvalidImage, InvalidInput

DEFAULT_MAX_IMAGES = 50000
DEFAULT_MAX_BYTES = 8 * 1024 * 1024 * 1024
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024

# An image ready to be placed: (label, stored name, size, where it waits).
Pending = Tuple[str, str, int, Path]


def check_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """The file suffix for encoded ``data`` after decoding it fully; InvalidImage if unusable."""
    image = open_image(data, max_pixels)
    suffix = SUFFIX_BY_FORMAT[str(image.format)]
    to_rgb(image)
    return suffix


def stored_name(data: bytes, suffix: str) -> str:
    """The content-addressed file name the library stores ``data`` under."""
    return hashlib.sha256(data).hexdigest()[:20] + suffix


def read_file(source: IO[bytes], limit: int) -> bytes:
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


class Intake:
    """How images enter the datasets of ``layout``.

    Args:
        layout: the dataset folders.
        summaries: their cached summaries (what a dataset holds, for the bounds).
        lock: a dataset's lock, by name (a change once released).
        max_pixels: larger images are refused.
        max_file_bytes: larger files are refused.
        max_images: most images one dataset may hold (POETS_DATASET_MAX_IMAGES).
        max_bytes: largest total size of one dataset's images (POETS_DATASET_MAX_BYTES).
    """

    def __init__(
        self,
        layout: Layout,
        summaries: Summaries,
        lock: Callable[[str], ContextManager[None]],
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_images: int = DEFAULT_MAX_IMAGES,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.layout = layout
        self.summaries = summaries
        self.lock = lock
        self.max_pixels = max_pixels
        self.max_file_bytes = max_file_bytes
        self.max_images = max_images
        self.max_bytes = max_bytes

    def add(
        self,
        name: str,
        label: str,
        files: Sequence[Tuple[Optional[str], Union[bytes, IO[bytes]]]],
        reviewed: bool = False,
    ) -> List[ImageInfo]:
        """:meth:`DatasetLibrary.add <poets.engine.data.library.DatasetLibrary.add>`: each file
        read, checked and written aside in turn, then all placed (or none)."""
        folder = self.layout.dataset_dir(name)
        label = check_label(label)
        if not files:
            raise InvalidInput("No images: send one or more files.")
        pending: List[Pending] = []
        try:
            for index, (filename, source) in enumerate(files):
                where = shown(filename) if filename else "number {}".format(index + 1)
                data = source if isinstance(source, bytes) else read_file(source, self.max_file_bytes)
                if len(data) > self.max_file_bytes:
                    raise InvalidImage(
                        "File {} is over the limit of {} bytes (POETS_MAX_FILE_BYTES): "
                        "nothing was added.".format(where, self.max_file_bytes)
                    )
                try:
                    suffix = check_image(data, self.max_pixels)
                except InvalidImage as exc:
                    raise InvalidImage("File {}: {} Nothing was added.".format(where, exc.detail)) from None
                partial = self.aside(name, folder, data)
                pending.append((label, stored_name(data, suffix), len(data), partial))
                del data
            return self.place(name, pending, reviewed)
        finally:
            for _, _, _, partial in pending:  # what was not stored: a duplicate, or nothing added
                with contextlib.suppress(OSError):
                    partial.unlink()

    def place(self, name: str, pending: Sequence[Pending], reviewed: bool = False) -> List[ImageInfo]:
        """Under the dataset's lock, all of ``pending`` placed in their classes, or none if they
        would not fit; an image the dataset holds already stays where it waits (``duplicate``).
        ``reviewed``: recorded as filed by a person (for the promotion gate)."""
        with self.lock(name):
            folder = self.layout.dataset_dir(
                name
            )  # again, under the lock: it may have been deleted meanwhile
            self.check_room(name, folder, [(stored, size) for _, stored, size, _ in pending])
            placed = []
            for label, stored, _, partial in pending:
                try:
                    placed.append(self.store(folder, label, stored, partial))
                except FileNotFoundError:  # the dataset went and came back meanwhile
                    self.layout.dataset_dir(name)
                    raise
            if reviewed:
                record_reviewed(folder, (info.filename for info in placed if not info.duplicate))
        return placed

    def check_room(self, name: str, folder: Path, new: Sequence[Tuple[str, int]]) -> None:
        """:class:`DatasetFull` unless the images ``new`` (stored name, size) fit; under the lock."""
        unique: Dict[str, int] = {}
        for stored, size in new:
            if stored not in unique and self.layout.where(folder, stored) is None:
                unique[stored] = size
        if not unique:
            return
        summary = self.summaries.get(name, folder)
        images, size = summary["images"] + len(unique), summary["bytes"] + sum(unique.values())
        if images > self.max_images:
            raise DatasetFull(
                "Dataset {} holds {} images; {} more would pass the limit of {} "
                "(POETS_DATASET_MAX_IMAGES): delete images or use another dataset. Nothing was "
                "added.".format(shown(name), summary["images"], len(unique), self.max_images)
            )
        if size > self.max_bytes:
            raise DatasetFull(
                "Dataset {} holds {} bytes of images; {} more would pass the limit of {} "
                "(POETS_DATASET_MAX_BYTES): delete images or use another dataset. Nothing was "
                "added.".format(shown(name), summary["bytes"], size - summary["bytes"], self.max_bytes)
            )

    def aside(self, name: str, folder: Path, data: bytes) -> Path:
        """``data`` written to a new file in the dataset's ``.incoming`` folder (404 if the
        dataset was deleted meanwhile)."""
        incoming = folder / INCOMING
        partial = incoming / uuid.uuid4().hex
        try:
            incoming.mkdir(exist_ok=True)
            partial.write_bytes(data)
        except FileNotFoundError:
            self.layout.dataset_dir(name)
            raise
        return partial

    def store(self, folder: Path, label: str, stored: str, partial: Path) -> ImageInfo:
        """``partial`` placed in class ``label`` as ``stored``, unless the dataset holds it already."""
        existing = self.layout.where(folder, stored)
        if existing is not None:
            return ImageInfo(image_id(stored), existing, stored, duplicate=True)
        target = self.layout.class_dir(folder, label)
        os.replace(str(partial), str(target / stored))
        return ImageInfo(image_id(stored), label, stored)
