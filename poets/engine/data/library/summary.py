"""A dataset's summary (classes, counts, bytes, fingerprint), cached while the dataset is unchanged.

Listing then costs the same whatever a dataset holds: an entry is used while the
dataset's stamp (:meth:`Summaries.stamp`) is unchanged, and every change the library
makes moves the stamp when it releases the dataset's lock (:meth:`Summaries.changed`).
"""

import contextlib
import os
import threading
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from poets.engine.data import datasets
from poets.engine.data.library.layout import Layout
from poets.engine.data.library.locking import DatasetLocks
from poets.engine.data.library.names import shown
from poets.engine.errors import Conflict, InvalidInput, NotFound

# The split a dataset's fingerprint is computed with: /retrain's defaults.
FINGERPRINT_TESTING_PERCENTAGE = 10
FINGERPRINT_VALIDATION_PERCENTAGE = 10


def content_fingerprint(root: Path, images: Iterable[Tuple[str, Path]]) -> str:
    """A dataset's fingerprint: labels, file names and sizes, with /retrain's default split.

    It is :meth:`poets.engine.data.datasets.Dataset.fingerprint` of the dataset as
    ``/retrain`` would split it with the default percentages, so a version trained with
    those on an unchanged dataset records the same value.
    """
    by_label: Dict[str, List[Path]] = {}
    for label, path in images:
        by_label.setdefault(label, []).append(Path(path))
    records: List[datasets.ImageRecord] = []
    for label, paths in by_label.items():
        paths.sort(key=lambda p: p.name)
        splits = datasets.assign_splits(
            [p.name for p in paths], FINGERPRINT_TESTING_PERCENTAGE, FINGERPRINT_VALIDATION_PERCENTAGE
        )
        records.extend(datasets.ImageRecord(p, label, s) for p, s in zip(paths, splits))
    return datasets.Dataset(Path(root), sorted(by_label), records).fingerprint()


class Summaries:
    """The summaries of the datasets in ``layout``, cached per dataset."""

    def __init__(self, layout: Layout, locks: DatasetLocks) -> None:
        self.layout = layout
        self.locks = locks
        # name -> (stamp, summary); the generation of each dataset moves on every change
        # this library makes; one computation per dataset at a time.
        self._summaries: Dict[str, Tuple[Any, Dict[str, Any]]] = {}
        self._generations: Dict[str, int] = {}
        self._computing: Dict[str, threading.Lock] = {}
        self._cache_lock = threading.Lock()

    def changed(self, name: str) -> None:
        """Move the dataset's stamp: its cached summary is stale (see :meth:`stamp`)."""
        with self._cache_lock:
            self._generations[name] = self._generations.get(name, 0) + 1
            self._summaries.pop(name, None)
        self.locks.count_change(name)

    def forget(self, name: str) -> None:
        """Drop the dataset's cached summary (it was deleted)."""
        with self._cache_lock:
            self._summaries.pop(name, None)

    def stamp(self, name: str, folder: Path) -> Any:
        """What must stay the same for a cached summary to hold; costs one stat per class.

        This library's own changes (the generation), another process's library (the lock
        file) and files put in by hand (the class folders' mtimes).
        """
        with self._cache_lock:
            generation = self._generations.get(name, 0)
        lock_file = self.locks.stamp(name)
        classes = []
        for entry in os.scandir(str(folder)):
            with contextlib.suppress(OSError):
                if entry.is_dir() and not entry.name.startswith("."):  # not .incoming's traffic
                    classes.append((entry.name, entry.stat().st_mtime_ns))
        return (generation, lock_file, tuple(sorted(classes)))

    def cached(self, name: str) -> Optional[Dict[str, Any]]:
        """The summary if its cached entry still holds, else None; a few stats, never a scan."""
        try:
            folder = self.layout.dataset_dir(name)
            stamp = self.stamp(name, folder)
        except (NotFound, InvalidInput, OSError):
            return None
        with self._cache_lock:
            cached = self._summaries.get(name)
        if cached is None or cached[0] != stamp:
            return None
        return dict(cached[1], classes=dict(cached[1]["classes"]))

    def get(self, name: str, folder: Path) -> Dict[str, Any]:
        """The summary of dataset ``name`` at ``folder``: cached, else computed (and cached)."""
        stamp = self.stamp(name, folder)
        with self._cache_lock:
            cached = self._summaries.get(name)
            computing = self._computing.setdefault(name, threading.Lock())
        if cached is not None and cached[0] == stamp:
            return cached[1]
        with computing:  # many callers of a stale dataset: one computes, the others wait
            stamp = self.stamp(name, folder)
            with self._cache_lock:
                cached = self._summaries.get(name)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            summary = self._settled(name, folder)
            with self._cache_lock:
                self._summaries[name] = (stamp, summary)
        return summary

    def _settled(self, name: str, folder: Path, attempts: int = 5) -> Dict[str, Any]:
        """:meth:`_compute`, again when a file it listed was moved or deleted meanwhile
        (it reads without the lock, so that listings never wait for a long import)."""
        for _ in range(attempts - 1):
            try:
                return self._compute(name, folder)
            except FileNotFoundError:
                self.layout.dataset_dir(name)  # the dataset itself gone: 404
        try:
            return self._compute(name, folder)
        except FileNotFoundError:
            raise Conflict("Dataset {} is being changed right now: retry.".format(shown(name))) from None

    def _compute(self, name: str, folder: Path) -> Dict[str, Any]:
        files = {label: self.layout.files(folder, label) for label in self.layout.classes(folder)}
        fingerprint = content_fingerprint(
            folder,
            ((label, folder / label / filename) for label, names in files.items() for filename in names),
        )
        size = 0
        for label, names in files.items():
            for filename in names:
                with contextlib.suppress(OSError):
                    size += os.stat(str(folder / label / filename)).st_size
        return {
            "name": name,
            "classes": {label: len(names) for label, names in files.items()},
            "images": sum(len(names) for names in files.values()),
            "bytes": size,
            "fingerprint": fingerprint,
        }
