"""Datasets in the TensorFlow for Poets layout: one sub-folder per label.

The split into training, validation and testing follows poets' rule: the SHA-1 of
the file name (ignoring anything after ``_nohash_``) picks the set, so adding
images never moves old ones. Unlike poets, every class with three or more images
gets at least one validation and one test image.
"""

import hashlib
import json
import logging
import os
import re
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from PIL import Image

from poets.engine.data.images import DEFAULT_MAX_PIXELS, FORMATS, IMAGE_SUFFIXES
from poets.engine.errors import Forbidden, InvalidDataset

log = logging.getLogger(__name__)

SPLITS = ("training", "validation", "testing")
_MAX_NUM_IMAGES_PER_CLASS = 2**27 - 1  # poets' constant: keeps its split identical
# Folder names the scan never reads as a class or sub-folder (archivers' metadata). With names
# starting with a dot they make up is_ignored(), which the library's class-name check shares:
# a class by such a name would vanish from the scan and the API while its images stay on disk.
IGNORED_FOLDERS = ("__MACOSX",)


def is_ignored(name: str) -> bool:
    """Whether the scan passes over a folder of this name (hidden, or an archiver's)."""
    return name.startswith(".") or name in IGNORED_FOLDERS


# Where POST /retrain keeps its scan beside a job's private copy of the dataset (a dot file:
# the scan and the library ignore it). The worker reads it instead of scanning again.
SCAN_FILE = ".poets-scan.json"
_SCAN_FORMAT = 1


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    label: str
    split: str


@dataclass
class Dataset:
    """A scanned, split dataset.

    Attributes:
        root: the folder.
        labels: class names, sorted; a class's index is its position here.
        images: every usable image with its label and split.
        skipped: (path, reason) for every file left out.
        testing_percentage, validation_percentage, max_pixels: what the scan used
            (None for a dataset not made by :func:`scan`); :meth:`load` checks them.
    """

    root: Path
    labels: List[str]
    images: List[ImageRecord]
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    testing_percentage: Optional[float] = None
    validation_percentage: Optional[float] = None
    max_pixels: Optional[int] = None

    def split(self, name: str) -> List[ImageRecord]:
        return [image for image in self.images if image.split == name]

    def counts(self) -> Dict[str, Dict[str, int]]:
        """Images per label per split."""
        table = {label: {split: 0 for split in SPLITS} for label in self.labels}
        for image in self.images:
            table[image.label][image.split] += 1
        return table

    def fingerprint(self) -> str:
        """Identifies the files (names and sizes) and the split."""
        digest = hashlib.sha1()
        for image in sorted(self.images, key=lambda record: str(record.path)):
            relative = os.path.relpath(str(image.path), str(self.root))
            line = "{}|{}|{}|{}\n".format(image.label, relative, image.path.stat().st_size, image.split)
            digest.update(line.encode("utf-8", "surrogateescape"))
        return digest.hexdigest()[:16]

    def save(self, path: Path) -> None:
        """Write the scan to ``path`` (JSON, atomically) for :meth:`load`.

        Paths are kept relative to the root, and the root relative to ``path``'s folder,
        so the file stays true wherever the folder is. Only a scanned dataset can be saved.
        """
        if self.testing_percentage is None or self.validation_percentage is None or self.max_pixels is None:
            raise ValueError("only a dataset made by scan() can be saved")
        path = Path(path)
        root = str(self.root)
        content = {
            "format": _SCAN_FORMAT,
            "root": os.path.relpath(os.path.abspath(root), os.path.abspath(str(path.parent))),
            "testing_percentage": self.testing_percentage,
            "validation_percentage": self.validation_percentage,
            "max_pixels": self.max_pixels,
            "labels": self.labels,
            "images": [[os.path.relpath(str(r.path), root), r.label, r.split] for r in self.images],
            "skipped": [[os.path.relpath(p, root), reason] for p, reason in self.skipped],
        }
        partial = path.with_name(path.name + ".partial")
        # ASCII JSON: names that are not UTF-8 (surrogate escapes) survive the round trip.
        partial.write_text(json.dumps(content), encoding="ascii")
        os.replace(str(partial), str(path))

    @classmethod
    def load(
        cls,
        path: Path,
        root: Path,
        testing_percentage: float,
        validation_percentage: float,
        max_pixels: int,
    ) -> Optional["Dataset"]:
        """The dataset :meth:`save` wrote, or None (logged) when it cannot stand for a scan now.

        None when the file is missing or unreadable, was written for another folder,
        split percentages or pixel limit, or lists an image that is no longer a plain
        file under ``root`` (missing, or a symbolic link anywhere on its way): the caller
        then scans. Only for folders nobody changes after the scan (an upload, a snapshot):
        files added since are not seen, and images are not opened again.
        """
        path, root = Path(path), Path(root)
        try:
            content = json.loads(path.read_text(encoding="ascii"))
            dataset = cls._from_json(content, path, root)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            log.warning("scan %s not used (%s); scanning again", path, exc)
            return None
        expected = (float(testing_percentage), float(validation_percentage), int(max_pixels))
        used = (dataset.testing_percentage, dataset.validation_percentage, dataset.max_pixels)
        if used != expected:
            log.info("scan %s was made with %s, not %s; scanning again", path, used, expected)
            return None
        problem = _not_plain_files(root, [r.path for r in dataset.images])
        if problem:
            log.warning("scan %s not used (%s); scanning again", path, problem)
            return None
        return dataset

    @classmethod
    def _from_json(cls, content: Dict[str, Any], path: Path, root: Path) -> "Dataset":
        if content.get("format") != _SCAN_FORMAT:
            raise ValueError("format {!r}".format(content.get("format")))
        recorded = os.path.normpath(os.path.join(os.path.abspath(str(path.parent)), str(content["root"])))
        if recorded != os.path.normpath(os.path.abspath(str(root))):
            raise ValueError("written for another folder")
        labels = [str(label) for label in content["labels"]]
        images = []
        for relative, label, split in content["images"]:
            if label not in labels or split not in SPLITS:
                raise ValueError("image {!r} has label {!r}, split {!r}".format(relative, label, split))
            images.append(ImageRecord(root / _inside(str(relative)), str(label), str(split)))
        skipped = [(str(root / _inside(str(p))), str(reason)) for p, reason in content["skipped"]]
        return cls(
            root,
            labels,
            images,
            skipped,
            float(content["testing_percentage"]),
            float(content["validation_percentage"]),
            int(content["max_pixels"]),
        )


def _inside(relative: str) -> str:
    """``relative`` when it names something under the root, else ValueError."""
    if os.path.isabs(relative) or ".." in Path(relative).parts or not relative:
        raise ValueError("{!r} is not inside the dataset".format(relative))
    return relative


def _not_plain_files(root: Path, paths: List[Path]) -> str:
    """Why one of ``paths`` is not a plain file reached from ``root`` without a symbolic link, or ''."""
    checked = set()  # folders known to be real folders
    for path in paths:
        relative = Path(os.path.relpath(str(path), str(root)))
        folder = root
        for part in relative.parts[:-1]:
            folder = folder / part
            if folder in checked:
                continue
            try:
                mode = os.lstat(str(folder)).st_mode
            except OSError:
                return "{} is gone".format(relative)
            if not stat.S_ISDIR(mode):
                return "{} is not a folder".format(folder.relative_to(root))
            checked.add(folder)
        try:
            mode = os.lstat(str(path)).st_mode
        except OSError:
            return "{} is gone".format(relative)
        if not stat.S_ISREG(mode):
            return "{} is not a plain file".format(relative)
    return ""


def percentage_hash(file_name: str) -> float:
    """Poets' stable position of a file in [0, 100], from its name alone."""
    hash_name = re.sub(r"_nohash_.*$", "", os.path.basename(file_name))
    hashed = int(hashlib.sha1(hash_name.encode("utf-8", "surrogateescape")).hexdigest(), 16)
    return (hashed % (_MAX_NUM_IMAGES_PER_CLASS + 1)) * (100.0 / _MAX_NUM_IMAGES_PER_CLASS)


def assign_splits(
    file_names: List[str], testing_percentage: float, validation_percentage: float
) -> List[str]:
    """The split of each file of one class.

    With three or more files, each split with a non-zero percentage gets at least
    one: the file nearest to the split's hash range is moved there, so the choice
    is stable too.
    """
    ranks = [percentage_hash(name) for name in file_names]
    splits = []
    for rank in ranks:
        if rank < validation_percentage:
            splits.append("validation")
        elif rank < validation_percentage + testing_percentage:
            splits.append("testing")
        else:
            splits.append("training")
    if len(file_names) >= 3:
        wanted = {
            "validation": validation_percentage > 0,
            "testing": testing_percentage > 0,
            "training": True,
        }
        for target in ("validation", "testing", "training"):
            # A split the caller set to 0% stays empty.
            if target in splits or not wanted[target]:
                continue
            donors = [s for s in SPLITS if splits.count(s) > 1]
            donor = max(donors, key=splits.count)
            candidates = [i for i, s in enumerate(splits) if s == donor]
            splits[min(candidates, key=lambda i: ranks[i])] = target
    return splits


def _label_of(folder: Path) -> str:
    return unicodedata.normalize("NFC", folder.name).strip()


def _check_image(path: Path, max_pixels: int) -> str:
    """Why the file is not usable, or '' when its header looks fine (cheap: no decode)."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return "not an image file (use {})".format(", ".join(IMAGE_SUFFIXES))
    try:
        with Image.open(str(path)) as image:
            if image.format not in FORMATS:
                return "unsupported format {}".format(image.format)
            width, height = image.size
    except Image.DecompressionBombError:
        return "too many pixels"
    except Exception:
        return "not a readable image"
    if width * height > max_pixels:
        return "{}x{} is over the pixel limit {}".format(width, height, max_pixels)
    return ""


class _Confinement:
    """Refuses dataset entries whose real path leaves ``limit`` (symbolic links out of it)."""

    def __init__(self, limit: Optional[Path]) -> None:
        self.limit = os.path.realpath(str(limit)) if limit is not None else None

    def shown(self, path: Path) -> str:
        """``path`` as messages show it: relative to the limit, never the server's full path."""
        if self.limit is None:
            return Path(path).name or "."
        return os.path.relpath(os.path.abspath(str(path)), self.limit)

    def check(self, path: Path) -> None:
        if self.limit is None:
            return
        real = os.path.realpath(str(path))
        if real != self.limit and not real.startswith(self.limit.rstrip(os.sep) + os.sep):
            raise Forbidden(
                "The dataset entry {!r} leads outside the data folder through a "
                "symbolic link: copy the images into the dataset instead of linking "
                "them.".format(self.shown(path))
            )


def _check_root(
    root: Path, confinement: _Confinement, testing_percentage: float, validation_percentage: float
) -> None:
    """InvalidDataset unless ``root`` is a folder and the percentages leave images to train on."""
    if not root.is_dir():
        raise InvalidDataset(
            "{!r} is not a folder: give a folder with one sub-folder of images per label.".format(
                confinement.shown(root)
            )
        )
    confinement.check(root)
    if not 0 <= testing_percentage + validation_percentage < 100:
        raise InvalidDataset("testing_percentage + validation_percentage must be below 100.")


def _usable_images(
    folder: Path, max_pixels: int, confinement: _Confinement, skipped: List[Tuple[str, str]]
) -> List[Path]:
    """The usable images under one class folder, in order; unusable files go to ``skipped``."""
    usable: List[Path] = []
    for dirpath, dirnames, filenames in os.walk(str(folder)):
        dirnames[:] = sorted(d for d in dirnames if not is_ignored(d))
        for name in dirnames:  # os.walk does not follow linked folders: say so if one leads out
            if os.path.islink(os.path.join(dirpath, name)):
                confinement.check(Path(dirpath) / name)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if path.is_symlink():
                confinement.check(path)
            reason = _check_image(path, max_pixels)
            if reason:
                skipped.append((str(path), reason))
            else:
                usable.append(path)
    return usable


def _check_classes(root: Path, confinement: _Confinement, labels: List[str], empty: List[str]) -> None:
    """InvalidDataset for a class without images, fewer than two classes, or two with one label."""
    if empty:
        raise InvalidDataset(
            "Class folder(s) {} in {!r} hold no usable image: add JPEG, PNG, GIF, "
            "BMP or WebP files or remove the folder.".format(
                ", ".join(repr(e) for e in empty[:20]), confinement.shown(root)
            )
        )
    if len(set(labels)) < 2:
        raise InvalidDataset(
            "{!r} holds {} class folder(s) with images; retraining needs at least "
            "two, one sub-folder per label.".format(confinement.shown(root), len(set(labels)))
        )
    if len(set(labels)) != len(labels):
        raise InvalidDataset(
            "Two class folders in {!r} give the same label after normalising names: rename one.".format(
                confinement.shown(root)
            )
        )


def scan(
    root: Path,
    testing_percentage: float = 10,
    validation_percentage: float = 10,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    confine_to: Optional[Path] = None,
) -> Dataset:
    """Read a poets-layout folder: list the images, skip and report unusable files, split.

    Args:
        root: the dataset folder.
        confine_to: when given (POETS_DATA_ROOT, an upload's folder), every class folder,
            sub-folder and image must really be inside it: a symbolic link leading out is
            refused (:class:`Forbidden`, naming the entry relative to it). Messages name
            folders relative to it; without it, by their name only.

    Raises:
        InvalidDataset: no such folder, fewer than two classes, or a class without a
            usable image. Raised before any image is decoded.
        Forbidden: an entry leads outside ``confine_to``.
    """
    root = Path(root)
    confinement = _Confinement(confine_to)
    _check_root(root, confinement, testing_percentage, validation_percentage)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not is_ignored(p.name))
    images: List[ImageRecord] = []
    skipped: List[Tuple[str, str]] = []
    labels: List[str] = []
    empty: List[str] = []
    for folder in folders:
        confinement.check(folder)
        label = _label_of(folder)
        usable = _usable_images(folder, max_pixels, confinement, skipped)
        if not usable:
            empty.append(label)
            continue
        if len(usable) < 20:
            log.warning("class %r has only %d images; 20 or more work better", label, len(usable))
        labels.append(label)
        splits = assign_splits([p.name for p in usable], testing_percentage, validation_percentage)
        images.extend(ImageRecord(path, label, split) for path, split in zip(usable, splits))
    for where, reason in skipped:
        log.warning("skipped %s: %s", where, reason)
    _check_classes(root, confinement, labels, empty)
    return Dataset(
        root,
        sorted(labels),
        images,
        skipped,
        float(testing_percentage),
        float(validation_percentage),
        int(max_pixels),
    )
