"""poets.engine.retrain end to end on flowers_small with the real MobileNet: accuracy, cache reuse,
no training/serving skew, cancellation, bad datasets."""

import hashlib
import json
from pathlib import Path
from typing import List

import numpy as np
import pytest
import tensorflow as tf

from poets.engine.data import datasets
from poets.engine.data.images import Distortion, prepare
from poets.engine.errors import Cancelled, InvalidDataset, InvalidInput
from poets.engine.export.saved_model import METADATA_FILE
from poets.engine.model.bottlenecks import BottleneckCache, cache_key
from poets.engine.model.training import TrainConfig
from poets.engine.predictor import Predictor
from poets.engine.retrain import retrain
from poets.engine.store.models import ModelStore
from tests.engine.imaging import corrupt_jpeg, truncated, write


def test_beats_85_percent_on_flowers(trained) -> None:  # type: ignore[no-untyped-def]
    metrics = trained.metrics
    assert metrics["test_accuracy"] >= 0.85, metrics
    assert metrics["test_n"] >= 30
    assert metrics["images"] == {"training": 313, "validation": 45, "testing": 42}
    assert trained.skipped == []
    assert trained.bottlenecks_computed + trained.bottlenecks_cached == 400
    assert (trained.name, trained.version) == ("flowers", 1)
    meta = json.loads((trained.path / METADATA_FILE).read_text())
    assert meta["labels"] == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert meta["hyperparameters"]["how_many_training_steps"] == 4000
    assert (trained.path / "labels.txt").read_text().split() == meta["labels"]


def test_second_retrain_computes_no_bottleneck(
    trained,
    session_home: Path,
    backbone_dir: Path,  # type: ignore[no-untyped-def]
    flowers_dir: Path,
) -> None:
    config = TrainConfig(how_many_training_steps=100)
    again = retrain(
        flowers_dir,
        config,
        ModelStore(session_home / "models"),
        BottleneckCache(session_home / "bottlenecks"),
        backbone_dir,
        name="flowers-again",
        allow_download=False,
    )
    assert again.bottlenecks_computed == 0
    assert again.bottlenecks_cached == 400
    assert again.version == 1


def held_back(flowers_dir: Path) -> List[Path]:
    """The photos of the test split: never trained on."""
    return [r.path for r in datasets.scan(flowers_dir).split("testing")]


def test_exported_features_equal_the_cached_bottlenecks(
    trained,
    mobilenet,
    session_home: Path,  # type: ignore[no-untyped-def]
    flowers_dir: Path,
) -> None:
    loaded = tf.saved_model.load(str(trained.path))
    cache = BottleneckCache(session_home / "bottlenecks")
    photos = held_back(flowers_dir)[:16]
    pixels = np.stack([prepare(p.read_bytes(), mobilenet.preprocessing) for p in photos])
    exported = loaded.signatures["features"](pixels=tf.constant(pixels))["features"].numpy()
    for photo, features in zip(photos, exported):
        key = cache_key(hashlib.sha256(photo.read_bytes()).hexdigest(), mobilenet, 0, Distortion())
        cached = cache.get(key, mobilenet.feature_dim)
        assert cached is not None, photo
        np.testing.assert_allclose(features, cached, atol=1e-5, err_msg=str(photo))


def test_serving_default_agrees_with_predict_pixels(trained, flowers_dir: Path) -> None:  # type: ignore[no-untyped-def]
    loaded = tf.saved_model.load(str(trained.path))
    predictor = Predictor(trained.path)
    photos = held_back(flowers_dir)
    encoded = tf.constant([p.read_bytes() for p in photos])
    served = loaded.signatures["serving_default"](images=encoded)
    tf_scores = served["scores"].numpy()
    assert [s.decode() for s in served["labels"].numpy()[0]] == predictor.labels
    pil_scores = predictor.predict(np.stack([predictor.prepare(p.read_bytes()) for p in photos]))
    assert tf_scores.shape == pil_scores.shape == (len(photos), 5)
    # Two decoders (TF's, Pillow's with JPEG draft) and two resizers: close, not equal.
    agree = np.mean(tf_scores.argmax(axis=1) == pil_scores.argmax(axis=1))
    assert agree >= 0.95, agree
    assert np.abs(tf_scores - pil_scores).mean() < 0.03
    assert np.median(np.abs(tf_scores - pil_scores).max(axis=1)) < 0.1


def test_predictor_labels_held_back_photos(trained, flowers_dir: Path) -> None:  # type: ignore[no-untyped-def]
    predictor = Predictor(trained.path, "flowers", trained.version)
    predictor.warm()
    records = datasets.scan(flowers_dir).split("testing")
    results = predictor.label([r.path.read_bytes() for r in records], k=3)
    correct = [top[0][0] == r.label for top, r in zip(results, records)]
    assert np.mean(correct) == pytest.approx(trained.metrics["test_accuracy"], abs=1e-6)
    assert all(len(top) == 3 and top[0][1] >= top[1][1] for top in results)


def _progress_flag(phase: str):  # type: ignore[no-untyped-def]
    """should_stop that turns true once the job reports ``phase``."""
    seen = {"stop": False}

    def progress(event) -> None:  # type: ignore[no-untyped-def]
        if event["phase"] == phase and event.get("done", event.get("step", 0)) >= 1:
            seen["stop"] = True

    return progress, lambda: seen["stop"]


@pytest.mark.parametrize("phase", ["bottlenecks", "training"])
def test_cancel_publishes_nothing(
    phase: str, small_dataset: Path, backbone_dir: Path, tmp_path: Path
) -> None:
    progress, should_stop = _progress_flag(phase)
    store = ModelStore(tmp_path / "models")
    with pytest.raises(Cancelled):
        retrain(
            small_dataset,
            TrainConfig(how_many_training_steps=400),
            store,
            BottleneckCache(tmp_path / "cache"),
            backbone_dir,
            name="small",
            progress=progress,
            should_stop=should_stop,
            allow_download=False,
        )
    assert store.versions("small") == []
    staging = tmp_path / "models" / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == []


def test_bad_files_are_skipped_and_reported(small_dataset: Path, backbone_dir: Path, tmp_path: Path) -> None:
    photo = next((small_dataset / "daisy").glob("*.jpg"))
    bad = {
        small_dataset / "daisy" / "truncated.jpg": "truncated",
        small_dataset / "roses" / "corrupt.jpg": "",
        small_dataset / "roses" / "empty.jpg": "",
        small_dataset / "tulips" / "notes.txt": "not an image file",
    }
    write(small_dataset / "daisy" / "truncated.jpg", truncated(photo.read_bytes()))
    write(small_dataset / "roses" / "corrupt.jpg", corrupt_jpeg())
    write(small_dataset / "roses" / "empty.jpg", b"")
    write(small_dataset / "tulips" / "notes.txt", b"remember to water")
    result = retrain(
        small_dataset,
        TrainConfig(how_many_training_steps=20),
        ModelStore(tmp_path / "m"),
        BottleneckCache(tmp_path / "cache"),
        backbone_dir,
        allow_download=False,
    )
    skipped = dict(result.skipped)
    assert set(skipped) == {str(p) for p in bad}
    for path, words in bad.items():
        assert words in skipped[str(path)]
    assert result.bottlenecks_computed == 36
    assert sum(result.metrics["images"].values()) == 36


def test_invalid_datasets_fail_before_any_compute(tmp_path: Path, small_dataset: Path) -> None:
    # No backbone weights exist here: reaching the backbone would raise BackboneUnavailable.
    no_weights = tmp_path / "no-backbones"
    cache = tmp_path / "cache"
    store = ModelStore(tmp_path / "models")
    only_one = tmp_path / "one"
    for photo in list((small_dataset / "daisy").glob("*.jpg"))[:5]:
        write(only_one / "daisy" / photo.name, photo.read_bytes())
    with pytest.raises(InvalidDataset, match="at least two"):
        retrain(only_one, TrainConfig(), store, BottleneckCache(cache), no_weights, allow_download=False)
    write(small_dataset / "birds" / "notes.txt", b"no photos yet")
    with pytest.raises(InvalidDataset, match="'birds'"):
        retrain(small_dataset, TrainConfig(), store, BottleneckCache(cache), no_weights, allow_download=False)
    with pytest.raises(InvalidInput, match=r"mobilenet_1\.0_224"):
        retrain(
            small_dataset,
            TrainConfig(architecture="alexnet"),
            store,
            BottleneckCache(cache),
            no_weights,
            allow_download=False,
        )
    with pytest.raises(InvalidInput, match="learning_rate"):
        retrain(
            small_dataset,
            TrainConfig(learning_rate=100.0),
            store,
            BottleneckCache(cache),
            no_weights,
            allow_download=False,
        )
    assert not cache.exists()
    assert store.names() == []


def test_class_whose_images_all_fail_to_decode(
    tmp_path: Path, small_dataset: Path, backbone_dir: Path
) -> None:
    photo = next((small_dataset / "daisy").glob("*.jpg"))
    for i in range(3):
        write(small_dataset / "broken" / "{}.jpg".format(i), truncated(photo.read_bytes()))
    with pytest.raises(InvalidDataset, match="'broken'"):
        retrain(
            small_dataset,
            TrainConfig(how_many_training_steps=10),
            ModelStore(tmp_path / "m"),
            BottleneckCache(tmp_path / "cache"),
            backbone_dir,
            allow_download=False,
        )
    assert ModelStore(tmp_path / "m").names() == []


def test_metrics_carry_n_interval_and_per_class_rates(trained) -> None:  # type: ignore[no-untyped-def]
    metrics = trained.metrics
    low, high = metrics["test_interval"]
    assert low <= metrics["test_accuracy"] <= high and high - low > 0.05  # 42 images: a wide interval
    assert metrics["test_correct"] == round(metrics["test_accuracy"] * metrics["test_n"])
    assert [row["label"] for row in metrics["per_class"]] == trained.labels
    assert sum(row["recall_n"] for row in metrics["per_class"]) == metrics["test_n"]
    # Early stopping (the default) scores the whole validation set and exports the kept step.
    assert metrics["validation_n"] == 45 and metrics["validation_interval"] is not None
    assert metrics["best_step"] is not None and metrics["best_step"] <= metrics["stopped_step"]
    meta = json.loads((trained.path / METADATA_FILE).read_text())
    assert meta["metrics"]["test_interval"] == metrics["test_interval"]


def test_cross_validate_scores_every_image(
    trained,
    session_home: Path,
    backbone_dir: Path,  # type: ignore[no-untyped-def]
    flowers_dir: Path,
) -> None:
    events: List[dict] = []  # type: ignore[type-arg]
    result = retrain(
        flowers_dir,
        TrainConfig(how_many_training_steps=200, cross_validate=3),
        ModelStore(session_home / "models"),
        BottleneckCache(session_home / "bottlenecks"),
        backbone_dir,
        name="flowers-cv",
        allow_download=False,
        progress=events.append,
    )
    cv = result.metrics["cross_validation"]
    assert (cv["k"], cv["n"], len(cv["fold_accuracies"])) == (3, 400, 3)
    assert cv["interval"][0] <= cv["accuracy"] <= cv["interval"][1]
    assert cv["accuracy"] >= 0.8
    assert [e["fold"] for e in events if e["phase"] == "cross_validating"] == [1, 2, 3]
    # The published head is still the one trained on the training split and tested on its test split.
    assert result.metrics["test_n"] == 42 and result.bottlenecks_computed == 0
