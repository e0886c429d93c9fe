"""The one place where errors become HTTP responses.

Every error body is ``{"error": code, "detail": "what to fix"}``: engine errors
(:class:`poets.engine.errors.PoetsError` subclasses, mapped to a status here and nowhere
else), request validation errors (422) and Starlette's own HTTP errors (404 for an
unknown path, 405...). Anything unexpected is logged and answered with a 500 in
the same shape, never with a stack trace.
"""

import logging
from typing import Any, Dict, Optional, Sequence, Tuple, Type

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from poets.engine import errors
from poets.engine.store.health import storage_error

log = logging.getLogger(__name__)

# Most specific first: the first class an error is an instance of decides its status.
STATUS: Tuple[Tuple[Type[errors.PoetsError], int], ...] = (
    (errors.InvalidImage, 400),
    (errors.InvalidArchive, 400),
    (errors.TooLarge, 413),
    (errors.UnsupportedMediaType, 415),
    (errors.InvalidDataset, 422),
    (errors.InvalidInput, 422),
    (errors.BodyTimeout, 408),
    (errors.HostNotAllowed, 400),
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.Cancelled, 409),
    (errors.ModelLoadError, 409),
    (errors.NoModel, 503),
    (errors.Unavailable, 503),
    (errors.BackboneUnavailable, 503),
    (errors.InsufficientStorage, 507),
)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    503: "unavailable",
    507: "insufficient_storage",
}


def status_for(error: errors.PoetsError) -> int:
    for cls, status in STATUS:
        if isinstance(error, cls):
            return status
    return 500


def body(code: str, detail: str) -> Dict[str, str]:
    return {"error": code, "detail": detail}


def error_response(
    code: str, detail: str, status: int, headers: Optional[Dict[str, str]] = None
) -> JSONResponse:
    return JSONResponse(body(code, detail), status_code=status, headers=headers)


def poets_response(error: errors.PoetsError) -> JSONResponse:
    status = status_for(error)
    headers = {"Retry-After": "5"} if status == 503 else None
    if status >= 500 and status != 503:
        log.error("%s: %s", error.code, error.detail)
    return error_response(error.code, error.detail, status, headers)


def _where(loc: Sequence[Any]) -> str:
    parts = [str(part) for part in loc if part not in ("body", "query", "path", "header")]
    return ".".join(parts) or "request"


def describe_validation(exc: RequestValidationError) -> str:
    messages = []
    for item in exc.errors():
        messages.append("{}: {}".format(_where(item.get("loc", ())), item.get("msg", "invalid")))
    return "; ".join(messages) or "The request is not valid."


async def _poets_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.PoetsError)
    return poets_response(exc)


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response("invalid_request", describe_validation(exc) + ".", 422)


async def _http_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = "No such endpoint {} {}: see /docs.".format(request.method, request.url.path)
    elif exc.status_code == 405:
        detail = "{} is not allowed on {}: see /docs.".format(request.method, request.url.path)
    code = _HTTP_CODES.get(exc.status_code, "http_{}".format(exc.status_code))
    return error_response(code, detail, exc.status_code, getattr(exc, "headers", None))


async def _unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    storage = storage_error(exc)  # a read-only or full disk under any route: say so
    if storage is not None:
        log.error("%s %s: %s", request.method, request.url.path, exc)
        return poets_response(storage)
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(
        "internal_error",
        "Something went wrong inside Poets ({}); the server log has the details.".format(type(exc).__name__),
        500,
    )


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(errors.PoetsError, _poets_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(Exception, _unexpected_handler)


# The error responses each route documents in OpenAPI.
def responses(*statuses: int) -> Dict[Any, Dict[str, Any]]:
    from app.schemas import ErrorBody

    return {
        status: {"model": ErrorBody, "description": _HTTP_CODES.get(status, "error")} for status in statuses
    }


def with_ok(ok: Dict[Any, Dict[str, Any]], *statuses: int) -> Dict[Any, Dict[str, Any]]:
    merged = dict(ok)
    merged.update(responses(*statuses))
    return merged
