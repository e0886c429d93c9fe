"""poets.engine.data.archives directly: limits and layouts the API tests do not reach.

(These belong in tests/engine/ by the layout; they live here while tests/engine is
owned by another change.)
"""

import io
import tarfile
import zipfile
from pathlib import Path
from typing import Any, List, Tuple

import pytest

from poets.engine.data.archives import Limits, extract
from poets.engine.errors import InvalidArchive


def write_zip(path: Path, members: List[Tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(str(path), "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return path


def test_single_top_folder_and_mac_junk(tmp_path: Path) -> None:
    archive = write_zip(
        tmp_path / "a.zip",
        [
            ("set/a b/1.jpg", b"x"),
            ("set/ç/2.jpg", b"y"),
            ("__MACOSX/set/._1.jpg", b"z"),
            ("set/.DS_Store", b"junk"),
        ],
    )
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
    refusals = {
        tarfile.LNKTYPE: "'a/x.jpg' is a hard link",
        tarfile.CHRTYPE: "'a/x.jpg' is a device, FIFO or other special file",
    }
    for kind, refusal in refusals.items():
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as archive:
            # A plain file beside it: an extractor that skipped the entry would not stop at "no files".
            data = b"\xff\xd8 a photo"
            plain = tarfile.TarInfo("a/ok.jpg")
            plain.size = len(data)
            archive.addfile(plain, io.BytesIO(data))
            info = tarfile.TarInfo("a/x.jpg")
            info.type = kind
            info.linkname = "/etc/passwd"
            archive.addfile(info)
        path = tmp_path / "t{}.tar".format(ord(kind))
        path.write_bytes(out.getvalue())
        with pytest.raises(InvalidArchive, match=refusal):
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


def test_many_member_bomb_is_refused_before_extracting(tmp_path: Path) -> None:
    """Each member is exactly 64 KiB of zeros: under the per-member check's threshold, but the
    archive as a whole expands hundreds of times (issue 12: 20,000 such members made 1.25 GB)."""
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(str(path), "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(1000):
            archive.writestr("a/{}.jpg".format(i), b"\0" * 65536)
    assert 65536 * 1000 / path.stat().st_size > 200
    with pytest.raises(InvalidArchive, match="expands more than 200 times"):
        extract(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_totals_are_checked_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from poets.engine.data import archives

    written: List[str] = []
    real_copy = archives._Budget.copy

    def copy(self: Any, raw: str, *args: Any) -> None:
        written.append(raw)
        real_copy(self, raw, *args)

    monkeypatch.setattr(archives._Budget, "copy", copy)
    members = [("a/{}.jpg".format(i), b"x" * 1000) for i in range(5)]
    zipped = write_zip(tmp_path / "a.zip", members)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    tarred = tmp_path / "a.tar.gz"
    tarred.write_bytes(out.getvalue())
    for path in (zipped, tarred):
        with pytest.raises(InvalidArchive, match="more than 4 files"):
            extract(path, tmp_path / "o1", Limits(max_files=4))
        with pytest.raises(InvalidArchive, match="expands to more than"):
            extract(path, tmp_path / "o2", Limits(max_extracted_bytes=4500, max_ratio=1e9))
    assert written == []


def test_default_file_count_limit() -> None:
    assert Limits().max_files == 50000
