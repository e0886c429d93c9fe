"""A job's inputs on their way from submit to the worker: left in place, or through the bucket.

Submit brings an upload or a ``dataset=NAME`` snapshot into the job's own folder
(:func:`~poets.engine.jobs.dataset.job_folder`) and scans it there, keeping the scan beside
it. Where that folder goes next depends on the store:

- **Local store** (:class:`LocalInputs`: one machine, or several that mount one filesystem):
  nowhere. The worker reads the folder the message names, and deletes it once the job has
  ended.
- **A bucket** (:class:`BucketInputs`, ``POETS_STORE_URL=s3://...``: machines that share no
  filesystem): submit packs the folder into ``inputs/<job id>.tar`` (a plain tar: images do
  not compress) and removes its own copy. The worker maps the message's folder (a path on the
  API node) to its own machine: an upload or a snapshot is downloaded and extracted, with the
  safe extractor and within limits, into the worker's own job folder (extracted aside, then
  renamed: a folder there is complete); a folder under POETS_DATA_ROOT is read from the
  worker's own data root. Once the job has ended, the worker's copy and the object go. The
  worker's periodic sweep removes the objects of ended or unknown jobs left for an hour (a
  submit that died between the upload and the record, a delete that met an outage).
"""

import contextlib
import logging
import os
import shutil
import stat
import tarfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from poets.engine.data import archives, leftovers
from poets.engine.errors import Forbidden, InvalidInput, NotFound, StoreUnavailable
from poets.engine.jobs.dataset import job_folder, resolve_image_dir
from poets.engine.settings import Settings
from poets.engine.store.jobs import FINISHED
from poets.engine.store.misclassified import JOB_ID

if TYPE_CHECKING:
    from poets.engine.store.bucket import Bucket
    from poets.engine.store.jobs import JobRecords

log = logging.getLogger(__name__)

PREFIX = "inputs/"
# A worker's download and extraction in progress: hidden, beside the job folders.
FETCH_PREFIX = ".fetch-"
# Room for what submit keeps beside the images (the scan, a snapshot's origin).
_RECORDS = 2
_RECORD_BYTES = 64 * archives.MiB


def input_key(job_id: str) -> str:
    """The job's inputs in the bucket."""
    return "{}{}.tar".format(PREFIX, job_id)


class JobInputs:
    """Where a job's dataset travels from submit to its worker: on a local store, nowhere.

    Submit calls :meth:`check` before it accepts a job and :meth:`keep` once the job's own
    folder is scanned (:meth:`forget` when the job is not recorded after all); the worker
    asks :meth:`dataset` for the folder it trains on and calls :meth:`drop` once the job has
    ended; its periodic sweep calls :meth:`sweep`.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def check(self) -> None:
        """Raise StoreUnavailable when no job can be accepted now (nothing to check here)."""

    def keep(self, job_id: str) -> None:
        """Make the job's own folder, scanned, readable by whichever worker runs the job."""

    def forget(self, job_id: str) -> None:
        """Undo :meth:`keep` for a job that was not recorded or not sent (best effort)."""

    def dataset(self, job_id: str, image_dir: str, params: Dict[str, Any]) -> str:
        """The folder this machine trains the job on: ``image_dir`` as the message says."""
        return image_dir

    def drop(self, job_id: str) -> None:
        """The job has ended: its own folder goes (a redelivery before that still needs it)."""
        folder = self.settings.uploads_dir / job_id
        if folder.is_dir():
            shutil.rmtree(str(folder), ignore_errors=True)

    def sweep(self, jobs: "JobRecords", older_than_s: float = leftovers.STALE_S) -> List[str]:
        """Remove what crashes left; returns what went (nothing to sweep here)."""
        return []


class BucketInputs(JobInputs):
    """Job inputs through ``inputs/<job id>.tar`` in the shared bucket."""

    def __init__(self, settings: Settings, bucket: "Bucket") -> None:
        super().__init__(settings)
        self.bucket = bucket

    def check(self) -> None:
        # Every job ends in a publish to the bucket: refuse it now rather than fail it later.
        self.bucket.check()

    def keep(self, job_id: str) -> None:
        own = job_folder(self.settings, job_id)
        if not own.is_dir():  # a folder in POETS_DATA_ROOT: each worker reads its own
            return
        packed = own.with_name(own.name + ".tar")
        try:
            pack(own, packed)
            self.bucket.upload(packed, input_key(job_id))
        finally:
            with contextlib.suppress(OSError):
                packed.unlink()
        shutil.rmtree(str(own), ignore_errors=True)

    def forget(self, job_id: str) -> None:
        try:
            self.bucket.delete([input_key(job_id)])
        except StoreUnavailable as exc:  # the sweep removes it once the bucket is back
            log.warning("job %s: its inputs stay in the bucket for now (%s)", job_id, exc.detail)

    def dataset(self, job_id: str, image_dir: str, params: Dict[str, Any]) -> str:
        """The worker's own folder for the job's dataset (the message names the API node's).

        Raises:
            NotFound: the job's inputs are no longer in the bucket.
            InvalidInput, InvalidArchive, Forbidden: a record or an object that cannot be
                trusted, or a data-root folder this worker cannot read.
            StoreUnavailable: the bucket cannot be reached.
        """
        source, relative = params.get("source"), params.get("dataset_path")
        if not isinstance(relative, str):
            return image_dir  # a message sent by hand, without a record: the folder as given
        if source == "image_dir":
            if self.settings.data_root is None:
                raise Forbidden(
                    "The job trains on {!r} in POETS_DATA_ROOT, and this worker has no "
                    "POETS_DATA_ROOT: set it to the same datasets on this machine, or submit "
                    "the dataset as an archive.".format(relative[:200])
                )
            return str(resolve_image_dir(self.settings, relative))
        if source not in ("upload", "dataset"):
            return image_dir
        if not JOB_ID.fullmatch(job_id):  # submit draws plain ids; a path part is no job's
            raise InvalidInput("Job id {!r} is not a plain name: submit the job again.".format(job_id[:64]))
        own = job_folder(self.settings, job_id)
        root = os.path.normpath(os.path.join(str(own), relative))
        if root != str(own) and not root.startswith(str(own) + os.sep):
            raise InvalidInput(
                "The job's dataset_path {!r} leads out of its own folder: submit the job again.".format(
                    relative[:200]
                )
            )
        if not own.is_dir():  # not here yet (or a redelivery to another worker)
            self._fetch(job_id, own)
        return root

    def _fetch(self, job_id: str, own: Path) -> None:
        """Download the job's tar and extract it aside, then rename it to ``own``."""
        own.parent.mkdir(parents=True, exist_ok=True)
        work = own.parent / "{}{}-{}".format(FETCH_PREFIX, job_id, uuid.uuid4().hex[:12])
        work.mkdir()
        try:
            with leftovers.Claim(work):  # the sweep leaves it alone while this runs
                packed, extracted = work / "input.tar", work / "dataset"
                if not self.bucket.download(input_key(job_id), packed):
                    raise NotFound(
                        "The job's dataset ({}) is no longer in the bucket {}: it was removed "
                        "once the job ended, or left unclaimed for an hour. Submit the job "
                        "again.".format(input_key(job_id), self.bucket.url)
                    )
                archives.extract(packed, extracted, input_limits(self.settings))
                try:
                    os.rename(str(extracted), str(own))
                except OSError:
                    if not own.is_dir():  # else another delivery on this machine was first
                        raise
        finally:
            shutil.rmtree(str(work), ignore_errors=True)
        log.info("job %s: its dataset fetched from %s", job_id, self.bucket.url)

    def drop(self, job_id: str) -> None:
        super().drop(job_id)
        if not JOB_ID.fullmatch(job_id):
            return
        try:
            self.bucket.delete([input_key(job_id)])
        except StoreUnavailable as exc:
            log.warning("job %s ended; its inputs stay in the bucket for now (%s)", job_id, exc.detail)

    def sweep(self, jobs: "JobRecords", older_than_s: float = leftovers.STALE_S) -> List[str]:
        """Remove, once ``older_than_s`` old: the objects of jobs that ended or have no record
        (submit died before recording the job), this machine's copies of ended jobs (a
        worker that died mid-job, whose job then ran elsewhere), and unclaimed downloads."""
        removed: List[str] = []
        now = time.time()
        stale: List[str] = []
        for info in self.bucket.list(PREFIX):
            job_id = info.key[len(PREFIX) :]
            job_id = job_id[: -len(".tar")] if job_id.endswith(".tar") else ""
            old = now - info.modified >= older_than_s
            if old and JOB_ID.fullmatch(job_id) and _ended(jobs, job_id, True):
                stale.append(info.key)
        self.bucket.delete(stale)
        removed += stale
        uploads = self.settings.uploads_dir
        if not uploads.is_dir():
            return removed
        folders = [path for path in sorted(uploads.iterdir()) if JOB_ID.fullmatch(path.name)]
        ended = [path for path in folders if _ended(jobs, path.name, False)]
        fetches = sorted(uploads.glob(FETCH_PREFIX + "*"))
        for path in leftovers.remove_abandoned(ended + fetches, older_than_s):
            removed.append("uploads/" + path.name)
        return removed


def _ended(jobs: "JobRecords", job_id: str, unknown: bool) -> bool:
    """Whether the job has ended; ``unknown`` for one without a record."""
    try:
        return jobs.get(job_id).state in FINISHED
    except NotFound:
        return unknown


def inputs_for(settings: Settings, bucket: Optional["Bucket"]) -> JobInputs:
    """How this deployment's job inputs travel (see :attr:`Workspace.job_inputs`)."""
    return JobInputs(settings) if bucket is None else BucketInputs(settings, bucket)


def input_limits(settings: Settings) -> archives.Limits:
    """What a job's tar may hold when a worker extracts it: what submit can have packed (an
    upload within the archive limits, or a dataset within the library's), and its records."""
    base = archives.Limits.from_settings(settings)
    return archives.Limits(
        max(base.max_extracted_bytes, settings.dataset_max_bytes) + _RECORDS * _RECORD_BYTES,
        max(base.max_file_bytes, _RECORD_BYTES),
        base.max_ratio,
        max(base.max_files, settings.dataset_max_images) + _RECORDS,
    )


def pack(folder: Path, target: Path) -> None:
    """A plain tar of ``folder``'s folders and regular files, named relative to it.

    Every file goes in as itself: a snapshot's hard links become plain members (the safe
    extractor refuses links), and anything that is not a folder or a regular file (nothing
    submit makes) is left out.
    """
    with tarfile.open(str(target), "w", format=tarfile.GNU_FORMAT) as archive:
        for top, dirs, files in os.walk(str(folder)):
            dirs.sort()
            relative_top = os.path.relpath(top, str(folder))
            for name in dirs:
                path = os.path.join(top, name)
                if not stat.S_ISDIR(os.lstat(path).st_mode):  # a link to a folder: not walked
                    continue
                info = tarfile.TarInfo(_member(relative_top, name))
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
            for name in sorted(files):
                _add_file(archive, os.path.join(top, name), _member(relative_top, name))


def _member(top: str, name: str) -> str:
    return name if top == "." else "{}/{}".format(top.replace(os.sep, "/"), name)


def _add_file(archive: tarfile.TarFile, path: str, member: str) -> None:
    if not stat.S_ISREG(os.lstat(path).st_mode):  # never open a link, a FIFO or a device
        return
    # O_NOFOLLOW: a link swapped in after the check is refused, not followed.
    with open(path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NOFOLLOW)) as handle:
        details = os.fstat(handle.fileno())
        info = tarfile.TarInfo(member)
        info.size, info.mode, info.mtime = details.st_size, 0o644, int(details.st_mtime)
        archive.addfile(info, handle)
