"""Submitting a job: check the request, bring its dataset in, scan it, record it, enqueue it.

Every client submits through :func:`submit`: the API's ``POST /retrain`` (HTTP clients, the
console, ``poets retrain --url``) and the retrain policies' scheduler. It blocks (extraction,
the scan, SQLite, the broker): call it in a thread from async code.
"""

import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Dict, Optional, Tuple

from poets.engine.errors import InvalidInput, StoreUnavailable, Unavailable
from poets.engine.jobs.dataset import (
    dataset_confinement,
    job_folder,
    resolve_image_dir,
    save_and_extract,
    scan_file,
    scan_summary,
)
from poets.engine.model.config import TrainConfig
from poets.engine.settings import Settings
from poets.engine.store.jobs import Job
from poets.engine.store.models import check_name
from poets.engine.workspace import Workspace

log = logging.getLogger(__name__)

# Sends a recorded job to the workers: (job id, dataset folder, model name, config).
# Raises :class:`~poets.engine.errors.Unavailable` when the queue cannot be reached.
Send = Callable[[str, str, str, Dict[str, Any]], None]


@dataclass
class JobRequest:
    """What a client asks for: a model name, retrain options, and one dataset source.

    ``options`` are retrain parameters by name, as given (text from a form is parsed);
    the dataset is ``archive`` (a .zip or .tar.gz, read from its start), ``image_dir`` (a
    folder inside POETS_DATA_ROOT) or ``dataset`` (a /datasets dataset, by name).
    """

    options: Dict[str, Any] = field(default_factory=dict)
    name: Optional[str] = None
    archive: Optional[IO[bytes]] = None
    image_dir: Optional[str] = None
    dataset: Optional[str] = None
    trigger: str = "api"  # who asks: api, cli, console or policy (the job record says)


def submit(workspace: Workspace, request: JobRequest, send: Send) -> Job:
    """Check ``request``, bring its dataset in and scan it, record the job and ``send`` it.

    Returns the queued job's record. Raises a :class:`~poets.engine.errors.PoetsError`
    saying what to fix, with nothing left behind (an unreachable queue leaves the job
    recorded as failed, saying so). With a bucket for a store, the job's own copy of its
    dataset travels there (:mod:`poets.engine.jobs.inputs`), and a bucket that cannot be
    reached is :class:`~poets.engine.errors.StoreUnavailable`.
    """
    settings = workspace.settings
    name, config = _checked(settings, request)
    inputs = workspace.job_inputs
    inputs.check()  # a bucket that cannot be reached: refused before anything is written
    job_id = uuid.uuid4().hex
    own = job_folder(settings, job_id)
    try:
        root, source = _dataset_folder(workspace, request, own)
        # Nothing may lead out of the data root (or the job's own copy) through a link.
        confine_to = dataset_confinement(settings, job_id, str(root))
        keep = scan_file(settings, job_id, str(root))
        summary = scan_summary(root, config, settings, confine_to, keep)
        inputs.keep(job_id)  # with a bucket: the job's own copy, scan included, goes there
    except BaseException:
        shutil.rmtree(str(own), ignore_errors=True)
        raise
    # image_dir is for the worker; answers show dataset_path, relative to the data root or
    # to the upload (app.api.routes.jobs.job_out), never the server's own paths.
    params = {
        "image_dir": str(root),
        "dataset_path": os.path.relpath(str(root), str(confine_to)),
        "source": source,
        "config": config.to_dict(),
        "dataset": summary,
    }
    if request.dataset is not None:
        params["dataset_name"] = request.dataset
    jobs = workspace.jobs
    try:
        jobs.create(name, params, job_id=job_id, trigger=request.trigger)
    except BaseException:  # the records cannot be reached (Redis): nothing left behind
        shutil.rmtree(str(own), ignore_errors=True)
        inputs.forget(job_id)
        raise
    try:
        send(job_id, str(root), name, config.to_dict())
    except Unavailable as exc:
        shutil.rmtree(str(own), ignore_errors=True)
        inputs.forget(job_id)
        try:
            jobs.finish(job_id, "failed", error=exc.detail)
        except StoreUnavailable as lost:  # Redis went away between the record and the send
            log.warning("job %s was not sent and its record could not say so: %s", job_id, lost.detail)
        raise
    return jobs.get(job_id)


def _checked(settings: Settings, request: JobRequest) -> Tuple[str, TrainConfig]:
    """The model name and the validated options; one dataset source, exactly."""
    name = check_name(request.name or settings.default_model)
    config = TrainConfig.from_dict(dict(request.options))
    config.validate(settings)
    archive, image_dir = request.archive, request.image_dir
    if archive is not None and image_dir is not None:
        raise InvalidInput("Send either 'file' (an archive) or 'image_dir', not both.")
    if request.dataset is not None and (archive is not None or image_dir is not None):
        raise InvalidInput("Send one of 'file', 'image_dir' or 'dataset', not several.")
    if archive is None and image_dir is None and request.dataset is None:
        raise InvalidInput(
            "No dataset: send the archive as 'file' (curl -F file=@flowers.zip) "
            "or a server folder as 'image_dir'."
        )
    return name, config


def _dataset_folder(workspace: Workspace, request: JobRequest, own: Path) -> Tuple[Path, str]:
    """The folder the job trains on, and where it came from (the record's ``source``)."""
    if request.dataset is not None:  # trained on a frozen copy: edits go on meanwhile
        return workspace.datasets.snapshot(request.dataset, own), "dataset"
    if request.image_dir is not None:
        return resolve_image_dir(workspace.settings, request.image_dir), "image_dir"
    assert request.archive is not None  # _checked made sure
    return save_and_extract(request.archive, own, workspace.settings), "upload"
