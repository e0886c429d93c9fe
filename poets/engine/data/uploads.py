"""An uploaded archive saved to disk before it is extracted: a dataset import's (``POST
/datasets/NAME/archive``) and a retrain job's (``POST /retrain``), the one way for both."""

import shutil
from pathlib import Path
from typing import IO

from poets.engine.errors import InvalidArchive

# Copied a piece at a time: an upload is spooled to disk and may be gigabytes.
COPY_CHUNK = 1024 * 1024


def save_archive(source: IO[bytes], path: Path, what_to_send: str) -> None:
    """Copy the uploaded ``source`` from its start to ``path``.

    Raises:
        InvalidArchive: the upload is empty; the detail ends with ``what_to_send``.
    """
    source.seek(0)
    with open(str(path), "wb") as out:
        shutil.copyfileobj(source, out, COPY_CHUNK)
    if Path(path).stat().st_size == 0:
        raise InvalidArchive("The uploaded archive is empty: {}".format(what_to_send))
