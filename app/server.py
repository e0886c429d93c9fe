"""Running the API under uvicorn (``poets serve`` and ``poets up``)."""

from typing import Any, Dict

from poets.engine.settings import Settings


def run(settings: Settings, host: str = "127.0.0.1", port: int = 8000, **uvicorn_options: Any) -> None:
    """Serve until interrupted. Keep-alive stays on so cameras reuse their connection."""
    import uvicorn

    from app.main import create_app

    options: Dict[str, Any] = {"log_level": settings.log_level.lower(), "timeout_keep_alive": 30,
               "proxy_headers": True}
    options.update(uvicorn_options)
    uvicorn.run(create_app(settings), host=host, port=port, **options)
