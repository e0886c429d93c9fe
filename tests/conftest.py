"""Session-wide fixtures: real weights, real photos, and one trained model to share.

Bottlenecks are computed and a head is trained once per test session; tests that
need a model use ``trained`` instead of training their own.
"""

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, List, Tuple

import pytest

from tests import assets

if TYPE_CHECKING:
    from tests.s3 import MotoServer

# Quieter TensorFlow in test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Servers, workers and commands the tests start make every retrain current, as before the
# promotion gate: most tests follow a published version. The gate's tests set if_better.
os.environ.setdefault("POETS_PROMOTE", "always")

# The tests never touch the real home folder: everything that defaults to ~ (POETS_HOME's
# ~/.poets, the backbone cache in ~/.cache) lands in a sandbox, in this process and in every
# server, worker and command the tests start. pyenv (the Python 3.6 of the oldest-stack
# tests) keeps its real root.
REAL_HOME = Path.home()
os.environ.setdefault("PYENV_ROOT", str(REAL_HOME / ".pyenv"))
os.environ["HOME"] = tempfile.mkdtemp(prefix="poets-test-home-")


def _snapshot(folder: Path) -> List[Tuple[str, int]]:
    if not folder.exists():
        return []
    return sorted((str(p), p.stat().st_mtime_ns) for p in [folder, *folder.rglob("*")])


_REAL_POETS_HOME = REAL_HOME / ".poets"
_BEFORE = _snapshot(_REAL_POETS_HOME)


# Test kinds, so that a part can run alone: ``pytest -m unit`` (seconds), ``-m integration``,
# ``-m browser`` (its own run: see .ci/run). A test module may mark itself; an unmarked test
# is integration when it lives in tests/integration or uses one of these fixtures (a real
# model, servers, trained heads), and unit otherwise.
KINDS = ("unit", "integration", "browser")
HEAVY_FIXTURES = {"trained", "mobilenet", "backbone_dir", "session_home", "serve", "browser"}


# Test modules that run real worker processes take the longest: they go first, so that with
# pytest-xdist (scripts/test) the other process is not left finishing one of them alone.
FIRST = ("tests/worker/", "tests/integration/", "tests/engine/export/test_oldest_runtime.py")


def _rank(item: pytest.Item) -> int:
    path = item.nodeid.split("::", 1)[0]
    return 0 if path.startswith(FIRST) else 1


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: modules stay whole, in their order
    for item in items:
        if any(item.get_closest_marker(kind) for kind in KINDS):
            continue
        fixtures = set(getattr(item, "fixturenames", ()))
        heavy = "integration" in item.nodeid.split("/") or bool(fixtures & HEAVY_FIXTURES)
        item.add_marker(pytest.mark.integration if heavy else pytest.mark.unit)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if anything wrote into the real ~/.poets after all."""
    if _snapshot(_REAL_POETS_HOME) != _BEFORE:
        print("\nERROR: the tests wrote into {}".format(_REAL_POETS_HOME))
        session.exitstatus = 1


@pytest.fixture(scope="session")
def backbone_dir() -> Path:
    """POETS_BACKBONE_DIR with the real MobileNet v1 1.0 224 frozen graph."""
    return assets.backbone_dir()


@pytest.fixture(scope="session")
def flowers_dir() -> Path:
    """400 real flower photos, 5 labels, in the poets layout."""
    path = assets.datasets_dir() / "flowers_small"
    if not path.is_dir():
        pytest.fail("flowers_small not found at {}: set POETS_TEST_DATASETS".format(path))
    return path


@pytest.fixture(scope="session")
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A POETS_HOME shared by the session (model store and bottleneck cache)."""
    return tmp_path_factory.mktemp("poets-home")


@pytest.fixture(scope="session")
def trained(session_home: Path, backbone_dir: Path, flowers_dir: Path):  # type: ignore[no-untyped-def]
    """flowers_small retrained once with the default settings, published as 'flowers' v1."""
    from poets.engine.model.bottlenecks import BottleneckCache
    from poets.engine.model.training import TrainConfig
    from poets.engine.retrain import retrain
    from poets.engine.store.models import ModelStore

    return retrain(
        flowers_dir,
        TrainConfig(),
        ModelStore(session_home / "models"),
        BottleneckCache(session_home / "bottlenecks"),
        backbone_dir,
        name="flowers",
    )


@pytest.fixture
def small_dataset(tmp_path: Path, flowers_dir: Path) -> Iterator[Path]:
    """A copy of 12 photos per label of 3 labels, for tests that change files."""
    root = tmp_path / "small"
    for label in ("daisy", "roses", "tulips"):
        (root / label).mkdir(parents=True)
        for photo in sorted((flowers_dir / label).glob("*.jpg"))[:12]:
            shutil.copy(str(photo), str(root / label / photo.name))
    yield root


@pytest.fixture(scope="session")
def mobilenet(backbone_dir: Path):  # type: ignore[no-untyped-def]
    """The real MobileNet v1 1.0 224 frozen graph as a prelogits Backbone (what ``trained`` used)."""
    from poets.engine.model import backbones

    return backbones.load("mobilenet_1.0_224", backbone_dir, "prelogits", allow_download=False)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator["MotoServer"]:
    """An S3 endpoint (moto in server mode) shared by the session; each test makes its own
    bucket with ``s3_server.bucket()``. This process gets the test credentials."""
    from tests.s3 import MotoServer, use_credentials

    use_credentials()
    server = MotoServer(tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()
