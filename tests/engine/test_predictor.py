"""Loading versions for serving: the frozen layout in a session, older layouts as before."""

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from poets.engine.predictor import Predictor
from poets.engine.store.models import METADATA_FILE

pytestmark = pytest.mark.integration


def _rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


class _Mean(tf.Module):
    """Five scores from the mean colour, with a variable: what tf.saved_model.save wrote
    for versions exported before the frozen layout."""

    def __init__(self) -> None:
        super().__init__()
        self.weights = tf.Variable(np.arange(15, dtype=np.float32).reshape(3, 5) / 15.0)

    @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.uint8, name="pixels")])
    def predict_pixels(self, pixels: tf.Tensor) -> Any:
        colour = tf.reduce_mean(tf.cast(pixels, tf.float32) / 255.0, axis=[1, 2])
        return {"scores": tf.nn.softmax(tf.matmul(colour, self.weights))}


def test_a_version_saved_with_variables_still_loads(tmp_path: Path, trained: Any) -> None:
    folder = tmp_path / "7"
    module = _Mean()
    tf.saved_model.save(module, str(folder), signatures={"predict_pixels": module.predict_pixels})
    assert (folder / "variables" / "variables.index").is_file()
    shutil.copy(str(trained.path / METADATA_FILE), str(folder / METADATA_FILE))
    metadata = json.loads((folder / METADATA_FILE).read_text())
    metadata.pop("runtimes", None)  # older versions did not record them
    (folder / METADATA_FILE).write_text(json.dumps(metadata))

    predictor = Predictor(folder)
    predictor.warm()
    pixels = np.full((2, 224, 224, 3), 255, np.uint8)
    expected = module.predict_pixels(tf.constant(pixels))["scores"].numpy()
    np.testing.assert_allclose(predictor.predict(pixels), expected, rtol=1e-6)


def test_a_frozen_version_is_held_once_per_load(trained: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """tf.saved_model.load keeps a copy of the graph per signature (about 120 MiB more per
    load of this MobileNet version); a TF1 session holds the frozen graph once (about 60).
    The figure depends on the process and the allocator, so it is printed, not asserted:
    what is checked is that a frozen version never goes through tf.saved_model.load."""

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a frozen version was loaded with tf.saved_model.load")

    monkeypatch.setattr(tf.saved_model, "load", refused)
    loaded = [Predictor(trained.path)]
    loaded[0].warm()
    before = _rss_mib()
    for _ in range(2):
        loaded.append(Predictor(trained.path))
        loaded[-1].warm()
    print("\n{:.0f} MiB more per load of a frozen version".format((_rss_mib() - before) / 2))
    assert all(isinstance(p._model, tf.compat.v1.Session) for p in loaded)
    pixels = np.zeros((1, 224, 224, 3), np.uint8)
    assert np.array_equal(loaded[0].predict(pixels), loaded[2].predict(pixels))
