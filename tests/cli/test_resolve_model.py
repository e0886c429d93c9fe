"""``poets label --model``: every folder ``poets retrain`` writes is accepted."""

from pathlib import Path

import pytest

from poets.cli.engine_commands import resolve_model
from poets.engine.errors import NotFound
from poets.engine.settings import Settings
from poets.engine.store.models import METADATA_FILE

pytestmark = pytest.mark.unit


def _version(store: Path, name: str, version: int) -> Path:
    folder = store / name / str(version)
    folder.mkdir(parents=True)
    (folder / METADATA_FILE).write_text("{}")
    return folder


def _settings(tmp_path: Path, default: str = "default") -> Settings:
    return Settings(home=tmp_path / "home", default_model=default)


def test_version_folder(tmp_path: Path) -> None:
    version = _version(tmp_path / "out", "flowers", 1)
    assert resolve_model(str(version), _settings(tmp_path)) == version


def test_model_folder_gives_its_current_version(tmp_path: Path) -> None:
    _version(tmp_path / "out", "flowers", 1)
    latest = _version(tmp_path / "out", "flowers", 2)
    assert resolve_model(str(tmp_path / "out" / "flowers"), _settings(tmp_path)) == latest


def test_store_root_with_one_model_gives_that_model(tmp_path: Path) -> None:
    """What ``poets retrain --output_dir out`` has just written: ``out/<name>/<version>``."""
    version = _version(tmp_path / "out", "flowers", 1)
    assert resolve_model(str(tmp_path / "out"), _settings(tmp_path)) == version


def test_store_root_with_several_models_uses_the_default(tmp_path: Path) -> None:
    _version(tmp_path / "out", "flowers", 1)
    cars = _version(tmp_path / "out", "cars", 3)
    assert resolve_model(str(tmp_path / "out"), _settings(tmp_path, default="cars")) == cars


def test_store_root_with_several_models_and_no_default_names_them(tmp_path: Path) -> None:
    _version(tmp_path / "out", "flowers", 1)
    _version(tmp_path / "out", "cars", 1)
    with pytest.raises(NotFound, match="cars, flowers"):
        resolve_model(str(tmp_path / "out"), _settings(tmp_path))


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFound, match="no model version"):
        resolve_model(str(tmp_path / "empty"), _settings(tmp_path))


def test_model_name_in_the_configured_store(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    version = _version(settings.store_dir, "flowers", 4)
    assert resolve_model("flowers", settings) == version
