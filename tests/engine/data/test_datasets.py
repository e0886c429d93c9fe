"""poets.engine.data.datasets: poets' split rule, stability, minimum splits, bad files and bad datasets."""

import hashlib
import os
import re
import shutil
from pathlib import Path

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
