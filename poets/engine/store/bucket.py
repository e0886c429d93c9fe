"""An S3-compatible bucket (AWS, MinIO, Ceph, moto), through boto3.

Every part of Poets that keeps objects in a bucket (the model store, job inputs,
misclassified copies, the review inbox, shared bottlenecks) talks to it through
:class:`Bucket`: keys relative to the URL's prefix, a few verbs, and one way of failing.
An unreachable, unknown or refusing bucket raises
:class:`~poets.engine.errors.StoreUnavailable` (503 ``store_unavailable`` over HTTP),
naming the bucket and what to check; a missing key is ``None`` or ``False``, never an
exception a caller must sort out.

Credentials come from the standard AWS chain (environment, ``~/.aws``, an instance
role), never from a Poets setting; ``POETS_S3_ENDPOINT_URL`` points at a server other
than AWS.
"""

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, TypeVar

from poets.engine.errors import StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

# Error codes S3 (and MinIO, Ceph, moto) answer for a key that is not there.
_MISSING = ("NoSuchKey", "404", "NotFound")
# A conditional write that lost: the key exists (If-None-Match: *).
_EXISTS = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")
CHUNK = 1024 * 1024


def split_url(url: str) -> Tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix/")`` (prefix "" or ending in /)."""
    if not url.startswith("s3://"):
        raise ValueError("not an s3:// URL: {!r}".format(url))
    bucket, _, prefix = url[len("s3://") :].partition("/")
    prefix = prefix.strip("/")
    return bucket, (prefix + "/" if prefix else "")


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or a HEAD says of one object. ``key`` is relative to the bucket's prefix."""

    key: str
    size: int
    etag: str
    modified: float  # seconds since the epoch


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(str(path), "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


class Bucket:
    """One ``s3://bucket/prefix``: the objects under the prefix, by relative key.

    Thread-safe (boto3 clients are); cheap to share in a process.
    """

    def __init__(self, url: str, endpoint_url: Optional[str] = None, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.name, self.prefix = split_url(url)
        self.endpoint_url = endpoint_url
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._clients: Dict[bool, Any] = {}

    def __repr__(self) -> str:
        return "Bucket({!r})".format(self.url)

    # --- the client -------------------------------------------------------------------------

    def _client(self, create_only: bool = False) -> Any:
        """The boto3 client; ``create_only``: a second one whose PUTs carry ``If-None-Match: *``.

        The header is added by an event hook rather than boto3's ``IfNoneMatch`` parameter,
        which the last boto3 for Python 3.6 (the TX2's) does not have.
        """
        with self._lock:
            client = self._clients.get(create_only)
            if client is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    connect_timeout=self.timeout_s,
                    read_timeout=self.timeout_s,
                    retries={"max_attempts": 2, "mode": "standard"},
                    s3={"addressing_style": "path"} if self.endpoint_url else None,
                )
                # A session of its own: boto3's default session is not thread-safe to create.
                client = boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, config=config)
                if create_only:
                    client.meta.events.register("before-sign.s3.PutObject", _if_none_match)
                self._clients[create_only] = client
            return client

    def _call(self, what: str, call: Callable[[], T], keyed: bool = True) -> T:
        """Run one request; whatever stops it from reaching the bucket is StoreUnavailable.

        ``keyed``: a request about one key, whose "no such key" or "exists" answers the
        caller reads (a ClientError passed on); for the bucket itself they mean it is missing.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if keyed and (code in _MISSING or code in _EXISTS or code in ("304", "NotModified")):
                raise
            raise self._unavailable(what, "{} ({})".format(code or "error", _message(exc))) from exc
        except BotoCoreError as exc:
            raise self._unavailable(what, str(exc)) from exc
        except OSError as exc:
            raise self._unavailable(what, str(exc)) from exc

    def _unavailable(self, what: str, why: str) -> StoreUnavailable:
        where = " at {}".format(self.endpoint_url) if self.endpoint_url else ""
        return StoreUnavailable(
            "The bucket {}{} cannot be reached to {}: {}. Check that it is up, that the bucket "
            "exists and that this machine's AWS credentials may use it (POETS_STORE_URL, "
            "POETS_S3_ENDPOINT_URL).".format(self.url, where, what, why[:300])
        )

    def _key(self, key: str) -> str:
        return self.prefix + key.lstrip("/")

    # --- reading ----------------------------------------------------------------------------

    def check(self) -> None:
        """Raise StoreUnavailable unless the bucket answers."""
        self._call("check it", lambda: self._client().head_bucket(Bucket=self.name), keyed=False)

    def head(self, key: str) -> Optional[ObjectInfo]:
        """The object's size and ETag, or None when there is no such key."""
        from botocore.exceptions import ClientError

        try:
            answer = self._call(
                "read " + key, lambda: self._client().head_object(Bucket=self.name, Key=self._key(key))
            )
        except ClientError:
            return None
        return ObjectInfo(
            key, int(answer["ContentLength"]), answer["ETag"].strip('"'), answer["LastModified"].timestamp()
        )

    def get(self, key: str) -> Optional[bytes]:
        """The object's bytes, or None when there is no such key."""
        from botocore.exceptions import ClientError

        def read() -> bytes:
            answer = self._client().get_object(Bucket=self.name, Key=self._key(key))
            with answer["Body"] as body:
                return body.read()  # type: ignore[no-any-return]

        try:
            return self._call("read " + key, read)
        except ClientError:
            return None

    def get_if_changed(self, key: str, etag: Optional[str]) -> Tuple[Optional[bytes], Optional[str]]:
        """``(bytes, etag)`` of the object, ``(None, etag)`` when its ETag is still ``etag``
        (S3 answers 304 and sends nothing), ``(None, None)`` when there is no such key."""
        from botocore.exceptions import ClientError

        def read() -> Tuple[Optional[bytes], Optional[str]]:
            kwargs: Dict[str, Any] = {"Bucket": self.name, "Key": self._key(key)}
            if etag:
                kwargs["IfNoneMatch"] = '"{}"'.format(etag)
            try:
                answer = self._client().get_object(**kwargs)
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in ("304", "NotModified"):
                    return None, etag
                raise
            with answer["Body"] as body:
                return body.read(), answer["ETag"].strip('"')

        try:
            return self._call("read " + key, read)
        except ClientError:
            return None, None

    def download(self, key: str, path: Path) -> bool:
        """Write the object to ``path`` (streamed); False when there is no such key."""
        from botocore.exceptions import ClientError

        def fetch() -> None:
            answer = self._client().get_object(Bucket=self.name, Key=self._key(key))
            with answer["Body"] as body, open(str(path), "wb") as handle:
                for block in iter(lambda: body.read(CHUNK), b""):
                    handle.write(block)

        try:
            self._call("read " + key, fetch)
        except ClientError:
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order (pages fetched as read)."""
        start = len(self.prefix)
        paginator = self._client().get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.name, Prefix=self._key(prefix))
        iterator = iter(pages)
        while True:
            page = self._call("list " + (prefix or "its objects"), lambda: next(iterator, None), keyed=False)
            if page is None:
                return
            for item in page.get("Contents", []):
                yield ObjectInfo(
                    item["Key"][start:],
                    int(item["Size"]),
                    item["ETag"].strip('"'),
                    item["LastModified"].timestamp(),
                )

    def folders(self, prefix: str = "") -> List[str]:
        """The names one level below ``prefix`` (S3's common prefixes, delimiter ``/``)."""
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        names: List[str] = []
        paginator = self._client().get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.name, Prefix=self._key(prefix), Delimiter="/")
        iterator = iter(pages)
        while True:
            page = self._call("list " + (prefix or "its folders"), lambda: next(iterator, None), keyed=False)
            if page is None:
                return names
            for common in page.get("CommonPrefixes", []):
                names.append(common["Prefix"][len(self._key(prefix)) :].rstrip("/"))

    # --- writing ----------------------------------------------------------------------------

    def put(self, key: str, data: bytes, if_absent: bool = False) -> bool:
        """Write ``data`` at ``key``. With ``if_absent`` (a conditional write, ``If-None-Match: *``)
        nothing is written and False returned when the key exists: of two writers, one wins."""
        from botocore.exceptions import ClientError

        client = self._client(create_only=if_absent)
        try:
            self._call(
                "write " + key, lambda: client.put_object(Bucket=self.name, Key=self._key(key), Body=data)
            )
        except ClientError as exc:
            if if_absent and str(exc.response.get("Error", {}).get("Code")) in _EXISTS:
                return False
            raise self._unavailable("write " + key, _message(exc)) from exc
        return True

    def upload(self, path: Path, key: str) -> None:
        """Write the file at ``path`` to ``key`` (multipart for large files, by boto3)."""
        from botocore.exceptions import ClientError

        try:
            self._call(
                "write " + key, lambda: self._client().upload_file(str(path), self.name, self._key(key))
            )
        except ClientError as exc:
            raise self._unavailable("write " + key, _message(exc)) from exc
        except Exception as exc:  # boto3's S3UploadFailedError wraps the ClientError
            if type(exc).__name__ != "S3UploadFailedError":
                raise
            raise self._unavailable("write " + key, str(exc)) from exc

    def delete(self, keys: Iterable[str]) -> None:
        """Delete ``keys`` (missing ones are no error), a thousand per request."""
        batch: List[str] = []
        for key in keys:
            batch.append(key)
            if len(batch) == 1000:
                self._delete(batch)
                batch = []
        if batch:
            self._delete(batch)

    def _delete(self, keys: List[str]) -> None:
        objects = [{"Key": self._key(key)} for key in keys]
        self._call(
            "delete objects",
            lambda: self._client().delete_objects(
                Bucket=self.name, Delete={"Objects": objects, "Quiet": True}
            ),
            keyed=False,
        )

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many there were."""
        keys = [item.key for item in self.list(prefix)]
        self.delete(keys)
        return len(keys)


def _if_none_match(request: Any, **_: Any) -> None:
    request.headers["If-None-Match"] = "*"


def _message(exc: Any) -> str:
    error = getattr(exc, "response", {}).get("Error", {})
    return str(error.get("Message") or error.get("Code") or exc)


_buckets: Dict[Tuple[str, Optional[str], float], Bucket] = {}
_buckets_lock = threading.Lock()


def bucket_for(url: str, endpoint_url: Optional[str], timeout_s: float) -> Bucket:
    """One :class:`Bucket` per URL and endpoint in a process (its boto3 clients are reused)."""
    key = (url, endpoint_url, timeout_s)
    with _buckets_lock:
        if key not in _buckets:
            _buckets[key] = Bucket(url, endpoint_url, timeout_s)
        return _buckets[key]


def local_path_ok(path: str) -> bool:
    """Whether ``path`` is a plain relative key part (no ``..``, no absolute path)."""
    parts = path.replace("\\", "/").split("/")
    return bool(path) and not os.path.isabs(path) and all(part not in ("", ".", "..") for part in parts)
