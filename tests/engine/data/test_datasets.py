"""poets.engine.data.datasets: poets' split rule, stability, minimum splits, bad files and bad datasets."""

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import pytest

from poets.engine.data import datasets
from poets.engine.errors import Forbidden, InvalidDataset
from tests.engine.imaging import RED, corrupt_jpeg, solid, write


def poets_which_set(file_name: str, validation_percentage: float, testing_percentage: float) -> str:
    """tensorflow-for-poets-2 scripts/retrain.py, create_image_lists, verbatim in substance."""
    max_num_images_per_class = 2**27 - 1
    base_name = os.path.basename(file_name)
    hash_name = re.sub(r"_nohash_.*$", "", base_name)
    hash_name_hashed = hashlib.sha1(hash_name.encode("utf-8")).hexdigest()
    percentage_hash = (int(hash_name_hashed, 16) % (max_num_images_per_class + 1)) * (
        100.0 / max_num_images_per_class
    )
    if percentage_hash < validation_percentage:
        return "validation"
    if percentage_hash < (testing_percentage + validation_percentage):
        return "testing"
    return "training"


NAMES = (
    ["img_{:04d}.jpg".format(i) for i in range(300)]
    + ["speaker{}_nohash_{}.jpg".format(i // 4, i % 4) for i in range(80)]
    + ["Gänseblümchen {}.JPG".format(i) for i in range(20)]
)


@pytest.mark.parametrize("testing, validation", [(10, 10), (20, 5), (0, 30)])
def test_split_matches_poets_formula(testing: int, validation: int) -> None:
    # Many names so the guarantee of one image per split never needs to move any.
    got = datasets.assign_splits(NAMES, testing, validation)
    expected = [poets_which_set(name, validation, testing) for name in NAMES]
    assert got == expected
    # A split asked to be empty stays empty (no test images when testing_percentage=0).
    assert set(got) == ({"training", "validation"} if testing == 0 else {"training", "validation", "testing"})


def test_nohash_keeps_related_files_together() -> None:
    splits = datasets.assign_splits(NAMES, 10, 10)
    by_speaker = {}
    for name, split in zip(NAMES, splits):
        if "_nohash_" in name:
            by_speaker.setdefault(name.split("_nohash_")[0], set()).add(split)
    assert all(len(s) == 1 for s in by_speaker.values())
    assert len({next(iter(s)) for s in by_speaker.values()}) > 1
    # Poets hashes the base name only: folders do not change the split.
    assert datasets.percentage_hash("a/b/x_nohash_1.jpg") == datasets.percentage_hash("x")


def test_every_class_with_three_images_gets_validation_and_test() -> None:
    for size in range(3, 25):
        for offset in range(0, 200, 20):
            names = ["photo_{}.jpg".format(offset + i) for i in range(size)]
            splits = datasets.assign_splits(names, 10, 10)
            assert set(splits) == {"training", "validation", "testing"}, names
            # And the choice is stable: the same names always give the same split.
            assert datasets.assign_splits(list(reversed(names)), 10, 10) == list(reversed(splits))
    assert datasets.assign_splits(["a.jpg", "b.jpg"], 10, 10).count("training") >= 1
    names = ["photo_{}.jpg".format(i) for i in range(5)]
    assert "testing" not in datasets.assign_splits(names, 0, 10)
    assert "validation" not in datasets.assign_splits(names, 10, 0)


def test_split_is_stable_and_adding_images_never_moves_old_ones(flowers_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "flowers"
    shutil.copytree(str(flowers_dir), str(root))

    def splits(folder: Path) -> dict:  # type: ignore[type-arg]
        return {str(r.path.relative_to(folder)): r.split for r in datasets.scan(folder).images}

    before = splits(root)
    assert splits(root) == before
    # Scanning a copy elsewhere (another root, other mtimes) gives the same split.
    moved = tmp_path / "elsewhere"
    shutil.copytree(str(root), str(moved))
    assert splits(moved) == before
    photo = next((root / "daisy").glob("*.jpg"))
    for label in ("daisy", "tulips"):
        for i in range(30):
            shutil.copy(str(photo), str(root / label / "new_{}.jpg".format(i)))
    after = splits(root)
    assert len(after) == len(before) + 60
    assert {name: after[name] for name in before} == before


def test_scan_flowers_small(flowers_dir: Path) -> None:
    dataset = datasets.scan(flowers_dir)
    assert dataset.labels == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert len(dataset.images) == 400
    assert dataset.skipped == []
    for label, counts in dataset.counts().items():
        assert counts["validation"] >= 1 and counts["testing"] >= 1, label
    assert dataset.fingerprint() == datasets.scan(flowers_dir).fingerprint()


def test_unreadable_files_are_skipped_and_reported(tmp_path: Path) -> None:
    for label in ("cats", "dogs"):
        for i in range(4):
            write(tmp_path / label / "{}.jpg".format(i), solid(RED))
    write(tmp_path / "cats" / "notes.txt", b"not a photo")
    write(tmp_path / "cats" / "empty.jpg", b"")
    write(tmp_path / "dogs" / "garbage.png", b"\x00" * 100)
    write(tmp_path / "dogs" / ".DS_Store", b"\x00\x01")
    write(tmp_path / "dogs" / "broken.jpg", corrupt_jpeg())
    dataset = datasets.scan(tmp_path)
    skipped = dict(dataset.skipped)
    assert set(skipped) == {
        str(tmp_path / "cats" / "notes.txt"),
        str(tmp_path / "cats" / "empty.jpg"),
        str(tmp_path / "dogs" / "garbage.png"),
        str(tmp_path / "dogs" / "broken.jpg"),
    }
    assert "not an image file" in skipped[str(tmp_path / "cats" / "notes.txt")]
    assert "not a readable image" in skipped[str(tmp_path / "cats" / "empty.jpg")]
    assert len(dataset.images) == 8


def test_fewer_than_two_classes_is_invalid(tmp_path: Path) -> None:
    for i in range(5):
        write(tmp_path / "only" / "{}.jpg".format(i), solid(RED))
    write(tmp_path / "loose.jpg", solid(RED))
    with pytest.raises(InvalidDataset, match="at least two"):
        datasets.scan(tmp_path)
    with pytest.raises(InvalidDataset, match="at least two"):
        datasets.scan(tmp_path / "only")  # images but no class folders
    with pytest.raises(InvalidDataset, match="not a folder"):
        datasets.scan(tmp_path / "missing")


def test_class_without_usable_image_is_named(tmp_path: Path) -> None:
    for label in ("cats", "dogs"):
        for i in range(3):
            write(tmp_path / label / "{}.jpg".format(i), solid(RED))
    write(tmp_path / "birds" / "readme.txt", b"todo")
    (tmp_path / "fish").mkdir()
    with pytest.raises(InvalidDataset) as info:
        datasets.scan(tmp_path)
    assert "'birds'" in info.value.detail and "'fish'" in info.value.detail


def test_bad_percentages_are_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidDataset, match="below 100"):
        datasets.scan(tmp_path, testing_percentage=60, validation_percentage=40)


def _two_classes(folder: Path) -> None:
    for label in ("cats", "dogs"):
        for i in range(3):
            write(folder / label / "{}.jpg".format(i), solid(RED))


def test_a_class_folder_linked_outside_the_root_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    _two_classes(root / "flowers")
    for i in range(3):
        write(outside / "secret" / "{}.jpg".format(i), solid(RED))
    (root / "flowers" / "stolen").symlink_to(outside / "secret", target_is_directory=True)
    with pytest.raises(Forbidden) as info:
        datasets.scan(root / "flowers", confine_to=root)
    assert "'flowers/stolen'" in info.value.detail
    assert str(tmp_path) not in info.value.detail


def test_an_image_linked_outside_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _two_classes(root / "flowers")
    write(tmp_path / "private.jpg", solid(RED))
    (root / "flowers" / "cats" / "x.jpg").symlink_to(tmp_path / "private.jpg")
    with pytest.raises(Forbidden, match=r"'flowers/cats/x\.jpg'"):
        datasets.scan(root / "flowers", confine_to=root)
    # A linked sub-folder is not followed, but one leading out is named too.
    (root / "flowers" / "cats" / "x.jpg").unlink()
    (root / "flowers" / "dogs" / "more").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(Forbidden, match="'flowers/dogs/more'"):
        datasets.scan(root / "flowers", confine_to=root)


def test_links_that_stay_inside_the_root_are_fine(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _two_classes(root / "shared")
    (root / "flowers").mkdir()
    (root / "flowers" / "cats").symlink_to(root / "shared" / "cats", target_is_directory=True)
    (root / "flowers" / "dogs").symlink_to(root / "shared" / "dogs", target_is_directory=True)
    assert datasets.scan(root / "flowers", confine_to=root).labels == ["cats", "dogs"]


def test_messages_never_show_server_paths(tmp_path: Path) -> None:
    for i in range(3):
        write(tmp_path / "data" / "one" / "only" / "{}.jpg".format(i), solid(RED))
    with pytest.raises(InvalidDataset) as info:
        datasets.scan(tmp_path / "data" / "one", confine_to=tmp_path / "data")
    assert "'one' holds 1 class folder" in info.value.detail
    with pytest.raises(InvalidDataset) as info:
        datasets.scan(tmp_path / "data" / "missing")
    assert str(tmp_path) not in info.value.detail and "'missing'" in info.value.detail


def _upload(job: Path) -> Path:
    """An extracted upload: the dataset inside one top-level folder, one file to skip, a sub-folder."""
    root = job / "pets"
    for label in ("cats", "dogs"):
        for i in range(5):
            write(root / label / "{}.jpg".format(i), solid(RED))
    write(root / "cats" / "more" / "deep.png", solid(RED, fmt="PNG"))
    write(root / "dogs" / "notes.txt", b"not a photo")
    return root


def _load(job: Path, root: Path, testing: float = 20, validation: float = 10, max_pixels: int = 10**6) -> Any:
    return datasets.Dataset.load(job / datasets.SCAN_FILE, root, testing, validation, max_pixels)


def test_a_saved_scan_loads_as_the_same_dataset_without_opening_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = tmp_path / "job"
    root = _upload(job)
    scanned = datasets.scan(root, 20, 10, 10**6, confine_to=job)
    scanned.save(job / datasets.SCAN_FILE)
    assert not list(job.glob("*.partial"))

    def no_opening(*args: object) -> str:
        raise AssertionError("load opened an image")

    monkeypatch.setattr(datasets, "_check_image", no_opening)
    loaded = _load(job, root)
    assert loaded == scanned  # labels, images in order with label and split, skipped, settings
    assert loaded.fingerprint() == scanned.fingerprint()
    assert str(root / "dogs" / "notes.txt") in dict(loaded.skipped)
    # The same scan from another spelling of the folder, and after the job's folder moved.
    assert _load(job, job / "." / "pets") is not None
    moved = tmp_path / "moved"
    job.rename(moved)
    assert [r.path for r in _load(moved, moved / "pets").images] == [
        moved / "pets" / r.path.relative_to(root) for r in scanned.images
    ]


def test_a_scan_kept_in_the_root_is_ignored_by_the_next_scan(tmp_path: Path) -> None:
    root = _upload(tmp_path)
    scanned = datasets.scan(root)
    scanned.save(root / datasets.SCAN_FILE)
    (root / "cats" / datasets.SCAN_FILE).write_text("{}")
    again = datasets.scan(root)
    assert again.labels == scanned.labels and again.skipped == scanned.skipped


def test_a_saved_scan_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    job = tmp_path / "job"
    root = _upload(job)
    datasets.scan(root, 20, 10, 10**6).save(job / datasets.SCAN_FILE)
    assert _load(job, root) is not None
    # Another split, another pixel limit, another folder: scan again.
    assert _load(job, root, testing=10) is None
    assert _load(job, root, validation=20) is None
    assert _load(job, root, max_pixels=10**5) is None
    assert _load(job, job) is None
    # A listed image gone, or made a link, or a class folder made a link.
    image = root / "cats" / "0.jpg"
    data = image.read_bytes()
    image.unlink()
    assert _load(job, root) is None
    write(tmp_path / "elsewhere.jpg", data)
    image.symlink_to(tmp_path / "elsewhere.jpg")
    assert _load(job, root) is None
    image.unlink()
    write(image, data)
    assert _load(job, root) is not None
    shutil.move(str(root / "dogs"), str(tmp_path / "dogs"))
    (root / "dogs").symlink_to(tmp_path / "dogs", target_is_directory=True)
    assert _load(job, root) is None


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"format": 99}',
        '{"format": 1, "root": "pets"}',
        None,  # a path leading out of the root
    ],
)
def test_a_broken_saved_scan_is_refused(tmp_path: Path, content: Optional[str]) -> None:
    job = tmp_path / "job"
    root = _upload(job)
    path = job / datasets.SCAN_FILE
    assert _load(job, root) is None  # none kept
    datasets.scan(root, 20, 10, 10**6).save(path)
    if content is None:
        saved = json.loads(path.read_text())
        saved["images"][0][0] = "../../elsewhere.jpg"
        content = json.dumps(saved)
    path.write_text(content)
    assert _load(job, root) is None


def test_only_a_scanned_dataset_is_saved(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        datasets.Dataset(tmp_path, ["a", "b"], []).save(tmp_path / datasets.SCAN_FILE)
