"""Both job-record stores behind one fixture: the same behaviour tests run on SQLite and Redis."""

import uuid
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest

from poets.engine.store.jobs import JobRecords, JobStore
from tests.worker import helpers

MakeRecords = Callable[..., JobRecords]


@pytest.fixture(scope="session")
def records_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of this session's own (each test uses its own key prefix)."""
    yield from helpers.redis_server(tmp_path_factory.mktemp("records-redis"))


@pytest.fixture(params=["sqlite", "redis"])
def make_records(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeRecords]:
    """``make_records(history=None)``: a store on this test's records; every call opens the
    same records again (as another process would)."""
    made: List[JobRecords] = []
    prefix = "poets-test-{}:".format(uuid.uuid4().hex[:12])
    url = request.getfixturevalue("records_redis") if request.param == "redis" else ""

    def make(history: Optional[int] = None) -> JobRecords:
        if request.param == "redis":
            from poets.engine.store.redis_jobs import RedisJobStore

            records: JobRecords = RedisJobStore(url, history=history, prefix=prefix)
        else:
            records = JobStore(tmp_path / "jobs.sqlite3", history=history)
        made.append(records)
        return records

    yield make
    for records in made:
        records.close()
    if request.param == "redis":
        import redis

        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()
