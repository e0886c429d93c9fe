"""The promotion gate in a real retrain (real MobileNet, real photos): a poisoned dataset is
published and held, a better retrain goes live, and each version records what the next is judged on."""

import json
import shutil
from pathlib import Path
from typing import Any

from poets.engine import phases
from poets.engine.model.bottlenecks import BottleneckCache
from poets.engine.model.training import TrainConfig
from poets.engine.promotion import EVALUATION_FILE, GatePolicy
from poets.engine.retrain import retrain
from poets.engine.store.models import METADATA_FILE, ModelStore

GATED = GatePolicy()  # if_better, no tolerance: the default


def _retrain(
    dataset: Path, store: ModelStore, session_home: Path, backbone_dir: Path, steps: int, **kw: Any
) -> Any:
    seen: list = []
    result = retrain(
        dataset,
        TrainConfig(how_many_training_steps=steps),
        store,
        BottleneckCache(session_home / "bottlenecks"),  # the session's: every photo is cached there
        backbone_dir,
        name="flowers",
        allow_download=False,
        progress=lambda event: seen.append(event["phase"]),
        promote=kw.pop("promote", GATED),
        **kw,
    )
    assert phases.JUDGING in seen
    return result


def _rotated(flowers_dir: Path, target: Path) -> Path:
    """flowers_small with every class's photos filed under the next class: the same files (so the
    same test split), every label wrong."""
    labels = sorted(p.name for p in flowers_dir.iterdir() if p.is_dir())
    for label, wrong in zip(labels, labels[1:] + labels[:1]):
        shutil.copytree(str(flowers_dir / label), str(target / wrong))
    return target


def test_a_poisoned_retrain_is_published_and_held(
    trained,
    tmp_path: Path,
    session_home: Path,
    backbone_dir: Path,
    flowers_dir: Path,  # type: ignore[no-untyped-def]
) -> None:
    store = ModelStore(tmp_path / "models")
    first = _retrain(flowers_dir, store, session_home, backbone_dir, 1000)
    assert first.promotion["decision"] == "promoted" and "first version" in first.promotion["reason"]
    record = json.loads((first.path / EVALUATION_FILE).read_text())
    assert len(record["images"]) == first.metrics["test_n"] == 42
    assert len(record["dataset_images"]) == 400
    reference = json.loads((first.path / METADATA_FILE).read_text())["drift_reference"]
    assert reference["n"] == 42 and sum(reference["top_score_bins"]) == 42

    poisoned = _retrain(_rotated(flowers_dir, tmp_path / "rotated"), store, session_home, backbone_dir, 1000)
    outcome = poisoned.promotion
    # Against its own (wrong) test labels it looks as good as the first: it cannot vouch for itself.
    assert poisoned.metrics["test_accuracy"] >= 0.8
    assert outcome["decision"] == "held", outcome
    assert outcome["compared"]["on"] == "reference" and outcome["compared"]["n"] == 42
    assert outcome["compared"]["relabelled"] == 42
    assert outcome["candidate"]["accuracy"] < 0.2
    assert outcome["current"]["accuracy"] > 0.8
    assert outcome["reason"].startswith("Less accurate than the current version on 42 image(s)")
    assert store.versions("flowers") == [1, 2] and store.current("flowers") == 1
    assert json.loads((poisoned.path / METADATA_FILE).read_text())["promotion"] == outcome


def test_a_better_retrain_goes_live_and_always_promotes_anything(
    trained,
    tmp_path: Path,
    session_home: Path,
    backbone_dir: Path,
    flowers_dir: Path,  # type: ignore[no-untyped-def]
) -> None:
    store = ModelStore(tmp_path / "models")
    weak = _retrain(flowers_dir, store, session_home, backbone_dir, 3)
    assert weak.promotion["decision"] == "promoted" and store.current("flowers") == 1
    better = _retrain(flowers_dir, store, session_home, backbone_dir, 1000)
    outcome = better.promotion
    assert outcome["decision"] == "promoted", outcome
    assert outcome["compared"]["candidate_accuracy"] > outcome["compared"]["current_accuracy"]
    assert outcome["compared"]["change_points"] > 0
    assert store.current("flowers") == 2

    rotated = _rotated(flowers_dir, tmp_path / "rotated")
    anyway = _retrain(rotated, store, session_home, backbone_dir, 200, promote=GatePolicy(mode="always"))
    assert anyway.promotion["decision"] == "promoted" and store.current("flowers") == 3
    assert anyway.promotion["compared"]["candidate_accuracy"] < 0.2  # the figures are still told


def test_a_pin_still_wins(
    trained,
    tmp_path: Path,
    session_home: Path,
    backbone_dir: Path,
    flowers_dir: Path,  # type: ignore[no-untyped-def]
) -> None:
    store = ModelStore(tmp_path / "models")
    _retrain(flowers_dir, store, session_home, backbone_dir, 3)
    store.pin("flowers", 1)
    better = _retrain(flowers_dir, store, session_home, backbone_dir, 1000)
    assert better.promotion["decision"] == "promoted" and better.promotion["pinned"] == 1
    assert "version 1 is pinned" in better.promotion["reason"]
    assert store.current("flowers") == 1


def test_a_current_version_that_cannot_load_is_replaced(
    trained,
    tmp_path: Path,
    session_home: Path,
    backbone_dir: Path,
    flowers_dir: Path,  # type: ignore[no-untyped-def]
) -> None:
    store = ModelStore(tmp_path / "models")
    _retrain(flowers_dir, store, session_home, backbone_dir, 3)
    broken = store.path("flowers", 1)
    (broken / EVALUATION_FILE).unlink()  # no record: it would have to be loaded and scored
    (broken / "saved_model.pb").write_bytes(b"not a model")
    second = _retrain(flowers_dir, store, session_home, backbone_dir, 200)
    assert second.promotion["decision"] == "promoted", second.promotion
    assert "cannot be loaded to compare with" in second.promotion["reason"]
    assert second.promotion["current"]["version"] == 1 and second.promotion["current"]["error"]
    assert store.current("flowers") == 2
