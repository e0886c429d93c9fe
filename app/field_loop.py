"""The field loop's objects, one set per app: the dataset library, the review inbox, the collector.

Made on first use from the app's settings (so ``create_app`` needs no changes for
them) under one lock, so every request of an app shares the same per-dataset locks.
"""

import threading
from typing import Any, Dict, Optional, Sequence, Tuple

from fastapi import Request

from poets.engine.data import archives
from poets.engine.data.library import DatasetLibrary
from poets.engine.data.thumbnails import ThumbnailCache
from poets.engine.inbox import Collector, Inbox
from poets.engine.settings import Settings

_lock = threading.Lock()


def _thumbnails(state: Any, settings: Settings) -> ThumbnailCache:
    cache = getattr(state, "thumbnails", None)
    if cache is None:
        cache = ThumbnailCache(
            settings.thumbnails_dir, settings.thumbnail_cache_bytes, max_pixels=settings.max_image_pixels
        )
        state.thumbnails = cache
    return cache


def get_library(request: Request) -> DatasetLibrary:
    state = request.app.state
    library = getattr(state, "datasets", None)
    if library is None:
        with _lock:
            library = getattr(state, "datasets", None)
            if library is None:
                settings: Settings = state.settings
                library = DatasetLibrary(
                    settings.datasets_root,
                    _thumbnails(state, settings),
                    settings.max_image_pixels,
                    settings.max_file_bytes,
                    archives.Limits.from_settings(settings),
                )
                state.datasets = library
    return library  # type: ignore[no-any-return]


def get_inbox(request: Request) -> Inbox:
    return get_collector(request).inbox


def get_collector(request: Request) -> Collector:
    state = request.app.state
    collector = getattr(state, "collector", None)
    if collector is None:
        with _lock:
            collector = getattr(state, "collector", None)
            if collector is None:
                settings: Settings = state.settings
                metrics = state.metrics
                inbox = Inbox(
                    settings.inbox_dir,
                    settings.inbox_max_items,
                    settings.inbox_max_bytes,
                    _thumbnails(state, settings),
                    on_drop=lambda count: metrics.inbox_dropped.labels("inbox_full").inc(count),
                )
                collector = Collector(
                    inbox,
                    settings.collect_threshold,
                    settings.collect_fraction,
                    settings.collect_queue,
                    always=settings.collect,
                    models=settings.collect_models,
                    on_drop=lambda: metrics.inbox_dropped.labels("queue_full").inc(),
                    on_saved=metrics.inbox_saved.inc,
                )
                state.collector = collector
    return collector  # type: ignore[no-any-return]


def collect(
    request: Request,
    files: Sequence[Tuple[Optional[str], bytes]],
    model: Dict[str, Any],
    labels: Sequence[Sequence[Dict[str, Any]]],
    requested: bool,
) -> None:
    """Offer /label's frames to the collector: never blocks, writes nothing on this thread."""
    collector = get_collector(request)
    for (_, data), scores in zip(files, labels):
        collector.offer(data, model, scores, requested)
