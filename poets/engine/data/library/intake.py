"""Images coming into a dataset: checked, named after their content, written aside, placed once.

Images the library writes are named after their content (``<sha-256 prefix>.<format>``):
the same photo added twice is stored once, and names are unique across a dataset, so an
image keeps its id when it moves between classes. Files land by atomic rename (written
aside in the dataset's hidden ``.incoming`` folder first), so concurrent moves and uploads
never lose or duplicate an image.
"""

import hashlib
import os
import uuid
from pathlib import Path
from typing import IO, Callable, ContextManager, Dict, Sequence, Tuple

from poets.engine.data.images import DEFAULT_MAX_PIXELS, SUFFIX_BY_FORMAT, open_image, to_rgb
from poets.engine.data.library.layout import INCOMING, Layout
from poets.engine.data.library.names import ImageInfo, image_id, shown
from poets.engine.data.library.summary import Summaries
from poets.engine.errors import DatasetFull, InvalidImage

DEFAULT_MAX_IMAGES = 50000
DEFAULT_MAX_BYTES = 8 * 1024 * 1024 * 1024


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


class Intake:
    """How images enter the datasets of ``layout``.

    Args:
        layout: the dataset folders.
        summaries: their cached summaries (what a dataset holds, for the bounds).
        lock: a dataset's lock, by name (a change once released).
        max_images: most images one dataset may hold (POETS_DATASET_MAX_IMAGES).
        max_bytes: largest total size of one dataset's images (POETS_DATASET_MAX_BYTES).
    """

    def __init__(
        self,
        layout: Layout,
        summaries: Summaries,
        lock: Callable[[str], ContextManager[None]],
        max_images: int = DEFAULT_MAX_IMAGES,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.layout = layout
        self.summaries = summaries
        self.lock = lock
        self.max_images = max_images
        self.max_bytes = max_bytes

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
