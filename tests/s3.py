"""An S3 endpoint for tests: moto in server mode, a process of its own that speaks S3 over HTTP.

The client code under test is the same that talks to MinIO or AWS: only the endpoint URL
(``POETS_S3_ENDPOINT_URL``) and the credentials (moto takes any) differ. moto keeps its
objects in memory, so an outage is a frozen server (SIGSTOP, then SIGCONT), not a restart.

moto does not install on Python 3.6: on the oldest stack (scripts/test-oldest) the server
runs under the main venv's Python (``$POETS_VENV``, default ``.venv``, as scripts/test
uses), and only the client under test runs on 3.6 with the TX2's boto3.
"""

import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Dict, Optional

import pytest

from tests.assets import REPO
from tests.net import free_port
from tests.waiting import wait_until

# moto takes any credentials; these keep boto3 from looking further (an instance role, ~/.aws).
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "poets-test",
    "AWS_SECRET_ACCESS_KEY": "poets-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def use_credentials() -> None:
    """Put the test credentials into this process's environment (for boto3 here)."""
    os.environ.update(CREDENTIALS)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/moto-api/", timeout=1):
            return True
    except OSError:
        return False


def moto_python() -> str:
    """The interpreter that runs moto's server: this one when it has moto, else the main venv's."""
    if importlib.util.find_spec("moto") is not None:
        return sys.executable
    venv = Path(os.environ.get("POETS_VENV") or ".venv")
    if not venv.is_absolute():
        venv = REPO / venv
    python = venv / "bin" / "python"
    if not python.exists():
        pytest.fail(
            "moto is not installed for {} and there is no {} to run it: run scripts/bootstrap "
            "test (or set POETS_VENV to a venv with moto[server]).".format(sys.executable, python)
        )
    return str(python)


class MotoServer:
    """``python -m moto.server`` on a free port, with pause/resume for outages."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = "http://127.0.0.1:{}".format(self.port)
        self.process: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> "MotoServer":
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(str(self.folder / "moto.log"), "ab") as log:
            self.process = subprocess.Popen(
                [moto_python(), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, **CREDENTIALS),
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while not _answers(self.url):
            if self.process.poll() is not None:
                pytest.fail("moto server exited: " + (self.folder / "moto.log").read_text()[-2000:])
            if time.monotonic() > deadline:
                pytest.fail("moto server not answering on port {}".format(self.port))
            time.sleep(0.1)
        return self

    def bucket(self, prefix: str = "") -> str:
        """A new bucket on this server; returns its ``s3://`` URL (with ``prefix``)."""
        import boto3

        name = "poets-" + uuid.uuid4().hex[:12]
        client = boto3.session.Session(**_session_args()).client("s3", endpoint_url=self.url)
        client.create_bucket(Bucket=name)
        return "s3://{}/{}".format(name, prefix).rstrip("/")

    def env(self, store_url: str) -> Dict[str, str]:
        """What a Poets process needs to use ``store_url`` on this server."""
        return dict(CREDENTIALS, POETS_STORE_URL=store_url, POETS_S3_ENDPOINT_URL=self.url)

    def pause(self) -> None:
        """Freeze the server: connections hang, as with a bucket that stopped answering."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGCONT)
        wait_until(lambda: _answers(self.url), 30, "moto answering again")

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGCONT)
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None


def _session_args() -> Dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
    }
