"""A real uvicorn server in a thread, on a free port, with its own POETS_HOME.

Servers are module-scoped: each test module starts the few it needs once.
"""

import asyncio
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import httpx
import pytest

from poets.engine.settings import Settings
from tests.net import free_port
from tests.waiting import wait_until


class ServerThread:
    """uvicorn serving ``create_app(settings)`` until :meth:`stop`."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        from app.main import create_app

        self.settings = settings
        self.app = create_app(settings)
        self.port = free_port()
        self.url = "http://127.0.0.1:{}".format(self.port)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, name="uvicorn-test", daemon=True)

    def _run(self) -> None:
        # uvicorn 0.16 (Python 3.6) asks for the current loop, which a new thread lacks there.
        asyncio.set_event_loop(asyncio.new_event_loop())
        self.server.run()

    def start(self, timeout: float = 120.0) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server.started:
                return self
            if not self.thread.is_alive():
                raise RuntimeError("the test server failed to start")
            time.sleep(0.05)
        raise RuntimeError("the test server did not start in {}s".format(timeout))

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60.0, **kwargs)


@pytest.fixture(scope="module")
def serve() -> Iterator[Any]:
    """``serve(settings)`` starts a server, stopped when the module ends."""
    started: List[ServerThread] = []

    def start(settings: Settings) -> ServerThread:
        server = ServerThread(settings).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def settings_for(home: Path, backbone_dir: Path, **overrides: Any) -> Settings:
    values: Dict[str, Any] = {
        "home": home,
        "backbone_dir": backbone_dir,
        "model_poll_s": 0.2,
        "decode_threads": 2,
        # These tests follow what happens once a retrain is published; whether it goes live
        # is the promotion gate's, tested on its own (tests/engine/test_gate.py).
        "promote": "always",
    }
    values.update(overrides)
    return Settings(**values)


def copy_model(trained: Any, store: Path, name: str = "flowers") -> Path:
    """The session's trained version, copied as ``<store>/<name>/1``."""
    target = store / name / "1"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(str(trained.path), str(target))
    return target


def post_body(client: Any, url: str, body: bytes, **kwargs: Any) -> Any:
    """POST raw bytes with a TestClient: httpx-based (``content=``) on today's Starlette,
    requests-based (``data=``) on the TX2's 0.19."""
    key = "content" if isinstance(client, httpx.Client) else "data"
    return client.post(url, **{key: body}, **kwargs)


def publish_model(trained: Any, settings: Any, name: str = "flowers") -> None:
    """The session's trained version as version 1 of ``name`` in the store ``settings`` name:
    copied into a local store, published through a bucket one (as a worker would)."""
    if settings.store_bucket is None:
        copy_model(trained, settings.store_dir, name)
        return
    from poets.engine.workspace import Workspace

    def write(folder: Path) -> None:
        shutil.rmtree(str(folder))
        shutil.copytree(str(trained.path), str(folder))

    assert Workspace(settings).store.publish(name, write) == 1


def wait_for(check: Any, timeout: float = 60.0, interval: float = 0.1) -> Any:
    return wait_until(check, timeout, "the condition", interval)


def assert_error(response: httpx.Response, status: int, code: str = "") -> Dict[str, Any]:
    """The status, and the one error body shape with a useful detail."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert isinstance(body["detail"], str) and len(body["detail"]) > 15, body
    if code:
        assert body["error"] == code, body
    return body  # type: ignore[no-any-return]
