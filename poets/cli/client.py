"""The CLI as a client of a running Poets service (``--url``): standard library only."""

import io
import json
import mimetypes
import os
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple
from urllib import error, request

from poets.engine.errors import PoetsError

# (field name, file name, bytes, content type)
FilePart = Tuple[str, str, bytes, str]


class ServiceError(PoetsError):
    """The service answered with an error; ``detail`` is its message."""

    code = "service_error"


def _multipart(fields: Dict[str, str], files: Sequence[FilePart]) -> Tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for name, value in fields.items():
        body.write(
            '--{}\r\nContent-Disposition: form-data; name="{}"\r\n\r\n{}\r\n'.format(
                boundary, name, value
            ).encode("utf-8")
        )
    for name, filename, data, content_type in files:
        body.write(
            '--{}\r\nContent-Disposition: form-data; name="{}"; filename="{}"\r\n'
            "Content-Type: {}\r\n\r\n".format(boundary, name, filename, content_type).encode("utf-8")
        )
        body.write(data)
        body.write(b"\r\n")
    body.write("--{}--\r\n".format(boundary).encode())
    return body.getvalue(), "multipart/form-data; boundary=" + boundary


class Client:
    """Minimal JSON client for the Poets API."""

    def __init__(self, url: str, api_key: Optional[str] = None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key or os.environ.get("POETS_API_KEY")
        self.timeout = timeout

    def call(
        self, method: str, path: str, body: Optional[bytes] = None, content_type: Optional[str] = None
    ) -> Any:
        req = request.Request(self.url + path, data=body, method=method)
        req.add_header("X-Poets-Client", "cli")  # jobs it starts say "cli"
        if content_type:
            req.add_header("Content-Type", content_type)
        if self.api_key:
            req.add_header("X-API-Key", self.api_key)
        try:
            with request.urlopen(req, timeout=self.timeout) as answer:
                return json.loads(answer.read().decode("utf-8") or "null")
        except error.HTTPError as exc:
            try:
                detail = json.loads(exc.read().decode("utf-8")).get("detail", exc.reason)
            except ValueError:
                detail = exc.reason
            raise ServiceError("{} {}: HTTP {}: {}".format(method, path, exc.code, detail)) from exc
        except error.URLError as exc:
            raise ServiceError("Cannot reach {}: {}".format(self.url, exc.reason)) from exc

    def label(self, image: Path, top_k: int, model: Optional[str] = None) -> Dict[str, Any]:
        content_type = mimetypes.guess_type(str(image))[0] or "application/octet-stream"
        query = "?top_k={}".format(top_k) + ("&model={}".format(model) if model else "")
        return self.call("POST", "/label" + query, image.read_bytes(), content_type)  # type: ignore[no-any-return]

    def retrain(self, image_dir: Path, fields: Dict[str, str]) -> Dict[str, Any]:
        archive = pack(image_dir)
        body, content_type = _multipart(
            fields, [("file", image_dir.name + ".zip", archive, "application/zip")]
        )
        return self.call("POST", "/retrain", body, content_type)  # type: ignore[no-any-return]

    def job(self, job_id: str) -> Dict[str, Any]:
        return self.call("GET", "/jobs/" + job_id)  # type: ignore[no-any-return]


def pack(image_dir: Path) -> bytes:
    """Zip a poets-layout folder (class folders at the top of the archive)."""
    if not image_dir.is_dir():
        raise PoetsError("{} is not a folder.".format(image_dir))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:  # JPEGs do not compress
        for path in sorted(image_dir.rglob("*")):
            if path.is_file() and not any(part.startswith(".") for part in path.parts):
                archive.write(str(path), str(path.relative_to(image_dir)))
    return buffer.getvalue()


def wait(client: Client, job_id: str, progress: Any, poll_s: float = 1.0) -> Dict[str, Any]:
    """Follow a job until it ends, feeding ``progress`` the job's progress events."""
    while True:
        job = client.job(job_id)
        event = dict(job.get("progress") or {})
        if job.get("phase"):
            event.setdefault("phase", job["phase"])
        if event.get("phase"):
            progress(event)
        if job.get("state") in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(poll_s)
