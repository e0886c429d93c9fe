"""Copies of a job's misclassified test images, kept beside its record so they stay viewable.

A job's dataset may be gone by the time someone looks at its result: an upload's folder (and
a ``dataset=NAME`` snapshot) is deleted when the job ends, and a folder under
POETS_DATA_ROOT may change. So when a job succeeds the worker copies the images its record
lists (at most POETS_MAX_LISTED_FILES of them, at most POETS_MISCLASSIFIED_JOB_BYTES in all)
to ``$POETS_HOME/jobs/<job_id>/misclassified/<n>.<ext>``, ``n`` being the entry's position
in the record's list, and the entry gets the URL that serves it. Job records are never
pruned, so the copies of all jobs together are bounded too (POETS_MISCLASSIFIED_BYTES): the
oldest jobs' copies are removed first, and their images are then answered as gone.

With a bucket for a store (machines that share no filesystem) the same copies, named the same
way, are objects under ``misclassified/<job_id>/`` (:class:`BucketMisclassifiedImages`): the
worker writes them, any API node serves them, and the same bounds trim the oldest jobs' copies
there. What both share (which images are copied, how they are read, the bounds) is
:class:`MisclassifiedCopies`.
"""

import contextlib
import io
import logging
import os
import re
import shutil
import stat
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Dict, Iterator, List, Optional, Tuple

from PIL import Image

from poets.engine.data.images import SUFFIX_BY_FORMAT
from poets.engine.errors import StoreUnavailable
from poets.engine.settings import Settings

if TYPE_CHECKING:
    from poets.engine.store.bucket import Bucket

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


def _plain(job_id: str) -> bool:
    return isinstance(job_id, str) and bool(JOB_ID.fullmatch(job_id))


# Writes one copy, named ``<n><suffix>``, for the job being kept.
Write = Callable[[str, bytes], Any]


class MisclassifiedCopies:
    """A job's copies, wherever they are kept: which images are copied and how they are read,
    the bounds, the URLs. Where the bytes go is the subclass's: :class:`MisclassifiedImages`
    (a folder) or :class:`BucketMisclassifiedImages` (the shared bucket).

    Args:
        max_job_bytes: most bytes copied for one job; images past it are not copied.
        max_total_bytes: most bytes kept for all jobs; the oldest jobs' copies go first.
    """

    def __init__(self, max_job_bytes: int, max_total_bytes: int) -> None:
        self.max_total_bytes = max_total_bytes
        self.max_job_bytes = min(max_job_bytes, max_total_bytes)  # one job never gets more than all

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
        if not _plain(job_id):
            return [dict(entry, image=None) for entry in entries]
        limit = os.path.realpath(str(confine_to if confine_to is not None else dataset_root))
        kept: List[Dict[str, Any]] = []
        used = 0
        with self._copies(job_id) as write:
            for n, entry in enumerate(entries):
                data, suffix = self._read(
                    Path(dataset_root) / str(entry.get("path", "")), limit, self.max_job_bytes - used
                )
                if data is None:
                    kept.append(dict(entry, image=None))
                    continue
                write("{}{}".format(n, suffix), data)
                used += len(data)
                kept.append(dict(entry, image=image_url(job_id, n)))
        try:
            self.trim(keep=job_id)
        except StoreUnavailable as exc:  # the copies are kept; the next job's trim catches up
            log.warning("misclassified-image copies not trimmed now: %s", exc.detail)
        return kept

    def _copies(self, job_id: str) -> ContextManager[Write]:
        """A writer for the job's new copies: they replace its earlier ones when the block ends
        without an error; an error leaves the earlier ones."""
        raise NotImplementedError

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

    def read(self, job_id: str, n: int) -> Optional[Tuple[bytes, str]]:
        """The job's ``n``-th copy and its suffix, or None when it is not (or no longer) kept."""
        raise NotImplementedError

    def remove(self, job_id: str) -> None:
        """Delete the job's copies (for when its record is deleted)."""
        raise NotImplementedError

    def _sizes(self) -> List[Tuple[float, int, str]]:
        """``(last changed, bytes, job id)`` of every job's copies."""
        raise NotImplementedError

    def trim(self, keep: Optional[str] = None) -> int:
        """Remove the oldest jobs' copies until all fit the total bound; how many jobs' went.

        ``keep`` (the job just copied) goes last: its copies fit the bound on their own.
        """
        jobs = [(float("inf") if job == keep else changed, size, job) for changed, size, job in self._sizes()]
        total = sum(size for _, size, _ in jobs)
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


class MisclassifiedImages(MisclassifiedCopies):
    """The copies under ``root`` (``$POETS_HOME/jobs``), one folder per job.

    Args:
        root: the jobs folder.
        max_job_bytes: most bytes copied for one job; images past it are not copied.
        max_total_bytes: most bytes kept for all jobs; the oldest jobs' copies go first.
    """

    def __init__(self, root: Path, max_job_bytes: int, max_total_bytes: int) -> None:
        super().__init__(max_job_bytes, max_total_bytes)
        self.root = Path(root)

    @classmethod
    def from_settings(cls, settings: Settings) -> "MisclassifiedImages":
        return cls(settings.jobs_dir, settings.misclassified_job_bytes, settings.misclassified_bytes)

    def folder(self, job_id: str) -> Optional[Path]:
        """The job's copies folder, or None for an id that is not a plain job id."""
        if not _plain(job_id):
            return None
        return self.root / job_id / FOLDER

    @contextlib.contextmanager
    def _copies(self, job_id: str) -> Iterator[Write]:
        target = self.root / job_id / FOLDER
        staging = target.with_name(".{}.{}.tmp".format(FOLDER, uuid.uuid4().hex))
        staging.mkdir(parents=True)
        try:
            yield lambda name, data: (staging / name).write_bytes(data)
            if target.exists():
                shutil.rmtree(str(target), ignore_errors=True)
            os.replace(str(staging), str(target))
        finally:
            if staging.exists():
                shutil.rmtree(str(staging), ignore_errors=True)

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

    def read(self, job_id: str, n: int) -> Optional[Tuple[bytes, str]]:
        path = self.path(job_id, n)
        if path is None:
            return None
        try:
            return path.read_bytes(), path.suffix
        except OSError:  # removed meanwhile by the total bound
            return None

    def remove(self, job_id: str) -> None:
        folder = self.folder(job_id)
        if folder is not None:
            shutil.rmtree(str(folder.parent), ignore_errors=True)

    def _sizes(self) -> List[Tuple[float, int, str]]:
        jobs: List[Tuple[float, int, str]] = []
        try:
            names = os.listdir(str(self.root))
        except OSError:
            return jobs
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
            jobs.append((changed, size, name))
        return jobs


class BucketMisclassifiedImages(MisclassifiedCopies):
    """The copies in the shared bucket: ``misclassified/<job_id>/<n>.<ext>``.

    Any API node serves them; one image is read into memory at a time, at most
    ``max_job_bytes`` (a larger object is not served), as a copy on disk is. Whatever cannot
    reach the bucket raises :class:`~poets.engine.errors.StoreUnavailable`.
    """

    def __init__(self, bucket: "Bucket", max_job_bytes: int, max_total_bytes: int) -> None:
        super().__init__(max_job_bytes, max_total_bytes)
        self.bucket = bucket

    @staticmethod
    def prefix(job_id: str) -> str:
        return "{}/{}/".format(FOLDER, job_id)

    @contextlib.contextmanager
    def _copies(self, job_id: str) -> Iterator[Write]:
        prefix = self.prefix(job_id)
        written: List[str] = []

        def write(name: str, data: bytes) -> None:
            written.append(prefix + name)
            self.bucket.put(prefix + name, data)

        try:
            yield write
        except BaseException:
            with contextlib.suppress(StoreUnavailable):  # the record lists no image of them
                self.bucket.delete(written)
            raise
        new = set(written)  # an earlier delivery's copies that this one did not write go
        self.bucket.delete([info.key for info in self.bucket.list(prefix) if info.key not in new])

    def read(self, job_id: str, n: int) -> Optional[Tuple[bytes, str]]:
        if not _plain(job_id) or n < 0:
            return None
        named = "{}{}.".format(self.prefix(job_id), n)
        found = {info.key[len(named) - 1 :]: info for info in self.bucket.list(named)}
        for suffix in _SUFFIXES:
            info = found.get(suffix)
            if info is None or info.size > self.max_job_bytes:
                continue
            data = self.bucket.get(info.key)
            return None if data is None else (data, suffix)  # None: trimmed meanwhile
        return None

    def remove(self, job_id: str) -> None:
        if _plain(job_id):
            self.bucket.delete_prefix(self.prefix(job_id))

    def _sizes(self) -> List[Tuple[float, int, str]]:
        jobs: Dict[str, Tuple[float, int]] = {}
        for info in self.bucket.list(FOLDER + "/"):
            parts = info.key.split("/")
            if len(parts) != 3 or not JOB_ID.fullmatch(parts[1]):
                continue
            changed, size = jobs.get(parts[1], (0.0, 0))
            jobs[parts[1]] = (max(changed, info.modified), size + info.size)
        return [(changed, size, name) for name, (changed, size) in jobs.items()]


def copies_for(settings: Settings, bucket: Optional["Bucket"]) -> MisclassifiedCopies:
    """This deployment's copies (see :attr:`Workspace.misclassified`)."""
    if bucket is None:
        return MisclassifiedImages.from_settings(settings)
    return BucketMisclassifiedImages(bucket, settings.misclassified_job_bytes, settings.misclassified_bytes)
