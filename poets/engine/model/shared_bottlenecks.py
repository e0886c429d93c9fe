"""The bottleneck cache's second level: packs of vectors in a bucket that every worker shares.

With ``POETS_BOTTLENECK_STORE_URL=s3://bucket/prefix`` the local
:class:`~poets.engine.model.bottlenecks.BottleneckCache` stays the first level. When a job
needs vectors the local cache lacks, they are pulled from the bucket before anything is
computed; after computing, the vectors of that job that the bucket lacks are pushed. The keys
are the local cache's: the image's bytes, the backbone's weights and output tensor, the
preprocessing and the view hashed together, nothing of the machine (no path, no host), so
what an x86 worker computed serves a TX2 with the same backbone file.

Packs, not one object per vector: each request costs the client a few ms of CPU (2.6 ms
in boto3 on a 2-core x86, several times that on a TX2's ARM cores, whose GPU computes a
MobileNet vector in about as much), so per-image objects would hardly pay where sharing
matters most; packs took a tenth of their time (``bench/bottleneck_store.py``). A push
writes its vectors as packs of at most
:data:`PACK_BYTES`; a pull lists the packs once, reads their key indexes (kept on local
disk after the first read, they never change) and fetches, a few at a time, the packs that
cover what is missing.

Layout under the URL's prefix::

    v1/<group>/<pack>.pack   magic, count, dim, the keys, the float32 vectors, sha256 of it all
    v1/<group>/<pack>.idx    magic, count, dim, the same keys, sha256: written after its pack;
                             a pack without one is not read

``<group>`` names the backbone and preprocessing, so a listing holds only packs that can
serve; ``<pack>`` is the sha256 of the pack's sorted keys, so two workers pushing the same
vectors write the same objects, and a damaged pack is replaced when its vectors are pushed
again. Every pack is checked against its checksum and its name before a vector of it is used;
one that fails is counted, logged, not used, and remembered (by ETag) so it is not fetched
again. A bucket that cannot be reached fails nothing: the job logs a warning, counts it and
computes locally.
"""

import hashlib
import logging
import os
import struct
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import AbstractSet, Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np

from poets.engine.errors import StoreUnavailable
from poets.engine.store.bucket import Bucket

log = logging.getLogger(__name__)

FORMAT = "v1"
PACK_MAGIC = b"POETSBP1"
INDEX_MAGIC = b"POETSBI1"
_HEADER = struct.Struct("<II")  # count, dim
_DIGEST = 32  # a key (sha256 hex) as raw bytes; also the checksum's length
# At most this many bytes of vectors per pack (4,096 MobileNet vectors): a pull holds a few
# packs in memory at once, and a job that needs a few images does not fetch a huge pack.
PACK_BYTES = 16 * 1024 * 1024
# Requests in flight at once; under boto3's default pool of 10 connections per client.
THREADS = 4


class Damaged(ValueError):
    """A pack or index whose bytes do not check out."""


def group_of(backbone_fingerprint: str, preprocessing_fingerprint: str, dim: int) -> str:
    """The bucket folder of one backbone and preprocessing (machine-independent)."""
    text = "|".join([backbone_fingerprint, preprocessing_fingerprint, str(dim)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pack_id(keys: Sequence[str]) -> str:
    """A pack's name: the sha256 of its (sorted) keys."""
    return hashlib.sha256("".join(sorted(keys)).encode()).hexdigest()


def encode(keys: Sequence[str], vectors: Optional[np.ndarray], dim: int) -> bytes:
    """A pack (``vectors`` given, one row per key) or its index (``vectors`` None)."""
    magic = INDEX_MAGIC if vectors is None else PACK_MAGIC
    parts = [magic, _HEADER.pack(len(keys), dim), b"".join(bytes.fromhex(key) for key in keys)]
    if vectors is not None:
        parts.append(np.asarray(vectors, dtype="<f4").reshape(len(keys), dim).tobytes())
    body = b"".join(parts)
    return body + hashlib.sha256(body).digest()


def decode(data: bytes, name: str, dim: int, with_vectors: bool) -> Tuple[List[str], Optional[np.ndarray]]:
    """Keys (and vectors) of a pack or index named ``name``.

    Raises:
        Damaged: wrong magic, size, checksum or dimension, or keys that are not the name's.
    """
    magic = PACK_MAGIC if with_vectors else INDEX_MAGIC
    start = len(magic) + _HEADER.size
    if len(data) < start + _DIGEST or data[: len(magic)] != magic:
        raise Damaged("not a {} ({} bytes)".format("pack" if with_vectors else "pack index", len(data)))
    count, found_dim = _HEADER.unpack_from(data, len(magic))
    expected = start + count * _DIGEST + (count * dim * 4 if with_vectors else 0) + _DIGEST
    if found_dim != dim or len(data) != expected:
        raise Damaged(
            "{} bytes of dimension {}, expected {} of dimension {}".format(
                len(data), found_dim, expected, dim
            )
        )
    if hashlib.sha256(data[:-_DIGEST]).digest() != data[-_DIGEST:]:
        raise Damaged("checksum mismatch")
    raw = data[start : start + count * _DIGEST]
    keys = [raw[i : i + _DIGEST].hex() for i in range(0, len(raw), _DIGEST)]
    if pack_id(keys) != name:
        raise Damaged("its keys are not those its name says")
    if not with_vectors:
        return keys, None
    offset = start + count * _DIGEST
    vectors = np.frombuffer(data, dtype="<f4", count=count * dim, offset=offset).reshape(count, dim)
    return keys, vectors


@dataclass
class Transfer:
    """What one computation exchanged with the bucket (a job result shows it)."""

    pulled: int = 0  # vectors the bucket gave the local cache
    pushed: int = 0  # vectors written to the bucket
    packs_pulled: int = 0
    packs_pushed: int = 0
    bytes_pulled: int = 0
    bytes_pushed: int = 0
    damaged: int = 0  # packs or indexes refused: not used, computed instead
    pull_s: float = 0.0
    push_s: float = 0.0
    unavailable: Optional[str] = None  # why the bucket could not be used, when it could not

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["pull_s"] = round(self.pull_s, 3)
        data["push_s"] = round(self.push_s, 3)
        return data


class SharedBottlenecks:
    """The bucket level under every local bottleneck cache of this process.

    ``unavailable`` and ``damaged`` count, since the process started, the exchanges that
    found the bucket unreachable and the packs refused.
    """

    def __init__(self, bucket: Bucket, threads: int = THREADS, pack_bytes: int = PACK_BYTES) -> None:
        self.bucket = bucket
        self.threads = max(1, threads)
        self.pack_bytes = pack_bytes
        self._lock = threading.Lock()
        self.unavailable = 0
        self.damaged = 0

    def __repr__(self) -> str:
        return "SharedBottlenecks({!r})".format(self.bucket.url)

    def exchange(self, cache: Any, group: str, dim: int) -> "Exchange":
        """One computation's pull and push, between ``cache`` (a BottleneckCache) and the bucket."""
        return Exchange(self, cache, group, dim)

    def _count(self, unavailable: int = 0, damaged: int = 0) -> None:
        with self._lock:
            self.unavailable += unavailable
            self.damaged += damaged


class Exchange:
    """Pull what the local cache misses, then push what the bucket misses, for one computation."""

    def __init__(self, shared: SharedBottlenecks, cache: Any, group: str, dim: int) -> None:
        self.shared = shared
        self.bucket = shared.bucket
        self.cache = cache
        self.group = group
        self.dim = dim
        self.transfer = Transfer()
        # The keys the bucket's sound packs hold; None until listed, or when unreachable.
        self.known: Optional[Set[str]] = None
        self._indexes = Path(cache.root) / ".shared" / FORMAT / group

    def _key(self, name: str, suffix: str) -> str:
        return "{}/{}/{}{}".format(FORMAT, self.group, name, suffix)

    def _give_up(self, exc: StoreUnavailable, doing: str) -> None:
        self.known = None
        self.transfer.unavailable = exc.detail
        self.shared._count(unavailable=1)
        log.warning(
            "bottleneck store (POETS_BOTTLENECK_STORE_URL) not reachable while %s; computing locally: %s",
            doing,
            exc.detail,
        )

    def _refuse(self, kind: str, name: str, etag: str, why: str) -> None:
        self.transfer.damaged += 1
        self.shared._count(damaged=1)
        log.warning("bottleneck %s %s in %s refused (%s): not used", kind, name, self.bucket.url, why)
        _write(self._indexes / (name + ".bad"), etag.encode())

    # --- pull -------------------------------------------------------------------------------

    def pull(self, missing: Sequence[str]) -> None:
        """Fetch into the local cache what of ``missing`` the bucket's packs hold."""
        started = time.monotonic()
        try:
            self._pull(set(missing))
        except StoreUnavailable as exc:
            self._give_up(exc, "pulling")
        finally:
            self.transfer.pull_s = time.monotonic() - started

    def _pull(self, missing: Set[str]) -> None:
        folder = self._key("", "")
        objects = {item.key[len(folder) :]: item for item in self.bucket.list(folder)}
        etags = {
            key[: -len(".pack")]: item.etag
            for key, item in objects.items()
            if key.endswith(".pack") and key[: -len(".pack")] + ".idx" in objects
        }
        etags = {name: etag for name, etag in etags.items() if not self._bad(name, etag)}
        holders: Dict[str, List[str]] = {}  # key -> the packs that hold it
        for name, keys in self._read_indexes(sorted(etags), objects):
            for key in keys:
                holders.setdefault(key, []).append(name)
        wanted = {key for key in missing if key in holders}
        tried: Set[str] = set()
        refused: Set[str] = set()
        while True:
            chosen = _cover(wanted, holders, tried)
            if not chosen:
                break
            tried.update(chosen)
            target = frozenset(wanted)  # the threads read it while this one updates wanted

            def fetch(name: str, target: AbstractSet[str] = target) -> Tuple[Optional[Set[str]], int]:
                return self._fetch(name, etags[name], target)

            for name, (got, size) in self._map(fetch, chosen):
                self.transfer.bytes_pulled += size
                if got is None:
                    refused.add(name)
                    continue
                self.transfer.packs_pulled += 1
                self.transfer.pulled += len(got & wanted)
                wanted -= got
        # What only refused packs hold is not in the bucket after all: pushed again.
        self.known = {key for key, names in holders.items() if not refused.issuperset(names)}

    def _bad(self, name: str, etag: str) -> bool:
        """Refused before, and not replaced since (same ETag)."""
        try:
            return (self._indexes / (name + ".bad")).read_text() == etag
        except OSError:
            return False

    def _read_indexes(self, names: List[str], objects: Dict[str, Any]) -> List[Tuple[str, List[str]]]:
        """Each pack's keys: from this machine's copy of its index, or from the bucket."""
        found = []
        fetch = []
        for name in names:
            try:
                keys, _ = decode((self._indexes / (name + ".idx")).read_bytes(), name, self.dim, False)
            except (OSError, Damaged):
                fetch.append(name)
                continue
            found.append((name, keys))
        for name, (keys, size) in self._map(
            lambda name: self._fetch_index(name, objects[name + ".idx"].etag), fetch
        ):
            self.transfer.bytes_pulled += size
            if keys is not None:
                found.append((name, keys))
        return found

    def _fetch_index(self, name: str, etag: str) -> Tuple[Optional[List[str]], int]:
        data = self.bucket.get(self._key(name, ".idx"))
        if data is None:  # deleted since the listing
            return None, 0
        try:
            keys, _ = decode(data, name, self.dim, False)
        except Damaged as exc:
            self._refuse("pack index", name, etag, str(exc))
            return None, len(data)
        _write(self._indexes / (name + ".idx"), data)
        return keys, len(data)

    def _fetch(self, name: str, etag: str, wanted: AbstractSet[str]) -> Tuple[Optional[Set[str]], int]:
        """The keys of ``wanted`` that pack ``name`` put into the local cache (None: refused),
        and the bytes read."""
        data = self.bucket.get(self._key(name, ".pack"))
        if data is None:  # deleted since the listing
            return set(), 0
        try:
            keys, vectors = decode(data, name, self.dim, True)
        except Damaged as exc:
            self._refuse("pack", name, etag, str(exc))
            return None, len(data)
        assert vectors is not None
        got = set()
        for key, vector in zip(keys, vectors):
            if key in wanted and key not in got:
                self.cache.put(key, vector)
                got.add(key)
        return got, len(data)

    # --- push -------------------------------------------------------------------------------

    def push(self, needed: Iterable[str]) -> None:
        """Write to the bucket the vectors of ``needed`` that it lacks and the local cache has.

        Best effort: nothing when the pull found the bucket unreachable (the next job that
        reaches it pushes them), a warning when it stops answering now.
        """
        known = self.known
        if known is None:
            return
        started = time.monotonic()
        vectors: List[Tuple[str, np.ndarray]] = []
        for key in sorted({key for key in needed if key not in known}):
            vector = self.cache.get(key, self.dim)
            if vector is not None:
                vectors.append((key, vector))
        per_pack = max(1, self.shared.pack_bytes // (self.dim * 4))
        chunks = [vectors[i : i + per_pack] for i in range(0, len(vectors), per_pack)]
        try:
            for chunk, size in self._map(self._push_pack, chunks):
                known.update(key for key, _ in chunk)
                self.transfer.packs_pushed += 1
                self.transfer.pushed += len(chunk)
                self.transfer.bytes_pushed += size
        except StoreUnavailable as exc:
            self._give_up(exc, "pushing")
        finally:
            self.transfer.push_s = time.monotonic() - started

    def _push_pack(self, chunk: List[Tuple[str, np.ndarray]]) -> int:
        """Write one pack and its index; returns the bytes written."""
        keys = [key for key, _ in chunk]
        name = pack_id(keys)
        pack = encode(keys, np.stack([vector for _, vector in chunk]), self.dim)
        index = encode(keys, None, self.dim)
        # The pack first, its index last: a reader never finds an index without its pack.
        self.bucket.put(self._key(name, ".pack"), pack)
        self.bucket.put(self._key(name, ".idx"), index)
        _write(self._indexes / (name + ".idx"), index)
        return len(pack) + len(index)

    def _map(self, fn: Any, items: Sequence[Any]) -> Iterator[Tuple[Any, Any]]:
        """``(item, fn(item))`` for each item, ``threads`` requests at a time; the first
        StoreUnavailable cancels what has not started and is raised."""
        if not items:
            return
        with ThreadPoolExecutor(max_workers=min(self.shared.threads, len(items))) as pool:
            futures = [(item, pool.submit(fn, item)) for item in items]
            try:
                for item, future in futures:
                    yield item, future.result()
            finally:
                for _, future in futures:
                    future.cancel()


def _cover(wanted: Set[str], holders: Dict[str, List[str]], skip: Set[str]) -> List[str]:
    """Packs (not in ``skip``) that hold the ``wanted`` keys, few: greedily, the pack with
    the most wanted keys not yet covered, until none is left that holds one."""
    left = set(wanted)
    chosen: List[str] = []
    while left:
        counts: Dict[str, int] = {}
        for key in left:
            for name in holders.get(key, ()):
                if name not in skip:
                    counts[name] = counts.get(name, 0) + 1
        if not counts:
            break
        best = max(sorted(counts), key=lambda name: counts[name])
        chosen.append(best)
        left = {key for key in left if best not in holders.get(key, ())}
    return chosen


def _write(path: Path, data: bytes) -> None:
    """Write aside and rename: a reader sees all of it or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, str(path))
    except BaseException:
        os.unlink(tmp)
        raise
