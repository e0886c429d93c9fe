"""Frozen copies of a dataset for training, and what they record of where they came from.

A snapshot holds the dataset's images (hard links where possible) and :data:`ORIGIN_FILE`:
the dataset's name and the images a person filed from the review inbox
(:data:`REVIEWED_FILE` in the dataset), whose labels the promotion gate trusts.
"""

import json
import os
import shutil
from pathlib import Path
from typing import Iterable, List, Optional, Set, Tuple

# Written into a snapshot: which dataset it is (the scan ignores dot files).
ORIGIN_FILE = ".poets-dataset.json"
# In a dataset's folder: the ids of the images a person filed from the review inbox, one a line.
# The promotion gate trusts their labels (a person's word, from where the model is deployed).
REVIEWED_FILE = ".poets-reviewed"


def record_reviewed(folder: Path, filenames: Iterable[str]) -> None:
    """Add ``filenames`` to the dataset's record of reviewed images (the caller holds its lock)."""
    with open(str(folder / REVIEWED_FILE), "a", encoding="utf-8") as record:
        record.writelines(filename + "\n" for filename in filenames)


def reviewed_in(folder: Path) -> Set[str]:
    """The dataset's record of reviewed images."""
    try:
        return {line.strip() for line in (folder / REVIEWED_FILE).read_text(encoding="utf-8").splitlines()}
    except OSError:
        return set()


def copy_images(folder: Path, members: List[Tuple[str, str]], target: Path) -> None:
    """Link (else copy) each ``(label, filename)`` of the dataset at ``folder`` into ``target``."""
    for label, filename in members:
        (target / label).mkdir(parents=True, exist_ok=True)
        source, copy = folder / label / filename, target / label / filename
        try:
            os.link(str(source), str(copy))
        except OSError:
            shutil.copy2(str(source), str(copy))


def write_origin(target: Path, name: str, reviewed_names: Set[str]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    origin = {"name": name, "reviewed": sorted(reviewed_names)}
    (target / ORIGIN_FILE).write_text(json.dumps(origin), encoding="utf-8")


def snapshot_reviewed(root: Path) -> Set[str]:
    """File names of the images in a :meth:`DatasetLibrary.snapshot` at ``root`` that a person
    filed from the review inbox (empty for any other folder)."""
    try:
        names = json.loads((Path(root) / ORIGIN_FILE).read_text(encoding="utf-8")).get("reviewed")
    except (OSError, ValueError, AttributeError):
        return set()
    return {str(n) for n in names} if isinstance(names, list) else set()


def snapshot_origin(root: Path) -> Optional[str]:
    """The dataset name a :meth:`DatasetLibrary.snapshot` at ``root`` was taken from, if any."""
    try:
        name = json.loads((Path(root) / ORIGIN_FILE).read_text(encoding="utf-8")).get("name")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None
