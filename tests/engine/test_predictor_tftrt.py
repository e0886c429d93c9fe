"""POETS_SERVE_RUNTIME=tftrt: the plain-TF fallback for real, the conversion wiring with a fake GPU.

For the fallback, the probe says TF-TRT is unavailable (as it would here, with no GPU, and
would not on a Jetson), and the rest runs for real.
For the wiring, only the GPU/TensorRT probe and TF-TRT's converter class are replaced:
the fake converter records its calls and "converts" by copying the SavedModel, which
the Predictor then loads and serves.
"""

import logging
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List

import numpy as np
import pytest
import tensorflow as tf

from poets.engine.data.images import Preprocessing
from poets.engine.export import tftrt
from poets.engine.export.saved_model import save_model
from poets.engine.predictor import Predictor
from poets.engine.settings import Settings

pytestmark = pytest.mark.integration

SIZE = 8


class Toy(tf.Module):
    """Two labels from mean colour: a SavedModel that loads in a blink."""

    def __init__(self) -> None:
        super().__init__(name="toy")
        self.weights = tf.Variable([[1.0, -1.0], [0.5, 0.5], [-1.0, 1.0]])

    def __call__(self, pixels: tf.Tensor) -> tf.Tensor:
        colour = tf.reduce_mean(tf.cast(pixels, tf.float32) / 255.0, axis=[1, 2])
        return tf.nn.softmax(tf.matmul(colour, self.weights))


@pytest.fixture(scope="module")
def version(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    folder = Path(tmp_path_factory.mktemp("store")) / "toy" / "1"
    folder.mkdir(parents=True)
    save_model(folder, Toy(), ["red", "blue"], Preprocessing(SIZE, "squash", 0.0, 255.0), {"name": "toy"})
    return folder


@pytest.fixture
def settings(tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(home=tmp_path / "home", max_batch_size=4, tftrt_max_workspace_bytes=64 << 20)


def pixels() -> np.ndarray:
    return np.random.RandomState(0).randint(0, 256, (3, SIZE, SIZE, 3)).astype(np.uint8)


def listing(folder: Path) -> List[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if tftrt.FOLDER not in p.parts)


def test_without_tensorrt_serves_plain_tensorflow_with_one_warning(
    version, settings, monkeypatch, caplog
) -> None:  # type: ignore[no-untyped-def]
    # Forced, so that a machine with a GPU and TensorRT (a Jetson) tests the fallback too.
    monkeypatch.setattr(tftrt, "unavailable_reason", lambda: "no GPU is visible to TensorFlow")

    def no_conversion() -> Any:
        raise AssertionError("TF-TRT was reached although it is unavailable")

    monkeypatch.setattr(tftrt, "_trt_convert", no_conversion)
    monkeypatch.setattr(tftrt, "fallback_warning", tftrt._Once())
    with caplog.at_level(logging.WARNING, logger=tftrt.__name__):
        first = Predictor(version, runtime="tftrt", settings=settings)
        second = Predictor(version, runtime="tftrt", settings=settings)
    assert first.runtime == second.runtime == "saved_model"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert warnings[0].getMessage() == (
        "POETS_SERVE_RUNTIME=tftrt, but no GPU is visible to TensorFlow: serving with plain TensorFlow."
    )
    np.testing.assert_allclose(first.predict(pixels()), Predictor(version).predict(pixels()))
    assert not (version / tftrt.FOLDER).exists()


class FakeTensorRT:
    """Stands in for tensorflow.python.compiler.tensorrt.trt_convert on a GPU machine."""

    def __init__(self) -> None:
        self.calls: List[Any] = []
        fake = self

        class Converter:
            def __init__(self, **kwargs: Any) -> None:
                fake.calls.append(("init", kwargs))
                self.source = Path(kwargs["input_saved_model_dir"])

            def convert(self) -> None:
                fake.calls.append(("convert",))

            def build(self, input_fn: Any) -> None:
                batches = [tuple((a.shape, a.dtype) for a in inputs) for inputs in input_fn()]
                fake.calls.append(("build", batches))

            def save(self, output_saved_model_dir: str) -> None:
                fake.calls.append(("save", output_saved_model_dir))
                target = Path(output_saved_model_dir)
                target.mkdir(parents=True)
                shutil.copy(str(self.source / "saved_model.pb"), str(target / "saved_model.pb"))
                shutil.copytree(str(self.source / "variables"), str(target / "variables"))

        self.TrtGraphConverterV2 = Converter
        self.TrtConversionParams = SimpleNamespace

    def steps(self) -> List[str]:
        return [call[0] for call in self.calls]


@pytest.fixture
def gpu(monkeypatch) -> Dict[str, Any]:  # type: ignore[no-untyped-def]
    """A GPU with TensorRT, as far as Poets can tell; change 'device'/'trt' to move the key."""
    fake = FakeTensorRT()
    state: Dict[str, Any] = {"device": "NVIDIA Tegra X2", "trt": "8.2.1", "fake": fake}
    monkeypatch.setattr(tftrt, "unavailable_reason", lambda: None)
    monkeypatch.setattr(tftrt, "_trt_convert", lambda: fake)
    monkeypatch.setattr(tftrt, "device_name", lambda: state["device"])
    monkeypatch.setattr(tftrt, "tensorrt_version", lambda: state["trt"])
    return state


def test_converts_fp16_builds_before_saving_and_caches_beside_the_version(version, settings, gpu) -> None:  # type: ignore[no-untyped-def]
    before = listing(version)
    served = Predictor(version, runtime="tftrt", settings=settings)
    assert served.runtime == "tftrt"
    fake = gpu["fake"]
    assert fake.steps() == ["init", "convert", "build", "save"]
    init = fake.calls[0][1]
    assert init["input_saved_model_dir"] == str(version)
    assert init["input_saved_model_signature_key"] == "predict_pixels"
    params = init["conversion_params"]
    assert params.precision_mode == "FP16" and params.max_workspace_size_bytes == 64 << 20
    # One warm-up batch of the largest size the batcher sends: its engine serves smaller ones.
    assert fake.calls[2][1] == [(((4, SIZE, SIZE, 3), np.dtype(np.uint8)),)]

    key = tftrt.cache_key("NVIDIA Tegra X2", "8.2.1", tf.__version__)
    assert key.startswith("NVIDIA_Tegra_X2-trt8.2.1-tf")
    cache = version / tftrt.FOLDER
    assert sorted(p.name for p in cache.iterdir()) == [key]  # written aside, renamed: no leftovers
    assert Path(fake.calls[3][1]).parent == cache
    assert listing(version) == before  # the published files are untouched
    np.testing.assert_allclose(served.predict(pixels()), Predictor(version).predict(pixels()), rtol=1e-6)

    # Same device and TensorRT: the cached engines load, nothing converts.
    fake.calls.clear()
    assert Predictor(version, runtime="tftrt", settings=settings).runtime == "tftrt"
    assert fake.calls == []

    # A new TensorRT (or another GPU) is a new key: convert again, keep the old cache.
    gpu["trt"] = "8.4.0"
    assert Predictor(version, runtime="tftrt", settings=settings).runtime == "tftrt"
    assert fake.steps() == ["init", "convert", "build", "save"]
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [key, tftrt.cache_key("NVIDIA Tegra X2", "8.4.0", tf.__version__)]
    )
    shutil.rmtree(str(cache))


def test_an_unwritable_store_caches_under_poets_home(version, settings, gpu) -> None:  # type: ignore[no-untyped-def]
    # Tests run as root, which ignores permission bits: a file where the cache folder
    # would go makes the version folder unwritable for it in the same way (OSError).
    blocker = version / tftrt.FOLDER
    blocker.write_text("not a folder")
    try:
        served = Predictor(version, runtime="tftrt", settings=settings)
        assert served.runtime == "tftrt"
        cached = list((settings.home / tftrt.FOLDER).glob("toy-1-*/*/saved_model.pb"))
        assert len(cached) == 1
        gpu["fake"].calls.clear()
        assert Predictor(version, runtime="tftrt", settings=settings).runtime == "tftrt"
        assert gpu["fake"].calls == []
    finally:
        blocker.unlink()


def test_a_failed_conversion_serves_plain_tensorflow(version, settings, gpu, caplog) -> None:  # type: ignore[no-untyped-def]
    def out_of_memory(self: Any) -> None:
        raise RuntimeError("TensorRT: out of memory")

    gpu["fake"].TrtGraphConverterV2.convert = out_of_memory
    with caplog.at_level(logging.WARNING, logger=tftrt.__name__):
        served = Predictor(version, runtime="tftrt", settings=settings)
    assert served.runtime == "saved_model"
    assert any("out of memory" in r.getMessage() for r in caplog.records)
    assert not any(p.name.startswith(".tmp-") for p in (version / tftrt.FOLDER).iterdir())
