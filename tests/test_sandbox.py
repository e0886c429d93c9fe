"""The test run keeps out of the real home folder."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from poets.engine.settings import Settings
from tests.conftest import REAL_HOME

pytestmark = pytest.mark.unit


def test_default_home_is_a_sandbox() -> None:
    assert Path.home() != REAL_HOME
    assert REAL_HOME not in Settings().home.parents


def test_commands_the_tests_start_get_the_sandbox_too() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from pathlib import Path; print(Path.home())"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert Path(out.strip()) == Path.home() != REAL_HOME
