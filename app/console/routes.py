"""The console's pages (``/``, ``/console/...``) and its static files (``/console/static``).

Pages are Jinja2 templates rendered with the server's settings (whether API keys are on,
the default model); the data comes from the API, fetched by the page's script.
"""

from pathlib import Path
from typing import Any, Dict

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from app.deps import get_settings
from app.headers import csp
from poets.engine.settings import Settings

HERE = Path(__file__).resolve().parent
STATIC = "/console/static"

# (page, path, title) in the order of the navigation bar.
PAGES = (
    ("label", "/", "Label"),
    ("datasets", "/console/datasets", "Datasets"),
    ("review", "/console/review", "Review"),
    ("jobs", "/console/jobs", "Jobs"),
    ("models", "/console/models", "Models"),
)

# The label page shows dropped photos (blob: URLs) and camera snapshots (data: URLs).
IMAGE_SOURCES = {"label": ("blob:", "data:")}

templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(include_in_schema=False)


def _render(request: Request, settings: Settings, page: str) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    context: Dict[str, Any] = {
        "page": page,
        "title": dict((name, title) for name, _, title in PAGES)[page],
        "pages": [(name, root + path, title) for name, path, title in PAGES],
        "root": root,
        "static": root + STATIC,
        "keys_on": bool(settings.api_keys),
        "label_needs_key": bool(settings.api_keys) and bool(settings.label_requires_key),
        "default_model": settings.default_model,
    }
    # get_template + render works the same on Starlette 0.19 and 1.x, whose
    # TemplateResponse signatures differ.
    html = templates.get_template(page + ".html").render(context)
    policy = csp(images=IMAGE_SOURCES.get(page, ()))
    return HTMLResponse(html, headers={"Cache-Control": "no-cache", "Content-Security-Policy": policy})


@router.get("/", response_class=HTMLResponse)
async def label_page(request: Request, settings: Settings = Depends(get_settings)) -> HTMLResponse:
    return _render(request, settings, "label")


@router.get("/console/datasets", response_class=HTMLResponse)
async def datasets_page(request: Request, settings: Settings = Depends(get_settings)) -> HTMLResponse:
    return _render(request, settings, "datasets")


@router.get("/console/review", response_class=HTMLResponse)
async def review_page(request: Request, settings: Settings = Depends(get_settings)) -> HTMLResponse:
    return _render(request, settings, "review")


@router.get("/console/jobs", response_class=HTMLResponse)
async def jobs_page(request: Request, settings: Settings = Depends(get_settings)) -> HTMLResponse:
    return _render(request, settings, "jobs")


@router.get("/console/models", response_class=HTMLResponse)
async def models_page(request: Request, settings: Settings = Depends(get_settings)) -> HTMLResponse:
    return _render(request, settings, "models")


def install(app: FastAPI) -> None:
    """Serve the console's pages and static files from ``app``."""
    app.include_router(router)
    app.mount(STATIC, StaticFiles(directory=str(HERE / "static")), name="console-static")
