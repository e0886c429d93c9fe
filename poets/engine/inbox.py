"""The review inbox: frames a model was unsure of, kept for a person to label.

:class:`Inbox` keeps each frame as its encoded bytes plus a small JSON record (model
version, labels and scores), bounded in items and bytes: the oldest frames are
dropped, and counted, to make room. Where they are kept is its storage
(:mod:`poets.engine.inbox_storage`): ``$POETS_HOME/inbox`` on this machine, or ``inbox/``
in the shared bucket when ``POETS_STORE_URL`` names one, so that frames collected on any
API node are reviewed from any node's console. :class:`Collector` decides which labelled
frames go there and writes them from a background thread through a bounded queue, so the
request that labelled a frame never waits for the disk or the bucket; when the queue is
full, or the bucket cannot be reached, the frame is dropped and counted instead.
"""

import collections
import contextlib
import itertools
import json
import logging
import queue
import random
import re
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Set, Tuple, Union

from poets.engine.data.images import SUFFIX_BY_FORMAT, open_image
from poets.engine.data.thumbnails import ThumbnailCache, make_thumbnail
from poets.engine.errors import InvalidImage, InvalidInput, NotFound, StoreUnavailable
from poets.engine.inbox_storage import InboxStorage, LocalInboxStorage

log = logging.getLogger(__name__)

_ID = re.compile(r"[0-9]{13}[0-9a-f]{8}")
# Ids sort by arrival: milliseconds, then the writer's node (4 hex, random per process: two
# API nodes, or two processes of one, write under different ones), then that node's count, so
# frames of one millisecond keep their order and "the oldest go first" holds across nodes as
# far as their clocks agree.
_ARRIVALS = itertools.count()
NODE = uuid.uuid4().hex[:4]
_Frame = Tuple[bytes, Dict[str, Any], List[Dict[str, Any]]]
# How many dropped ids are remembered, to tell a reviewer why an item is gone.
_REMEMBERED_DROPS = 10000


def _is_id(name: str) -> bool:
    return bool(_ID.fullmatch(name))


def _check_id(item: str) -> str:
    if not isinstance(item, str) or not _ID.fullmatch(item):
        raise InvalidInput(
            "{!r} is not an inbox item id: use an item's 'id' from the inbox's list.".format(str(item)[:80])
        )
    return item


class Inbox:
    """Frames waiting for review, kept in ``storage``.

    Args:
        storage: where items are kept: an :class:`InboxStorage`, or a folder (created on
            first use) for :class:`LocalInboxStorage`.
        max_items: most frames kept.
        max_bytes: most bytes of frames kept.
        thumbnails: cache for :meth:`thumbnail`.
        on_drop: called with how many frames were dropped to make room.
        node: this writer's part of the ids (default: one per process).

    With a shared storage every writer enforces the bounds after its own write: it lists
    the items and deletes the oldest beyond them. Deletes are idempotent and each writer
    deletes the oldest of what it saw, so two writers trimming at once never remove one of
    the ``max_items`` newest frames. The drop count (:attr:`dropped`, ``on_drop``) is this
    node's: a frame that two nodes trimmed at once is counted by both.
    """

    def __init__(
        self,
        storage: Union[Path, InboxStorage],
        max_items: int,
        max_bytes: int,
        thumbnails: Optional[ThumbnailCache] = None,
        on_drop: Optional[Callable[[int], None]] = None,
        node: Optional[str] = None,
    ) -> None:
        self.storage = storage if isinstance(storage, InboxStorage) else LocalInboxStorage(Path(storage))
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.thumbnails = thumbnails
        self.on_drop = on_drop
        self.node = node or NODE
        if not re.fullmatch("[0-9a-f]{4}", self.node):
            raise ValueError("an inbox node is 4 hex digits, not {!r}".format(self.node))
        self.dropped = 0
        self._dropped_ids: Deque[str] = collections.deque(maxlen=_REMEMBERED_DROPS)
        self._dropped_set: Set[str] = set()
        self._lock = threading.Lock()

    @property
    def root(self) -> Optional[Path]:
        """The folder of a local inbox (None when the items are in a bucket)."""
        return self.storage.root if isinstance(self.storage, LocalInboxStorage) else None

    # -- writing -------------------------------------------------------------------------------
    def _new_id(self) -> str:
        return "{:013d}{}{:04x}".format(int(time.time() * 1000), self.node, next(_ARRIVALS) % 0x10000)

    def add(self, data: bytes, model: Dict[str, Any], scores: Sequence[Dict[str, Any]]) -> str:
        """Keep one frame; returns its id. The oldest frames go if the inbox is over a bound.

        Raises:
            InvalidImage: ``data`` is not an image.
            StoreUnavailable: the bucket cannot be reached.
        """
        suffix = SUFFIX_BY_FORMAT[str(open_image(data).format)]
        pairs = sorted(((str(s["label"]), float(s["score"])) for s in scores), key=lambda p: -p[1])
        ranked = [{"label": label, "score": score} for label, score in pairs]
        record = {
            "id": "",
            "model": {"name": model.get("name"), "version": model.get("version")},
            "scores": ranked,
            "top_score": ranked[0]["score"] if ranked else 0.0,
            "created": datetime.now(timezone.utc).isoformat(),
            "bytes": len(data),
            "suffix": suffix,
        }
        while True:  # a taken id (two writers with one node id, in one millisecond): the next
            item = record["id"] = self._new_id()
            if self.storage.write(item, suffix, data, _encode(record), if_absent=True):
                break
        try:
            self._enforce()
        except StoreUnavailable as exc:  # the frame is kept: the next write trims
            log.debug("review inbox: kept %s, trimming left for later: %s", item, exc)
        return item

    def _enforce(self) -> None:
        with self._lock:
            listing = self.storage.entries(_is_id)
            count = len(listing)
            total = sum(entry.size for entry in listing)
            going = []
            for entry in listing:
                if count <= self.max_items and total <= self.max_bytes:
                    break
                going.append(entry)
                count -= 1
                total -= entry.size
            self.storage.delete(going)
            for entry in going:
                self._remember_drop(entry.item)
        if going:
            self.dropped += len(going)
            log.info("review inbox full: dropped the %d oldest frame(s)", len(going))
            if self.on_drop is not None:
                self.on_drop(len(going))

    def _remember_drop(self, item: str) -> None:
        if len(self._dropped_ids) == self._dropped_ids.maxlen:
            self._dropped_set.discard(self._dropped_ids[0])
        self._dropped_ids.append(item)
        self._dropped_set.add(item)

    # -- reading -------------------------------------------------------------------------------
    def _missing(self, item: str) -> NotFound:
        if item in self._dropped_set:
            return NotFound(
                "Inbox item {} was dropped to make room: the inbox was full "
                "(POETS_INBOX_MAX_ITEMS, POETS_INBOX_MAX_BYTES). Review sooner or "
                "raise the limits.".format(item)
            )
        if self.storage.shared:
            return NotFound(
                "No inbox item {}: it was filed or discarded already, or dropped to make room "
                "(POETS_INBOX_MAX_ITEMS, POETS_INBOX_MAX_BYTES) by the node that collected a "
                "newer frame (the inbox's list shows what is left).".format(item)
            )
        return NotFound(
            "No inbox item {}: it was filed or discarded already (the inbox's list shows what is "
            "left).".format(item)
        )

    def record(self, item: str) -> Dict[str, Any]:
        data = self.storage.record(_check_id(item))
        if data is None:
            raise self._missing(item)
        return json.loads(data.decode("utf-8"))  # type: ignore[no-any-return]

    def frame(self, item: str) -> Tuple[Dict[str, Any], bytes]:
        """The item's record and its frame's bytes."""
        record = self.record(item)
        data = self.storage.frame(item, _suffix(record))
        if data is None:
            raise self._missing(item)
        return record, data

    def items(self, offset: int = 0, limit: int = 50) -> Tuple[int, List[Dict[str, Any]]]:
        """(total, one page) of the records, least confident first (then oldest)."""
        listed = [entry.item for entry in self.storage.entries(_is_id) if entry.listed]
        found = self.storage.records(listed)
        records = []
        for item in listed:
            data = found.get(item)
            if data is None:
                continue  # taken meanwhile
            try:
                records.append(json.loads(data.decode("utf-8")))
            except ValueError:
                continue  # a record cut short by a crash
        records.sort(key=lambda r: (float(r.get("top_score", 0.0)), r["id"]))
        return len(records), records[max(0, offset) : max(0, offset) + max(0, limit)]

    def __len__(self) -> int:
        return sum(1 for entry in self.storage.entries(_is_id) if entry.listed)

    def take(self, item: str) -> Tuple[Dict[str, Any], bytes]:
        """Remove an item and return its record and bytes; only one caller gets it (on any node)."""
        record = self.record(item)
        suffix = _suffix(record)
        token = self.storage.claim(item)
        if token is None:
            raise self._missing(item)
        try:
            data = self.storage.frame(item, suffix)
        except BaseException:
            with contextlib.suppress(Exception):
                self.storage.release(item, token)
            raise
        self.storage.remove(item, suffix, token)
        if data is None:  # removed between the record's read and the claim
            raise self._missing(item)
        return record, data

    def put_back(self, record: Dict[str, Any], data: bytes) -> None:
        """Undo :meth:`take` (the filing failed): the item returns under its id."""
        item = _check_id(str(record["id"]))
        self.storage.write(item, _suffix(record), data, _encode(record))

    def discard(self, item: str) -> Dict[str, Any]:
        record, _ = self.take(item)
        return record

    def thumbnail(self, item: str) -> bytes:
        record = self.record(item)
        if self.thumbnails is None:
            return make_thumbnail(self._frame_bytes(item, record))
        return self.thumbnails.get_from("inbox|" + item, lambda: self._frame_bytes(item, record))

    def _frame_bytes(self, item: str, record: Dict[str, Any]) -> bytes:
        data = self.storage.frame(item, _suffix(record))
        if data is None:
            raise self._missing(item)
        return data


def _suffix(record: Dict[str, Any]) -> str:
    suffix = str(record.get("suffix", ".jpg"))
    return suffix if suffix in SUFFIX_BY_FORMAT.values() else ".jpg"


def _encode(record: Dict[str, Any]) -> bytes:
    return json.dumps(record).encode("utf-8")


class Collector:
    """Sends unsure frames to an :class:`Inbox` off the caller's thread.

    Args:
        inbox: where frames go.
        threshold: a frame is kept when its top score is below this.
        fraction: the share of those kept, sampled at random.
        queue_size: frames waiting to be written; more are dropped (``on_drop``).
        always: collect for every model without being asked.
        models: collect for these models without being asked.
        idle_exit_s: the writer thread stops after this long without work and starts
            again with the next frame, so an idle app holds no thread.
        on_unavailable: called for each frame dropped because the inbox's storage (the
            bucket) cannot be reached.
        retry_s: after a frame failed for that reason, the frames that come within this
            long are dropped without trying, so the queue does not fill with frames that
            each wait for the bucket's timeout.

    An outage is logged twice: when it starts and when frames are kept again (with how
    many were dropped meanwhile), not once per frame.
    """

    def __init__(
        self,
        inbox: Inbox,
        threshold: float,
        fraction: float,
        queue_size: int,
        always: bool = False,
        models: Sequence[str] = (),
        on_drop: Optional[Callable[[], None]] = None,
        on_saved: Optional[Callable[[], None]] = None,
        rng: Optional[random.Random] = None,
        idle_exit_s: float = 30.0,
        on_unavailable: Optional[Callable[[], None]] = None,
        retry_s: float = 5.0,
    ) -> None:
        self.inbox = inbox
        self.threshold = float(threshold)
        self.fraction = float(fraction)
        self.always = bool(always)
        self.models = frozenset(models)
        self.on_drop = on_drop
        self.on_saved = on_saved
        self.idle_exit_s = idle_exit_s
        self.on_unavailable = on_unavailable
        self.retry_s = retry_s
        self.queued = 0
        self.dropped = 0
        self.unavailable = 0
        self.saved = 0
        # The outage in progress: frames dropped in it; when the next try may be made.
        self._outage: Optional[int] = None
        self._retry_at = 0.0
        self._rng = rng or random.Random()
        self._queue = queue.Queue(queue_size)  # type: queue.Queue[_Frame]
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    def wants(self, model: str, requested: bool = False) -> bool:
        """Whether frames labelled by ``model`` are candidates at all."""
        return requested or self.always or model in self.models

    def offer(
        self, data: bytes, model: Dict[str, Any], scores: Sequence[Dict[str, Any]], requested: bool = False
    ) -> bool:
        """Queue a labelled frame if it qualifies; never blocks. True when queued."""
        if not self.wants(str(model.get("name")), requested):
            return False
        top = max((float(s["score"]) for s in scores), default=0.0)
        if top >= self.threshold:
            return False
        if self.fraction < 1.0 and self._rng.random() >= self.fraction:
            return False
        try:
            self._queue.put_nowait((data, dict(model), [dict(s) for s in scores]))
        except queue.Full:
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop()
            return False
        self.queued += 1
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="poets-collector", daemon=True)
                self._thread.start()
        return True

    def _run(self) -> None:
        while True:
            try:
                data, model, scores = self._queue.get(timeout=self.idle_exit_s)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            try:
                self._write(data, model, scores)
            except InvalidImage:
                log.warning("collector: a frame was not an image; not kept")
            except Exception:  # the writer must outlive a full disk or a bad frame
                log.exception("collector: could not keep a frame")
            finally:
                self._queue.task_done()

    def _write(self, data: bytes, model: Dict[str, Any], scores: List[Dict[str, Any]]) -> None:
        if self._outage is not None and time.monotonic() < self._retry_at:
            self._unreachable(None)  # not tried: the store failed a moment ago
            return
        try:
            self.inbox.add(data, model, scores)
        except StoreUnavailable as exc:
            self._retry_at = time.monotonic() + self.retry_s
            self._unreachable(exc)
            return
        self.saved += 1
        if self._outage is not None:
            log.warning(
                "collector: the review inbox's store %s answers again; %d frame(s) were dropped "
                "while it did not",
                self.inbox.storage.where,
                self._outage,
            )
            self._outage = None
        if self.on_saved is not None:
            self.on_saved()

    def _unreachable(self, exc: Optional[StoreUnavailable]) -> None:
        """A frame dropped: the inbox's store cannot be reached. Logged once per outage."""
        self.unavailable += 1
        if self._outage is None:
            log.warning("collector: frames are dropped until the review inbox's store answers: %s", exc)
            self._outage = 0
        self._outage += 1
        if self.on_unavailable is not None:
            self.on_unavailable()

    def pending(self) -> int:
        """Frames queued or being written."""
        return self._queue.unfinished_tasks

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued frame is written; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.pending()
