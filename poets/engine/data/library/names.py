"""Dataset, class and image names: what is usable, and the URL-safe ids of image files.

An image id is its file name when that name is plain (letters, digits, ``_``, ``-`` and
one extension), else ``~`` and the URL-safe base64 of the name: ids are stable, safe in
URLs and never show a path.
"""

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Dict

from poets.engine.data import datasets
from poets.engine.errors import InvalidInput

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
LABEL = re.compile(r"\w(?:[\w .+-]{0,98}[\w+-])?")
_PLAIN_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,150}\.[A-Za-z0-9]{1,5}")
_NAME_RULE = "1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit, without '..'"
_LABEL_RULE = (
    "1 to 100 letters, digits, spaces, '_', '.', '+' or '-', starting with a letter, "
    "digit or '_', without '..' or a trailing space or dot"
)


def shown(text: str) -> str:
    """``text`` as a message quotes it: in quotes, cut at 80 characters."""
    return repr(text if len(text) <= 80 else text[:80] + "...")


def is_dataset_name(name: str) -> bool:
    return bool(NAME.fullmatch(name)) and ".." not in name


def check_dataset_name(name: str) -> str:
    """``name`` if it is a usable dataset name, else :class:`InvalidInput` saying why."""
    if not isinstance(name, str) or not is_dataset_name(name):
        raise InvalidInput("Dataset name {} is not usable: use {}.".format(shown(str(name)), _NAME_RULE))
    return name


def check_label(label: str) -> str:
    """The NFC form of ``label`` if it is a usable class name, else :class:`InvalidInput`."""
    if not isinstance(label, str):
        raise InvalidInput("The label must be a string: use {}.".format(_LABEL_RULE))
    normal = unicodedata.normalize("NFC", label)
    if not LABEL.fullmatch(normal) or ".." in normal:
        raise InvalidInput(
            "Label {} is not usable as a class name: use {}.".format(shown(label), _LABEL_RULE)
        )
    if datasets.is_ignored(normal):
        raise InvalidInput(
            "Label {} is reserved: the dataset scan ignores folders of that name, so its images "
            "would vanish. Pick another class name.".format(shown(label))
        )
    return normal


def image_id(filename: str) -> str:
    """The URL-safe id of an image file name."""
    if _PLAIN_FILE.fullmatch(filename):
        return filename
    encoded = base64.urlsafe_b64encode(filename.encode("utf-8", "surrogateescape"))
    return "~" + encoded.decode("ascii").rstrip("=")


def filename_of(image: str) -> str:
    """The file name an id stands for; :class:`InvalidInput` for anything else."""
    bad = InvalidInput(
        "{} is not an image id: use an image's 'id' from the dataset's image list.".format(shown(str(image)))
    )
    if not isinstance(image, str) or not image or len(image) > 400:
        raise bad
    if image.startswith("~"):
        encoded = image[1:]
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            name = raw.decode("utf-8", "surrogateescape")
        except (binascii.Error, ValueError):
            raise bad from None
    elif _PLAIN_FILE.fullmatch(image):
        name = image
    else:
        raise bad
    if not name or name.startswith(".") or any(c in name for c in "/\\\x00") or len(name) > 255:
        raise bad
    return name


@dataclass(frozen=True)
class ImageInfo:
    """An image of a dataset: its id, class and file name; ``duplicate`` when an add found it
    already stored."""

    id: str
    label: str
    filename: str
    duplicate: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return {"id": self.id, "label": self.label, "filename": self.filename, "duplicate": self.duplicate}
