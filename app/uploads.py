"""Reading request bodies within the size limits, whatever the client claims.

The ``Content-Length`` header is checked first (a fast 413), and the bytes really
received are counted while reading, so a chunked or lying client cannot send more.
"""

import contextlib
from typing import Any, List, Optional, Tuple

from starlette.datastructures import UploadFile
from starlette.requests import Request

from poets.engine.errors import TooLarge, UnsupportedMediaType

MULTIPART = "multipart/form-data"
FORMS = (MULTIPART, "application/x-www-form-urlencoded")


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def limited(request: Request, limit: int, message: str) -> Request:
    """A view of ``request`` whose body reads raise :class:`TooLarge` past ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            declared = -1
        if declared > limit:
            raise TooLarge(message)
    receive = request.receive
    seen = [0]

    async def limited_receive() -> Any:
        message_ = await receive()
        if message_.get("type") == "http.request":
            seen[0] += len(message_.get("body", b""))
            if seen[0] > limit:
                raise TooLarge(message)
        return message_

    return Request(request.scope, limited_receive)


async def read_form(
    request: Request, accepted: Tuple[str, ...], wrong_type: str, limit: int, too_large: str
) -> Any:
    """The request's form, refused unless its content type is one of ``accepted``
    (:class:`UnsupportedMediaType` saying ``wrong_type``) and read within ``limit`` bytes
    (:class:`TooLarge` saying ``too_large``). Close it with :func:`close_form`."""
    if media_type(request) not in accepted:
        raise UnsupportedMediaType(wrong_type)
    return await limited(request, limit, too_large).form()


def is_upload(value: Any) -> bool:
    # Starlette's UploadFile; FastAPI's subclasses it.
    return isinstance(value, UploadFile) or (hasattr(value, "filename") and hasattr(value, "file"))


async def read_files(form: Any, field: str) -> List[Tuple[Optional[str], bytes]]:
    files = []
    for value in form.getlist(field):
        if is_upload(value):
            files.append((value.filename, await value.read()))
    return files


async def close_form(form: Any) -> None:
    close = getattr(form, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()
