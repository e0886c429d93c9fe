"""Everything Poets keeps on disk, built from the settings in one place.

The API, the worker and the CLI each start from ``Workspace(settings)`` and take the
parts they use: the model store, the job records, the bottleneck cache, the dataset
library, the review inbox. Each part is built on first use, once per workspace, so a
process that only labels never opens the job database and one that only lists
settings imports no TensorFlow.
"""

import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, TypeVar

from poets.engine.settings import Settings

if TYPE_CHECKING:  # the parts' modules import TensorFlow or Pillow: only when built
    from poets.engine.data.library import DatasetLibrary
    from poets.engine.data.thumbnails import ThumbnailCache
    from poets.engine.inbox import Inbox
    from poets.engine.model.bottlenecks import BottleneckCache
    from poets.engine.store.jobs import JobStore
    from poets.engine.store.models import ModelStore

T = TypeVar("T")


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
    def store(self) -> "ModelStore":
        """The model store (TF Serving layout)."""
        from poets.engine.store.models import ModelStore

        return self._part("store", lambda: ModelStore(self.settings.store_dir))

    @property
    def jobs(self) -> "JobStore":
        """The job records."""
        from poets.engine.store.jobs import JobStore

        return self._part("jobs", lambda: JobStore(self.settings.jobs_db))

    @property
    def bottlenecks(self) -> "BottleneckCache":
        """The bottleneck cache every job shares (imports TensorFlow)."""
        from poets.engine.model.bottlenecks import BottleneckCache

        return self._part("bottlenecks", lambda: BottleneckCache(self.settings.cache_dir))

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
        """The review inbox, bounded in items and bytes."""
        from poets.engine.inbox import Inbox

        settings = self.settings
        return self._part(
            "inbox",
            lambda: Inbox(
                settings.inbox_dir, settings.inbox_max_items, settings.inbox_max_bytes, self.thumbnails
            ),
        )
