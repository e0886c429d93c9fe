"""The model store in an S3-compatible bucket, with this machine's verified cache of it.

The same versions, pointers and rules as :class:`~poets.engine.store.models.ModelStore`
(whose interface this class keeps), for machines that share only a bucket. In the bucket,
under ``models/<name>/``:

- ``<version>/CLAIM`` reserves a version number: a conditional write (``If-None-Match: *``),
  so of two workers publishing at once one gets the number and the other the next one;
- ``<version>/...``: the version's files, then ``<version>/MANIFEST.json`` with every file's
  size and sha256, written last. S3 has no rename: a version exists for readers only once
  its manifest does, so a worker killed mid-upload leaves files no one serves, which
  :meth:`BucketModelStore.clean_staging` removes later (its CLAIM stays: numbers are never
  given out twice);
- ``CURRENT`` and ``PINNED``: the pointers, replaced by one PUT each (atomic in S3).

Reading a version downloads it into ``POETS_HOME/store-cache/<name>/<version>/`` (the local
store's layout): aside, checked against the manifest, then renamed into place; bounded by
``POETS_STORE_CACHE_MB``, least recently used versions going first. A version whose files do
not match its manifest is refused with :class:`CorruptVersion`, never served. When the bucket
cannot be reached, reads answer from the cache (the pointers are mirrored there as each is
read), :meth:`BucketModelStore.degraded` says so, and writes raise StoreUnavailable.
"""

import contextlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

from poets.engine.errors import Conflict, ModelLoadError, NotFound, StoreUnavailable
from poets.engine.store.bucket import Bucket, local_path_ok, sha256_file
from poets.engine.store.health import patiently
from poets.engine.store.models import (
    _NAME,
    _VERSION,
    CURRENT_FILE,
    METADATA_FILE,
    PINNED_FILE,
    STALE_STAGING_S,
    ModelStore,
    VersionStore,
    check_name,
    write_atomic,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

MANIFEST_FILE = "MANIFEST.json"
CLAIM_FILE = "CLAIM"
# The local copies: a version folder is only renamed in once it matched its manifest.
_PARTIAL = ".partial"
# While the bucket does not answer, it is asked again this often (reads meanwhile: the cache).
PROBE_EVERY_S = 2.0
# The worker sweeps every few seconds; listing every model in the bucket is done this often.
CLEAN_EVERY_S = 300.0
# Longest wait of a publish for the bucket to answer again (a retrain's version is not lost).
PUBLISH_PATIENCE_S = 120.0


def _job_of(folder: Path) -> Optional[str]:
    try:
        return json.loads((folder / METADATA_FILE).read_text(encoding="utf-8")).get("job_id")  # type: ignore[no-any-return]
    except (OSError, ValueError, AttributeError):
        return None


class CorruptVersion(ModelLoadError):
    """A version in the bucket whose files do not match its manifest: never served."""

    code = "corrupt_version"


def _manifest(folder: Path) -> Dict[str, Any]:
    files: Dict[str, Dict[str, Any]] = {}
    for dirpath, _, filenames in os.walk(str(folder)):
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            relative = path.relative_to(folder).as_posix()
            if relative == MANIFEST_FILE:  # a cached copy's own
                continue
            files[relative] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return {"files": dict(sorted(files.items())), "created": time.time()}


class BucketModelStore(VersionStore):
    """Published model versions in a bucket; reads go through a bounded local cache."""

    def __init__(
        self,
        bucket: Bucket,
        cache_dir: Path,
        cache_bytes: int,
        clean_every_s: float = CLEAN_EVERY_S,
        publish_patience_s: float = PUBLISH_PATIENCE_S,
    ) -> None:
        self.bucket = bucket
        self.root = Path(cache_dir)  # the local cache, in the local store's layout
        self.cache_bytes = cache_bytes
        self.local = ModelStore(self.root)
        self._lock = threading.Lock()
        self._fetching: Dict[Tuple[str, int], threading.Lock] = {}
        self._metadata: Dict[Tuple[str, int], Dict[str, Any]] = {}  # versions are immutable
        self._pointers: Dict[str, Tuple[Optional[str], Optional[int]]] = {}  # key -> (etag, version)
        self._unreachable: Optional[Tuple[float, str]] = None
        self._probe_at = 0.0
        self.clean_every_s = clean_every_s
        self.publish_patience_s = publish_patience_s
        self._cleaned_at: Optional[float] = None

    def __repr__(self) -> str:
        return "BucketModelStore({!r})".format(self.bucket.url)

    # --- reachability -----------------------------------------------------------------------

    def _read(self, read: Callable[[], Any], offline: Callable[[], Any]) -> Any:
        """``read()`` from the bucket; when it cannot be reached, ``offline()`` from the cache.

        After a failure the bucket is only asked again every PROBE_EVERY_S: meanwhile reads
        answer from the cache at once instead of each waiting POETS_STORE_TIMEOUT_S.
        """
        if self._unreachable is not None and time.monotonic() < self._probe_at:
            return offline()
        try:
            value = read()
        except StoreUnavailable as exc:
            with self._lock:
                self._probe_at = time.monotonic() + PROBE_EVERY_S
                if self._unreachable is None:
                    log.warning("the bucket cannot be reached; serving from the cache: %s", exc.detail)
                    self._unreachable = (time.time(), exc.detail)
            return offline()
        if self._unreachable is not None:
            with self._lock:
                if self._unreachable is not None:
                    log.info("the bucket %s answers again", self.bucket.url)
                    self._unreachable = None
        return value

    def degraded(self) -> Optional[str]:
        """What is wrong with the bucket, for /readyz; None while it answers."""
        gone = self._unreachable
        if gone is None:
            return None
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(gone[0]))
        return (
            "the model store's bucket {} has not answered since {}: serving cached versions, "
            "no new jobs ({})".format(self.bucket.url, since, gone[1][:200])
        )

    def check(self) -> None:
        """Raise StoreUnavailable unless the bucket answers (before accepting work that writes)."""
        self._read(self.bucket.check, lambda: None)
        if self._unreachable is not None:
            raise StoreUnavailable(self._unreachable[1])

    # --- reading ----------------------------------------------------------------------------

    def names(self) -> List[str]:
        return self._read(  # type: ignore[no-any-return]
            lambda: sorted(n for n in self.bucket.folders("models") if _NAME.fullmatch(n)), self.local.names
        )

    def _listing(self, name: str) -> Tuple[List[int], List[int]]:
        """(published versions: with a manifest, every version number claimed)."""
        published, claimed = set(), set()
        for item in self.bucket.list("models/{}/".format(name)):
            parts = item.key.split("/")
            if len(parts) >= 4 and _VERSION.fullmatch(parts[2]):
                claimed.add(int(parts[2]))
                if len(parts) == 4 and parts[3] == MANIFEST_FILE:
                    published.add(int(parts[2]))
        return sorted(published), sorted(claimed)

    def versions(self, name: str) -> List[int]:
        check_name(name)
        return self._read(lambda: self._listing(name)[0], lambda: self.local.versions(name))  # type: ignore[no-any-return]

    def _pointer(self, name: str, filename: str) -> Optional[int]:
        """The version a pointer object names (read with its ETag: unchanged costs no body),
        mirrored into the cache so that a restart during an outage knows it."""
        key = "models/{}/{}".format(name, filename)
        etag, known = self._pointers.get(key, (None, None))
        data, new_etag = self.bucket.get_if_changed(key, etag)
        if new_etag is None:  # no such object
            version = None
        elif data is None:
            version = known
        else:
            try:
                version = int(data.decode("utf-8").strip())
            except ValueError:
                version = None
        self._pointers[key] = (new_etag, version)
        self._mirror(name, filename, version)
        return version

    def _mirror(self, name: str, filename: str, version: Optional[int]) -> None:
        path = self.root / name / filename
        try:
            if version is None:
                if path.exists():
                    path.unlink()
            elif not path.exists() or path.read_text().strip() != str(version):
                write_atomic(path, "{}\n".format(version))
        except OSError as exc:
            log.warning("cannot mirror %s of %s into the cache: %s", filename, name, exc)

    def _current(self, name: str) -> Optional[int]:
        for filename in (PINNED_FILE, CURRENT_FILE):
            version = self._pointer(name, filename)
            if version is not None:
                return version
        versions = self._listing(name)[0]  # never activated: the highest, as TF Serving does
        return versions[-1] if versions else None

    def current(self, name: str) -> Optional[int]:
        """The version to serve: the pinned one, else the one CURRENT names, else the highest."""
        check_name(name)
        return self._read(lambda: self._current(name), lambda: self.local.current(name))  # type: ignore[no-any-return]

    def pinned(self, name: str) -> Optional[int]:
        check_name(name)
        return self._read(lambda: self._pointer(name, PINNED_FILE), lambda: self.local.pinned(name))  # type: ignore[no-any-return]

    def state(self) -> Tuple[Tuple[str, Optional[int]], ...]:
        """Current version of every model: what the API polls (a pointer that has not changed
        costs a 304 and no body)."""

        def read() -> Tuple[Tuple[str, Optional[int]], ...]:
            names = sorted(n for n in self.bucket.folders("models") if _NAME.fullmatch(n))
            return tuple((name, self._current(name)) for name in names)

        return self._read(read, self.local.state)  # type: ignore[no-any-return]

    def metadata(self, name: str, version: int) -> Dict[str, Any]:
        key = (check_name(name), int(version))
        if key in self._metadata:
            return self._metadata[key]
        cached = self.local.path(name, version)
        if cached.is_dir():
            meta = self.local.metadata(name, version)
        else:
            data = self._read(
                lambda: self.bucket.get("models/{}/{}/{}".format(name, int(version), METADATA_FILE)),
                lambda: None,
            )
            try:
                meta = json.loads(data.decode("utf-8")) if data else {}
            except ValueError:
                meta = {}
            if data is None:
                return meta  # not there (yet), or unreachable: do not remember
        self._metadata[key] = meta
        return meta

    def find_job(self, name: str, job_id: str) -> Optional[int]:
        """The version a job already published, if any: makes publishing idempotent."""
        for version in self.versions(name):
            if self.metadata(name, version).get("job_id") == job_id:
                return version
        return None

    def fingerprint(self, name: str, version: int) -> Any:
        """What changes when the version's objects do (a damaged object replaced): their ETags."""
        return self._read(
            lambda: tuple(
                (i.key, i.etag) for i in self.bucket.list("models/{}/{}/".format(name, int(version)))
            ),
            lambda: None,
        )

    def path(self, name: str, version: int) -> Path:
        """The version's files on this machine, downloaded and checked first if need be.

        Raises:
            NotFound: the bucket has no such version (no manifest).
            CorruptVersion: its files do not match its manifest.
            StoreUnavailable: it is not cached and the bucket cannot be reached.
        """
        folder = self.local.path(name, version)
        key = (name, int(version))
        with self._lock:
            lock = self._fetching.setdefault(key, threading.Lock())
        with lock:
            fetched = not folder.is_dir()
            if fetched:
                self._fetch(name, int(version), folder)
            with contextlib.suppress(OSError):
                os.utime(str(folder))  # least recently used goes first
        if fetched:  # only a download makes the cache grow: a hit does not walk it
            self._evict(keep=folder)
        return folder

    def _fetch(self, name: str, version: int, folder: Path) -> None:
        prefix = "models/{}/{}/".format(name, version)
        data = self.bucket.get(prefix + MANIFEST_FILE)
        if data is None:
            raise NotFound("Model {!r} has no version {} in {}.".format(name, version, self.bucket.url))
        try:
            files = json.loads(data.decode("utf-8"))["files"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptVersion(self._damaged(name, version, "its manifest cannot be read")) from exc
        partial = self.root / _PARTIAL / uuid.uuid4().hex
        partial.mkdir(parents=True)
        try:
            for relative, expected in sorted(files.items()):
                if not local_path_ok(relative):
                    raise CorruptVersion(
                        self._damaged(name, version, "its manifest names {!r}".format(relative))
                    )
                target = partial / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                if not self.bucket.download(prefix + relative, target):
                    raise CorruptVersion(self._damaged(name, version, "{} is missing".format(relative)))
                size, digest = target.stat().st_size, sha256_file(target)
                if size != expected.get("size") or digest != expected.get("sha256"):
                    raise CorruptVersion(
                        self._damaged(
                            name,
                            version,
                            "{} has {} bytes and sha256 {}, its manifest says {} bytes and sha256 {}".format(
                                relative,
                                size,
                                digest[:16],
                                expected.get("size"),
                                str(expected.get("sha256"))[:16],
                            ),
                        )
                    )
            (partial / MANIFEST_FILE).write_bytes(data)
            folder.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(str(partial), str(folder))
            except OSError:
                if not folder.is_dir():  # else another process put the same version in place first
                    raise
        finally:
            shutil.rmtree(str(partial), ignore_errors=True)

    def _damaged(self, name: str, version: int, why: str) -> str:
        return (
            "Version {} of model {!r} in {} fails its manifest check: {}. It is not served; "
            "publish it again or activate another version.".format(version, name, self.bucket.url, why)
        )

    def _evict(self, keep: Path) -> None:
        """Remove the least recently used cached versions past POETS_STORE_CACHE_MB; never a
        model's current one (a node restarted while the bucket is down serves it from here)."""
        cached: List[Tuple[float, int, Path]] = []
        total = 0
        for model in self.local.names():
            current = self.local.current(model)
            for version in self.local.versions(model):
                folder = self.local.path(model, version)
                try:
                    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
                    cached.append((folder.stat().st_mtime, size, folder))
                except OSError:
                    continue
                total += size
                if version == current:
                    cached.pop()  # counted, never removed
        for _, size, folder in sorted(cached, key=lambda item: item[0]):
            if total <= self.cache_bytes:
                break
            if folder == keep:
                continue
            log.info("cache full (POETS_STORE_CACHE_MB): removing %s", folder)
            shutil.rmtree(str(folder), ignore_errors=True)
            total -= size

    # --- writing ----------------------------------------------------------------------------

    def _set_pointer(self, name: str, filename: str, version: Optional[int]) -> None:
        key = "models/{}/{}".format(name, filename)
        if version is None:
            self.bucket.delete([key])
        else:
            self.bucket.put(key, "{}\n".format(int(version)).encode())
        self._pointers.pop(key, None)
        self._mirror(name, filename, version)

    def _require(self, name: str, version: int) -> None:
        versions = self.versions(name)
        if self._unreachable is not None:
            raise StoreUnavailable(self._unreachable[1])
        if int(version) not in versions:
            shown = ", ".join(str(v) for v in versions) or "none"
            raise NotFound("Model {!r} has no version {} (its versions: {}).".format(name, version, shown))

    def _pin_now(self, name: str) -> Optional[int]:
        return self._pointer(name, PINNED_FILE)  # from the bucket: never the cache's copy

    def publish(
        self, name: str, write: Callable[[Path], None], job_id: Optional[str] = None, activate: bool = True
    ) -> int:
        """Write a new version with ``write(folder)`` on local disk, then into the bucket.

        The number is claimed first (conditional write), the files uploaded, the manifest
        last; only then is the version visible, and made current with ``activate`` (unless
        pinned). A redelivered job's version is returned as is.
        """
        check_name(name)
        if job_id is not None:
            existing = self.find_job(name, job_id)
            if existing is not None:
                return existing
        staging = self.root / ".staging" / uuid.uuid4().hex
        staging.mkdir(parents=True)
        try:
            write(staging)
            manifest = _manifest(staging)
            manifest["job_id"] = job_id
            version = self._patiently("its upload", lambda: self._send(name, job_id, staging, manifest))
            # This machine has the files already: into the cache, as a download would put them.
            (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True))
            target = self.local.path(name, version)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.rename(str(staging), str(target))
        finally:
            shutil.rmtree(str(staging), ignore_errors=True)
        if activate:
            self._patiently("CURRENT", lambda: self._activate_unless_pinned(name, version))
        self._evict(keep=self.local.path(name, version))
        return version

    def _send(self, name: str, job_id: Optional[str], staging: Path, manifest: Dict[str, Any]) -> int:
        """Claim a number, upload the files, write the manifest: the version exists."""
        version = self._claim(name, job_id)
        manifest["version"] = version
        self._upload(name, version, staging, manifest)
        self.bucket.put(
            "models/{}/{}/{}".format(name, version, MANIFEST_FILE),
            json.dumps(manifest, indent=1, sort_keys=True).encode(),
        )
        return version

    def _activate_unless_pinned(self, name: str, version: int) -> None:
        if self._pin_now(name) is None:
            self.activate(name, version)

    def _patiently(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, tried again while the bucket does not answer, for up to
        ``publish_patience_s``: a retrain's version is not lost to a short outage. (A try
        that claimed a number and then failed leaves it unused: numbers only grow.)"""
        return patiently(call, self.publish_patience_s, "publishing waits for the bucket ({})".format(what))

    def pointer(self, name: str, filename: str) -> Optional[int]:
        """The version ``CURRENT`` or ``PINNED`` names in the bucket (raises StoreUnavailable)."""
        return self._pointer(check_name(name), filename)

    def set_pointer(self, name: str, filename: str, version: int) -> None:
        self._require(name, version)
        self._set_pointer(name, filename, version)

    def copy_in(self, name: str, version: int, folder: Path) -> str:
        """Put a version of another store into the bucket under its own number (``poets
        migrate``): ``"copied"``, or ``"present"`` when the bucket has these very files.

        Raises:
            Conflict: the bucket holds other files under this number, or a publish of its own.
        """
        check_name(name)
        manifest = _manifest(folder)
        prefix = "models/{}/{}/".format(name, int(version))
        existing = self.bucket.get(prefix + MANIFEST_FILE)
        if existing is not None:
            try:
                theirs = json.loads(existing.decode("utf-8")).get("files")
            except ValueError:
                theirs = None
            if theirs != manifest["files"]:
                raise Conflict(
                    "the bucket already has a different version {} of {!r}: not overwritten (move one "
                    "of them to another model name first)".format(version, name)
                )
            return "present"
        claim = json.dumps({"migrated_from": str(folder), "time": time.time()}).encode()
        if not self.bucket.put(prefix + CLAIM_FILE, claim, if_absent=True):
            held = self.bucket.get(prefix + CLAIM_FILE) or b"{}"
            if b"migrated_from" not in held:  # a worker's publish: never mixed with ours
                raise Conflict(
                    "version {} of {!r} is being published in the bucket by a worker: stop the "
                    "workers while migrating, then run it again".format(version, name)
                )
        manifest["version"] = int(version)
        manifest["job_id"] = _job_of(folder)
        self._upload(name, int(version), folder, manifest)
        self.bucket.put(prefix + MANIFEST_FILE, json.dumps(manifest, indent=1, sort_keys=True).encode())
        return "copied"

    def _claim(self, name: str, job_id: Optional[str]) -> int:
        version = (self._listing(name)[1] or [0])[-1] + 1
        claim = json.dumps({"job_id": job_id, "host": os.uname()[1], "pid": os.getpid(), "time": time.time()})
        while not self.bucket.put(
            "models/{}/{}/{}".format(name, version, CLAIM_FILE), claim.encode(), if_absent=True
        ):
            version += 1  # another worker claimed this number first
        return version

    def _upload(self, name: str, version: int, staging: Path, manifest: Dict[str, Any]) -> None:
        prefix = "models/{}/{}/".format(name, version)
        uploaded: List[str] = []
        try:
            for relative in manifest["files"]:
                self.bucket.upload(staging / relative, prefix + relative)
                uploaded.append(prefix + relative)
        except BaseException:
            # Our own half version: nobody serves it (no manifest); the CLAIM stays. When the
            # bucket is gone, clean_staging removes it later.
            with contextlib.suppress(StoreUnavailable):
                self.bucket.delete(uploaded)
            raise

    def clean_staging(self, older_than_s: float = STALE_STAGING_S) -> List[str]:
        """Remove what killed publishes left: local staging folders, and claimed versions in
        the bucket that never got a manifest (their CLAIM stays, so the number is not reused)."""
        removed = self.local.clean_staging(older_than_s)
        partial = self.root / _PARTIAL
        if partial.is_dir():
            for entry in partial.iterdir():
                try:
                    if time.time() - entry.stat().st_mtime >= older_than_s:
                        shutil.rmtree(str(entry), ignore_errors=True)
                except OSError:
                    pass
        now = time.monotonic()
        if self._cleaned_at is not None and now - self._cleaned_at < self.clean_every_s:
            return removed
        self._cleaned_at = now
        try:
            removed += self._clean_bucket(older_than_s)
        except StoreUnavailable as exc:  # housekeeping: next time
            log.warning("abandoned uploads in the bucket not cleaned now: %s", exc.detail)
        return removed

    def _clean_bucket(self, older_than_s: float) -> List[str]:
        removed: List[str] = []
        for name in self.bucket.folders("models"):
            if not _NAME.fullmatch(name):
                continue
            objects: Dict[str, List[Any]] = {}
            for item in self.bucket.list("models/{}/".format(name)):
                parts = item.key.split("/")
                if len(parts) >= 4 and _VERSION.fullmatch(parts[2]):
                    objects.setdefault(parts[2], []).append(item)
            for version, items in objects.items():
                keys = {item.key.split("/", 3)[3] for item in items}
                if MANIFEST_FILE in keys:
                    continue
                newest = max(item.modified for item in items)
                leftovers = [item.key for item in items if not item.key.endswith("/" + CLAIM_FILE)]
                # + 1 s: a bucket's times are whole seconds, rounded (up to half a second ahead).
                if leftovers and time.time() + 1.0 - newest >= older_than_s:
                    self.bucket.delete(leftovers)
                    removed.append("{}/{}".format(name, version))
        return removed
