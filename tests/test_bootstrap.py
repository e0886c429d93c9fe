"""scripts/bootstrap: switching between scripts/up and scripts/test reinstalls nothing."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.assets import REPO

pytestmark = pytest.mark.unit


def _bootstrap(venv: Path, extras: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    env = dict(os.environ, POETS_VENV=str(venv))
    return subprocess.run(
        [str(REPO / "scripts" / "bootstrap"), extras],
        env=env,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("extras", ["", "test", "dev,test"])
def test_extras_already_installed_are_not_reinstalled(tmp_path: Path, extras: str) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)  # can import poets: it runs in the repo
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    (venv / ".poets-stamp").write_text("{} dev,test\n".format(digest))
    done = _bootstrap(venv, extras)
    assert done.returncode == 0, done.stderr
    assert "installing" not in done.stderr
    assert (venv / ".poets-stamp").read_text().split() == [digest, "dev,test"]
