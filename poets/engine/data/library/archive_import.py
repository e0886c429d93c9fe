"""A zip or tar(.gz) in the poets layout, imported into a dataset.

The archive is extracted safely (:func:`poets.engine.data.archives.extract`) into a work
folder inside the dataset, every file is decoded, and files that are not images or not in
a class folder are skipped and listed. A class folder whose name is not usable refuses
the whole archive before anything is added.
"""

import os
import shutil
import uuid
from pathlib import Path
from typing import Dict, List, Tuple

from poets.engine.data import archives, leftovers
from poets.engine.data.library.intake import Intake, Pending, check_image, stored_name
from poets.engine.data.library.layout import INCOMING
from poets.engine.data.library.names import check_label
from poets.engine.errors import InvalidArchive, InvalidImage

# (added, duplicates, skipped: {"path", "reason"})
Imported = Tuple[int, int, List[Dict[str, str]]]


def import_archive(intake: Intake, name: str, archive: Path, limits: archives.Limits) -> Imported:
    """Add the images of ``archive`` to dataset ``name``: (added, duplicates, skipped)."""
    layout = intake.layout
    folder = layout.dataset_dir(name)
    work = folder / "{}-{}".format(INCOMING, uuid.uuid4().hex)
    try:
        work.mkdir()
    except FileNotFoundError:
        layout.dataset_dir(name)  # deleted meanwhile: 404
        raise
    # Claimed while in use: a crash leaves it to clean_leftovers, a live import never.
    claimed = leftovers.Claim(work)
    try:
        try:
            top = archives.extract(Path(archive), work / "archive", limits)
        except InvalidArchive:
            layout.dataset_dir(name)  # the dataset was deleted under the extraction: 404, not a bad archive
            raise
        pending, skipped = _decoded(top, intake.max_pixels)
        placed = intake.place(name, pending)
    except FileNotFoundError:
        layout.dataset_dir(name)  # the dataset, and the work folder in it, deleted meanwhile: 404
        raise
    finally:
        claimed.release()
        shutil.rmtree(str(work), ignore_errors=True)
    duplicates = sum(1 for info in placed if info.duplicate)
    return len(placed) - duplicates, duplicates, skipped


def _decoded(top: Path, max_pixels: int) -> Tuple[List[Pending], List[Dict[str, str]]]:
    """The images under the extracted ``top``, each read once, ready to place; and what was skipped."""
    skipped: List[Dict[str, str]] = []
    pending: List[Pending] = []
    for entry in sorted(top.iterdir()):
        relative = os.path.relpath(str(entry), str(top))
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            skipped.append({"path": relative, "reason": "not inside a class folder"})
            continue
        label = check_label(entry.name)
        for dirpath, dirnames, filenames in os.walk(str(entry)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                path = Path(dirpath) / filename
                shown = os.path.relpath(str(path), str(top))
                data = path.read_bytes()
                try:
                    suffix = check_image(data, max_pixels)
                except InvalidImage as exc:
                    skipped.append({"path": shown, "reason": exc.detail})
                    continue
                pending.append((label, stored_name(data, suffix), len(data), path))
                del data
    return pending, skipped
