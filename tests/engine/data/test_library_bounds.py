"""DatasetLibrary's costs stay bounded: the cached listing, per-dataset limits, streamed adds
and exports (issue 23, items 6, 8 and 9)."""

import io
import os
import threading
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any, List

import numpy as np
import pytest
from PIL import Image

from poets.engine.data import datasets
from poets.engine.data.library import EXPORT_CHUNK, DatasetLibrary
from poets.engine.data.library import summary as summary_module
from poets.engine.data.thumbnails import ThumbnailCache
from poets.engine.errors import DatasetFull
from tests.engine.data.test_library import jpeg, make_zip, photos

pytestmark = pytest.mark.unit


def noise_png(seed: int, side: int) -> bytes:
    """A PNG that does not compress: about 3 x side x side bytes."""
    pixels = np.random.RandomState(seed).randint(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", compress_level=0)
    return out.getvalue()


def make(tmp_path: Path, **kwargs: Any) -> DatasetLibrary:
    return DatasetLibrary(tmp_path / "datasets", ThumbnailCache(tmp_path / "thumbs", 1 << 20), **kwargs)


class Counting:
    """Counts the fingerprints computed (the O(images) part of a listing)."""

    def __init__(self, monkeypatch: Any) -> None:
        self.calls = 0
        real = summary_module.content_fingerprint

        def counted(*args: Any) -> str:
            self.calls += 1
            return real(*args)

        monkeypatch.setattr(summary_module, "content_fingerprint", counted)

    def taken(self) -> int:
        calls, self.calls = self.calls, 0
        return calls


def test_listing_is_cached_until_the_library_changes_the_dataset(tmp_path: Path, monkeypatch: Any) -> None:
    library = make(tmp_path)
    library.create("c")
    infos = library.add("c", "cats", photos(4))
    counting = Counting(monkeypatch)
    first = library.describe("c")
    assert counting.taken() == 1
    for _ in range(20):  # a listing does not look at the images again
        assert library.describe("c") == first
    assert counting.taken() == 0
    assert first["bytes"] == sum(len(data) for _, data in photos(4))

    def fresh() -> dict:  # type: ignore[type-arg]
        described = library.describe("c")
        assert counting.taken() == 1, "the change was not seen"
        if len(described["classes"]) > 1:  # what /retrain would record (it needs two classes)
            assert described["fingerprint"] == datasets.scan(library.root / "c").fingerprint()
        return described

    library.add("c", "dogs", photos(2, start=10))
    assert fresh()["classes"] == {"cats": 4, "dogs": 2}
    library.move("c", infos[0].id, "dogs")
    assert fresh()["classes"] == {"cats": 3, "dogs": 3}
    library.delete_image("c", infos[1].id)
    assert fresh()["images"] == 5
    library.rename_class("c", "dogs", "hounds")
    assert fresh()["classes"] == {"cats": 2, "hounds": 3}
    library.delete_class("c", "hounds")
    assert fresh()["classes"] == {"cats": 2}
    archive = tmp_path / "in.zip"
    archive.write_bytes(make_zip([("owls/{}".format(n), d) for n, d in photos(2, start=20)]))
    library.import_archive("c", archive)
    assert counting.taken() == 1  # the import's own summary
    assert library.describe("c")["classes"] == {"cats": 2, "owls": 2}
    assert counting.taken() == 0
    # Another library on the same folder (another process) changes it: seen too.
    other = make(tmp_path)
    other.add("c", "owls", photos(1, start=30))
    counting.taken()  # other's own summary, for its bounds
    assert fresh()["classes"] == {"cats": 2, "owls": 3}
    # And a file put into a class folder by hand.
    (library.root / "c" / "cats" / "by-hand.jpg").write_bytes(jpeg(99))
    assert fresh()["classes"] == {"cats": 3, "owls": 3}
    library.delete("c")
    library.create("c")
    assert library.describe("c")["images"] == 0


def test_many_callers_of_a_stale_listing_compute_it_once(tmp_path: Path, monkeypatch: Any) -> None:
    library = make(tmp_path)
    library.create("c")
    library.add("c", "cats", photos(3))
    calls = [0]
    gate = threading.Event()
    real = summary_module.content_fingerprint

    def slow(*args: Any) -> str:
        calls[0] += 1
        gate.wait(0.5)  # the other callers arrive meanwhile
        return real(*args)

    monkeypatch.setattr(summary_module, "content_fingerprint", slow)
    results: List[dict] = []  # type: ignore[type-arg]
    threads = [threading.Thread(target=lambda: results.append(library.describe("c"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls[0] == 1 and len(results) == 8 and all(r == results[0] for r in results)


def test_a_dataset_is_bounded_in_images_and_bytes(tmp_path: Path) -> None:
    library = make(tmp_path, max_images=5)
    library.create("c")
    library.add("c", "cats", photos(4))
    with pytest.raises(DatasetFull) as caught:
        library.add("c", "dogs", photos(2, start=10))
    assert "POETS_DATASET_MAX_IMAGES" in caught.value.detail and "5" in caught.value.detail
    assert library.describe("c")["classes"] == {"cats": 4}  # all or none
    assert not list((library.root / "c" / ".incoming").iterdir())
    # Duplicates take no room: the same photos again, and one new one, fit.
    added = library.add("c", "cats", photos(4) + photos(1, start=10))
    assert [info.duplicate for info in added] == [True] * 4 + [False]
    archive = tmp_path / "in.zip"
    archive.write_bytes(make_zip([("owls/{}".format(n), d) for n, d in photos(1, start=20)]))
    with pytest.raises(DatasetFull):
        library.import_archive("c", archive)
    assert library.describe("c")["images"] == 5

    sized = make(tmp_path / "b", max_bytes=3 * len(jpeg(0)))
    sized.create("d")
    sized.add("d", "cats", photos(1))
    with pytest.raises(DatasetFull) as caught:
        sized.add("d", "cats", photos(6, start=1))
    assert "POETS_DATASET_MAX_BYTES" in caught.value.detail
    assert sized.describe("d")["images"] == 1


def test_add_reads_uploaded_files_one_at_a_time(tmp_path: Path) -> None:
    library = make(tmp_path)
    library.create("c")
    blobs = [noise_png(seed, 600) for seed in range(8)]  # about 1 MB each
    spooled = []
    for index, blob in enumerate(blobs):
        path = tmp_path / "part{}".format(index)
        path.write_bytes(blob)
        spooled.append(("p{}.png".format(index), path.open("rb")))
    tracemalloc.start()
    try:
        added = library.add("c", "noise", spooled)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        for _, handle in spooled:
            handle.close()
    assert len(added) == 8 and library.describe("c")["bytes"] == sum(len(b) for b in blobs)
    assert peak < 3 * len(blobs[0]), "the files were held together ({} bytes at peak)".format(peak)


def test_export_streams_a_member_in_bounded_pieces(tmp_path: Path) -> None:
    library = make(tmp_path)
    library.create("c")
    big = noise_png(1, 700)  # about 1.5 MB: several pieces
    assert len(big) > 4 * EXPORT_CHUNK
    library.add("c", "noise", [("big.png", big), *photos(3)])
    pieces = list(library.export("c"))
    assert max(len(piece) for piece in pieces) <= EXPORT_CHUNK + 4096
    assert len(pieces) >= len(big) // EXPORT_CHUNK
    archive = zipfile.ZipFile(io.BytesIO(b"".join(pieces)))
    assert archive.testzip() is None
    contents = {name: archive.read(name) for name in archive.namelist()}
    assert big in contents.values() and len(contents) == 4
    for name, data in contents.items():
        assert (library.root / "c" / name).read_bytes() == data
    assert os.path.basename(sorted(contents)[0]).endswith((".png", ".jpg"))
