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


def _workspace(home, flowers_dir):  # type: ignore[no-untyped-def]
    from poets.engine.settings import Settings
    from poets.engine.workspace import Workspace

    workspace = Workspace(Settings(home=home))
    workspace.datasets.create("yard")
    for label in ("daisy", "roses"):
        photos = sorted((flowers_dir / label).glob("*.jpg"))[:6]
        workspace.datasets.add("yard", label, [(p.name, p.read_bytes()) for p in photos])
    return workspace


def test_two_schedulers_at_once_start_one_job(tmp_path, flowers_dir) -> None:  # type: ignore[no-untyped-def]
    """Two ticks at the same moment (a second beat by mistake, or overlapping ticks): one job."""
    import threading

    from poets.engine.jobs.schedule import run_due
    from poets.engine.policies import Policy
    from poets.engine.workspace import Workspace

    home = tmp_path / "home"
    first = _workspace(home, flowers_dir)
    first.policies.put(
        "cams", Policy.from_dict({"dataset": "yard", "after_new_images": 1, "min_interval_minutes": 0})
    )
    sent, started = [], []
    barrier = threading.Barrier(2)

    def tick(workspace: Workspace, holder: str) -> None:
        barrier.wait()
        started.extend(run_due(workspace, lambda *job: sent.append(job), holder=holder))

    threads = [threading.Thread(target=tick, args=(Workspace(first.settings), name)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(started) == len(sent) == 1
    job = first.jobs.get(started[0][1])
    assert (job.name, job.trigger, job.params["dataset_name"]) == ("cams", "policy", "yard")
    # The next tick: the job is queued, so the policy waits for it.
    assert run_due(first, lambda *job: sent.append(job), holder="a") == []
    assert len(sent) == 1
