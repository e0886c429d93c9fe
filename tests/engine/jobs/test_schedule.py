"""The scheduler's reading of a version's creation time (the every_hours clock), on Python 3.6 too."""

from datetime import datetime, timezone

import pytest

from poets.engine.jobs.schedule import _created

pytestmark = pytest.mark.unit


def test_created_times_parse_with_and_without_microseconds() -> None:
    now = datetime.now(timezone.utc)
    assert _created({"created": now.isoformat()}) == pytest.approx(now.timestamp())
    whole = now.replace(microsecond=0)
    assert _created({"created": whole.isoformat()}) == whole.timestamp()
    assert (
        _created({"created": "2026-12-03T16:00:00+02:00"})
        == datetime(2026, 12, 3, 14, tzinfo=timezone.utc).timestamp()
    )
    assert _created({}) is None and _created({"created": "yesterday"}) is None
