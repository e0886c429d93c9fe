from tests.app.conftest import serve  # noqa: F401 - the real-server fixture, shared with tests/app
