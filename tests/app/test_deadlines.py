"""BodyDeadline's choice of deadline per path, on a clock the test moves (no waiting)."""

import asyncio
import json
from typing import Any, Dict, List

import pytest

from app.deadlines import BodyDeadline, is_upload_path

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _post(path: str, body_seconds: float) -> Dict[str, Any]:
    """POST a two-part body to ``path`` whose second part arrives ``body_seconds`` late."""
    clock = Clock()
    parts = [
        {"type": "http.request", "body": b"first", "more_body": True},
        {"type": "http.request", "body": b"second", "more_body": False},
    ]
    sent: List[Dict[str, Any]] = []

    async def receive() -> Dict[str, Any]:
        part = parts.pop(0)
        if part["more_body"]:
            clock.now += body_seconds  # the rest is slow in coming
        return part

    async def send(message: Dict[str, Any]) -> None:
        sent.append(message)

    async def app(scope: Any, receive_: Any, send_: Any) -> None:
        body = b""
        while True:
            message = await receive_()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send_({"type": "http.response.start", "status": 201, "headers": []})
        await send_({"type": "http.response.body", "body": body})

    deadline = BodyDeadline(app, timeout_s=30.0, upload_timeout_s=3600.0, clock=clock)
    scope = {"type": "http", "method": "POST", "path": path, "headers": []}
    asyncio.get_event_loop().run_until_complete(deadline(scope, receive, send))
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return {"status": status, "body": body}


@pytest.mark.parametrize("path", ["/retrain", "/datasets/yard/archive"])
def test_archive_uploads_get_the_upload_deadline(path: str) -> None:
    # 31 s: past POETS_BODY_TIMEOUT_S, well within POETS_UPLOAD_TIMEOUT_S.
    answer = _post(path, 31.0)
    assert answer == {"status": 201, "body": b"firstsecond"}


@pytest.mark.parametrize("path", ["/datasets/yard/images", "/label", "/datasets/archive"])
def test_other_bodies_get_the_body_deadline(path: str) -> None:
    answer = _post(path, 31.0)
    assert answer["status"] == 408
    assert "POETS_BODY_TIMEOUT_S" in json.loads(answer["body"])["detail"]


def test_upload_paths() -> None:
    assert is_upload_path("/datasets/a.b-c/archive")
    assert not is_upload_path("/datasets/yard/archive/x")
    assert not is_upload_path("/datasets/yard/images/archive")
