"""Running the API under uvicorn (``poets serve`` and ``poets up``)."""

from typing import Any, Dict

from poets.engine.settings import Settings


def uvicorn_options(settings: Settings) -> Dict[str, Any]:
    """uvicorn's options for ``settings``: the connection limits that protect the API.

    ``limit_concurrency`` caps open connections (more are answered 503 by uvicorn), and an
    idle keep-alive connection closes after ``timeout_keep_alive``; cameras posting a frame
    every few seconds keep theirs. Slow request bodies are cut off by
    :class:`app.deadlines.BodyDeadline` inside the app (``POETS_BODY_TIMEOUT_S``).
    """
    return {
        "log_level": settings.log_level.lower(),
        "proxy_headers": True,
        "timeout_keep_alive": int(settings.keep_alive_s),
        "limit_concurrency": int(settings.max_connections) or None,
    }


def run(settings: Settings, host: str = "127.0.0.1", port: int = 8000, **overrides: Any) -> None:
    """Serve until interrupted, with :func:`uvicorn_options` (``overrides`` win)."""
    import uvicorn

    from app.main import create_app

    options = uvicorn_options(settings)
    options.update(overrides)
    uvicorn.run(create_app(settings), host=host, port=port, **options)
