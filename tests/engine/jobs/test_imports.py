"""The job's engine modules are hosted by the API and the worker, and import neither."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit


def _imported_after(statement: str, modules: str) -> str:
    code = "import sys; {}; print(sorted(m for m in {} if m in sys.modules))".format(statement, modules)
    return subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        stdout=subprocess.PIPE,
        universal_newlines=True,  # noqa: UP021 (3.6: scripts/test-oldest)
    ).stdout.strip()


def test_submit_and_run_import_no_web_or_queue_code() -> None:
    statement = "import poets.engine.jobs.submit, poets.engine.jobs.run"
    assert _imported_after(statement, "('fastapi', 'starlette', 'celery')") == "[]"


def test_run_imports_no_tensorflow_until_a_job_runs() -> None:
    # The Celery parent imports it before it forks the child that trains (worker.celery_app).
    assert _imported_after("import poets.engine.jobs.run", "('tensorflow',)") == "[]"
