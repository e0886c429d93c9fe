"""A deadline for receiving request bodies: slow clients get 408 instead of holding on.

A client that sends its body a byte now and then (slowloris) would otherwise keep a
connection, a request task and its buffered bytes for as long as it likes, and with
``POETS_MAX_CONNECTIONS`` a few hundred such clients would lock everyone else out.
The clock starts when the request's headers are in; a body not complete within
``POETS_BODY_TIMEOUT_S`` (``POETS_UPLOAD_TIMEOUT_S`` for archives: ``/retrain`` and
dataset imports) is answered 408 in the one error shape, and the connection is closed.

A pure ASGI middleware: requests that read no body (or have finished reading it) are
not affected, and responses are passed through untouched.
"""

import asyncio
import re
import time
from typing import Any, Callable

from app.errors import poets_response
from poets.engine.errors import BodyTimeout

# Long uploads have their own, longer deadline: /retrain's archives and dataset imports
# (POST /datasets/NAME/archive), both up to POETS_MAX_ARCHIVE_BYTES.
UPLOAD_PATHS = ("/retrain",)
_UPLOAD_PATH = re.compile(r"/datasets/[^/]+/archive/?")


def is_upload_path(path: str) -> bool:
    """Whether a request to ``path`` carries an archive (the upload deadline applies)."""
    return path.startswith(UPLOAD_PATHS) or bool(_UPLOAD_PATH.fullmatch(path))


class BodyDeadline:
    """ASGI middleware: the body of each HTTP request must arrive within its deadline.

    Args:
        app: the ASGI app.
        timeout_s: seconds from the request's start to its last body byte.
        upload_timeout_s: the same for archive uploads (:func:`is_upload_path`).
        clock: for tests of the arithmetic; ``time.monotonic`` otherwise.
    """

    def __init__(
        self, app: Any, timeout_s: float, upload_timeout_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.app = app
        self.timeout_s = float(timeout_s)
        self.upload_timeout_s = float(upload_timeout_s)
        self.clock = clock

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.timeout_s <= 0:
            await self.app(scope, receive, send)
            return
        if is_upload_path(scope.get("path", "")):
            limit, setting = self.upload_timeout_s, "POETS_UPLOAD_TIMEOUT_S"
        else:
            limit, setting = self.timeout_s, "POETS_BODY_TIMEOUT_S"
        deadline = self.clock() + limit
        late = BodyTimeout(
            "The request body did not arrive within {:g} s ({}): send it at "
            "once, or raise {} on the server.".format(limit, setting, setting)
        )
        state = {"done": False, "late": False, "started": False}

        async def receive_in_time() -> Any:
            if state["done"]:  # the body is in: waiting for a disconnect is fine
                return await receive()
            remaining = deadline - self.clock()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError()
                message = await asyncio.wait_for(receive(), remaining)
            except asyncio.TimeoutError:
                state["late"] = True
                raise late from None
            if message.get("type") != "http.request" or not message.get("more_body", False):
                state["done"] = True
            return message

        async def send_unless_late(message: Any) -> None:
            # Once late, the app's own answer to the cut-off body (whatever it made of the
            # error) is dropped: the 408 below goes instead.
            if state["late"] and not state["started"]:
                return
            if message.get("type") == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, receive_in_time, send_unless_late)
        except Exception:
            if not state["late"] or state["started"]:
                raise
        if state["late"] and not state["started"]:
            response = poets_response(late)
            response.headers["Connection"] = "close"
            await response(scope, receive, send)
