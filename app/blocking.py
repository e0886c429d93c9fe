"""The one way routes run blocking work: ``await run_blocking(function, *args)``.

Every route is ``async def``. What answers from memory (``/label``'s lease, the cached
dataset listing, ``/healthz``) runs on the event loop with no thread switch; whatever
touches the disk, SQLite, the broker or a model's load is handed to a thread here, so
it is visible at the call and never blocks the loop.

The threads are Starlette's pool (the one FastAPI runs ``def`` routes and file uploads
in, 40 threads by default), so all request work shares one bound; ``pool=`` names a
dedicated executor where one is wanted (the datasets' single describe thread).
"""

import asyncio
from concurrent.futures import Executor
from typing import Any, Callable, Optional, TypeVar

from starlette.concurrency import run_in_threadpool

T = TypeVar("T")


async def run_blocking(function: Callable[..., T], *args: Any, pool: Optional[Executor] = None) -> T:
    """``function(*args)`` in a thread; its result, or its exception raised here."""
    if pool is not None:
        return await asyncio.get_event_loop().run_in_executor(pool, function, *args)
    return await run_in_threadpool(function, *args)
