"""Everything Poets keeps on disk, built from the settings in one place.

The API, the worker and the CLI each start from ``Workspace(settings)`` and take the
parts they use: the model store, the job records, the bottleneck cache, the dataset
library, the review inbox. Each part is built on first use, once per workspace, so a
process that only labels never opens the job database and one that only lists
settings imports no TensorFlow.
"""

import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, TypeVar

from poets.engine.settings import Settings

if TYPE_CHECKING:  # the parts' modules import TensorFlow or Pillow: only when built
    from poets.engine.data.library import DatasetLibrary
    from poets.engine.data.thumbnails import ThumbnailCache
    from poets.engine.inbox import Inbox
    from poets.engine.jobs.inputs import JobInputs
    from poets.engine.model.bottlenecks import BottleneckCache
    from poets.engine.model.shared_bottlenecks import SharedBottlenecks
    from poets.engine.policies import PolicyStore
    from poets.engine.store.bucket import Bucket
    from poets.engine.store.jobs import JobRecords
    from poets.engine.store.misclassified import MisclassifiedCopies
    from poets.engine.store.models import VersionStore
    from poets.engine.webhooks import Outbox

T = TypeVar("T")


log = logging.getLogger(__name__)


class Workspace:
    """The parts of one Poets installation (``POETS_HOME`` and the folders the settings name)."""

    def __init__(self, settings: Optional[Settings] = None) -> None:
        self.settings = settings or Settings.from_env()
        self._parts: Dict[str, Any] = {}
        self._lock = threading.RLock()  # a part may need another (datasets: thumbnails)

    def _part(self, name: str, build: Callable[[], T]) -> T:
        with self._lock:
            if name not in self._parts:
                self._parts[name] = build()
            return self._parts[name]  # type: ignore[no-any-return]

    @property
    def bucket(self) -> Optional["Bucket"]:
        """The shared bucket (POETS_STORE_URL=s3://...), or None for a store on local disk."""
        url = self.settings.store_bucket
        if url is None:
            return None
        from poets.engine.store.bucket import bucket_for

        s = self.settings
        return bucket_for(url, s.s3_endpoint_url, s.store_timeout_s)

    @property
    def store(self) -> "VersionStore":
        """The model store: local (TF Serving layout), or in the bucket of POETS_STORE_URL
        with this machine's cache of it."""
        return self._part("store", self._build_store)

    def _build_store(self) -> "VersionStore":
        from poets.engine.store.models import ModelStore

        bucket = self.bucket
        if bucket is None:
            return ModelStore(self.settings.store_dir)
        from poets.engine.store.bucket_models import BucketModelStore

        return BucketModelStore(bucket, self.settings.store_dir, self.settings.store_cache_mb * 1024 * 1024)

    @property
    def jobs(self) -> "JobRecords":
        """The job records: in Redis when the broker is Redis (every machine sees them), else
        in SQLite under POETS_HOME; POETS_JOB_HISTORY finished ones kept."""
        return self._part("jobs", self._build_jobs)

    def _build_jobs(self) -> "JobRecords":
        settings = self.settings
        if settings.uses_redis:
            from poets.engine.store.redis_jobs import RedisJobStore

            return RedisJobStore(str(settings.broker_url), history=settings.job_history)
        from poets.engine.store.jobs import JobStore

        return JobStore(settings.jobs_db, history=settings.job_history)

    @property
    def job_inputs(self) -> "JobInputs":
        """How a job's dataset gets from submit to its worker: in place, or through the bucket."""
        from poets.engine.jobs.inputs import inputs_for

        return self._part("job_inputs", lambda: inputs_for(self.settings, self.bucket))

    @property
    def misclassified(self) -> "MisclassifiedCopies":
        """Finished jobs' copies of their misclassified test images: on disk, or in the bucket."""
        from poets.engine.store.misclassified import copies_for

        return self._part("misclassified", lambda: copies_for(self.settings, self.bucket))

    @property
    def policies(self) -> "PolicyStore":
        """The models' retrain policies."""
        from poets.engine.policies import PolicyStore

        return self._part("policies", lambda: PolicyStore(self.settings.home / "policies"))

    @property
    def webhooks(self) -> "Outbox":
        """The webhook outbox: events queued for POETS_WEBHOOK_URLS and the delivery log."""
        from poets.engine.webhooks import Outbox

        s = self.settings
        return self._part(
            "webhooks",
            lambda: Outbox(
                s.webhooks_db, s.webhook_urls, s.webhook_secret, s.webhook_timeout_s, s.webhook_max_attempts
            ),
        )

    def tell(self, event: str, data: Dict[str, Any]) -> None:
        """Queue a webhook event; never raises (a job or /label must not fail for a webhook)."""
        if not self.settings.webhook_urls:
            return
        try:
            self.webhooks.emit(event, data)
        except Exception:
            log.exception("could not queue the webhook event %s", event)

    @property
    def shared_bottlenecks(self) -> Optional["SharedBottlenecks"]:
        """The bucket level under the bottleneck cache (POETS_BOTTLENECK_STORE_URL), or None."""
        url = self.settings.bottleneck_store_url
        if url is None:
            return None
        from poets.engine.model.shared_bottlenecks import SharedBottlenecks
        from poets.engine.store.bucket import bucket_for

        s = self.settings
        return self._part(
            "shared_bottlenecks",
            lambda: SharedBottlenecks(bucket_for(url, s.s3_endpoint_url, s.store_timeout_s)),
        )

    @property
    def bottlenecks(self) -> "BottleneckCache":
        """The bottleneck cache every job shares (imports TensorFlow), over the shared bucket
        when POETS_BOTTLENECK_STORE_URL names one."""
        from poets.engine.model.bottlenecks import BottleneckCache

        return self._part(
            "bottlenecks", lambda: BottleneckCache(self.settings.cache_dir, self.shared_bottlenecks)
        )

    @property
    def thumbnails(self) -> "ThumbnailCache":
        """Thumbnails of dataset images and inbox frames, bounded in bytes."""
        from poets.engine.data.thumbnails import ThumbnailCache

        settings = self.settings
        return self._part(
            "thumbnails",
            lambda: ThumbnailCache(
                settings.thumbnails_dir,
                settings.thumbnail_cache_bytes,
                max_pixels=settings.max_image_pixels,
                workers=settings.thumbnail_workers,
            ),
        )

    @property
    def datasets(self) -> "DatasetLibrary":
        """The datasets kept in the poets layout under ``settings.datasets_root``."""
        from poets.engine.data import archives
        from poets.engine.data.library import DatasetLibrary

        settings = self.settings
        return self._part(
            "datasets",
            lambda: DatasetLibrary(
                settings.datasets_root,
                self.thumbnails,
                settings.max_image_pixels,
                settings.max_file_bytes,
                archives.Limits.from_settings(settings),
                max_images=settings.dataset_max_images,
                max_bytes=settings.dataset_max_bytes,
            ),
        )

    @property
    def inbox(self) -> "Inbox":
        """The review inbox, bounded in items and bytes: under ``inbox/`` in the shared bucket
        when there is one (every API node collects into it and reviews from it), else in
        ``$POETS_HOME/inbox``."""
        from poets.engine.inbox import Inbox
        from poets.engine.inbox_storage import BucketInboxStorage, InboxStorage, LocalInboxStorage

        settings = self.settings

        def build() -> Inbox:
            bucket = self.bucket
            storage: InboxStorage = (
                LocalInboxStorage(settings.inbox_dir) if bucket is None else BucketInboxStorage(bucket)
            )
            return Inbox(storage, settings.inbox_max_items, settings.inbox_max_bytes, self.thumbnails)

        return self._part("inbox", build)

    def clean_leftovers(self) -> List[str]:
        """Remove what crashed dataset imports and deletes left, in the dataset library and
        the uploads folder (only what is old and unused); returns what went."""
        from poets.engine.data import leftovers

        removed = self.datasets.clean_leftovers()
        removed += [
            "uploads/" + path.name for path in leftovers.clean_import_uploads(self.settings.uploads_dir)
        ]
        return removed
