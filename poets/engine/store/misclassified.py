"""Copies of a job's misclassified test images, kept beside its record so they stay viewable.

A job's dataset may be gone by the time someone looks at its result: an upload's folder (and
a ``dataset=NAME`` snapshot) is deleted when the job ends, and a folder under
POETS_DATA_ROOT may change. So when a job succeeds the worker copies the images its record
lists (at most POETS_MAX_LISTED_FILES of them, at most POETS_MISCLASSIFIED_JOB_BYTES in all)
to ``$POETS_HOME/jobs/<job_id>/misclassified/<n>.<ext>``, ``n`` being the entry's position
in the record's list, and the entry gets the URL that serves it. Job records are never
pruned, so the copies of all jobs together are bounded too (POETS_MISCLASSIFIED_BYTES): the
oldest jobs' copies are removed first, and their images are then answered as gone.
"""

import io
import logging
import os
import re
import shutil
import stat
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from PIL import Image

from poets.engine.data.images import SUFFIX_BY_FORMAT
from poets.engine.settings import Settings

log = logging.getLogger(__name__)

# Job ids are uuid4 hex from the API; a message sent by hand may carry another id, kept when
# it is a plain file name. Matched whole (fullmatch), so no separator, dot or newline gets in.
JOB_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,63}")
FOLDER = "misclassified"
# The suffixes copies are stored with, in the order path() looks for them.
_SUFFIXES = tuple(dict.fromkeys(SUFFIX_BY_FORMAT.values()))


def image_url(job_id: str, n: int) -> str:
    """Where the API serves a job's ``n``-th misclassified image (usable in ``<img src>``)."""
    return "/jobs/{}/misclassified/{}".format(job_id, n)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class MisclassifiedImages:
    """The copies under ``root`` (``$POETS_HOME/jobs``), one folder per job.

    Args:
        root: the jobs folder.
        max_job_bytes: most bytes copied for one job; images past it are not copied.
        max_total_bytes: most bytes kept for all jobs; the oldest jobs' copies go first.
    """

    def __init__(self, root: Path, max_job_bytes: int, max_total_bytes: int) -> None:
        self.root = Path(root)
        self.max_total_bytes = max_total_bytes
        self.max_job_bytes = min(max_job_bytes, max_total_bytes)  # one job never gets more than all

    @classmethod
    def from_settings(cls, settings: Settings) -> "MisclassifiedImages":
        return cls(settings.jobs_dir, settings.misclassified_job_bytes, settings.misclassified_bytes)

    def folder(self, job_id: str) -> Optional[Path]:
        """The job's copies folder, or None for an id that is not a plain job id."""
        if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
            return None
        return self.root / job_id / FOLDER

    def keep(
        self,
        job_id: str,
        dataset_root: Path,
        entries: List[Dict[str, Any]],
        confine_to: Optional[Path] = None,
    ) -> List[Dict[str, Any]]:
        """Copy the images of ``entries`` (paths relative to ``dataset_root``) for the job.

        Returns the entries, each with ``image``: its URL, or None when it was not copied (over
        the byte bound, no longer a readable image, or leading out of ``confine_to``, by
        default the dataset folder, through a link). A job's earlier copies (an earlier
        delivery) are replaced. Then trims every job's copies to the total bound.
        """
        target = self.folder(job_id)
        if target is None:
            return [dict(entry, image=None) for entry in entries]
        limit = os.path.realpath(str(confine_to if confine_to is not None else dataset_root))
        staging = target.with_name(".{}.{}.tmp".format(FOLDER, uuid.uuid4().hex))
        staging.mkdir(parents=True)
        kept: List[Dict[str, Any]] = []
        used = 0
        try:
            for n, entry in enumerate(entries):
                data, suffix = self._read(
                    Path(dataset_root) / str(entry.get("path", "")), limit, self.max_job_bytes - used
                )
                if data is None:
                    kept.append(dict(entry, image=None))
                    continue
                (staging / "{}{}".format(n, suffix)).write_bytes(data)
                used += len(data)
                kept.append(dict(entry, image=image_url(job_id, n)))
            if target.exists():
                shutil.rmtree(str(target), ignore_errors=True)
            os.replace(str(staging), str(target))
        finally:
            if staging.exists():
                shutil.rmtree(str(staging), ignore_errors=True)
        self.trim(keep=job_id)
        return kept

    @staticmethod
    def _read(source: Path, limit: str, room: int) -> Tuple[Optional[bytes], str]:
        """The image's bytes and suffix, or (None, "") when it must not or cannot be copied."""
        real = os.path.realpath(str(source))
        if not _inside(real, limit):
            log.warning("misclassified image %s leads outside the dataset; not copied", source.name)
            return None, ""
        if not os.path.isfile(real):  # never open a FIFO or a device: it could block
            return None, ""
        try:
            # Read once from one open file: what is checked below is what is written.
            with open(real, "rb") as handle:
                info = os.fstat(handle.fileno())
                if not stat.S_ISREG(info.st_mode) or info.st_size > room:
                    return None, ""
                data = handle.read(room + 1)
        except OSError:
            return None, ""
        if len(data) > room:
            return None, ""
        try:  # the suffix comes from the bytes (Pillow's format), never from the file's name
            with Image.open(io.BytesIO(data)) as image:
                suffix = SUFFIX_BY_FORMAT.get(str(image.format), "")
        except Exception:  # Pillow raises many kinds for bytes that are not an image
            return None, ""
        return (data, suffix) if suffix else (None, "")

    def path(self, job_id: str, n: int) -> Optional[Path]:
        """The job's ``n``-th copy, or None when it is not (or no longer) kept."""
        folder = self.folder(job_id)
        if folder is None or n < 0:
            return None
        for suffix in _SUFFIXES:
            candidate = folder / "{}{}".format(n, suffix)
            if candidate.is_file():
                return candidate
        return None

    def remove(self, job_id: str) -> None:
        """Delete the job's copies (for when its record is deleted)."""
        folder = self.folder(job_id)
        if folder is not None:
            shutil.rmtree(str(folder.parent), ignore_errors=True)

    def trim(self, keep: Optional[str] = None) -> int:
        """Remove the oldest jobs' copies until all fit the total bound; how many jobs' went.

        ``keep`` (the job just copied) goes last: its copies fit the bound on their own.
        """
        jobs: List[Tuple[float, int, str]] = []
        total = 0
        try:
            names = os.listdir(str(self.root))
        except OSError:
            return 0
        for name in names:
            folder = self.root / name / FOLDER
            if not JOB_ID.fullmatch(name) or not folder.is_dir():
                continue
            size = 0
            try:
                for entry in os.scandir(str(folder)):
                    if entry.is_file(follow_symlinks=False):
                        size += entry.stat(follow_symlinks=False).st_size
                changed = folder.stat().st_mtime
            except OSError:
                continue
            jobs.append((float("inf") if name == keep else changed, size, name))
            total += size
        removed = 0
        for _, size, name in sorted(jobs):
            if total <= self.max_total_bytes:
                break
            self.remove(name)
            total -= size
            removed += 1
        if removed:
            log.info(
                "removed the misclassified-image copies of %d older job(s) (POETS_MISCLASSIFIED_BYTES)",
                removed,
            )
        return removed
