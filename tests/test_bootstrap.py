"""scripts/bootstrap: switching between scripts/up and scripts/test reinstalls nothing."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Tuple

import pytest

from tests.assets import REPO

pytestmark = pytest.mark.unit


def _bootstrap(venv: Path, *extras: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    env = dict(os.environ, POETS_VENV=str(venv))
    return subprocess.run(
        [str(REPO / "scripts" / "bootstrap"), *extras],
        env=env,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("extras", ["", "test", "dev,test"])
def test_extras_already_installed_are_not_reinstalled(tmp_path: Path, extras: str) -> None:
    venv, digest = _installed_venv(tmp_path, "dev,test")
    done = _bootstrap(venv, extras)
    assert done.returncode == 0, done.stderr
    assert "installing" not in done.stderr
    assert (venv / ".poets-stamp").read_text().split() == [digest, "dev,test"]


@pytest.mark.parametrize("installed", ["", "dev,test"])
def test_no_argument_at_all_as_scripts_up_calls_it(tmp_path: Path, installed: str) -> None:
    """scripts/up runs ``scripts/bootstrap`` with no argument: not even an empty one."""
    venv, digest = _installed_venv(tmp_path, installed)
    done = _bootstrap(venv)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert (venv / ".poets-stamp").read_text().split() == [digest, *installed.split()]
    assert "scripts/bootstrap\n" in (REPO / "scripts" / "up").read_text()


def _installed_venv(tmp_path: Path, extras: str) -> Tuple[Path, str]:
    """A venv that bootstrap takes as installed with ``extras``: its python can import poets."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)  # can import poets: it runs in the repo
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    (venv / ".poets-stamp").write_text("{} {}\n".format(digest, extras))
    return venv, digest
