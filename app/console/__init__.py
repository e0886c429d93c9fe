"""The web console: server-rendered pages and a little plain JavaScript over the public API.

Every asset is a file in ``static/`` (no CDN, no build step): the console works with
no network. The pages call only the HTTP API, as any other client does.
"""

from app.console.routes import install

__all__ = ["install"]
