"""Request dependencies: every object a route uses, through ``Depends(get_...)``; API keys.

:func:`app.main.create_app` builds every object once and keeps it on ``app.state``; these
getters are the only code that reads it, so several apps with different settings can
share a process (tests do), and nothing is built lazily while requests race for it.

The getters are ``async`` on purpose: FastAPI runs a plain ``def`` dependency in its
thread pool, which costs every request a thread switch for a dictionary read.
"""

import hmac
from typing import Optional

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader

from app.job_queue import JobQueue
from app.metrics import Metrics
from app.monitoring import LabelMonitor
from app.serving.registry import ModelRegistry
from poets.engine.data.library import DatasetLibrary
from poets.engine.errors import ConfigurationError, Unauthorized
from poets.engine.inbox import Collector
from poets.engine.settings import Settings
from poets.engine.store.health import StorageCheck
from poets.engine.store.jobs import JobRecords
from poets.engine.store.misclassified import MisclassifiedCopies
from poets.engine.workspace import Workspace

API_KEY_HEADER = "X-API-Key"
_api_key = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="Needed when POETS_API_KEYS is set."
)


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_workspace(request: Request) -> Workspace:
    return request.app.state.workspace  # type: ignore[no-any-return]


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry  # type: ignore[no-any-return]


async def get_monitor(request: Request) -> LabelMonitor:
    return request.app.state.monitor  # type: ignore[no-any-return]


async def get_jobs(request: Request) -> JobRecords:
    return request.app.state.jobs  # type: ignore[no-any-return]


async def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue  # type: ignore[no-any-return]


async def get_misclassified(request: Request) -> MisclassifiedCopies:
    """The copies of finished jobs' misclassified test images."""
    return request.app.state.misclassified  # type: ignore[no-any-return]


async def get_storage_check(request: Request) -> StorageCheck:
    """/readyz's disk check (cached briefly, so probes do not stat the disks each time)."""
    return request.app.state.storage_check  # type: ignore[no-any-return]


async def get_library(request: Request) -> DatasetLibrary:
    """The field loop's dataset library (the workspace's)."""
    return request.app.state.library  # type: ignore[no-any-return]


async def get_collector(request: Request) -> Collector:
    """The field loop's collector, which feeds the review inbox (``collector.inbox``) from /label."""
    return request.app.state.collector  # type: ignore[no-any-return]


def check_auth_settings(settings: Settings) -> None:
    """Fail closed: refuse to start when a key is required but none is configured.

    Without keys :func:`check_key` lets everyone in, which is right for an open
    server but not for one told to protect /label.
    """
    if settings.label_requires_key and not settings.api_keys:
        raise ConfigurationError(
            "POETS_LABEL_REQUIRES_KEY is on but POETS_API_KEYS is empty, so every caller would be "
            "let in: set POETS_API_KEYS to one or more comma-separated keys, or turn "
            "POETS_LABEL_REQUIRES_KEY off."
        )


def check_key(settings: Settings, given: Optional[str]) -> None:
    """Raise :class:`Unauthorized` unless ``given`` is one of the configured keys (if any)."""
    if not settings.api_keys:
        return
    if not given:
        raise Unauthorized("This endpoint needs an API key: send it in the {} header.".format(API_KEY_HEADER))
    supplied = given.encode("utf-8", "surrogateescape")
    matched = False
    for key in settings.api_keys:  # compare with every key: timing says nothing about which
        matched |= hmac.compare_digest(supplied, key.encode("utf-8", "surrogateescape"))
    if not matched:
        raise Unauthorized(
            "The API key in the {} header is not valid: check POETS_API_KEYS on the server.".format(
                API_KEY_HEADER
            )
        )


async def require_key(
    settings: Settings = Depends(get_settings), key: Optional[str] = Depends(_api_key)
) -> None:
    """For /retrain, job cancellation and model activation."""
    check_key(settings, key)
