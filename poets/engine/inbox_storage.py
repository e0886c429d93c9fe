"""Where the review inbox keeps its frames: a folder of this machine, or the shared bucket.

An item is two things under its id: the frame's encoded bytes (``<id><suffix>``, e.g.
``.jpg``) and a small JSON record (``<id>.json``: model, scores, size), written after the
frame. An item exists once its record does; a frame without one (a writer that stopped
between the two) is not listed and goes with the oldest when the inbox is over a bound.

:class:`LocalInboxStorage` is a folder (``$POETS_HOME/inbox``): one API node, or several
on one machine. :class:`BucketInboxStorage` keeps the same two objects under ``inbox/`` in
the bucket of ``POETS_STORE_URL``, so frames collected on any API node are reviewed from
any node's console. Why the bucket and not Redis: frames are images (tens to hundreds of
KB each, up to ``POETS_INBOX_MAX_BYTES`` in all), which Redis would hold in memory and
replicate through its append-only file; the bucket already holds the model versions and
job inputs. The record is an object of its own rather than S3 user metadata: listings do
not return metadata (a HEAD per item either way), user metadata is capped at 2 KB of
header-safe text (a model's scores by label do not fit it), and the layout stays the one
the folder has.

Taking an item (filing or discarding it) is exclusive: on disk the record is renamed
aside (one rename wins); in the bucket a ``<id>.taken`` object is created by a
conditional write (``If-None-Match: *``: one writer wins), which hides the item from
listings until it is removed. A claim left by a node that died mid-take is void after
:data:`CLAIM_STALE_S`: the item is listed again and may be taken.
"""

import contextlib
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

if TYPE_CHECKING:
    from poets.engine.store.bucket import Bucket

log = logging.getLogger(__name__)

RECORD = ".json"
CLAIM = ".taken"
# A claim this old belongs to a take that broke off (its node died, or the bucket went away
# between the claim and the deletes): the item is listed and may be taken again.
CLAIM_STALE_S = 600.0
# Records fetched at once when a node lists items it has not read before.
_READERS = 8


class Entry(NamedTuple):
    """One item as a listing sees it."""

    item: str
    size: int  # the frame's bytes (what POETS_INBOX_MAX_BYTES counts)
    keys: Tuple[str, ...]  # every file or object of the item: what removing it deletes
    listed: bool  # its record is there and nobody is taking it


def _stem(name: str) -> str:
    return name.split(".", 1)[0]


class InboxStorage:
    """The seam between :class:`~poets.engine.inbox.Inbox` and where its items are kept.

    Every method may raise :class:`~poets.engine.errors.StoreUnavailable` when the
    storage cannot be reached; a missing item is ``None`` or ``False``.
    """

    #: Whether other machines write and take items too (messages say so).
    shared = False
    #: Where the items are, for logs and messages.
    where = ""

    def write(self, item: str, suffix: str, data: bytes, record: bytes, if_absent: bool = False) -> bool:
        """Keep the frame, then its record. With ``if_absent``, False (nothing written)
        when the id is taken already."""
        raise NotImplementedError

    def entries(self, is_id: Callable[[str], bool]) -> List[Entry]:
        """Every item whose id passes ``is_id``, oldest (lowest id) first."""
        raise NotImplementedError

    def record(self, item: str) -> Optional[bytes]:
        """The item's record as stored now, or None."""
        raise NotImplementedError

    def records(self, items: Sequence[str]) -> Dict[str, bytes]:
        """The records of ``items`` that are there, for a listing (may be cached: a record
        never changes under its id)."""
        raise NotImplementedError

    def frame(self, item: str, suffix: str) -> Optional[bytes]:
        """The frame's bytes, or None."""
        raise NotImplementedError

    def claim(self, item: str) -> Optional[str]:
        """Reserve the item for one taker: a token for :meth:`remove` or :meth:`release`,
        or None when someone else has it (or it is gone)."""
        raise NotImplementedError

    def release(self, item: str, token: str) -> None:
        """Give a claim up: the item is listed again."""
        raise NotImplementedError

    def remove(self, item: str, suffix: str, token: str) -> None:
        """Delete a claimed item (its frame, its record, the claim)."""
        raise NotImplementedError

    def delete(self, entries: Sequence[Entry]) -> None:
        """Delete whole items (making room); records first, so none is listed half gone.
        Deleting what is gone already is no error."""
        raise NotImplementedError


class LocalInboxStorage(InboxStorage):
    """Items as files in ``root`` (created on first write)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.where = str(self.root)

    def _write(self, path: Path, data: bytes) -> None:
        partial = self.root / ".{}.tmp".format(uuid.uuid4().hex)
        partial.write_bytes(data)
        os.replace(str(partial), str(path))

    def write(self, item: str, suffix: str, data: bytes, record: bytes, if_absent: bool = False) -> bool:
        self.root.mkdir(parents=True, exist_ok=True)
        if if_absent and (self.root / (item + RECORD)).exists():
            return False
        self._write(self.root / (item + suffix), data)
        self._write(self.root / (item + RECORD), record)
        return True

    def entries(self, is_id: Callable[[str], bool]) -> List[Entry]:
        names: Dict[str, List[str]] = {}
        sizes: Dict[str, int] = {}
        if not self.root.is_dir():
            return []
        for entry in os.scandir(str(self.root)):
            stem = _stem(entry.name)
            if entry.name.startswith(".") or not is_id(stem):
                continue
            names.setdefault(stem, []).append(entry.name)
            if not entry.name.endswith(RECORD):
                try:
                    sizes[stem] = sizes.get(stem, 0) + entry.stat().st_size
                except OSError:
                    continue
        return [
            Entry(item, sizes.get(item, 0), tuple(names[item]), any(n.endswith(RECORD) for n in names[item]))
            for item in sorted(names)
        ]

    def _read(self, name: str) -> Optional[bytes]:
        try:
            return (self.root / name).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def record(self, item: str) -> Optional[bytes]:
        return self._read(item + RECORD)

    def records(self, items: Sequence[str]) -> Dict[str, bytes]:
        found = {}
        for item in items:
            data = self.record(item)
            if data is not None:
                found[item] = data
        return found

    def frame(self, item: str, suffix: str) -> Optional[bytes]:
        return self._read(item + suffix)

    def claim(self, item: str) -> Optional[str]:
        claimed = ".taken-{}-{}.json".format(item, uuid.uuid4().hex[:8])
        try:
            os.rename(str(self.root / (item + RECORD)), str(self.root / claimed))
        except FileNotFoundError:
            return None
        return claimed

    def release(self, item: str, token: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.rename(str(self.root / token), str(self.root / (item + RECORD)))

    def remove(self, item: str, suffix: str, token: str) -> None:
        self._unlink([token, item + suffix])

    def _unlink(self, names: Iterable[str]) -> None:
        for name in names:
            with contextlib.suppress(OSError):
                (self.root / name).unlink()

    def delete(self, entries: Sequence[Entry]) -> None:
        for entry in entries:
            # The record first, so a half-removed item is never listed.
            self._unlink(sorted(entry.keys, key=lambda name: not name.endswith(RECORD)))


class BucketInboxStorage(InboxStorage):
    """Items as objects under ``prefix`` (``inbox/``) of a shared :class:`Bucket`.

    Each node keeps the records it has read in memory (a record never changes under its
    id), so listing the inbox costs one LIST per thousand objects plus a GET for each item
    this node has not seen yet.
    """

    shared = True

    def __init__(self, bucket: "Bucket", prefix: str = "inbox/") -> None:
        self.bucket = bucket
        self.prefix = prefix.rstrip("/") + "/"
        self.where = "{}/{}".format(bucket.url, self.prefix)
        self._records: Dict[str, bytes] = {}
        self._lock = threading.Lock()

    def _key(self, name: str) -> str:
        return self.prefix + name

    def write(self, item: str, suffix: str, data: bytes, record: bytes, if_absent: bool = False) -> bool:
        if not self.bucket.put(self._key(item + suffix), data, if_absent=if_absent):
            return False
        self.bucket.put(self._key(item + RECORD), record)
        with self._lock:
            self._records[item] = record
        return True

    def entries(self, is_id: Callable[[str], bool]) -> List[Entry]:
        keys: Dict[str, List[str]] = {}
        sizes: Dict[str, int] = {}
        records = set()
        live_claims = set()
        stale_before = time.time() - CLAIM_STALE_S
        for info in self.bucket.list(self.prefix):
            name = info.key[len(self.prefix) :]
            stem = _stem(name)
            if "/" in name or not is_id(stem):
                continue
            keys.setdefault(stem, []).append(info.key)
            if name.endswith(RECORD):
                records.add(stem)
            elif name.endswith(CLAIM):
                if info.modified > stale_before:
                    live_claims.add(stem)
            else:
                sizes[stem] = sizes.get(stem, 0) + info.size
        return [
            Entry(item, sizes.get(item, 0), tuple(keys[item]), item in records and item not in live_claims)
            for item in sorted(keys)
        ]

    def record(self, item: str) -> Optional[bytes]:
        data = self.bucket.get(self._key(item + RECORD))
        with self._lock:
            if data is None:
                self._records.pop(item, None)
            else:
                self._records[item] = data
        return data

    def records(self, items: Sequence[str]) -> Dict[str, bytes]:
        with self._lock:
            # Forget what is no longer listed: the cache holds at most the inbox's items.
            wanted = set(items)
            self._records = {item: data for item, data in self._records.items() if item in wanted}
            found = dict(self._records)
        missing = [item for item in items if item not in found]
        if len(missing) == 1:
            data = self.record(missing[0])
            if data is not None:
                found[missing[0]] = data
        elif missing:
            with ThreadPoolExecutor(min(_READERS, len(missing)), thread_name_prefix="inbox-read") as pool:
                for item, data in zip(missing, pool.map(self.record, missing)):
                    if data is not None:
                        found[item] = data
        return found

    def frame(self, item: str, suffix: str) -> Optional[bytes]:
        return self.bucket.get(self._key(item + suffix))

    def claim(self, item: str) -> Optional[str]:
        token = self._key(item + CLAIM)
        if self.bucket.put(token, b"", if_absent=True):
            return token
        info = self.bucket.head(token)
        if info is not None and info.modified > time.time() - CLAIM_STALE_S:
            return None  # someone is taking it now
        # A take that broke off long ago: void its claim, then claim as anyone would. (Two
        # nodes voiding the same stale claim at once could both go on: only for an item whose
        # take broke off, and its frame is then filed twice at worst, never lost.)
        self.bucket.delete([token])
        return token if self.bucket.put(token, b"", if_absent=True) else None

    def release(self, item: str, token: str) -> None:
        self.bucket.delete([token])

    def remove(self, item: str, suffix: str, token: str) -> None:
        # One request: the claim hides the item from listings until all three are gone.
        self.bucket.delete([self._key(item + RECORD), self._key(item + suffix), token])
        with self._lock:
            self._records.pop(item, None)

    def delete(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        keys = [key for entry in entries for key in entry.keys]
        self.bucket.delete([key for key in keys if key.endswith(RECORD)])
        self.bucket.delete([key for key in keys if not key.endswith(RECORD)])
        with self._lock:
            for entry in entries:
                self._records.pop(entry.item, None)
