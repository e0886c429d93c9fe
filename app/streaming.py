"""Streamed responses that give up on a client that stops reading.

A streamed body (a dataset export) waits for the client at each piece: the server's
send blocks while the connection's buffer is full. A client that never reads would
hold the response, its open files and its buffered piece for as long as it stayed
connected, so each send must complete within ``POETS_SEND_TIMEOUT_S``; past it the
response ends there, the rest is not produced, and the connection is closed.
"""

import asyncio
import logging
from typing import Any

from fastapi.responses import StreamingResponse

log = logging.getLogger(__name__)


class _Stalled(Exception):
    pass


class PacedStreamingResponse(StreamingResponse):
    """A :class:`StreamingResponse` whose every send must complete within ``send_timeout_s``."""

    def __init__(self, content: Any, send_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.send_timeout_s = float(send_timeout_s)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.send_timeout_s <= 0:
            await super().__call__(scope, receive, send)
            return
        stalled = [False]

        async def send_in_time(message: Any) -> None:
            try:
                await asyncio.wait_for(send(message), self.send_timeout_s)
            except asyncio.TimeoutError:
                stalled[0] = True
                raise _Stalled() from None

        try:
            await super().__call__(scope, receive, send_in_time)
        except BaseException:  # or a group of them (anyio 3's is a BaseException) around it
            if not stalled[0]:
                raise
            # The server closes the connection: the response ended without its last piece.
            log.warning(
                "%s: the client read nothing for %g s (POETS_SEND_TIMEOUT_S); its response was cut off",
                scope.get("path", ""),
                self.send_timeout_s,
            )
