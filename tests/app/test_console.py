"""The web console's pages render (on today's stack and on FastAPI 0.83) and need no network."""

import re
from pathlib import Path
from typing import Iterator

import pytest
from fastapi.testclient import TestClient

from app.console.routes import PAGES
from poets.engine.settings import Settings

pytestmark = pytest.mark.unit

CONSOLE = Path(__file__).resolve().parents[2] / "app" / "console"
# The only URL allowed in the console's files: the SVG namespace, which is never fetched.
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


def _client(home: Path, **settings: object) -> TestClient:
    from app.main import create_app

    # localhost: the Host check (app/guard.py) refuses TestClient's default "testserver".
    app = create_app(Settings(home=home, **settings))  # no startup: no model, no TF
    return TestClient(app, base_url="http://localhost")


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    yield _client(tmp_path)


@pytest.mark.parametrize(("page", "path"), [(page, path) for page, path, _ in PAGES])
def test_every_page_renders_with_its_assets(client: TestClient, page: str, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert 'data-page="{}"'.format(page) in html
    for _, other, _ in PAGES:  # the navigation links every page
        assert 'href="{}"'.format(other) in html
    assets = re.findall(r'(?:src|href)="(/console/static/[^"]+)"', html)
    assert "/console/static/console.js" in assets and "/console/static/{}.js".format(page) in assets
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200, asset
    assert 'id="key-form"' not in html  # no API keys configured: nothing to ask


def test_the_console_asks_for_a_key_when_keys_are_on(tmp_path: Path) -> None:
    html = _client(tmp_path, api_keys=("secret",)).get("/console/jobs").text
    assert 'id="key-form"' in html and 'data-keys-on="true"' in html
    assert "secret" not in html


def test_static_files_have_their_types(client: TestClient) -> None:
    for name, kind in (
        ("console.js", "javascript"),
        ("console.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ):
        response = client.get("/console/static/" + name)
        assert response.status_code == 200 and kind in response.headers["content-type"], name
    assert client.get("/console/static/../routes.py").status_code == 404
    assert client.get("/console/static/missing.js").status_code == 404


def test_the_console_loads_nothing_from_other_hosts() -> None:
    files = sorted(p for p in CONSOLE.rglob("*") if p.suffix in (".html", ".js", ".css", ".svg"))
    assert len(files) >= 12
    for path in files:
        text = path.read_text(encoding="utf-8").replace(SVG_NAMESPACE, "")
        assert not re.search(r"(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text), path
        assert "@import" not in text, path


def test_pages_stay_out_of_the_api_description(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(path.startswith("/console") for path in paths)
