"""The phases retrain reports are the ones poets.engine.phases names, in its order."""

from pathlib import Path
from typing import Any, Dict, List

import pytest

from poets.engine import phases

pytestmark = pytest.mark.integration


def test_retrain_goes_through_every_named_phase_in_order(
    tmp_path: Path, backbone_dir: Path, small_dataset: Path
) -> None:
    from poets.engine.model.bottlenecks import BottleneckCache
    from poets.engine.model.config import TrainConfig
    from poets.engine.retrain import retrain
    from poets.engine.store.models import ModelStore

    events: List[Dict[str, Any]] = []
    retrain(
        small_dataset,
        TrainConfig(how_many_training_steps=20, cross_validate=3),
        ModelStore(tmp_path / "models"),
        BottleneckCache(tmp_path / "bottlenecks"),
        backbone_dir,
        name="phases",
        allow_download=False,
        progress=events.append,
    )
    seen: List[str] = []
    for event in events:
        if not seen or seen[-1] != event["phase"]:
            seen.append(event["phase"])
    assert tuple(seen) == phases.PHASES
