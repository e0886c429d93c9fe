"""Refusing requests that a web page of another site made a browser send: :class:`RequestGuard`.

Two checks, on every HTTP request, before any route runs:

* **Host.** DNS rebinding points a name the attacker owns at this server's address; the
  attacker's page then talks to Poets as its own origin and can read the answers. The
  browser still sends the attacker's name as ``Host``, so only known names are answered.
  The app does not reliably know the addresses it listens on (``0.0.0.0``, Docker's port
  mapping, a proxy), so instead of them it accepts every IP literal (rebinding needs a
  name), ``localhost`` and ``*.localhost`` (browsers keep those on loopback), and the names
  in ``POETS_ALLOWED_HOSTS``. A request without ``Host`` (HTTP/1.0) is not from a browser.
* **Origin.** A cross-site ``fetch(..., {mode: "no-cors"})`` with a form or multipart body
  is sent without a preflight: with keys off it could pin a version or add images. Browsers
  name the sending page in ``Origin`` (or at least ``Referer``) on every POST, PUT, PATCH
  and DELETE, so such a request is refused unless that origin is the one the request was
  sent to (the console's own pages) or is listed in ``POETS_ALLOWED_ORIGINS``. curl,
  cameras and scripts send neither header and keep working unchanged.
"""

import ipaddress
from typing import Dict, Iterable, Optional, Set, Tuple
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import poets_response
from poets.engine.errors import ConfigurationError, CrossSiteRequest, HostNotAllowed, PoetsError
from poets.engine.settings import Settings

SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
_DEFAULT_PORTS = {"http": 80, "https": 443}


def split_host(netloc: str) -> Tuple[str, Optional[int]]:
    """``("example.com", 8000)`` for ``Example.COM.:8000``; ``("::1", None)`` for ``[::1]``.

    Raises:
        ValueError: not a host[:port].
    """
    parts = urlsplit("//" + netloc)
    host = parts.hostname
    if not host or parts.username is not None or parts.path or parts.query or parts.fragment:
        raise ValueError(netloc)
    return host.rstrip("."), parts.port


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_allowed(host: str, allowed: Iterable[str]) -> bool:
    """Whether ``host`` (lower case, no port) is an IP, localhost, or matches ``allowed``."""
    if is_ip(host) or host == "localhost" or host.endswith(".localhost"):
        return True
    for name in allowed:
        name = name.lower().rstrip(".")
        if name in ("*", host):
            return True
        if name.startswith(".") and (host.endswith(name) or host == name[1:]):
            return True
    return False


def _origin_of(url: str) -> Optional[Tuple[str, str, int]]:
    """(scheme, host, port) of an Origin or Referer value; None if it names no web origin."""
    try:
        parts = urlsplit(url.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host.rstrip("."), port or _DEFAULT_PORTS[scheme]


def allowed_origins(settings: Settings) -> Set[Tuple[str, str, int]]:
    """``POETS_ALLOWED_ORIGINS`` parsed; :func:`app.main.create_app` calls it first, to fail early.

    Raises:
        ConfigurationError: an entry is not ``scheme://host[:port]``.
    """
    parsed = set()
    for origin in settings.allowed_origins:
        found = _origin_of(origin)
        if found is None or urlsplit(origin.strip()).path not in ("", "/"):
            raise ConfigurationError(
                "POETS_ALLOWED_ORIGINS: {!r} is not an origin: write scheme://host[:port], e.g. "
                "https://tools.example.com".format(origin)
            )
        parsed.add(found)
    return parsed


class RequestGuard:
    """ASGI middleware: the Host check on every request, the Origin check on unsafe ones."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.allowed_hosts = tuple(settings.allowed_hosts)
        self.allowed_origins = allowed_origins(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            try:
                self.check(scope)
            except PoetsError as error:
                if scope["type"] == "http":
                    await poets_response(error)(scope, receive, send)
                else:
                    await send({"type": "websocket.close", "code": 1008})
                return
        await self.app(scope, receive, send)

    def check(self, scope: Scope) -> None:
        headers = _headers(scope)
        host = headers.get("host")
        if host is not None:
            self._check_host(host)
        if scope["type"] == "http" and scope.get("method", "GET").upper() not in SAFE_METHODS:
            self._check_origin(headers, host)

    def _check_host(self, host: str) -> None:
        try:
            name, _ = split_host(host)
        except ValueError:
            name = ""
        if not name or not host_allowed(name, self.allowed_hosts):
            raise HostNotAllowed(
                "Host {!r} is not one this server answers to: it answers to IP addresses, localhost "
                "and the names in POETS_ALLOWED_HOSTS ({}). If the name is this server's, add it "
                "there.".format(host[:100], ",".join(self.allowed_hosts) or "now empty")
            )

    def _check_origin(self, headers: Dict[str, str], host: Optional[str]) -> None:
        if "origin" in headers:
            sender, named = _origin_of(headers["origin"]), "Origin"
        elif "referer" in headers:
            sender, named = _origin_of(headers["referer"]), "Referer"
        else:
            return  # curl, a camera, a script: no page sent it
        if sender is not None and (sender in self.allowed_origins or _same_origin(sender, host)):
            return
        raise CrossSiteRequest(
            "This request was sent by a page of another site ({} {!r}), and pages of other sites "
            "may not change anything here. If that site is yours, add its origin "
            "(scheme://host[:port]) to POETS_ALLOWED_ORIGINS.".format(named, headers[named.lower()][:100])
        )


def _same_origin(sender: Tuple[str, str, int], host: Optional[str]) -> bool:
    """Whether the sending page is on the host[:port] the request was sent to.

    The scheme is left out: behind a TLS proxy the page is https while uvicorn hears http.
    """
    if host is None:
        return False
    try:
        name, port = split_host(host)
    except ValueError:
        return False
    scheme, sender_host, sender_port = sender
    return name == sender_host and (port or _DEFAULT_PORTS[scheme]) == sender_port


def _headers(scope: Scope) -> Dict[str, str]:
    """The request's headers by lower-case name (the first of repeated ones)."""
    found: Dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        if name not in found:
            found[name] = raw_value.decode("latin-1")
    return found
