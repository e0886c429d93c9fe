"""Archive members that cannot be written are named as the archive names them, never by the
server's path (issue 23.5): duplicates, a file and a folder of one name, names too long."""

import io
import tarfile
import zipfile
from pathlib import Path
from typing import List, Tuple

import pytest

from poets.engine.data.archives import extract
from poets.engine.errors import InvalidArchive

pytestmark = pytest.mark.unit

LONG = "x" * 300 + ".jpg"  # one name over the 255 bytes file systems take
CASES = {
    "duplicate": ([("roses/1.jpg", b"a"), ("roses/1.jpg", b"b")], "roses/1.jpg", "twice"),
    "file, then folder": ([("roses/x", b"a"), ("roses/x/1.jpg", b"b")], "roses/x/1.jpg", "folder"),
    "folder, then file": ([("roses/x/1.jpg", b"a"), ("roses/x", b"b")], "roses/x", "folder"),
    "long file name": ([("roses/" + LONG, b"a")], "roses/" + "x" * 100, "too long"),
    "long folder name": ([(LONG + "/1.jpg", b"a")], "x" * 100, "too long"),
}


def _zip(path: Path, members: List[Tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(str(path), "w") as archive:
        for name, data in members:
            archive.writestr(name, data)
    return path


def _tar(path: Path, members: List[Tuple[str, bytes]]) -> Path:
    with tarfile.open(str(path), "w:gz", format=tarfile.PAX_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("kind", ["zip", "tar"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_unwritable_members_are_named_relative_to_the_archive(tmp_path: Path, kind: str, case: str) -> None:
    import warnings

    members, named, says = CASES[case]
    server = tmp_path / "server" / "home" / "uploads"
    server.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        archive = (_zip if kind == "zip" else _tar)(server / ("a." + kind), members)
    with pytest.raises(InvalidArchive) as caught:
        extract(archive, server / "job-1")
    detail = caught.value.detail
    assert str(tmp_path) not in detail and "job-1" not in detail, detail
    assert named in detail and says in detail, detail
    assert not (server / "job-1").exists()
