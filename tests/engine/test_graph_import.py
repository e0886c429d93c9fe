"""Publishing an existing TensorFlow for Poets graph (``poets import``): the real MobileNet graph."""

import subprocess
import sys
from pathlib import Path

import pytest

from poets.engine.errors import InvalidInput
from poets.engine.graph_import import import_graph
from poets.engine.predictor import Predictor
from poets.engine.store.models import ModelStore
from tests import assets


@pytest.fixture(scope="module")
def nudity_labels(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("nudity") / "retrained_labels.txt"
    path.write_text("\n".join(assets.NUDITY_LABELS) + "\n")
    return path


def test_import_real_poets_graph(tmp_path, nudity_labels, flowers_dir) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(tmp_path)
    version = import_graph(store, "nudity", assets.poets_graph(), nudity_labels)
    predictor = Predictor(store.path("nudity", version))
    assert predictor.labels == ["nonnude", "nude"]
    photos = sorted((flowers_dir / "daisy").glob("*.jpg"))[:4]
    for ranked in predictor.label([p.read_bytes() for p in photos], k=2):
        assert ranked[0][0] == "nonnude"
        assert abs(sum(score for _, score in ranked) - 1.0) < 1e-3
    meta = store.metadata("nudity", version)
    assert meta["architecture"] == "imported"
    assert meta["preprocessing"] == {"size": 224, "resize": "squash", "mean": 128.0, "std": 128.0}


def test_import_refuses_bad_graphs(tmp_path, nudity_labels) -> None:  # type: ignore[no-untyped-def]
    store = ModelStore(tmp_path / "store")
    with pytest.raises(InvalidInput, match="output_layer"):
        import_graph(store, "x", assets.poets_graph(), nudity_labels, output_layer="no_such_op")
    garbage = tmp_path / "garbage.pb"
    garbage.write_bytes(b"\x00not a graph" * 10)
    with pytest.raises(InvalidInput, match="GraphDef"):
        import_graph(store, "x", garbage, nudity_labels)
    one = tmp_path / "one.txt"
    one.write_text("only\n")
    with pytest.raises(InvalidInput, match="label"):
        import_graph(store, "x", assets.poets_graph(), one)
    with pytest.raises(InvalidInput, match="square"):
        import_graph(store, "x", assets.poets_graph(), nudity_labels, input_height=224, input_width=192)
    assert store.versions("x") == []


def test_cli_import(tmp_path, nudity_labels) -> None:  # type: ignore[no-untyped-def]
    command = [
        sys.executable,
        "-m",
        "poets",
        "import",
        "--graph",
        str(assets.poets_graph()),
        "--labels",
        str(nudity_labels),
        "--input_mean",
        "128",
        "--input_std",
        "128",
        "--name",
        "nudity",
        "--output_dir",
        str(tmp_path),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, cwd=str(assets.REPO), timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "Published nudity version 1" in done.stdout
