"""``/docs`` with Swagger UI served from this package, so it works with no network.

FastAPI's default page loads Swagger UI from a CDN: on an edge box without internet it
stays blank. The assets live in ``app/static/swagger-ui`` (see its README.txt).
"""

import re
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import HTMLResponse

from app.headers import csp, script_hash

ASSETS = Path(__file__).resolve().parent / "static" / "swagger-ui"
ASSETS_URL = "/static/swagger-ui"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def with_policy(page: HTMLResponse) -> HTMLResponse:
    """``page`` with a CSP that allows its own inline scripts (by hash) and Swagger UI's
    ``data:`` icons: FastAPI writes the set-up script inline, and its text changes with
    the FastAPI version and the root path, so the hashes are taken from the page itself."""
    html = bytes(page.body).decode("utf-8")
    hashes = [script_hash(source) for source in _INLINE_SCRIPT.findall(html)]
    page.headers["Content-Security-Policy"] = csp(images=["data:"], scripts=hashes)
    return page


def install(app: FastAPI) -> None:
    """Serve ``/docs`` and its assets; build the app with ``docs_url=None, redoc_url=None``."""
    app.mount(ASSETS_URL, StaticFiles(directory=str(ASSETS)), name="swagger-ui")

    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=root + str(app.openapi_url),
            title=app.title + " API",
            swagger_js_url=root + ASSETS_URL + "/swagger-ui-bundle.js",
            swagger_css_url=root + ASSETS_URL + "/swagger-ui.css",
            swagger_favicon_url=root + ASSETS_URL + "/favicon-32x32.png",
        )
        return with_policy(page)

    app.add_route("/docs", docs, include_in_schema=False)
