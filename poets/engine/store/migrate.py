"""Moving a deployment from one machine's disk to a bucket and Redis (``poets migrate``).

Every version of the local store goes into the bucket under its own number (pins, rollbacks
and job records name versions by number), the way a publish writes one: claim, files,
manifest last. Then each is downloaded again and checked against its manifest. The pointers
follow, unless the bucket already has its own (a deployment that moved on since an earlier
run keeps its own). The SQLite job records are copied as they are into the job store of the
target (Redis), each one read back and compared.

Run twice, it changes nothing: versions already in the bucket with the same files are only
checked, records already there only compared. A version that the bucket holds with
*different* files under the same number is reported, never overwritten.
"""

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

from poets.engine.errors import PoetsError
from poets.engine.store.bucket_models import BucketModelStore
from poets.engine.store.jobs import JobRecords, JobStore
from poets.engine.store.models import CURRENT_FILE, PINNED_FILE, ModelStore

Say = Callable[[str], None]


@dataclass
class Migration:
    """What a run did: counts, and the problems that make it fail."""

    copied: int = 0
    verified: int = 0
    jobs_copied: int = 0
    jobs_present: int = 0
    problems: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def migrate_models(source: ModelStore, target: BucketModelStore, say: Say, result: Migration) -> None:
    """Every version of every model of ``source`` into ``target``, checked; then the pointers."""
    with tempfile.TemporaryDirectory(prefix="poets-migrate-") as scratch:
        # Checked through a cache of its own: a download, as an API node would make one.
        checker = BucketModelStore(target.bucket, Path(scratch), 1 << 62)
        for name in source.names():
            for version in source.versions(name):
                folder = source.path(name, version)
                try:
                    state = target.copy_in(name, version, folder)
                    checker.path(name, version)
                    shutil.rmtree(str(checker.local.path(name, version)), ignore_errors=True)
                except PoetsError as exc:
                    result.problems.append("{} version {}: {}".format(name, version, exc.detail))
                    say("  {} v{}: FAILED: {}".format(name, version, exc.detail))
                    continue
                if state == "copied":
                    result.copied += 1
                result.verified += 1
                say("  {} v{}: {}, checked against its manifest".format(name, version, state))
            _pointers(source, target, name, say)


def _pointers(source: ModelStore, target: BucketModelStore, name: str, say: Say) -> None:
    for filename, read in ((CURRENT_FILE, _pointer_file), (PINNED_FILE, _pointer_file)):
        local = read(source.root / name / filename)
        if local is None:
            continue
        theirs = target.pointer(name, filename)
        if theirs is None:
            target.set_pointer(name, filename, local)
            say("  {} {}: {}".format(name, filename, local))
        elif theirs != local:
            say("  {} {}: the bucket's {} kept (this store says {})".format(name, filename, theirs, local))


def _pointer_file(path: Path) -> Optional[int]:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def migrate_jobs(source: JobStore, target: JobRecords, say: Say, result: Migration) -> None:
    """Copy every job record of ``source`` into ``target`` (put_record), then compare each."""
    for job in reversed(source.list(limit=1 << 62)):  # oldest first, as they were created
        try:
            added = target.put_record(job)
            copy = target.get(job.id)
        except PoetsError as exc:
            result.problems.append("job {}: {}".format(job.id, exc.detail))
            continue
        if json.dumps(copy.to_dict(), sort_keys=True) != json.dumps(job.to_dict(), sort_keys=True):
            if added:
                result.problems.append("job {}: its copy differs from the record".format(job.id))
            else:
                result.problems.append(
                    "job {}: the target already has a different record under this id (kept)".format(job.id)
                )
            continue
        if added:
            result.jobs_copied += 1
        else:
            result.jobs_present += 1
    say(
        "  job records: {} copied, {} already there, all compared".format(
            result.jobs_copied, result.jobs_present
        )
    )
