"""``/docs`` works with no network: every asset it loads comes from the server itself."""

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from poets.engine.settings import Settings

pytestmark = pytest.mark.unit


def test_docs_page_loads_its_assets_from_the_server(tmp_path: Path) -> None:
    app = create_app(Settings(home=tmp_path))  # no startup: no model, no TF
    client = TestClient(app, base_url="http://localhost")  # a Host the app answers to
    page = client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    urls += re.findall(r"""url: ?["']([^"']+)["']""", page.text)
    assert urls, page.text
    for url in urls:
        assert not re.match(r"^(https?:)?//", url), "{} comes from another host".format(url)
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 0, url
    assert any(url.endswith("swagger-ui-bundle.js") for url in urls)
    assert client.get("/redoc").status_code == 404  # ReDoc would load from a CDN: not served
