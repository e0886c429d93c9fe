"""POETS_SERVE_RUNTIME=tflite_int8: /label answers from a version's TFLite export."""

from pathlib import Path
from typing import Any

from poets.engine.data.datasets import scan
from poets.engine.model.bottlenecks import BottleneckCache
from poets.engine.model.training import TrainConfig
from poets.engine.retrain import retrain
from poets.engine.store.models import ModelStore
from tests.app.conftest import settings_for


def test_label_with_the_tflite_runtime(
    serve: Any, session_home: Path, trained: Any, backbone_dir: Path, flowers_dir: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    settings = settings_for(home, backbone_dir, serve_runtime="tflite_int8")
    retrain(
        flowers_dir,
        TrainConfig(export="tflite", how_many_training_steps=300),
        ModelStore(settings.store_dir),
        BottleneckCache(session_home / "bottlenecks"),
        backbone_dir,
        name="flowers",
    )
    server = serve(settings)
    loaded = server.app.state.registry.get("flowers")
    assert loaded.predictor.runtime == "tflite_int8"
    photos = [r for r in scan(flowers_dir).split("testing")][:10]
    right = 0
    with server.client() as client:
        for record in photos:
            response = client.post(
                "/label", content=record.path.read_bytes(), headers={"Content-Type": "image/jpeg"}
            )
            assert response.status_code == 200, response.text
            right += response.json()["labels"][0]["label"] == record.label
    assert right >= 8
