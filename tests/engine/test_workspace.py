"""The workspace builds each part from the settings once, and only when asked."""

import subprocess
import sys
from pathlib import Path

import pytest

from poets.engine.inbox_storage import BucketInboxStorage, LocalInboxStorage
from poets.engine.settings import Settings
from poets.engine.workspace import Workspace
from tests.assets import REPO

pytestmark = pytest.mark.unit


def test_parts_follow_the_settings_and_are_built_once(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", model_dir=tmp_path / "models", datasets_dir=tmp_path / "ds")
    workspace = Workspace(settings)
    assert workspace.store.root == tmp_path / "models"
    assert workspace.store is workspace.store
    assert workspace.jobs is workspace.jobs
    assert workspace.datasets.root == tmp_path / "ds"
    assert workspace.datasets.thumbnails is workspace.thumbnails is workspace.inbox.thumbnails
    assert workspace.inbox.root == settings.inbox_dir
    assert isinstance(workspace.inbox.storage, LocalInboxStorage)


def test_the_inbox_is_in_the_bucket_when_the_store_is(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home", store_url="s3://shared/site", s3_endpoint_url="http://127.0.0.1:9"
    )
    inbox = Workspace(settings).inbox  # built without a request to the bucket
    assert isinstance(inbox.storage, BucketInboxStorage) and inbox.root is None
    assert inbox.storage.where == "s3://shared/site/inbox/"
    assert (inbox.max_items, inbox.max_bytes) == (settings.inbox_max_items, settings.inbox_max_bytes)


def test_store_and_jobs_need_no_tensorflow(tmp_path: Path) -> None:
    probe = (
        "import sys; from poets.engine.settings import Settings; "
        "from poets.engine.workspace import Workspace; "
        "w = Workspace(Settings(home=__import__('pathlib').Path(sys.argv[1]))); w.store.names(); "
        "w.jobs.stats(); print('tensorflow' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)],
        cwd=str(REPO),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "False"
