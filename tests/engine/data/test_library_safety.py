"""DatasetLibrary hardening: links leading out, reserved class names, deletes racing changes,
all-or-none merges, and what crashes leave behind (issue 23)."""

import io
import os
import shutil
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
import pytest
from PIL import Image

from poets.engine.data import datasets, leftovers
from poets.engine.data.library import DatasetLibrary, check_label
from poets.engine.data.thumbnails import ThumbnailCache
from poets.engine.errors import Conflict, Forbidden, InvalidInput, NotFound
from tests.waiting import wait_until

pytestmark = pytest.mark.unit


def jpeg(seed: int) -> bytes:
    pixels = np.random.RandomState(seed).randint(0, 256, (16, 16, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture
def library(tmp_path: Path) -> DatasetLibrary:
    return DatasetLibrary(tmp_path / "datasets", ThumbnailCache(tmp_path / "thumbs", 1 << 20))


def _zip(members: Dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


# -- 3: symbolic links leading out of the datasets folder are never followed ---------------------


@pytest.fixture
def linked(library: DatasetLibrary, tmp_path: Path) -> Dict[str, Any]:
    """Dataset 'yard' (class 'roses', one image) with a class, an image and a sibling dataset
    that are symbolic links to a folder outside the library."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(jpeg(1))
    library.create("yard")
    own = library.add("yard", "roses", [(None, jpeg(2))])[0]
    yard = library.root / "yard"
    os.symlink(str(outside), str(yard / "elsewhere"))  # a class leading out
    os.symlink(str(outside / "secret.jpg"), str(yard / "roses" / "out.jpg"))  # an image leading out
    os.symlink(str(outside), str(library.root / "escape"))  # a dataset leading out
    return {"outside": outside, "own": own.id}


def test_reads_never_follow_links_out(
    library: DatasetLibrary, linked: Dict[str, Any], tmp_path: Path
) -> None:
    assert library.names() == ["yard"]
    assert library.describe("yard")["classes"] == {"roses": 1}
    total, page = library.images("yard")
    assert total == 1 and [info.id for info in page] == [linked["own"]]
    for image in ("out.jpg", "secret.jpg"):  # an image link; an image in a class link
        with pytest.raises(Forbidden, match="symbolic link") as caught:
            library.image_path("yard", image)
        assert str(tmp_path) not in caught.value.detail
        with pytest.raises(Forbidden):
            library.thumbnail("yard", image)
    with pytest.raises(Forbidden):
        library.images("yard", label="elsewhere")
    with pytest.raises(Forbidden, match="'escape'"):
        library.describe("escape")
    exported = zipfile.ZipFile(io.BytesIO(b"".join(library.export("yard")))).namelist()
    assert exported == ["roses/{}".format(linked["own"])]
    snapshot = library.snapshot("yard", tmp_path / "snap")
    assert sorted(p.name for p in snapshot.iterdir() if not p.name.startswith(".")) == ["roses"]
    assert [p.name for p in (snapshot / "roses").iterdir()] == [linked["own"]]


def test_changes_never_follow_links_out(library: DatasetLibrary, linked: Dict[str, Any]) -> None:
    outside = linked["outside"]
    attempts: List[Callable[[], Any]] = [
        lambda: library.delete_image("yard", "out.jpg"),
        lambda: library.delete_image("yard", "secret.jpg"),
        lambda: library.move("yard", "secret.jpg", "roses"),
        lambda: library.move("yard", "out.jpg", "tulips"),
        lambda: library.move("yard", linked["own"], "elsewhere"),
        lambda: library.add("yard", "elsewhere", [(None, jpeg(3))]),
        lambda: library.delete_class("yard", "elsewhere"),
        lambda: library.rename_class("yard", "elsewhere", "tulips"),
        lambda: library.rename_class("yard", "roses", "elsewhere"),
        lambda: library.import_archive("yard", _archive(library, {"elsewhere/new.jpg": jpeg(4)})),
        lambda: library.delete("escape"),
    ]
    for attempt in attempts:
        with pytest.raises(Forbidden):
            attempt()
    assert sorted(p.name for p in outside.iterdir()) == ["secret.jpg"]
    assert (outside / "secret.jpg").read_bytes() == jpeg(1)
    assert library.describe("yard")["classes"] == {"roses": 1}


def _archive(library: DatasetLibrary, members: Dict[str, bytes]) -> Path:
    path = library.root.parent / "upload.zip"
    path.write_bytes(_zip(members))
    return path


def test_links_inside_the_library_still_work(library: DatasetLibrary) -> None:
    library.create("yard")
    library.add("yard", "roses", [(None, jpeg(5))])
    os.symlink(str(library.root / "yard" / "roses"), str(library.root / "yard" / "alias"))
    assert library.describe("yard")["classes"] == {"alias": 1, "roses": 1}


# -- 11: names the scan ignores are refused as class names ---------------------------------------


@pytest.mark.parametrize("name", datasets.IGNORED_FOLDERS)
def test_names_the_scan_ignores_are_refused(library: DatasetLibrary, name: str) -> None:
    assert datasets.is_ignored(name)
    with pytest.raises(InvalidInput, match="reserved"):
        check_label(name)
    library.create("yard")
    image = library.add("yard", "roses", [(None, jpeg(6))])[0]
    with pytest.raises(InvalidInput, match="reserved"):
        library.add("yard", name, [(None, jpeg(7))])  # also how review filing adds
    with pytest.raises(InvalidInput, match="reserved"):
        library.move("yard", image.id, name)
    with pytest.raises(InvalidInput, match="reserved"):
        library.rename_class("yard", "roses", name)
    assert library.describe("yard")["classes"] == {"roses": 1}
    assert sorted(os.listdir(str(library.root / "yard" / "roses"))) == [image.filename]


# -- 12: a change racing a delete of its dataset is a 404 (NotFound), never an OSError ------------


def _racing_a_delete(library: DatasetLibrary, change: Callable[[], Any]) -> BaseException:
    """Run ``change`` so that it passes its first look at the dataset, then the dataset is
    deleted before ``change`` gets the dataset's lock; returns what ``change`` raised."""
    outcome: Dict[str, BaseException] = {}

    def run() -> None:
        try:
            change()
        except BaseException as exc:  # handed to the test
            outcome["raised"] = exc

    with library._lock("yard"):
        thread = threading.Thread(target=run)
        thread.start()
        # Two users of the lock: this test and ``change``, past its first look and waiting.
        wait_until(lambda: library.locks._locks["yard"].users == 2, 30, "the change waiting for the lock")
        doomed = library.root / ".deleting-by-hand"
        os.rename(str(library.root / "yard"), str(doomed))
        shutil.rmtree(str(doomed))
    thread.join(30)
    assert not thread.is_alive()
    return outcome.get("raised", AssertionError("no error"))


@pytest.mark.parametrize(
    "change",
    ["add", "move", "delete_image", "rename_class", "merge", "delete_class", "delete", "import_archive"],
)
def test_a_change_racing_a_delete_is_not_found(library: DatasetLibrary, change: str) -> None:
    library.create("yard")
    image = library.add("yard", "roses", [(None, jpeg(8))])[0]
    library.add("yard", "tulips", [(None, jpeg(9))])
    archive = _archive(library, {"daisy/new.jpg": jpeg(10)})
    changes: Dict[str, Callable[[], Any]] = {
        "add": lambda: library.add("yard", "roses", [(None, jpeg(11))]),
        "move": lambda: library.move("yard", image.id, "daisy"),
        "delete_image": lambda: library.delete_image("yard", image.id),
        "rename_class": lambda: library.rename_class("yard", "roses", "daisy"),
        "merge": lambda: library.rename_class("yard", "roses", "tulips"),
        "delete_class": lambda: library.delete_class("yard", "roses"),
        "delete": lambda: library.delete("yard"),
        "import_archive": lambda: library.import_archive("yard", archive),
    }
    raised = _racing_a_delete(library, changes[change])
    assert isinstance(raised, NotFound), repr(raised)
    assert not (library.root / "yard").exists()


def test_an_import_whose_dataset_is_deleted_while_decoding_is_not_found(
    library: DatasetLibrary, monkeypatch: Any
) -> None:
    from poets.engine.data.library import archive_import as import_module

    library.create("yard")
    archive = _archive(library, {"daisy/1.jpg": jpeg(12), "daisy/2.jpg": jpeg(13)})
    real_check = import_module.check_image

    def check_then_delete(data: bytes, max_pixels: int) -> str:
        if (library.root / "yard").exists():
            library.delete("yard")  # with the import's work folder inside it
        return real_check(data, max_pixels)

    monkeypatch.setattr(import_module, "check_image", check_then_delete)
    with pytest.raises(NotFound):
        library.import_archive("yard", archive)


# -- 13: merging classes is all or none ---------------------------------------------------------


def test_a_merge_that_clashes_moves_nothing(library: DatasetLibrary) -> None:
    library.create("yard")
    added = library.add("yard", "roses", [(None, jpeg(seed)) for seed in range(12, 17)])
    names = sorted(info.filename for info in added)
    library.add("yard", "tulips", [(None, jpeg(20))])
    # The last file in order also sits in the target: a loop moving as it checks moved the others.
    yard = library.root / "yard"
    shutil.copy2(str(yard / "roses" / names[-1]), str(yard / "tulips" / names[-1]))
    with pytest.raises(Conflict, match="nothing was moved") as caught:
        library.rename_class("yard", "roses", "tulips")
    assert names[-1] in caught.value.detail
    assert sorted(os.listdir(str(yard / "roses"))) == names
    assert len(os.listdir(str(yard / "tulips"))) == 2
    # Without the clash the merge goes through whole.
    (yard / "tulips" / names[-1]).unlink()
    assert library.rename_class("yard", "roses", "tulips")["classes"] == {"tulips": 6}


def test_a_merge_failing_half_way_is_undone(library: DatasetLibrary, monkeypatch: Any) -> None:
    library.create("yard")
    names = sorted(
        info.filename for info in library.add("yard", "roses", [(None, jpeg(s)) for s in range(3)])
    )
    library.add("yard", "tulips", [(None, jpeg(21))])
    real_rename = os.rename
    calls = []

    def failing_rename(source: str, target: str) -> None:
        calls.append(source)
        if len(calls) == 3:
            raise OSError(5, "Input/output error")
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError):
        library.rename_class("yard", "roses", "tulips")
    monkeypatch.setattr(os, "rename", real_rename)
    assert sorted(os.listdir(str(library.root / "yard" / "roses"))) == names
    assert len(os.listdir(str(library.root / "yard" / "tulips"))) == 1


# -- 10: leftovers of crashes and deletes are cleaned; lock files and the lock table stay bounded --


def _age(path: Path, seconds: float = 7200.0) -> Path:
    then = time.time() - seconds
    os.utime(str(path), (then, then))
    return path


def test_leftovers_are_cleaned(library: DatasetLibrary, tmp_path: Path) -> None:
    library.create("yard")
    library.add("yard", "roses", [(None, jpeg(30))])
    yard = library.root / "yard"
    crashed = yard / ".incoming-crashed"
    (crashed / "archive" / "roses").mkdir(parents=True)
    (crashed / "archive" / "roses" / "1.jpg").write_bytes(b"x" * 1000)
    _age(crashed)
    busy = _age(_mkdir(yard / ".incoming-busy"))  # an import under way in some process
    fresh = _mkdir(yard / ".incoming-fresh")  # just made, not claimed yet
    (yard / ".incoming").mkdir(exist_ok=True)  # add() made it
    partial = yard / ".incoming" / "abc"
    partial.write_bytes(b"half")
    _age(partial)
    doomed_class = _mkdir(yard / ".deleting-0123")
    doomed_dataset = _mkdir(library.root / ".deleting-old-0123")
    (doomed_dataset / "roses").mkdir()
    uploads = tmp_path / "uploads"
    crashed_upload = _age(leftovers.import_upload(uploads))
    busy_upload = _age(leftovers.import_upload(uploads))
    other_upload = uploads / "job-1.upload"
    other_upload.write_bytes(b"a /retrain upload: not ours")
    _age(other_upload)
    with leftovers.Claim(busy), leftovers.Claim(busy_upload):
        removed = library.clean_leftovers()
        removed_uploads = leftovers.clean_import_uploads(uploads)
    assert removed == sorted(
        ["yard/.incoming-crashed", "yard/.incoming/abc", "yard/.deleting-0123", ".deleting-old-0123"]
    )
    assert removed_uploads == [crashed_upload]
    for gone in (crashed, partial, doomed_class, doomed_dataset, crashed_upload):
        assert not os.path.lexists(str(gone)), gone
    for kept in (busy, fresh, busy_upload, other_upload):
        assert kept.exists(), kept
    assert library.describe("yard")["classes"] == {"roses": 1}
    # Released, the busy ones go too once old (a claim held by a crashed process is gone with it).
    assert library.clean_leftovers() == ["yard/.incoming-busy"]
    assert leftovers.clean_import_uploads(uploads) == [busy_upload]


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def test_lock_files_and_the_lock_table_stay_bounded(library: DatasetLibrary, tmp_path: Path) -> None:
    locks = library.root / ".locks"
    for index in range(20):
        name = "set{}".format(index)
        library.create(name)
        library.add(name, "roses", [(None, jpeg(40))])
        library.delete(name)
    assert library.locks._locks == {}  # nothing in use: no entry
    assert sorted(os.listdir(str(locks))) == []  # a delete takes its lock file along
    # Lock files of datasets gone in other ways (an older version, a crash) are swept;
    # those of existing datasets, and one held right now, stay.
    library.create("kept")
    library.add("kept", "roses", [(None, jpeg(41))])
    for name in ("gone", "held"):
        (locks / (name + ".lock")).write_text("")
    other = DatasetLibrary(library.root, library.thumbnails)
    with other._lock("held"):
        assert library.clean_leftovers() == [".locks/gone.lock"]
    assert sorted(os.listdir(str(locks))) == ["held.lock", "kept.lock"]
    assert library.clean_leftovers() == [".locks/held.lock"]


def test_a_lock_file_removed_while_waited_for_is_locked_again(
    library: DatasetLibrary, monkeypatch: Any
) -> None:
    """A waiter that opened the lock file before its holder removed it must not take the lock
    on that removed file (someone else may hold the new one): it locks the current file."""
    import fcntl

    library.create("yard")
    with library._lock("yard"):
        pass
    path = library.root / ".locks" / "yard.lock"
    real_flock = fcntl.flock
    opened, go_on = threading.Event(), threading.Event()

    def flock(fd: int, operation: int) -> None:
        if threading.current_thread().name == "waiter" and not go_on.is_set():
            opened.set()  # the waiter holds the old file open
            go_on.wait(30)
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    got: Dict[str, Any] = {}
    waiter = threading.Thread(
        target=lambda: got.update(
            handle=DatasetLibrary(library.root, library.thumbnails).locks._lock_file("yard")
        ),
        name="waiter",
    )
    waiter.start()
    assert opened.wait(30)
    path.unlink()  # as its holder does on a delete
    holder = library.locks._lock_file("yard")  # the next one locks a new file
    go_on.set()
    holder.close()
    waiter.join(30)
    handle = got["handle"]
    try:
        assert os.path.samestat(os.fstat(handle.fileno()), os.stat(str(path)))
    finally:
        handle.close()
