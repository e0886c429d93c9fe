"""``poets migrate``: a one-machine deployment's versions and job records into the bucket and Redis."""

import argparse
from pathlib import Path
from typing import Any

from poets.engine.errors import ConfigurationError
from poets.engine.settings import Settings


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "migrate",
        help="copy a local model store and its SQLite job records into POETS_STORE_URL and Redis",
        description=(
            "Copy every version of a local model store into the bucket of POETS_STORE_URL (under "
            "its own number, checked against its manifest), its CURRENT and PINNED, and the "
            "SQLite job records into Redis (POETS_BROKER_URL). Safe to run again: what is already "
            "there is checked, not copied twice. Stop the workers while it runs."
        ),
    )
    parser.add_argument(
        "--from-store",
        type=Path,
        help="the local model store (default: POETS_MODEL_DIR, else $POETS_HOME/models)",
    )
    parser.add_argument(
        "--from-jobs", type=Path, help="the SQLite job records (default: $POETS_HOME/jobs.sqlite3)"
    )
    parser.set_defaults(run=run_migrate)


def run_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from poets.engine.store.bucket_models import BucketModelStore
    from poets.engine.store.jobs import JobStore
    from poets.engine.store.migrate import Migration, migrate_jobs, migrate_models
    from poets.engine.store.models import ModelStore
    from poets.engine.workspace import Workspace

    if settings.store_bucket is None:
        raise ConfigurationError(
            "POETS_STORE_URL names no bucket: set it to s3://bucket/prefix (and POETS_S3_ENDPOINT_URL "
            "for MinIO or Ceph) to say where to migrate to."
        )
    workspace = Workspace(settings)
    target = workspace.store
    assert isinstance(target, BucketModelStore)
    target.bucket.check()
    source = ModelStore(args.from_store or settings.model_dir or settings.home / "models")
    result = Migration()
    print("Model versions: {} -> {}".format(source.root, settings.store_bucket))
    migrate_models(source, target, print, result)
    jobs_file = args.from_jobs or settings.jobs_db
    if not settings.uses_redis:
        print("Job records stay in {} (POETS_BROKER_URL is not redis://)".format(jobs_file))
    elif not jobs_file.is_file():
        print("Job records: none ({} does not exist)".format(jobs_file))
    else:
        print("Job records: {} -> Redis".format(jobs_file))
        migrate_jobs(JobStore(jobs_file), workspace.jobs, print, result)
    if not result.ok:
        print("{} problem(s):".format(len(result.problems)))
        for problem in result.problems:
            print("  " + problem)
        return 1
    print(
        "Done: {} version(s) copied, {} checked; {} job record(s) copied, {} already there.".format(
            result.copied, result.verified, result.jobs_copied, result.jobs_present
        )
    )
    return 0
