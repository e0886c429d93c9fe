"""One version exported in every format, shared by the export tests of the session."""

from pathlib import Path

import pytest

from poets.engine.model.bottlenecks import BottleneckCache
from poets.engine.model.training import TrainConfig
from poets.engine.retrain import RetrainResult, retrain
from poets.engine.store.models import ModelStore


@pytest.fixture(scope="session")
def exported(tmp_path_factory, session_home, backbone_dir, flowers_dir, trained) -> RetrainResult:  # type: ignore[no-untyped-def]
    """flowers_small retrained with every export format (bottlenecks from the session cache)."""
    store = ModelStore(Path(tmp_path_factory.mktemp("store")))
    config = TrainConfig(export="poets_graph,tflite,onnx", how_many_training_steps=1000)
    return retrain(
        flowers_dir,
        config,
        store,
        BottleneckCache(session_home / "bottlenecks"),
        backbone_dir,
        name="flowers",
    )
