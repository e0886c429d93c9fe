"""Datasets kept on disk as a resource: create, browse, add, move, delete, import, export.

Each dataset is a folder under the library's root in the poets layout (a folder per
class), so ``poets retrain --image_dir`` and ``/retrain`` read it as it is. The modules:

- :mod:`.names`: usable dataset and class names, image ids, :class:`ImageInfo`;
- :mod:`.layout`: the folders as the library reads them, refusing links leading out;
- :mod:`.locking`: each dataset's lock (threads, and ``flock`` for other processes);
- :mod:`.summary`: a dataset's cached summary and its fingerprint;
- :mod:`.intake`: images checked, named after their content, written aside, placed once;
- :mod:`.archive_import`, :mod:`.export` (zip streaming), :mod:`.snapshot` (frozen copies);
- :mod:`.library`: :class:`DatasetLibrary`, which does each change under the dataset's lock.
"""

from poets.engine.data.library.export import EXPORT_CHUNK
from poets.engine.data.library.intake import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_IMAGES,
    check_image,
    stored_name,
)
from poets.engine.data.library.library import DatasetLibrary
from poets.engine.data.library.names import ImageInfo, check_dataset_name, check_label, filename_of, image_id
from poets.engine.data.library.snapshot import ORIGIN_FILE, REVIEWED_FILE, snapshot_origin, snapshot_reviewed
from poets.engine.data.library.summary import (
    FINGERPRINT_TESTING_PERCENTAGE,
    FINGERPRINT_VALIDATION_PERCENTAGE,
    content_fingerprint,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_IMAGES",
    "EXPORT_CHUNK",
    "FINGERPRINT_TESTING_PERCENTAGE",
    "FINGERPRINT_VALIDATION_PERCENTAGE",
    "ORIGIN_FILE",
    "REVIEWED_FILE",
    "DatasetLibrary",
    "ImageInfo",
    "check_dataset_name",
    "check_image",
    "check_label",
    "content_fingerprint",
    "filename_of",
    "image_id",
    "snapshot_origin",
    "snapshot_reviewed",
    "stored_name",
]
