"""SQLite as the job store and the webhook outbox use it: one connection per thread, autocommit,
and short write transactions that take the lock at once (several processes share the file)."""

import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Iterator


class Connections:
    """One connection to ``path`` per thread (sqlite3 connections must not cross threads)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()

    def get(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
            db.row_factory = sqlite3.Row
            self._local.db = db
        return db


@contextlib.contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A transaction holding the write lock from its start: a read, then a write that depends on
    it, with no other writer in between (the TX2's SQLite 3.22 has no UPSERT to do it in one)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
