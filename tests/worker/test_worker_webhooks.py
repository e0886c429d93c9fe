"""A worker on a machine of its own sends the webhook events its jobs queue: no API shares its
POETS_HOME (several machines) to do it."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, List

import pytest

from poets.engine.webhooks import Outbox
from tests.net import free_port
from tests.waiting import wait_until
from tests.worker import helpers

pytestmark = pytest.mark.integration


def test_a_worker_alone_delivers_its_outbox(tmp_path: Path, backbone_dir: Path) -> None:
    received: List[Any] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = "http://127.0.0.1:{}/hook".format(server.server_address[1])
    home = tmp_path / "worker-home"
    # What a job of this worker queued (job.succeeded, version.promoted...), as run.py does.
    Outbox(home / "webhooks.sqlite3", [url]).emit("job.failed", {"job_id": "j1", "name": "m", "error": "x"})
    env = helpers.service_env(home, backbone_dir, POETS_WEBHOOK_URLS=url)
    worker = helpers.start_worker(env, tmp_path / "worker.log")
    try:
        wait_until(lambda: received, 30, "the worker delivering its outbox")
        assert received[0]["event"] == "job.failed" and received[0]["data"]["job_id"] == "j1"
    finally:
        helpers.stop(worker)
        server.shutdown()
        server.server_close()
