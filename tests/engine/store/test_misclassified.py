"""Copies of misclassified images kept beside jobs: bounds per job and in all, links, formats."""

import io
import os
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
from PIL import Image

from poets.engine.store.misclassified import MisclassifiedImages, image_url

pytestmark = pytest.mark.unit


def _png(path: Path, side: int = 8, colour: int = 0) -> bytes:
    buffer = io.BytesIO()
    # Noise: the file's size grows with its side (a flat colour would compress to nothing).
    noise = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    noise.putpixel((0, 0), (colour, 0, 0))
    noise.save(buffer, "PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def _entries(*paths: str) -> List[Dict[str, Any]]:
    return [{"path": p, "label": "a", "predicted": "b"} for p in paths]


def test_copies_are_named_by_position_and_typed_by_their_bytes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = _png(data / "a" / "one.jpg")  # a PNG named .jpg: served as what it is
    second = _png(data / "b" / "two.png", colour=9)
    images = MisclassifiedImages(tmp_path / "jobs", 10**6, 10**7)
    kept = images.keep("job1", data, _entries("a/one.jpg", "b/two.png"))
    assert [entry["image"] for entry in kept] == [image_url("job1", 0), image_url("job1", 1)]
    assert kept[0]["path"] == "a/one.jpg" and kept[0]["label"] == "a"
    assert images.path("job1", 0) == tmp_path / "jobs" / "job1" / "misclassified" / "0.png"
    assert images.path("job1", 0).read_bytes() == first  # type: ignore[union-attr]
    assert images.path("job1", 1).read_bytes() == second  # type: ignore[union-attr]
    assert images.path("job1", 2) is None and images.path("other", 0) is None


def test_bytes_per_job_are_bounded(tmp_path: Path) -> None:
    data = tmp_path / "data"
    size = len(_png(data / "a" / "1.png", side=32))
    _png(data / "a" / "2.png", side=32, colour=1)
    _png(data / "a" / "3.png", side=4)
    images = MisclassifiedImages(tmp_path / "jobs", size + size // 2, 10**7)
    kept = images.keep("job", data, _entries("a/1.png", "a/2.png", "a/3.png"))
    # The second does not fit after the first; the small third still does.
    assert [entry["image"] is not None for entry in kept] == [True, False, True]
    assert images.path("job", 1) is None


def test_not_images_missing_files_and_links_out_are_not_copied(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _png(data / "a" / "ok.png")
    (data / "a" / "text.jpg").write_text("<script>alert(1)</script>")
    outside = tmp_path / "secret.png"
    _png(outside)
    os.symlink(str(outside), str(data / "a" / "link.png"))
    images = MisclassifiedImages(tmp_path / "jobs", 10**6, 10**7)
    kept = images.keep(
        "job", data, _entries("a/ok.png", "a/text.jpg", "a/gone.png", "a/link.png", "../secret.png")
    )
    assert [entry["image"] is not None for entry in kept] == [True, False, False, False, False]


def test_a_job_id_that_is_not_a_plain_name_gets_no_copies(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _png(data / "a" / "ok.png")
    images = MisclassifiedImages(tmp_path / "jobs", 10**6, 10**7)
    for job_id in ("../x", "a/b", "x\n", ".", ""):
        assert images.keep(job_id, data, _entries("a/ok.png"))[0]["image"] is None
        assert images.path(job_id, 0) is None
    assert not (tmp_path / "jobs").exists() or not any((tmp_path / "jobs").iterdir())


def test_all_jobs_copies_are_bounded_oldest_removed_first(tmp_path: Path) -> None:
    data = tmp_path / "data"
    size = len(_png(data / "a" / "1.png", side=16))
    images = MisclassifiedImages(tmp_path / "jobs", 10**6, 2 * size)
    for n, job_id in enumerate(("old", "mid", "new")):
        images.keep(job_id, data, _entries("a/1.png"))
        # Older by their folders' times, whatever the clock's resolution.
        folder = images.folder(job_id)
        assert folder is not None
        stamp = time.time() - 100 + n
        os.utime(str(folder), (stamp, stamp))
    assert images.path("old", 0) is None and not (tmp_path / "jobs" / "old").exists()
    assert images.path("mid", 0) is not None and images.path("new", 0) is not None


def test_a_redelivered_job_replaces_its_copies(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _png(data / "a" / "1.png")
    _png(data / "a" / "2.png", colour=3)
    images = MisclassifiedImages(tmp_path / "jobs", 10**6, 10**7)
    images.keep("job", data, _entries("a/1.png", "a/2.png"))
    images.keep("job", data, _entries("a/2.png"))
    assert images.path("job", 1) is None
    assert images.path("job", 0).read_bytes() == (data / "a" / "2.png").read_bytes()  # type: ignore[union-attr]
    assert [p.name for p in (tmp_path / "jobs" / "job").iterdir()] == ["misclassified"]
    images.remove("job")
    assert not (tmp_path / "jobs" / "job").exists()
