"""Pins (TF Serving's version labels), the store's file modes, staging clean-up, and clear
errors on a read-only or full store (real mounts and attributes: the tests run as root,
which plain chmod does not stop)."""

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from poets.engine.errors import InsufficientStorage, NotFound, StoreUnavailable
from poets.engine.store.health import StorageCheck, probe, storage_error
from poets.engine.store.models import ModelStore

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]


def writer(size: int = 16) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        (folder / "saved_model.pb").write_bytes(b"m" * size)
        (folder / "poets.json").write_text(json.dumps({"job_id": None}))

    return write


def test_a_pin_holds_through_retrains_until_unpinned(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.publish("m", writer())
    store.publish("m", writer())
    assert store.pinned("m") is None
    store.pin("m", 1)
    assert (store.current("m"), store.pinned("m")) == (1, 1)
    # A retrain publishes but does not become current while the pin holds.
    assert store.publish("m", writer()) == 3
    assert store.versions("m") == [1, 2, 3] and store.current("m") == 1
    # activate while pinned moves the pin.
    store.activate("m", 2)
    assert (store.current("m"), store.pinned("m")) == (2, 2)
    assert store.publish("m", writer()) == 4 and store.current("m") == 2
    # Unpinned: the pinned version stays current until the next version comes.
    assert store.unpin("m") == 2
    assert (store.current("m"), store.pinned("m")) == (2, None)
    assert store.publish("m", writer()) == 5 and store.current("m") == 5
    assert store.unpin("m") is None  # nothing pinned: a no-op
    with pytest.raises(NotFound):
        store.pin("m", 9)


def test_current_and_pinned_files_are_readable_by_others(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        store = ModelStore(tmp_path / "models")
        store.publish("m", writer())
        store.pin("m", 1)
    finally:
        os.umask(previous)
    for name in ("CURRENT", "PINNED"):
        mode = stat.S_IMODE((store.root / "m" / name).stat().st_mode)
        assert mode == 0o644, (name, oct(mode))


def test_a_failed_publish_cleans_stale_staging_folders(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.publish("m", writer())
    stale = tmp_path / ".staging" / "left-by-a-killed-job"
    fresh = tmp_path / ".staging" / "being-written-by-another-job"
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
        (folder / "saved_model.pb").write_bytes(b"half")
    old = time.time() - 2 * 3600
    os.utime(str(stale), (old, old))

    def broken(folder: Path) -> None:
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError, match="export failed"):
        store.publish("m", broken)
    assert sorted(p.name for p in (tmp_path / ".staging").iterdir()) == [fresh.name]


def test_storage_error_reads_os_and_tensorflow_errors() -> None:
    import errno

    full = storage_error(OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(full, InsufficientStorage) and "No space left" in full.detail
    ro = storage_error(OSError(errno.EROFS, "Read-only file system"), "the model store (POETS_MODEL_DIR)")
    assert isinstance(ro, StoreUnavailable) and "POETS_MODEL_DIR" in ro.detail
    # TensorFlow's file errors are not OSErrors; their message says what happened.
    tf_like = RuntimeError("saved_model.pb; No space left on device")
    assert isinstance(storage_error(tf_like), InsufficientStorage)
    assert storage_error(ValueError("something else")) is None


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[Path]:
    """A folder even root cannot write into (``chattr +i``)."""
    if shutil.which("chattr") is None:
        pytest.fail("chattr is needed (e2fsprogs)")
    folder = tmp_path / "models"
    folder.mkdir()
    subprocess.run(["chattr", "+i", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_an_unwritable_store_says_so_and_readiness_recovers(immutable: Path) -> None:
    store = ModelStore(immutable)
    with pytest.raises(StoreUnavailable, match="cannot be written"):
        store.publish("m", writer())
    check = StorageCheck([("model store", immutable)], max_age_s=0)
    problems = check.problems()
    assert len(problems) == 1 and "model store: not writable" in problems[0], problems
    subprocess.run(["chattr", "-i", str(immutable)], check=True)
    assert check.problems() == []
    assert store.publish("m", writer()) == 1
    subprocess.run(["chattr", "+i", str(immutable / "m")], check=True)
    try:
        with pytest.raises(StoreUnavailable):
            store.pin("m", 1)  # the API answers 503 with this detail
    finally:
        subprocess.run(["chattr", "-i", str(immutable / "m")], check=True)
    subprocess.run(["chattr", "+i", str(immutable)], check=True)  # as the fixture left it


def _in_tiny_tmpfs(tmp_path: Path, script: str, size: str = "256k", options: str = "") -> str:
    """Run ``script`` (``sys.argv[1]`` is the mount point) with a tmpfs of ``size`` mounted in
    a private mount namespace: a real full (or read-only) filesystem, invisible to others."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    command = ('mount -t tmpfs -o size={size}{options} tmpfs "$1" && shift && exec "$@"').format(
        size=size, options=options
    )
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            command,
            "sh",
            str(mount_point),
            sys.executable,
            "-c",
            script,
            str(mount_point),
        ],
        check=False,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_full_store_says_so(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from poets.engine.errors import PoetsError\n"
        "from poets.engine.store.health import probe\n"
        "from poets.engine.store.models import ModelStore\n"
        "root = Path(sys.argv[1])\n"
        "store = ModelStore(root)\n"
        "def big(folder):\n"
        "    (folder / 'saved_model.pb').write_bytes(b'x' * (1024 * 1024))\n"
        "try:\n"
        "    store.publish('m', big)\n"
        "except PoetsError as exc:\n"
        "    print(exc.code, '|', exc.detail)\n"
        "print('staging:', sorted(p.name for p in (root / '.staging').iterdir()))\n"
        "print('probe:', probe(root, 1024 * 1024))\n"
    )
    out = _in_tiny_tmpfs(tmp_path, script).splitlines()
    assert out[0].startswith("insufficient_storage | No space left"), out
    assert out[1] == "staging: []", out  # the half-written version is gone
    assert "under the 1 MiB needed" in out[2], out


def test_a_read_only_mount_says_so(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from poets.engine.errors import PoetsError\n"
        "from poets.engine.store.health import probe\n"
        "from poets.engine.store.models import ModelStore\n"
        "try:\n"
        "    ModelStore(Path(sys.argv[1])).publish('m', lambda folder: None)\n"
        "except PoetsError as exc:\n"
        "    print(exc.code, '|', exc.detail)\n"
        "print('probe:', probe(Path(sys.argv[1])))\n"
    )
    out = _in_tiny_tmpfs(tmp_path, script, options=",ro").splitlines()
    assert out[0].startswith(
        "store_unavailable | the model store (POETS_MODEL_DIR) cannot be written (Read-only file system)"
    ), out
    assert out[1] == "probe: not writable (Read-only file system)", out


def test_probe_of_a_usable_folder(tmp_path: Path) -> None:
    assert probe(tmp_path / "new") is None
    assert list((tmp_path / "new").iterdir()) == []
