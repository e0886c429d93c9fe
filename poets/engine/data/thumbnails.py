"""Small JPEG thumbnails of dataset and inbox images, cached on disk within a size bound.

A thumbnail is keyed by what identifies its source's content (the caller's key: a
file name with its size and modification time, or an inbox id), so a moved image
keeps its thumbnail and a replaced one gets a new one. The cache is trimmed, oldest
first, whenever about an eighth of its bound has been written since the last trim.
"""

import hashlib
import io
import os
import threading
import uuid
from pathlib import Path
from typing import List, Tuple

from poets.engine.data.images import DEFAULT_MAX_PIXELS, open_image, to_rgb

THUMBNAIL_SIDE = 160
_QUALITY = 80


def make_thumbnail(data: bytes, side: int = THUMBNAIL_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """A JPEG no larger than ``side`` x ``side``, aspect ratio kept.

    Raises:
        InvalidImage: ``data`` is not a readable image.
    """
    image = to_rgb(open_image(data, max_pixels), draft=side)
    image.thumbnail((side, side))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=_QUALITY)
    return out.getvalue()


class ThumbnailCache:
    """Thumbnails under ``root``, at most about ``max_bytes`` in all."""

    def __init__(
        self, root: Path, max_bytes: int, side: int = THUMBNAIL_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.side = side
        self.max_pixels = max_pixels
        self._written = 0
        self._lock = threading.Lock()

    def _path(self, key: str) -> Path:
        digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()
        return self.root / digest[:2] / (digest + ".jpg")

    def get(self, key: str, source: Path) -> bytes:
        """The thumbnail of the image file ``source``, made and cached on first use."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        data = make_thumbnail(Path(source).read_bytes(), self.side, self.max_pixels)
        self.put(key, data)
        return data

    def get_bytes(self, key: str, image: bytes) -> bytes:
        """The thumbnail of encoded ``image`` bytes, made and cached on first use."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        data = make_thumbnail(image, self.side, self.max_pixels)
        self.put(key, data)
        return data

    def put(self, key: str, data: bytes) -> None:
        if self.max_bytes <= 0:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(".{}.tmp".format(uuid.uuid4().hex))
        partial.write_bytes(data)
        os.replace(str(partial), str(path))
        with self._lock:
            self._written += len(data)
            due = self._written > self.max_bytes // 8
            if due:
                self._written = 0
        if due:
            self.trim()

    def trim(self) -> int:
        """Delete the oldest thumbnails until the cache is within its bound; how many went."""
        entries: List[Tuple[float, int, str]] = []
        total = 0
        if not self.root.is_dir():
            return 0
        for dirpath, _, filenames in os.walk(str(self.root)):
            for name in filenames:
                full = os.path.join(dirpath, name)
                try:
                    info = os.stat(full)
                except OSError:
                    continue
                entries.append((info.st_mtime, info.st_size, full))
                total += info.st_size
        removed = 0
        for _, size, full in sorted(entries):
            if total <= self.max_bytes:
                break
            try:
                os.unlink(full)
            except OSError:
                continue
            total -= size
            removed += 1
        return removed

    def size(self) -> int:
        """Bytes held now."""
        total = 0
        for dirpath, _, filenames in os.walk(str(self.root)):
            for name in filenames:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except OSError:
                    continue
        return total
