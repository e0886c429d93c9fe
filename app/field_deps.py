"""The field loop's objects, one set per app: the dataset library, the review inbox, the collector.

The library and the inbox are the app's workspace's (:class:`poets.engine.workspace.Workspace`);
the collector, which feeds the inbox from /label, is made on first use under one lock.
"""

import threading
from typing import Any, Dict, Optional, Sequence, Tuple

from fastapi import Request

from poets.engine.data.library import DatasetLibrary
from poets.engine.inbox import Collector, Inbox
from poets.engine.settings import Settings
from poets.engine.workspace import Workspace

_lock = threading.Lock()


def get_library(request: Request) -> DatasetLibrary:
    workspace: Workspace = request.app.state.workspace
    return workspace.datasets


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
                inbox = state.workspace.inbox
                inbox.on_drop = lambda count: metrics.inbox_dropped.labels("inbox_full").inc(count)
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
