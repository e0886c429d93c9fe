"""Security headers on every response: a Content-Security-Policy, no framing, no sniffing.

The console loads nothing from other hosts (no CDN), so its policy is ``'self'`` for
everything; a page that shows ``blob:`` or ``data:`` images (the label page: dropped
photos and camera snapshots) says so with :func:`csp`'s ``images``. A response that
already carries a policy (a console page, ``/docs``) keeps it; every other response (JSON,
images, errors) gets :data:`DEFAULT_CSP`. ``frame-ancestors 'none'`` and
``X-Frame-Options: DENY`` (for browsers without CSP 2) stop other sites framing a page.
"""

import hashlib
from base64 import b64encode
from typing import Iterable, List, Tuple

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# style-src: the templates and console.js set style attributes (bar widths, chart colours).
# style-src-elem keeps <style> and stylesheets to 'self' in browsers that know it (CSP 3),
# so 'unsafe-inline' only lets style attributes through there.
_BASE = (
    ("default-src", "'self'"),
    ("script-src", "'self'"),
    ("style-src", "'self' 'unsafe-inline'"),
    ("style-src-elem", "'self'"),
    ("object-src", "'none'"),
    ("base-uri", "'none'"),
    ("form-action", "'self'"),
    ("frame-ancestors", "'none'"),
)


def csp(images: Iterable[str] = (), scripts: Iterable[str] = ()) -> str:
    """The console's policy, plus image sources (``blob:``, ``data:``) and script hashes."""
    extra = {"img-src": list(images), "script-src": list(scripts)}
    parts: List[str] = []
    for directive, value in _BASE:
        more = extra.pop(directive, [])
        parts.append(" ".join([directive, value, *more]))
    for directive, values in extra.items():
        if values:
            parts.append(" ".join([directive, "'self'", *values]))
    return "; ".join(parts)


def script_hash(source: str) -> str:
    """The CSP source (``'sha256-...'``) that allows an inline script with this text."""
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-{}'".format(b64encode(digest).decode("ascii"))


DEFAULT_CSP = csp()
_ADDED: Tuple[Tuple[bytes, bytes], ...] = (
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)


class SecurityHeaders:
    """ASGI middleware adding the headers above to each response that lacks them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = set(name.lower() for name, _ in headers)
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", DEFAULT_CSP.encode("latin-1")))
                headers.extend(item for item in _ADDED if item[0] not in present)
                message = dict(message, headers=headers)
            await send(message)

        await self.app(scope, receive, send_with_headers)
