"""With API keys on, image data needs a key too; ``<img>`` tags get it from a cookie.

Dataset images, thumbnails and archives, inbox frames and misclassified images are the
camera frames that a key-protected /label received, so reading them needs what writing
does: :func:`require_image_key` on each of those GET routes. A script sends
``X-API-Key``; a browser's ``<img src>`` cannot send headers, so the console trades its key
for a cookie at ``POST /auth/image-cookie`` (see :mod:`app.api.routes.auth`).

Why a cookie and not signed URLs: the image URLs are in many answers (datasets, the
inbox, job records) that would all have to be signed per caller; tokens in URLs end up in
logs, history and ``Referer``; and a plain-HTTP LAN page has no ``crypto.subtle`` to sign
them in the browser. The cookie is ``HttpOnly`` (scripts cannot read it) and
``SameSite=Strict`` (no other site's page makes the browser send it), its value is an
expiry signed with HMAC-SHA256 under one of the configured keys (never the key itself;
removing the key from ``POETS_API_KEYS`` revokes it), and it only ever authorises these
GETs: a cookie that let POST through would bring cross-site request forgery back.
"""

import hashlib
import hmac
import re
import time
from typing import Optional

from fastapi import Depends, Request
from fastapi.security import APIKeyCookie, APIKeyHeader

from app.deps import API_KEY_HEADER, check_key, get_settings
from poets.engine.errors import Unauthorized
from poets.engine.settings import Settings

COOKIE = "poets_images"
_PURPOSE = b"poets image cookie v1 "
_EXPIRY = re.compile(r"\A[0-9]{1,12}\Z")
_key_header = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="Needed for image data when POETS_API_KEYS is set."
)
_cookie = APIKeyCookie(
    name=COOKIE,
    auto_error=False,
    description="With POETS_API_KEYS set, image data needs X-API-Key or this cookie "
    "(POST /auth/image-cookie).",
)


def _signature(key: str, expires: int) -> str:
    message = _PURPOSE + str(expires).encode("ascii")
    return hmac.new(key.encode("utf-8", "surrogateescape"), message, hashlib.sha256).hexdigest()


def make_token(key: str, expires: int) -> str:
    """The cookie's value: ``<expiry, Unix seconds>.<HMAC of it under key>``."""
    return "{}.{}".format(expires, _signature(key, expires))


def token_valid(settings: Settings, token: str, now: Optional[float] = None) -> bool:
    """Whether ``token`` is unexpired and signed with one of the configured keys."""
    expires_text, _, signature = token.partition(".")
    if not _EXPIRY.match(expires_text):  # not str.isdigit(): int() refuses some of its digits
        return False
    expires = int(expires_text)
    if expires <= (time.time() if now is None else now):
        return False
    given = signature.encode("utf-8", "replace")
    matched = False
    for key in settings.api_keys:  # every key, like check_key: timing says nothing
        matched |= hmac.compare_digest(_signature(key, expires).encode("ascii"), given)
    return matched


async def require_image_key(
    request: Request,
    settings: Settings = Depends(get_settings),
    key: Optional[str] = Depends(_key_header),
    cookie: Optional[str] = Depends(_cookie),
) -> None:
    """For GETs of image data: the API key in its header, or a valid image cookie.

    ``async``: a plain ``def`` would cost each thumbnail two thread switches.
    """
    if not settings.api_keys:
        return
    if key or request.method not in ("GET", "HEAD"):
        check_key(settings, key)
        return
    if cookie and token_valid(settings, cookie):
        return
    if cookie:
        raise Unauthorized(
            "The {} cookie has expired (it lasts POETS_IMAGE_COOKIE_S) or its key was removed from "
            "POETS_API_KEYS: POST /auth/image-cookie with the key again, or send the {} header.".format(
                COOKIE, API_KEY_HEADER
            )
        )
    raise Unauthorized(
        "Image data needs an API key: send it in the {} header (a browser can trade it for a "
        "cookie at POST /auth/image-cookie).".format(API_KEY_HEADER)
    )
