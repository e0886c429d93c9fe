"""The review inbox: frames a model was unsure of, kept for a person to label.

:class:`Inbox` keeps each frame as its encoded bytes plus a small JSON record (model
version, labels and scores), bounded in items and bytes: the oldest frames are
dropped, and counted, to make room. :class:`Collector` decides which labelled frames
go there and writes them from a background thread through a bounded queue, so the
request that labelled a frame never waits for the disk; when the queue is full the
frame is dropped and counted instead.
"""

import collections
import contextlib
import itertools
import json
import logging
import os
import queue
import random
import re
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Set, Tuple

from poets.engine.data.images import SUFFIX_BY_FORMAT, open_image
from poets.engine.data.thumbnails import ThumbnailCache
from poets.engine.errors import InvalidImage, InvalidInput, NotFound

log = logging.getLogger(__name__)

_ID = re.compile(r"[0-9]{13}[0-9a-f]{8}")
# Ids sort by arrival: milliseconds, then this process's count (frames of one millisecond keep
# their order, so "the oldest go first" holds), then random hex (other processes' frames).
_ARRIVALS = itertools.count()
_Frame = Tuple[bytes, Dict[str, Any], List[Dict[str, Any]]]
# How many dropped ids are remembered, to tell a reviewer why an item is gone.
_REMEMBERED_DROPS = 10000


def _check_id(item: str) -> str:
    if not isinstance(item, str) or not _ID.fullmatch(item):
        raise InvalidInput(
            "{!r} is not an inbox item id: use an item's 'id' from the inbox's list.".format(str(item)[:80])
        )
    return item


class Inbox:
    """Frames waiting for review under ``root``.

    Args:
        root: the inbox folder (created on first use).
        max_items: most frames kept.
        max_bytes: most bytes of frames kept.
        thumbnails: cache for :meth:`thumbnail`.
        on_drop: called with how many frames were dropped to make room.
    """

    def __init__(
        self,
        root: Path,
        max_items: int,
        max_bytes: int,
        thumbnails: Optional[ThumbnailCache] = None,
        on_drop: Optional[Callable[[int], None]] = None,
    ) -> None:
        self.root = Path(root)
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.thumbnails = thumbnails
        self.on_drop = on_drop
        self.dropped = 0
        self._dropped_ids: Deque[str] = collections.deque(maxlen=_REMEMBERED_DROPS)
        self._dropped_set: Set[str] = set()
        self._lock = threading.Lock()

    # -- writing -------------------------------------------------------------------------------
    def add(self, data: bytes, model: Dict[str, Any], scores: Sequence[Dict[str, Any]]) -> str:
        """Keep one frame; returns its id. The oldest frames go if the inbox is over a bound.

        Raises:
            InvalidImage: ``data`` is not an image.
        """
        suffix = SUFFIX_BY_FORMAT[str(open_image(data).format)]
        pairs = sorted(((str(s["label"]), float(s["score"])) for s in scores), key=lambda p: -p[1])
        ranked = [{"label": label, "score": score} for label, score in pairs]
        item = "{:013d}{:04x}{}".format(
            int(time.time() * 1000), next(_ARRIVALS) % 0x10000, uuid.uuid4().hex[:4]
        )
        record = {
            "id": item,
            "model": {"name": model.get("name"), "version": model.get("version")},
            "scores": ranked,
            "top_score": ranked[0]["score"] if ranked else 0.0,
            "created": datetime.now(timezone.utc).isoformat(),
            "bytes": len(data),
            "suffix": suffix,
        }
        self.root.mkdir(parents=True, exist_ok=True)
        self._write(self.root / (item + suffix), data)
        # The record last: an item exists once its record does.
        self._write(self.root / (item + ".json"), json.dumps(record).encode("utf-8"))
        self._enforce()
        return item

    def _write(self, path: Path, data: bytes) -> None:
        partial = self.root / ".{}.tmp".format(uuid.uuid4().hex)
        partial.write_bytes(data)
        os.replace(str(partial), str(path))

    def _listing(self) -> List[Tuple[str, int, List[Path]]]:
        """(id, bytes, files) of every item, oldest first."""
        by_id: Dict[str, List[Path]] = {}
        sizes: Dict[str, int] = {}
        if not self.root.is_dir():
            return []
        for entry in os.scandir(str(self.root)):
            stem = entry.name.split(".", 1)[0]
            if entry.name.startswith(".") or not _ID.fullmatch(stem):
                continue
            by_id.setdefault(stem, []).append(Path(entry.path))
            if not entry.name.endswith(".json"):
                try:
                    sizes[stem] = sizes.get(stem, 0) + entry.stat().st_size
                except OSError:
                    continue
        return [(item, sizes.get(item, 0), by_id[item]) for item in sorted(by_id)]

    def _enforce(self) -> None:
        with self._lock:
            listing = self._listing()
            count = len(listing)
            total = sum(size for _, size, _ in listing)
            dropped = 0
            for item, size, files in listing:
                if count <= self.max_items and total <= self.max_bytes:
                    break
                self._remove(files)
                self._remember_drop(item)
                count -= 1
                total -= size
                dropped += 1
        if dropped:
            self.dropped += dropped
            log.info("review inbox full: dropped the %d oldest frame(s)", dropped)
            if self.on_drop is not None:
                self.on_drop(dropped)

    def _remember_drop(self, item: str) -> None:
        if len(self._dropped_ids) == self._dropped_ids.maxlen:
            self._dropped_set.discard(self._dropped_ids[0])
        self._dropped_ids.append(item)
        self._dropped_set.add(item)

    @staticmethod
    def _remove(files: Sequence[Path]) -> None:
        # The record first, so a half-removed item is never listed.
        for path in sorted(files, key=lambda p: p.suffix != ".json"):
            with contextlib.suppress(OSError):
                path.unlink()

    # -- reading -------------------------------------------------------------------------------
    def _missing(self, item: str) -> NotFound:
        if item in self._dropped_set:
            return NotFound(
                "Inbox item {} was dropped to make room: the inbox was full "
                "(POETS_INBOX_MAX_ITEMS, POETS_INBOX_MAX_BYTES). Review sooner or "
                "raise the limits.".format(item)
            )
        return NotFound(
            "No inbox item {}: it was filed or discarded already (the inbox's list shows what is "
            "left).".format(item)
        )

    def record(self, item: str) -> Dict[str, Any]:
        path = self.root / (_check_id(item) + ".json")
        try:
            return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]
        except FileNotFoundError:
            raise self._missing(item) from None

    def image(self, item: str) -> Tuple[Dict[str, Any], Path]:
        record = self.record(item)
        path = self.root / (item + str(record.get("suffix", ".jpg")))
        if not path.is_file():
            raise self._missing(item)
        return record, path

    def items(self, offset: int = 0, limit: int = 50) -> Tuple[int, List[Dict[str, Any]]]:
        """(total, one page) of the records, least confident first (then oldest)."""
        records = []
        for item, _, files in self._listing():
            if not any(p.suffix == ".json" for p in files):
                continue
            try:
                records.append(self.record(item))
            except (NotFound, ValueError):
                continue  # taken meanwhile, or a record cut short by a crash
        records.sort(key=lambda r: (float(r.get("top_score", 0.0)), r["id"]))
        return len(records), records[max(0, offset) : max(0, offset) + max(0, limit)]

    def __len__(self) -> int:
        return sum(1 for _, _, files in self._listing() if any(p.suffix == ".json" for p in files))

    def take(self, item: str) -> Tuple[Dict[str, Any], bytes]:
        """Remove an item and return its record and bytes; only one caller gets it."""
        record, path = self.image(item)
        claimed = self.root / ".taken-{}-{}.json".format(item, uuid.uuid4().hex[:8])
        try:
            os.rename(str(self.root / (item + ".json")), str(claimed))
        except FileNotFoundError:
            raise self._missing(item) from None
        try:
            data = path.read_bytes()
        finally:
            self._remove([claimed, path])
        return record, data

    def put_back(self, record: Dict[str, Any], data: bytes) -> None:
        """Undo :meth:`take` (the filing failed): the item returns under its id."""
        item = _check_id(str(record["id"]))
        self.root.mkdir(parents=True, exist_ok=True)
        self._write(self.root / (item + str(record.get("suffix", ".jpg"))), data)
        self._write(self.root / (item + ".json"), json.dumps(record).encode("utf-8"))

    def discard(self, item: str) -> Dict[str, Any]:
        record, _ = self.take(item)
        return record

    def thumbnail(self, item: str) -> bytes:
        _, path = self.image(item)
        if self.thumbnails is None:
            from poets.engine.data.thumbnails import make_thumbnail

            return make_thumbnail(path.read_bytes())
        return self.thumbnails.get("inbox|" + item, path)


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
    ) -> None:
        self.inbox = inbox
        self.threshold = float(threshold)
        self.fraction = float(fraction)
        self.always = bool(always)
        self.models = frozenset(models)
        self.on_drop = on_drop
        self.on_saved = on_saved
        self.idle_exit_s = idle_exit_s
        self.queued = 0
        self.dropped = 0
        self.saved = 0
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
                self.inbox.add(data, model, scores)
                self.saved += 1
                if self.on_saved is not None:
                    self.on_saved()
            except InvalidImage:
                log.warning("collector: a frame was not an image; not kept")
            except Exception:  # the writer must outlive a full disk or a bad frame
                log.exception("collector: could not keep a frame")
            finally:
                self._queue.task_done()

    def pending(self) -> int:
        """Frames queued or being written."""
        return self._queue.unfinished_tasks

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued frame is written; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.pending()
