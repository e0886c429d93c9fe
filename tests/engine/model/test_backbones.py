"""poets.engine.model.backbones: the real frozen MobileNet, the Keras and TF Hub paths, and missing weights.

Nothing here reaches the internet: the TF Hub path is fed a local SavedModel (which
``hub.resolve`` accepts as a handle), the Keras path builds random weights, and the
"no network" case mocks only the two downloads.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from poets.engine.data.images import Preprocessing, prepare
from poets.engine.errors import BackboneUnavailable, InvalidInput
from poets.engine.model import architectures, backbones

# ImageNet "daisy" is class 985; the TF-slim graphs put a background class first.
DAISY_LOGIT = 986


def test_frozen_mobilenet_takes_batches(mobilenet, flowers_dir: Path) -> None:  # type: ignore[no-untyped-def]
    assert mobilenet.feature_dim == 1024
    assert mobilenet.preprocessing == Preprocessing(224, "squash", 127.5, 127.5)
    photos = sorted((flowers_dir / "daisy").glob("*.jpg"))[:5]
    pixels = np.stack([prepare(p.read_bytes(), mobilenet.preprocessing) for p in photos])
    batch = mobilenet.features(pixels)
    assert batch.shape == (5, 1024) and batch.dtype == np.float32
    singles = np.concatenate([mobilenet.features(pixels[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(batch, singles, atol=1e-5)
    assert np.all(np.isfinite(batch)) and np.all(batch >= 0)  # after ReLU6 and average pooling
    assert np.abs(batch[0] - batch[1]).max() > 0.1


def test_logits_bottleneck_is_the_1001_imagenet_logits(backbone_dir: Path, flowers_dir: Path) -> None:
    logits = backbones.load("mobilenet_1.0_224", backbone_dir, "logits", allow_download=False)
    assert logits.feature_dim == 1001
    photos = sorted((flowers_dir / "daisy").glob("*.jpg"))[:8]
    pixels = np.stack([prepare(p.read_bytes(), logits.preprocessing) for p in photos])
    features = logits.features(pixels)
    assert features.shape == (8, 1001)
    # They are ImageNet's logits: most daisies are recognised as ImageNet's daisy.
    assert np.sum(features.argmax(axis=1) == DAISY_LOGIT) >= 5
    prelogits = backbones.load("mobilenet_1.0_224", backbone_dir, "prelogits", allow_download=False)
    assert logits.fingerprint != prelogits.fingerprint  # different cache keys


def test_unknown_architecture_and_bottleneck(backbone_dir: Path) -> None:
    with pytest.raises(InvalidInput) as info:
        backbones.load("resnet_50", backbone_dir)
    for name in ("inception_v3", "mobilenet_1.0_224", "mobilenet_0.25_128"):
        assert name in info.value.detail
    with pytest.raises(InvalidInput, match="prelogits, logits"):
        backbones.load("mobilenet_1.0_224", backbone_dir, "pool5")
    assert architectures.get(" MobileNet_0.5_160 ").name == "mobilenet_0.50_160"


def test_offline_without_weights_names_the_exact_path(tmp_path: Path) -> None:
    with pytest.raises(BackboneUnavailable) as info:
        backbones.load("mobilenet_0.25_128", tmp_path, allow_download=False)
    assert str(tmp_path / "mobilenet_0.25_128" / "frozen_graph.pb") in info.value.detail
    assert str(tmp_path / "mobilenet_0.25_128" / "prelogits") in info.value.detail


def test_no_network_fails_with_both_reasons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorflow_hub as hub

    def offline(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("network is unreachable")

    # Only the internet is mocked: TF Hub's download and Keras' weight download.
    monkeypatch.setattr(hub, "resolve", offline)
    monkeypatch.setattr(backbones, "_keras_model", offline)
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub-cache"))
    with pytest.raises(BackboneUnavailable) as info:
        backbones.load("mobilenet_0.25_128", tmp_path / "backbones")
    detail = info.value.detail
    assert str(tmp_path / "backbones" / "mobilenet_0.25_128" / "frozen_graph.pb") in detail
    assert "TF Hub" in detail and "Keras applications" in detail and "unreachable" in detail
    # Nothing half-downloaded is left behind.
    leftovers = [p for p in (tmp_path / "backbones").rglob("*") if p.is_file()]
    assert leftovers == []


def test_inception_v3_wiring_with_random_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub-cache"))
    arch = architectures.get("inception_v3")
    dest = tmp_path / "inception_v3" / "prelogits"
    backbones.download(
        arch, "prelogits", dest, hub_handle=str(tmp_path / "no-such-module"), keras_weights=None
    )
    meta = json.loads((dest / backbones.META_FILE).read_text())
    assert meta["source"] == "keras.applications:inception_v3:None"
    backbone = backbones.load("inception_v3", tmp_path, "prelogits", allow_download=False)
    assert backbone.feature_dim == 2048
    assert backbone.preprocessing.size == 299
    assert (backbone.preprocessing.mean, backbone.preprocessing.std) == (127.5, 127.5)
    pixels = np.random.RandomState(0).randint(0, 256, (2, 299, 299, 3)).astype(np.uint8)
    features = backbone.features(pixels)
    assert features.shape == (2, 2048) and np.all(np.isfinite(features))
    # Loading twice gives the same fingerprint (cache keys stay valid across runs).
    again = backbones.load("inception_v3", tmp_path, "prelogits", allow_download=False)
    assert again.fingerprint == backbone.fingerprint


class _HubLikeModule(tf.Module):
    """What a TF Hub image feature vector module is: float pixels in [0, 1] -> features."""

    def __init__(self, model: tf.Module) -> None:
        super().__init__()
        self.model = model

    @tf.function(input_signature=[tf.TensorSpec([None, 128, 128, 3], tf.float32)])
    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        return self.model(images * 2.0 - 1.0, training=False)


def test_tf_hub_loading_from_a_local_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub-cache"))
    keras_model = tf.keras.applications.MobileNet(
        input_shape=(128, 128, 3), alpha=0.25, include_top=False, weights=None, pooling="avg"
    )
    module_dir = tmp_path / "hub-module"
    tf.saved_model.save(_HubLikeModule(keras_model), str(module_dir))
    pixels = np.random.RandomState(0).randint(0, 256, (3, 128, 128, 3)).astype(np.uint8)
    expected = keras_model(pixels.astype(np.float32) / 127.5 - 1.0, training=False).numpy()

    arch = architectures.get("mobilenet_0.25_128")
    backbone_dir = tmp_path / "backbones"
    backbones.download(arch, "prelogits", backbone_dir / arch.name / "prelogits", hub_handle=str(module_dir))
    backbone = backbones.load(arch.name, backbone_dir, "prelogits", allow_download=False)
    assert backbone.source == "tfhub:" + str(module_dir)
    # TF Hub's convention, [0, 1] inputs, is applied inside the backbone.
    assert (backbone.preprocessing.mean, backbone.preprocessing.std) == (0.0, 255.0)
    features = backbone.features(pixels)
    assert features.shape == (3, 256)
    np.testing.assert_allclose(features, expected, atol=1e-4)
    # The fingerprint (part of every cache key, shared between machines) follows the files and
    # their normalisation, not where they are.
    moved = tmp_path / "elsewhere"
    shutil.copytree(str(backbone_dir), str(moved))
    assert (
        backbones.load(arch.name, moved, "prelogits", allow_download=False).fingerprint
        == backbone.fingerprint
    )
    meta_file = moved / arch.name / "prelogits" / backbones.META_FILE
    meta_file.write_text(json.dumps(dict(json.loads(meta_file.read_text()), mean=127.5, std=127.5)))
    renormalised = backbones.load(arch.name, moved, "prelogits", allow_download=False)
    assert renormalised.fingerprint != backbone.fingerprint
