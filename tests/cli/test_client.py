"""``poets label --url`` and ``poets retrain --url --wait`` against a real server and worker."""

import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from poets.engine.data.datasets import scan
from tests import assets
from tests.app.conftest import copy_model, settings_for
from tests.worker import helpers


def _poets(*args: str, timeout: float = 300) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(
        [sys.executable, "-m", "poets", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=str(assets.REPO),
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def service(tmp_path_factory, backbone_dir, trained, serve) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """An API with the session's flowers model, and a worker on the embedded broker."""
    home = tmp_path_factory.mktemp("client-home")
    settings = settings_for(home, backbone_dir)
    copy_model(trained, settings.store_dir, "flowers")
    server = serve(settings)
    worker = helpers.start_worker(helpers.service_env(home, backbone_dir), home / "worker.log")
    yield server
    helpers.stop(worker)


def test_label_through_the_service(service, flowers_dir: Path) -> None:  # type: ignore[no-untyped-def]
    photos = [r.path for r in scan(flowers_dir).split("testing") if r.label == "roses"][:2]
    done = _poets(
        "label", "--url", service.url, "--model", "flowers", "--top_k", "2", *[str(p) for p in photos]
    )
    assert done.returncode == 0, done.stderr
    lines: List[str] = done.stdout.splitlines()
    assert lines[0] == str(photos[0])
    assert lines[1].startswith("roses (score=")
    assert len(lines) == 2 * 3


def test_label_reports_service_errors(service, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    done = _poets("label", "--url", service.url, str(junk))
    assert done.returncode == 1
    assert "HTTP 400" in done.stderr and "image" in done.stderr


def test_retrain_through_the_service_and_wait(service, small_dataset: Path) -> None:  # type: ignore[no-untyped-def]
    done = _poets(
        "retrain",
        "--url",
        service.url,
        "--image_dir",
        str(small_dataset),
        "--wait",
        "--name",
        "remote",
        "--how_many_training_steps",
        "300",
    )
    assert done.returncode == 0, done.stderr
    assert "queued" in done.stdout
    assert "Published remote version 1" in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("Final test accuracy = ")


def test_unreachable_service_is_a_clear_error(small_dataset: Path) -> None:
    done = _poets("retrain", "--url", "http://127.0.0.1:9", "--image_dir", str(small_dataset))
    assert done.returncode == 1
    assert "Cannot reach http://127.0.0.1:9" in done.stderr
