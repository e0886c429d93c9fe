"""Thumbnails of huge, highly compressible images: bounded work, bounded concurrency, cached
(issue 23, item 7)."""

import io
import threading
from pathlib import Path
from typing import Any, List

import pytest
from PIL import Image

from poets.engine.data import thumbnails
from poets.engine.data.thumbnails import ThumbnailCache, make_thumbnail

pytestmark = pytest.mark.unit


def flat_png(tmp_path: Path, index: int, side: int = 3000, mode: str = "RGB") -> Path:
    """A single-colour PNG: a few KB on disk, ``side`` x ``side`` pixels decoded."""
    path = tmp_path / "flat{}.png".format(index)
    colour: Any = index % 256 if mode in ("L", "P") else (index % 256, 40, 200)
    Image.new(mode, (side, side), colour).save(str(path), "PNG")
    return path


class Spy:
    """Wraps the real make_thumbnail, counting calls and how many run at once."""

    def __init__(self, monkeypatch: Any, hold_s: float = 0.3) -> None:
        self.calls = self.running = self.most = 0
        self.lock = threading.Lock()
        real = thumbnails.make_thumbnail

        def spy(*args: Any) -> bytes:
            with self.lock:
                self.calls += 1
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                threading.Event().wait(hold_s)  # let the other requests arrive meanwhile
                return real(*args)
            finally:
                with self.lock:
                    self.running -= 1

        monkeypatch.setattr(thumbnails, "make_thumbnail", spy)


def ask_at_once(cache: ThumbnailCache, jobs: List[Any]) -> List[bytes]:
    out: List[bytes] = [b""] * len(jobs)

    def run(index: int, key: str, path: Path) -> None:
        out[index] = cache.get(key, path)

    threads = [threading.Thread(target=run, args=(i, k, p)) for i, (k, p) in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out


def test_at_most_workers_thumbnails_are_made_at_once(tmp_path: Path, monkeypatch: Any) -> None:
    spy = Spy(monkeypatch)
    cache = ThumbnailCache(tmp_path / "thumbs", 1 << 20, workers=2)
    sources = [flat_png(tmp_path, i, side=800) for i in range(8)]
    made = ask_at_once(cache, [("k{}".format(i), p) for i, p in enumerate(sources)])
    assert spy.calls == 8 and spy.most == 2
    assert all(data.startswith(b"\xff\xd8") for data in made)


def test_what_was_made_is_cached_for_those_who_waited(tmp_path: Path, monkeypatch: Any) -> None:
    spy = Spy(monkeypatch)
    cache = ThumbnailCache(tmp_path / "thumbs", 1 << 20, workers=2)
    source = flat_png(tmp_path, 1, side=800)
    made = ask_at_once(cache, [("same", source)] * 8)
    # The two first in line may both make it; everyone after finds it in the cache.
    assert spy.calls <= 2 and len(set(made)) == 1
    assert cache.get("same", source) == made[0] and spy.calls <= 2


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA"])
def test_a_huge_flat_image_is_shrunk_in_its_own_mode(tmp_path: Path, mode: str, monkeypatch: Any) -> None:
    converted: List[Any] = []
    real = thumbnails.to_rgb

    def watched(image: Image.Image, draft: Any = None) -> Image.Image:
        converted.append(image.size)
        return real(image, draft)

    monkeypatch.setattr(thumbnails, "to_rgb", watched)
    data = flat_png(tmp_path, 7, side=3000, mode=mode).read_bytes()
    assert len(data) < 200_000
    thumb = make_thumbnail(data)
    with Image.open(io.BytesIO(thumb)) as image:
        assert image.size == (160, 160) and image.mode == "RGB"
    # Converted to RGB only once small: one decoded copy of the source, not two.
    assert converted and max(converted[0]) <= 320


def test_exif_orientation_survives_the_shrink() -> None:
    image = Image.new("RGB", (1200, 600), (200, 30, 30))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90: shown as 600 wide, 1200 tall
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif.tobytes())
    with Image.open(io.BytesIO(make_thumbnail(out.getvalue()))) as thumb:
        assert thumb.size == (80, 160)
