"""What the command line tells about jobs and models: progress bars that end at 100% when
a phase ended, one TensorBoard run per retrain, ``poets models`` with the pin, and the
TensorBoard extra."""

import json
import re
from pathlib import Path

import pytest

from poets.cli.feedback import Bars, tensorboard_run
from poets.cli.main import build_parser
from poets.engine.settings import Settings
from poets.engine.store.models import ModelStore

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_training_bar_completes_when_the_phase_ended_between_polls() -> None:
    bars = Bars()
    try:
        bars({"phase": "training", "step": 79, "steps": 100})
        bar = bars._bar
        assert bar is not None and bar.n == 79
        # The service is polled every second: the next event seen is already the export.
        bars({"phase": "exporting"})
        assert bar.n == 100
    finally:
        bars.close()


def test_a_failed_or_restarted_phase_is_not_shown_as_complete() -> None:
    bars = Bars()
    try:
        bars({"phase": "training", "step": 40, "steps": 100})
        bar = bars._bar
        assert bar is not None
        bars({"phase": "scanning"})  # a redelivery starts over: not a finished training
        assert bar.n == 40
    finally:
        bars.close()


def test_each_retrain_gets_its_own_tensorboard_run(tmp_path: Path) -> None:
    runs = {tensorboard_run(tmp_path / "flowers") for _ in range(5)}
    assert len(runs) == 5 and all(run.parent == tmp_path / "flowers" for run in runs)


def _write(folder: Path) -> None:
    (folder / "saved_model.pb").write_bytes(b"m")
    (folder / "poets.json").write_text(json.dumps({}))


def test_models_lists_current_and_pinned(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store = ModelStore(tmp_path / "models")
    for _ in range(3):
        store.publish("flowers", _write)
    store.publish("cars", _write)
    store.pin("flowers", 2)
    args = build_parser().parse_args(["models", "--output_dir", str(store.root)])
    assert args.run(args, Settings.from_env({})) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["flowers"] == ["flowers", "2", "2", "1", "2", "3"]
    assert rows["cars"] == ["cars", "1", "-", "1"]
    assert not getattr(args, "tensorflow", False)  # listing needs no TensorFlow


def test_tensorboard_is_an_extra() -> None:
    text = (REPO / "pyproject.toml").read_text()
    extras = text[text.index("[project.optional-dependencies]") :]
    extras = extras[: extras.index("\n[", 1)]
    assert re.search(r'^tensorboard = \[\s*"tensorboard>=', extras, re.M), extras
