"""DatasetLibrary on disk: names, ids, adds, moves (concurrent too), classes, archives, fingerprints."""

import io
import random
import threading
import zipfile
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
from PIL import Image

from poets.engine.data import datasets
from poets.engine.data.library import (
    DatasetLibrary,
    check_dataset_name,
    check_label,
    filename_of,
    image_id,
    snapshot_origin,
)
from poets.engine.data.thumbnails import ThumbnailCache
from poets.engine.errors import Conflict, InvalidArchive, InvalidImage, InvalidInput, NotFound

pytestmark = pytest.mark.unit


def jpeg(seed: int, side: int = 32) -> bytes:
    pixels = np.random.RandomState(seed).randint(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG")
    return out.getvalue()


def photos(count: int, start: int = 0) -> List[Tuple[str, bytes]]:
    return [("p{}.jpg".format(i), jpeg(i)) for i in range(start, start + count)]


@pytest.fixture
def library(tmp_path: Path) -> DatasetLibrary:
    return DatasetLibrary(tmp_path / "datasets", ThumbnailCache(tmp_path / "thumbs", 1 << 20))


@pytest.mark.parametrize(
    "name", ["..", ".", "a/b", "a\\b", "a\x00b", "x" * 65, "", "-a", "a..b", "../etc", "a b"]
)
def test_bad_dataset_names(name: str) -> None:
    with pytest.raises(InvalidInput):
        check_dataset_name(name)


@pytest.mark.parametrize("label", ["..", "a/b", "a\x00b", "l" * 101, ".x", "x ", "x.", "a..b", ""])
def test_bad_labels(label: str) -> None:
    with pytest.raises(InvalidInput):
        check_label(label)


def test_good_names_and_labels() -> None:
    assert check_dataset_name("yard-2.cam_1") == "yard-2.cam_1"
    assert check_label("white roses") == "white roses"
    assert check_label("Cafe\u0301") == "Caf\u00e9"  # NFC, as the dataset scan reads folder names


@pytest.mark.parametrize("filename", ["123_ab-c.jpg", "photo with space.png", "été.jpg", "a.b.c.jpg"])
def test_ids_round_trip_and_are_url_safe(filename: str) -> None:
    ident = image_id(filename)
    assert filename_of(ident) == filename
    assert all(c.isalnum() or c in "-_.~" for c in ident)


@pytest.mark.parametrize(
    "ident", ["../x.jpg", "~Li4vZXRj", "~" + "A" * 500, "", ".hidden.jpg", "~!!!", "a/b.jpg"]
)
def test_bad_ids(ident: str) -> None:
    with pytest.raises(InvalidInput):
        filename_of(ident)


def test_add_list_describe_and_fingerprint_match_the_scan(library: DatasetLibrary) -> None:
    library.create("yard")
    added = library.add("yard", "cats", photos(4))
    library.add("yard", "dogs", photos(3, start=10))
    assert all(not info.duplicate for info in added)
    described = library.describe("yard")
    assert described["classes"] == {"cats": 4, "dogs": 3}
    # The same fingerprint /retrain records when it trains on it with the default split.
    assert described["fingerprint"] == datasets.scan(library.root / "yard").fingerprint()
    total, page = library.images("yard", offset=2, limit=3)
    assert total == 7 and [i.label for i in page] == ["cats", "cats", "dogs"]
    assert library.images("yard", label="dogs")[0] == 3
    again = library.add("yard", "dogs", photos(1))
    assert again[0].duplicate and again[0].label == "cats"
    with pytest.raises(Conflict):
        library.create("yard")
    with pytest.raises(NotFound):
        library.describe("nowhere")
    with pytest.raises(NotFound):
        library.images("yard", label="birds")


def test_non_images_are_refused_whole(library: DatasetLibrary) -> None:
    library.create("strict")
    with pytest.raises(InvalidImage, match=r"notes\.txt"):
        library.add("strict", "cats", [*photos(2), ("notes.txt", b"just text")])
    with pytest.raises(InvalidImage):
        library.add("strict", "cats", [("cut.jpg", jpeg(1)[:200])])
    assert library.describe("strict")["classes"] == {}
    assert not any(p.name != ".incoming" for p in (library.root / "strict").iterdir())


def test_move_delete_and_empty_classes_go(library: DatasetLibrary) -> None:
    library.create("m")
    ident = library.add("m", "cats", photos(1))[0].id
    library.add("m", "dogs", photos(1, start=5))
    moved = library.move("m", ident, "birds")
    assert moved.id == ident and moved.label == "birds"
    assert library.describe("m")["classes"] == {"birds": 1, "dogs": 1}  # cats emptied: removed
    library.delete_image("m", ident)
    with pytest.raises(NotFound):
        library.delete_image("m", ident)
    with pytest.raises(NotFound):
        library.move("m", ident, "cats")
    assert library.describe("m")["classes"] == {"dogs": 1}


def test_concurrent_moves(library: DatasetLibrary) -> None:
    library.create("busy")
    ids = [info.id for info in library.add("busy", "a", photos(12))]
    errors: List[BaseException] = []

    def mover(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(200):
                library.move("busy", rng.choice(ids), rng.choice("abcd"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=mover, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    total, page = library.images("busy", limit=100)
    assert total == 12 and sorted(i.id for i in page) == sorted(ids)


def test_concurrent_moves_from_two_libraries_on_one_folder(tmp_path: Path) -> None:
    """Two API processes share the folder: atomic renames keep every image exactly once."""
    first = DatasetLibrary(tmp_path / "d", ThumbnailCache(tmp_path / "t", 1 << 20))
    second = DatasetLibrary(tmp_path / "d", ThumbnailCache(tmp_path / "t", 1 << 20))
    first.create("shared")
    ids = [info.id for info in first.add("shared", "a", photos(6))]

    errors: List[BaseException] = []

    def mover(library: DatasetLibrary, seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(150):
                library.move("shared", rng.choice(ids), rng.choice("ab"))
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=mover, args=(lib, seed))
        for seed, lib in enumerate([first, second, first, second])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    total, page = first.images("shared", limit=100)
    assert total == 6 and sorted(i.id for i in page) == sorted(ids)


def test_rename_merge_delete_class(library: DatasetLibrary) -> None:
    library.create("c")
    library.add("c", "cat", photos(2))
    library.add("c", "cats", photos(3, start=4))
    assert library.rename_class("c", "cat", "cats")["classes"] == {"cats": 5}
    assert library.rename_class("c", "cats", "felines")["classes"] == {"felines": 5}
    with pytest.raises(NotFound):
        library.rename_class("c", "..", "x")
    with pytest.raises(InvalidInput):
        library.rename_class("c", "felines", "../x")
    assert library.delete_class("c", "felines") == 5
    assert library.describe("c")["classes"] == {}


def make_zip(members: List[Tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members:
            archive.writestr(name, data)
    return out.getvalue()


def test_import_export_round_trip(library: DatasetLibrary, tmp_path: Path) -> None:
    library.create("z")
    archive = tmp_path / "in.zip"
    archive.write_bytes(
        make_zip(
            [("top/cats/{}".format(n), d) for n, d in photos(3)]
            + [("top/dogs/{}".format(n), d) for n, d in photos(2, start=9)]
            + [("top/dogs/x.txt", b"text"), ("top/y.jpg", jpeg(50))]
        )
    )
    summary = library.import_archive("z", archive)
    assert summary["added"] == 5 and summary["classes"] == {"cats": 3, "dogs": 2}
    assert {s["path"] for s in summary["skipped"]} == {"dogs/x.txt", "y.jpg"}
    exported = b"".join(library.export("z"))
    names = zipfile.ZipFile(io.BytesIO(exported)).namelist()
    assert sorted(n.split("/")[0] for n in names) == ["cats", "cats", "cats", "dogs", "dogs"]
    evil = tmp_path / "evil.zip"
    evil.write_bytes(make_zip([("../../x.jpg", jpeg(1))]))
    with pytest.raises(InvalidArchive):
        library.import_archive("z", evil)
    assert not [p for p in (library.root / "z").iterdir() if p.name.startswith(".incoming-")]


def test_an_import_reads_each_file_once_and_counts_duplicates(
    library: DatasetLibrary, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    library.create("z")
    library.add("z", "cats", [photos(1)[0]])
    archive = tmp_path / "in.zip"
    # The photo already in the dataset, a copy of it in another class, and two new ones.
    cats = photos(3)
    archive.write_bytes(
        make_zip([("cats/{}".format(n), d) for n, d in cats] + [("dogs/again.jpg", cats[1][1])])
    )
    reads: Dict[str, int] = {}
    real = Path.read_bytes

    def counted(path: Path) -> bytes:
        reads[path.name] = reads.get(path.name, 0) + 1
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", counted)
    summary = library.import_archive("z", archive)
    assert reads == {"again.jpg": 1, **{n: 1 for n, _ in cats}}
    assert (summary["added"], summary["duplicates"]) == (2, 2)
    assert summary["classes"] == {"cats": 3}


def test_thumbnails_are_small_cached_and_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from poets.engine.data import thumbnails

    made: List[int] = []
    original = thumbnails.make_thumbnail

    def counted(*args: object, **kwargs: object) -> bytes:
        made.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(thumbnails, "make_thumbnail", counted)
    cache = ThumbnailCache(tmp_path / "thumbs", 30000)
    library = DatasetLibrary(tmp_path / "d", cache)
    library.create("t")
    infos = library.add("t", "big", [("b{}.jpg".format(i), jpeg(i, side=600)) for i in range(12)])
    # Cached: the second ask is read back from disk, not made again.
    first = library.thumbnail("t", infos[0].id)
    assert len(made) == 1 and cache.size() == len(first)
    assert library.thumbnail("t", infos[0].id) == first and len(made) == 1
    total = 0
    for info in infos:
        data = library.thumbnail("t", info.id)
        total += len(data)
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG" and max(image.size) <= 160
    # Bounded: more was made than the bound holds; the cache kept some of it, within the bound.
    assert total > 30000 and len(made) == 12
    cache.trim()
    assert 0 < cache.size() <= 30000


def test_snapshot_is_frozen_and_named(library: DatasetLibrary, tmp_path: Path) -> None:
    library.create("s")
    library.add("s", "a", photos(3))
    library.add("s", "b", photos(3, start=3))
    fingerprint = library.describe("s")["fingerprint"]
    copy = library.snapshot("s", tmp_path / "copy")
    library.add("s", "a", photos(2, start=20))
    assert snapshot_origin(copy) == "s"
    assert datasets.scan(copy).fingerprint() == fingerprint
    assert snapshot_origin(library.root / "s") is None


def test_delete_dataset(library: DatasetLibrary) -> None:
    library.create("gone")
    library.add("gone", "a", photos(1))
    library.delete("gone")
    assert "gone" not in library.names()
    with pytest.raises(NotFound):
        library.delete("gone")
