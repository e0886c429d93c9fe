"""A job's dataset: where it comes from, what it may not lead out of, and its scan.

Submit resolves a server folder or extracts an upload into the job's own folder
(``POETS_UPLOADS_DIR/<job id>``) and scans it there, keeping the scan beside a job's own
copy; run checks the same confinement again and takes that kept scan instead of scanning
a second time.
"""

import contextlib
import logging
import os
from pathlib import Path
from typing import IO, Any, Dict, Optional

from poets.engine.data import archives, datasets, uploads
from poets.engine.errors import Forbidden, InvalidInput
from poets.engine.model.config import TrainConfig
from poets.engine.settings import Settings

log = logging.getLogger(__name__)


def resolve_image_dir(settings: Settings, image_dir: str) -> Path:
    """The server-side folder, which must resolve inside POETS_DATA_ROOT."""
    if settings.data_root is None:
        raise Forbidden(
            "This server reads no server-side folders (POETS_DATA_ROOT is unset): "
            "upload the dataset as an archive in the 'file' field instead."
        )
    if "\x00" in image_dir:  # os.path functions raise ValueError on it
        raise InvalidInput(
            "image_dir must not contain a NUL character: give a folder inside "
            "POETS_DATA_ROOT (a path relative to it)."
        )
    root = Path(os.path.realpath(str(settings.data_root)))
    candidate = Path(image_dir)
    if not candidate.is_absolute():
        candidate = root / candidate
    resolved = Path(os.path.realpath(str(candidate)))
    if resolved != root and root not in resolved.parents:
        raise Forbidden(
            "image_dir {!r} is outside the data root: give a folder inside "
            "POETS_DATA_ROOT (a path relative to it).".format(image_dir[:200])
        )
    if resolved == root:
        raise Forbidden(
            "image_dir {!r} is the data root itself: give the dataset's folder "
            "inside POETS_DATA_ROOT (e.g. 'flowers').".format(image_dir[:200])
        )
    try:
        os.stat(str(resolved))
    except (FileNotFoundError, NotADirectoryError):
        pass  # the dataset scan says it is not a folder
    except OSError as exc:  # a name too long, a symlink loop, no permission: not a 500
        raise InvalidInput(
            "image_dir {!r} cannot be read ({}): give a folder inside "
            "POETS_DATA_ROOT (a path relative to it).".format(
                image_dir[:200], exc.strerror or type(exc).__name__
            )
        ) from exc
    return resolved


def save_and_extract(archive: IO[bytes], job_dir: Path, settings: Settings) -> Path:
    """Copy the uploaded ``archive`` to disk next to the job folder, then extract it safely."""
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    saved = job_dir.with_name(job_dir.name + ".upload")
    try:
        uploads.save_archive(archive, saved, "send a .zip or .tar.gz of the dataset in the 'file' field.")
        return archives.extract(saved, job_dir, archives.Limits.from_settings(settings))
    finally:
        with contextlib.suppress(OSError):
            saved.unlink()


def scan_summary(
    root: Path, config: TrainConfig, settings: Settings, confine_to: Path, keep: Optional[Path] = None
) -> Dict[str, Any]:
    """The dataset's summary for the job record: counts, and at most POETS_MAX_LISTED_FILES names.

    ``keep``: where to save the scan for the worker (beside a job's own copy, which cannot
    change before it runs; best effort: without it the worker scans again).
    """
    dataset = datasets.scan(
        root,
        config.testing_percentage,
        config.validation_percentage,
        settings.max_image_pixels,
        confine_to=confine_to,
    )
    if keep is not None:
        try:
            dataset.save(keep)
        except OSError as exc:
            log.warning("scan of %s not kept (%s): the worker scans it again", root, exc)
            with contextlib.suppress(OSError):  # nor may the worker read one the archive brought
                keep.unlink()
    counts = dataset.counts()
    return {
        "labels": dataset.labels,
        "images": {label: sum(splits.values()) for label, splits in counts.items()},
        "skipped": [
            {"path": os.path.relpath(path, str(root)), "reason": reason}
            for path, reason in dataset.skipped[: settings.max_listed_files]
        ],
        "skipped_count": len(dataset.skipped),
    }


def job_folder(settings: Settings, job_id: str) -> Path:
    """The job's own folder: its extracted upload or ``dataset=NAME`` snapshot, and the scan
    kept beside it. Deleted once the job has ended."""
    return Path(os.path.abspath(str(settings.uploads_dir / job_id)))


def dataset_confinement(settings: Settings, job_id: str, image_dir: str) -> Path:
    """What no entry of the job's dataset may lead out of through a symbolic link (decided
    here for submit and run alike; run checks again, as a link may be swapped in after
    submit): the job's own folder for an upload or a ``dataset=NAME`` snapshot, else
    POETS_DATA_ROOT, else (a message sent by hand to a worker without a data root) the
    dataset folder itself."""
    own = str(job_folder(settings, job_id))
    path = os.path.abspath(image_dir)
    if path == own or path.startswith(own + os.sep):
        return Path(own)
    if settings.data_root is not None:
        return Path(str(settings.data_root))
    return Path(path)


def scan_file(settings: Settings, job_id: str, image_dir: str) -> Optional[Path]:
    """Where submit keeps the dataset's scan for run, and run reads it: beside the job's own
    copy (an upload, a ``dataset=NAME`` snapshot: nothing changes it after submit). None for
    a folder in POETS_DATA_ROOT, which is always scanned again: images may be added, removed
    or replaced (or a link swapped in) between submit and run."""
    own = job_folder(settings, job_id)
    if dataset_confinement(settings, job_id, image_dir) != own:
        return None
    return own / datasets.SCAN_FILE


def submitted_scan(
    settings: Settings, job_id: str, image_dir: str, config: TrainConfig
) -> Optional[datasets.Dataset]:
    """The scan submit kept (:func:`scan_file`), so the job does not scan its dataset again;
    None when there is none or it no longer fits."""
    kept = scan_file(settings, job_id, image_dir)
    if kept is None:
        return None
    return datasets.Dataset.load(
        kept,
        Path(image_dir),
        config.testing_percentage,
        config.validation_percentage,
        settings.max_image_pixels,
    )
