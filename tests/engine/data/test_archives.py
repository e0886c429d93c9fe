"""poets.engine.data.archives directly: limits and layouts the API tests do not reach.

(These belong in tests/engine/ by the layout; they live here while tests/engine is
owned by another change.)
"""

import io
import tarfile
import zipfile
from pathlib import Path
from typing import List, Tuple

import pytest

from poets.engine.data.archives import Limits, extract
from poets.engine.errors import InvalidArchive


def write_zip(path: Path, members: List[Tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(str(path), "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return path


def test_single_top_folder_and_mac_junk(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "a.zip", [
        ("set/a b/1.jpg", b"x"), ("set/ç/2.jpg", b"y"), ("__MACOSX/set/._1.jpg", b"z"),
        ("set/.DS_Store", b"junk")])
    root = extract(archive, tmp_path / "out")
    assert root == tmp_path / "out" / "set"
    assert sorted(p.name for p in root.iterdir()) == ["a b", "ç"]
    assert not (tmp_path / "out" / "__MACOSX").exists()


def test_too_many_files(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "a.zip", [("a/{}.jpg".format(i), b"x") for i in range(5)])
    with pytest.raises(InvalidArchive, match="more than 4 files"):
        extract(archive, tmp_path / "out", Limits(max_files=4))
    assert not (tmp_path / "out").exists()


def test_file_and_total_limits(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "a.zip", [("a/1.jpg", b"x" * 1000), ("b/2.jpg", b"y" * 1000)])
    with pytest.raises(InvalidArchive, match="per file"):
        extract(archive, tmp_path / "o1", Limits(max_file_bytes=999, max_ratio=1e9))
    with pytest.raises(InvalidArchive, match="expands to more than"):
        extract(archive, tmp_path / "o2", Limits(max_extracted_bytes=1500, max_ratio=1e9))


def test_tar_hard_link_and_device(tmp_path: Path) -> None:
    for kind in (tarfile.LNKTYPE, tarfile.CHRTYPE):
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as archive:
            info = tarfile.TarInfo("a/x.jpg")
            info.type = kind
            info.linkname = "/etc/passwd"
            archive.addfile(info)
        path = tmp_path / "t{}.tar".format(ord(kind))
        path.write_bytes(out.getvalue())
        with pytest.raises(InvalidArchive):
            extract(path, tmp_path / "out{}".format(ord(kind)))


def test_tar_bomb_by_overall_ratio(tmp_path: Path) -> None:
    data = b"\0" * (4 * 1024 * 1024)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        info = tarfile.TarInfo("a/zeros.jpg")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(out.getvalue())
    with pytest.raises(InvalidArchive, match="bomb"):
        extract(path, tmp_path / "out")


def test_empty_archive(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "a.zip", [])
    with pytest.raises(InvalidArchive, match="no files"):
        extract(archive, tmp_path / "out")
