"""The README stays true: every setting is documented, every documented endpoint exists."""

import re
from typing import Any, Iterable, Iterator

from poets.engine.settings import Settings
from tests.assets import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_in_the_readme() -> None:
    for variable, _, _ in Settings.describe():
        assert "`{}`".format(variable) in README, variable


def _paths(routes: Iterable[Any]) -> Iterator[str]:
    for route in routes:
        if hasattr(route, "path"):
            yield route.path
        inner = getattr(route, "original_router", None)  # FastAPI >= 0.120 wraps included routers
        if inner is not None:
            yield from _paths(inner.routes)


def test_every_documented_endpoint_exists() -> None:
    from app.main import create_app

    app = create_app()
    # The API's paths, plus the console and /docs (they stay out of the OpenAPI schema).
    routes = set(app.openapi()["paths"]) | set(_paths(app.routes))
    patterns = [re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$") for path in routes]
    documented = set(re.findall(r"http://[\w.:]+:8000(/[\w/.{}-]*)", README))
    assert documented, "no curl example found"
    for path in documented:
        path = path.rstrip("/") or "/"
        assert any(p.match(path) for p in patterns), path


def test_the_two_commands_exist() -> None:
    assert "scripts/up" in README and "scripts/test" in README
    assert (REPO / "scripts" / "up").is_file() and (REPO / "scripts" / "test").is_file()
