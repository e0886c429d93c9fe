"""``/auth/image-cookie``: a browser trades its API key for a cookie that lets ``<img>`` read images.

See :mod:`app.image_access` for what the cookie is and why it only authorises image GETs.
"""

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from app import errors
from app.deps import require_key
from app.image_access import COOKIE, make_token

router = APIRouter(tags=["auth"])


def _cookie_path(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/") or "/"


@router.post(
    "/auth/image-cookie",
    summary="Set the cookie that lets a browser's <img> tags read image data (keys on)",
    responses=errors.responses(401, 403),
    dependencies=[Depends(require_key)],
)
def set_image_cookie(request: Request) -> JSONResponse:
    settings = request.app.state.settings
    if not settings.api_keys:
        return JSONResponse({"needed": False, "expires_in": None})
    given = request.headers.get("X-API-Key", "")
    # Signed with the caller's own key (require_key checked it is one of them), so
    # removing that key from POETS_API_KEYS revokes the cookie too.
    lifetime = max(1, int(settings.image_cookie_s))
    response = JSONResponse({"needed": True, "expires_in": lifetime})
    response.set_cookie(
        COOKIE,
        make_token(given, int(time.time()) + lifetime),
        max_age=lifetime,
        path=_cookie_path(request),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.delete("/auth/image-cookie", summary="Remove the image cookie")
def delete_image_cookie(request: Request) -> JSONResponse:
    response = JSONResponse({"removed": True})
    response.delete_cookie(COOKIE, path=_cookie_path(request))
    return response
