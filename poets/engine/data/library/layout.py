"""The datasets' folders as the library reads them: datasets, classes and images.

Each dataset is a folder under the library's root in the poets layout (a folder per
class). A symbolic link leading out of the root is never followed: it is left out of
listings and refused (:class:`Forbidden`) where it is named.
"""

import contextlib
import os
import unicodedata
from pathlib import Path
from typing import List, Optional, Tuple

from poets.engine.data import datasets
from poets.engine.data.images import IMAGE_SUFFIXES
from poets.engine.data.library.names import LABEL, check_dataset_name, filename_of, is_dataset_name, shown
from poets.engine.errors import Conflict, Forbidden, NotFound

# In a dataset: where files are written aside before they land by atomic rename.
INCOMING = ".incoming"
# Where a deleted dataset or class goes before it is removed.
DELETING = ".deleting-"


class Layout:
    """The dataset folders under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- symbolic links ------------------------------------------------------------------------
    def leads_out(self, path: Path) -> bool:
        """Whether ``path`` is a symbolic link leading outside the root (its parents are checked
        where they are found: a dataset, class or image that leads out is never followed)."""
        if not os.path.islink(str(path)):
            return False
        root = os.path.realpath(str(self.root))
        real = os.path.realpath(str(path))
        return real != root and not real.startswith(root.rstrip(os.sep) + os.sep)

    def refuse_link(self, path: Path) -> None:
        """:class:`Forbidden` for ``path`` if it is a symbolic link leading out of the root."""
        if self.leads_out(path):
            raise Forbidden(
                "The dataset entry {} leads outside the datasets folder through a symbolic link: "
                "copy the images into the dataset instead of linking them.".format(
                    shown(os.path.relpath(str(path), str(self.root)))
                )
            )

    # -- folders -------------------------------------------------------------------------------
    def names(self) -> List[str]:
        """The datasets, by name."""
        if not self.root.is_dir():
            return []
        return sorted(
            entry.name
            for entry in os.scandir(str(self.root))
            if entry.is_dir()
            and not entry.name.startswith(".")
            and is_dataset_name(entry.name)
            and not (entry.is_symlink() and self.leads_out(Path(entry.path)))
        )

    def class_dir(self, folder: Path, label: str) -> Path:
        """Class ``label``'s folder, made if needed, to write into; never a link leading out."""
        target = folder / label
        self.refuse_link(target)
        target.mkdir(exist_ok=True)
        return target

    def dataset_dir(self, name: str) -> Path:
        """The dataset's folder: :class:`NotFound` when there is none (ask again under the
        dataset's lock before changing it: a delete may have come in between)."""
        folder = self.root / check_dataset_name(name)
        self.refuse_link(folder)
        if not folder.is_dir():
            known = ", ".join(self.names()) or "none yet"
            raise NotFound("No dataset {}: create it first (the datasets: {}).".format(shown(name), known))
        return folder

    def classes(self, folder: Path) -> List[str]:
        try:
            entries = list(os.scandir(str(folder)))
        except FileNotFoundError:  # deleted meanwhile
            raise NotFound("No dataset {}: it was deleted meanwhile.".format(shown(folder.name))) from None
        return sorted(
            entry.name
            for entry in entries
            if entry.is_dir()
            and not datasets.is_ignored(entry.name)
            and not (entry.is_symlink() and self.leads_out(Path(entry.path)))
        )

    def files(self, folder: Path, label: str) -> List[str]:
        try:
            entries = os.scandir(str(folder / label))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(
            entry.name
            for entry in entries
            if not entry.name.startswith(".")
            and entry.is_file()
            and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES
            and not (entry.is_symlink() and self.leads_out(Path(entry.path)))
        )

    def existing_class(self, folder: Path, label: str) -> str:
        if isinstance(label, str):
            normal = unicodedata.normalize("NFC", label)
            if normal in self.classes(folder):
                return normal
            if LABEL.fullmatch(normal):
                self.refuse_link(folder / normal)
        raise NotFound(
            "Dataset {} has no class {}: its classes are {}.".format(
                shown(folder.name), shown(str(label)), ", ".join(self.classes(folder)) or "none yet"
            )
        )

    # -- images --------------------------------------------------------------------------------
    def locate(self, folder: Path, image: str) -> Tuple[str, Path]:
        filename = filename_of(image)
        found = [label for label in self.classes(folder) if self.is_image(folder / label / filename)]
        if not found:  # behind a link leading out (never followed): say so
            for entry in os.scandir(str(folder)):
                if not datasets.is_ignored(entry.name):
                    if entry.is_symlink() and os.path.lexists(os.path.join(entry.path, filename)):
                        self.refuse_link(Path(entry.path))
                    self.refuse_link(Path(entry.path) / filename)
            raise NotFound(
                "Dataset {} has no image {}: it was moved or deleted; list the images again.".format(
                    shown(folder.name), shown(image)
                )
            )
        if len(found) > 1:
            raise Conflict(
                "Image {} is in several classes of dataset {} ({}): keep one copy and "
                "delete the others by hand.".format(shown(image), shown(folder.name), ", ".join(found))
            )
        return found[0], folder / found[0] / filename

    def where(self, folder: Path, filename: str) -> Optional[str]:
        """The class holding ``filename``, if any."""
        for label in self.classes(folder):
            if self.is_image(folder / label / filename):
                return label
        return None

    def is_image(self, path: Path) -> bool:
        return path.is_file() and not self.leads_out(path)

    @staticmethod
    def drop_if_empty(folder: Path) -> None:
        # An empty class folder would make /retrain refuse the dataset.
        with contextlib.suppress(OSError):
            folder.rmdir()
