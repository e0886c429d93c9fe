"""``/auth/image-cookie``: a browser trades its API key for a cookie that lets ``<img>`` read images.

See :mod:`app.image_access` for what the cookie is and why it only authorises image GETs.
"""

import time
from typing import Any, Dict

from fastapi import APIRouter, Depends, Request, Response

from app import errors
from app.deps import get_settings, require_key
from app.image_access import COOKIE, make_token
from app.schemas import CookieRemoved, ImageCookie
from poets.engine.settings import Settings

router = APIRouter(tags=["auth"])


def _cookie_path(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/") or "/"


@router.post(
    "/auth/image-cookie",
    response_model=ImageCookie,
    summary="Set the cookie that lets a browser's <img> tags read image data (keys on)",
    responses=errors.responses(401, 403),
    dependencies=[Depends(require_key)],
)
async def set_image_cookie(
    request: Request, response: Response, settings: Settings = Depends(get_settings)
) -> Dict[str, Any]:
    if not settings.api_keys:
        return {"needed": False, "expires_in": None}
    given = request.headers.get("X-API-Key", "")
    # Signed with the caller's own key (require_key checked it is one of them), so
    # removing that key from POETS_API_KEYS revokes the cookie too.
    lifetime = max(1, int(settings.image_cookie_s))
    response.set_cookie(
        COOKIE,
        make_token(given, int(time.time()) + lifetime),
        max_age=lifetime,
        path=_cookie_path(request),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return {"needed": True, "expires_in": lifetime}


@router.delete("/auth/image-cookie", response_model=CookieRemoved, summary="Remove the image cookie")
async def delete_image_cookie(request: Request, response: Response) -> Dict[str, Any]:
    response.delete_cookie(COOKIE, path=_cookie_path(request))
    return {"removed": True}
