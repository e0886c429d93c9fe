"""Small JPEG thumbnails of dataset and inbox images, cached on disk within a size bound.

A thumbnail is keyed by what identifies its source's content (the caller's key: a
file name with its size and modification time, or an inbox id), so a moved image
keeps its thumbnail and a replaced one gets a new one. The cache is trimmed, oldest
first, whenever about an eighth of its bound has been written since the last trim.

Making one costs a whole decode of its source (a small PNG can hold 40 megapixels of one
colour), so at most ``workers`` are made at once; the others wait, and find in the cache
what was made meanwhile. The image is shrunk in its own mode before it is converted to
RGB, so a thumbnail holds one decoded copy of its source, not two or three.
"""

import hashlib
import io
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from PIL import Image

from poets.engine.data.images import DEFAULT_MAX_PIXELS, open_image, to_rgb
from poets.engine.errors import InvalidImage
from poets.engine.runtime import trim_heap

THUMBNAIL_SIDE = 160
_QUALITY = 80
# Modes Pillow resizes as they are (others, such as 16-bit greyscale, go through to_rgb first).
# Sources above this many pixels are decoded into buffers worth giving back to the OS at once.
_LARGE = 4_000_000
_SHRINKABLE = ("1", "P", "L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
try:
    _NEAREST, _BOX = Image.Resampling.NEAREST, Image.Resampling.BOX
except AttributeError:  # Pillow < 9.1 (Python 3.6)
    _NEAREST, _BOX = Image.NEAREST, Image.BOX  # type: ignore[attr-defined]


def make_thumbnail(data: bytes, side: int = THUMBNAIL_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """A JPEG no larger than ``side`` x ``side``, aspect ratio kept.

    Raises:
        InvalidImage: ``data`` is not a readable image.
    """
    image = open_image(data, max_pixels)
    if image.mode in _SHRINKABLE and max(image.size) > 2 * side:
        try:
            if image.format in ("JPEG", "MPO"):
                image.draft(image.mode, (side, side))
            # In place, so the EXIF orientation to_rgb applies stays with it; at twice the
            # side, and antialiased below, except where the mode has no colours to average.
            exact = image.mode in ("P", "1")
            image.thumbnail((2 * side, 2 * side), _NEAREST if exact else _BOX)
        except Exception:
            raise InvalidImage("The image data is corrupt or truncated: send the complete file.") from None
    image = to_rgb(image, draft=side)
    image.thumbnail((side, side))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=_QUALITY)
    return out.getvalue()


def _pixels(data: bytes) -> int:
    try:
        with Image.open(io.BytesIO(data)) as image:  # the header only
            width, height = image.size
            return int(width * height)
    except Exception:
        return 0


class ThumbnailCache:
    """Thumbnails under ``root``, at most about ``max_bytes`` in all."""

    def __init__(
        self,
        root: Path,
        max_bytes: int,
        side: int = THUMBNAIL_SIDE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        workers: int = 2,
    ) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.side = side
        self.max_pixels = max_pixels
        self._written = 0
        self._lock = threading.Lock()
        # Made in these threads only: the memory of a decode stays in their few heap arenas
        # (made in each request's thread, eight requests left eight arenas of 120 MB each).
        self._makers = ThreadPoolExecutor(max(1, int(workers)), thread_name_prefix="thumbnail")

    def _path(self, key: str) -> Path:
        digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()
        return self.root / digest[:2] / (digest + ".jpg")

    def get(self, key: str, source: Path) -> bytes:
        """The thumbnail of the image file ``source``, made and cached on first use."""
        return self._get(key, lambda: Path(source).read_bytes())

    def get_bytes(self, key: str, image: bytes) -> bytes:
        """The thumbnail of encoded ``image`` bytes, made and cached on first use."""
        return self._get(key, lambda: image)

    def get_from(self, key: str, load: Callable[[], bytes]) -> bytes:
        """The thumbnail of the image bytes ``load()`` returns, called only when the cache
        lacks it (an inbox frame in the bucket is fetched only then)."""
        return self._get(key, load)

    def _cached(self, key: str) -> Optional[bytes]:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def _get(self, key: str, source: Callable[[], bytes]) -> bytes:
        data = self._cached(key)
        if data is not None:
            return data
        return self._makers.submit(self._make, key, source).result()

    def _make(self, key: str, source: Callable[[], bytes]) -> bytes:
        data = self._cached(key)  # made while this one waited its turn
        if data is None:
            image = source()
            data = make_thumbnail(image, self.side, self.max_pixels)
            self.put(key, data)
            if _pixels(image) > _LARGE:
                trim_heap()  # hand the decoded copy back to the OS at once
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
