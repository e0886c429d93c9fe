"""The ``poets`` command itself: fast help, settings in effect, no TensorFlow where none is needed."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

from tests.assets import REPO
from tests.net import free_port

pytestmark = pytest.mark.unit

# Runs the command in a fresh interpreter, then reports its exit code and whether TensorFlow
# was imported (on the last line, after whatever the command printed).
_PROBE = """
import sys
from poets.cli.main import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print("EXIT", code, "TF-IMPORTED" if "tensorflow" in sys.modules else "TF-NOT-IMPORTED")
"""


def _run(args: list, home: Path, **extra: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    env: Dict[str, str] = dict(os.environ, PYTHONPATH=str(REPO), POETS_HOME=str(home), **extra)
    return subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        env=env,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "args, code, says",
    [
        (["--help"], 0, "usage: poets"),
        (["settings"], 0, "POETS_HOME"),
        (["retrain", "--help"], 0, "usage: poets retrain"),
        # A real image, so the command gets as far as the HTTP client (nothing listens there).
        (
            ["label", "--url", "http://127.0.0.1:{port}", "photo.jpg"],
            1,
            "Cannot reach http://127.0.0.1:{port}",
        ),
    ],
)
def test_commands_that_need_no_model_do_not_import_tensorflow(
    args: list, code: int, says: str, tmp_path: Path
) -> None:
    port = free_port()
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 not decoded by the client \xff\xd9")
    args = [str(tmp_path / a) if a == "photo.jpg" else a.format(port=port) for a in args]
    done = _run(args, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output  # the probe itself ran to its end
    assert done.stdout.splitlines()[-1] == "EXIT {} TF-NOT-IMPORTED".format(code), output
    assert says.format(port=port) in output, output


def test_settings_prints_the_values_in_effect(tmp_path: Path) -> None:
    done = _run(["settings"], tmp_path, POETS_MAX_BATCH_SIZE="7", POETS_API_KEYS="secret-1,secret-2")
    lines = [line.split() for line in done.stdout.splitlines() if line.startswith("POETS_")]
    rows = {words[0]: words[1] for words in lines}
    assert rows["POETS_MAX_BATCH_SIZE"] == "7"
    assert rows["POETS_HOME"] == str(tmp_path)
    assert "secret-1" not in done.stdout  # keys are counted, never shown
    assert rows["POETS_API_KEYS"] == "2"


def test_a_setting_out_of_range_stops_the_command_naming_it(tmp_path: Path) -> None:
    done = _run(["settings"], tmp_path, POETS_MAX_LOADED_MODELS="0")
    assert "POETS_MAX_LOADED_MODELS=0: out of range; allowed: at least 1." in done.stderr
    assert "POETS_HOME" not in done.stdout  # refused before anything ran
