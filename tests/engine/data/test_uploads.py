"""An uploaded archive saved to disk: the one way for dataset imports and retrain jobs."""

import io
from pathlib import Path

import pytest

from poets.engine.data import uploads
from poets.engine.errors import InvalidArchive


def test_the_whole_upload_is_saved_from_its_start(tmp_path: Path) -> None:
    data = bytes(range(256)) * (3 * uploads.COPY_CHUNK // 256 + 7)  # more than one piece
    source = io.BytesIO(data)
    source.read(100)  # a form parser may leave it anywhere
    uploads.save_archive(source, tmp_path / "saved", "send one.")
    assert (tmp_path / "saved").read_bytes() == data


def test_an_empty_upload_is_refused_with_what_to_send(tmp_path: Path) -> None:
    with pytest.raises(InvalidArchive) as caught:
        uploads.save_archive(io.BytesIO(), tmp_path / "saved", "send a .zip of the classes.")
    assert caught.value.detail == "The uploaded archive is empty: send a .zip of the classes."


def test_an_empty_job_upload_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    from poets.engine.jobs.dataset import job_folder, save_and_extract
    from poets.engine.settings import Settings

    settings = Settings.from_env({"POETS_HOME": str(tmp_path / "home")})
    with pytest.raises(InvalidArchive) as caught:
        save_and_extract(io.BytesIO(), job_folder(settings, "j1"), settings)
    assert caught.value.detail == (
        "The uploaded archive is empty: send a .zip or .tar.gz of the dataset in the 'file' field."
    )
    assert list(settings.uploads_dir.iterdir()) == []
