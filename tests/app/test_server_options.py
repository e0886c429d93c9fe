"""``poets serve`` / ``poets up`` hand the connection limits of the settings to uvicorn."""

import pytest

from app.server import uvicorn_options
from poets.engine.settings import Settings

pytestmark = pytest.mark.unit


def test_the_limits_come_from_the_settings() -> None:
    settings = Settings.from_env({"POETS_MAX_CONNECTIONS": "40", "POETS_KEEP_ALIVE_S": "7"})
    options = uvicorn_options(settings)
    assert options["limit_concurrency"] == 40
    assert options["timeout_keep_alive"] == 7


def test_the_defaults_limit_connections_and_uvicorn_takes_them() -> None:
    import uvicorn

    defaults = Settings()
    options = uvicorn_options(defaults)
    assert options["limit_concurrency"] == defaults.max_connections > 0
    assert defaults.body_timeout_s > 0
    config = uvicorn.Config(lambda scope: None, **options)  # the uvicorn of 3.6 too
    assert config.limit_concurrency == defaults.max_connections
    assert config.timeout_keep_alive == defaults.keep_alive_s
