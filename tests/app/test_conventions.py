"""The app layer's three conventions (DEVELOPERS.md, "App conventions"), read from the app itself.

- Dependencies: routes get every object through ``Depends(get_...)`` from :mod:`app.deps`;
  :func:`app.main.create_app` builds them all, and nothing else reads or fills ``app.state``.
- Blocking work: every route is ``async def``; blocking calls go through
  :func:`app.blocking.run_blocking`.
- Responses: every JSON answer has a model in the OpenAPI (``/docs``); refusals are ErrorBody.
  (tests/integration/test_fuzz.py checks the real answers against these models.)
"""

import asyncio
import importlib
import pkgutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator, List

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from app import deps
from app.blocking import run_blocking
from app.main import create_app
from poets.engine.settings import Settings
from tests.assets import REPO

pytestmark = pytest.mark.unit

APP = REPO / "app"


@pytest.fixture(scope="module")
def app(tmp_path_factory: Any) -> Any:
    return create_app(Settings(home=tmp_path_factory.mktemp("conventions-home")))  # no startup: no TF


def _sources() -> Iterator[Path]:
    return (path for path in sorted(APP.rglob("*.py")) if "static" not in path.parts)


def _run(coroutine: Any) -> Any:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


def test_only_deps_and_create_app_touch_app_state() -> None:
    readers = [
        str(path.relative_to(REPO))
        for path in _sources()
        if "app.state" in path.read_text(encoding="utf-8") and path.name not in ("deps.py", "main.py")
    ]
    assert readers == [], "read app.state through a getter in app/deps.py instead"


def test_every_getter_hands_out_what_create_app_built(app: Any) -> None:
    built = dict(vars(app.state)["_state"])
    getters = [getattr(deps, name) for name in sorted(vars(deps)) if name.startswith("get_")]
    assert len(getters) >= 11
    request = SimpleNamespace(app=app)
    for getter in getters:
        got = _run(getter(request))
        assert any(got is part for part in built.values()), "{} built its own".format(getter.__name__)
    # Requests build nothing on app.state either.
    client = TestClient(app, base_url="http://localhost")
    for path in ("/review", "/datasets", "/healthz", "/jobs", "/models"):
        assert client.get(path).status_code == 200, path
    assert dict(vars(app.state)["_state"]) == built


def _own_dependencies(dependant: Any) -> Iterator[Any]:
    for dependency in dependant.dependencies:
        if getattr(dependency.call, "__module__", "").startswith("app."):
            yield dependency.call
        yield from _own_dependencies(dependency)


def _routes() -> List[APIRoute]:
    """Every route of every router module (today's FastAPI wraps them in app.routes)."""
    modules = [importlib.import_module("app.console.routes")]
    for found in pkgutil.iter_modules([str(APP / "api" / "routes")]):
        modules.append(importlib.import_module("app.api.routes." + found.name))
    return [route for module in modules for route in module.router.routes if isinstance(route, APIRoute)]


def test_every_route_and_dependency_is_async() -> None:
    routes = _routes()
    assert len(routes) > 40
    plain: List[str] = []
    for route in routes:
        if not asyncio.iscoroutinefunction(route.endpoint):
            plain.append("{} {}".format(sorted(route.methods), route.path))
        for call in _own_dependencies(route.dependant):
            if not asyncio.iscoroutinefunction(call):
                plain.append("{} (a dependency of {})".format(call.__name__, route.path))
    assert plain == [], "make these async, and run their blocking work with run_blocking"


def test_blocking_work_goes_through_run_blocking_only() -> None:
    others = [
        str(path.relative_to(REPO))
        for path in _sources()
        if path.name != "blocking.py"
        and any(word in path.read_text(encoding="utf-8") for word in ("run_in_executor", "run_in_threadpool"))
    ]
    assert others == []


def test_run_blocking_runs_off_the_loop_and_raises_here() -> None:
    def where() -> str:
        return threading.current_thread().name

    def fail() -> None:
        raise ValueError("from the thread")

    pool = ThreadPoolExecutor(1, thread_name_prefix="own-pool")

    async def scenario() -> Any:
        with pytest.raises(ValueError, match="from the thread"):
            await run_blocking(fail)
        return await run_blocking(where), await run_blocking(where, pool=pool)

    try:
        pooled, own = _run(scenario())
    finally:
        pool.shutdown()
    assert pooled != threading.current_thread().name
    assert own.startswith("own-pool")


def test_every_json_answer_has_a_model(app: Any) -> None:
    untyped = []
    for path, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                for media, content in answer.get("content", {}).items():
                    schema = content.get("schema") or {}
                    if status.startswith("2") and "json" in media and "$ref" not in str(schema):
                        untyped.append("{} {} {}".format(method.upper(), path, status))
    assert untyped == [], "give these a response_model in app/schemas.py"


def test_refusals_are_documented_as_the_error_body(app: Any) -> None:
    """FastAPI documents its own 422 shape unless a route lists 422; the app answers ErrorBody."""
    wrong = [
        "{} {}".format(method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method, operation in operations.items()
        if "HTTPValidationError" in str(operation["responses"].get("422"))
    ]
    assert wrong == [], "list 422 in these routes' errors.responses(...)"
