"""``poets retrain`` and ``poets label`` as a user runs them: real subprocesses."""

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from poets.engine.data import datasets
from tests.assets import REPO


def poets(args: List[str], home: Path, backbone_dir: Path, **extra: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    env: Dict[str, str] = dict(
        os.environ, PYTHONPATH=str(REPO), POETS_HOME=str(home), POETS_BACKBONE_DIR=str(backbone_dir), **extra
    )
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the command's own default is under test
    return subprocess.run(
        [sys.executable, "-m", "poets", *args],
        env=env,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_label_classifies_a_held_back_photo(
    trained,
    flowers_dir: Path,
    backbone_dir: Path,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    missed = {m["path"] for m in trained.metrics["misclassified"]}
    # Misclassified paths are relative to the dataset.
    record = next(
        r
        for r in datasets.scan(flowers_dir).split("testing")
        if r.path.relative_to(flowers_dir).as_posix() not in missed
    )
    done = poets(["label", "--model", str(trained.path), str(record.path)], tmp_path, backbone_dir)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", "TensorFlow's start-up log leaked: " + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 5
    match = re.match(r"^(\w+) \(score=([01]\.\d{5})\)$", lines[0])
    assert match, lines[0]
    assert match.group(1) == record.label
    assert float(match.group(2)) > 0.2


def test_label_by_model_folder_and_several_images(
    trained,
    flowers_dir: Path,
    backbone_dir: Path,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    photos = [r.path for r in datasets.scan(flowers_dir).split("testing")[:2]]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 nothing here")
    done = poets(
        [
            "label",
            "--model",
            str(trained.path.parent),
            "--top_k",
            "2",
            str(photos[0]),
            str(bad),
            str(photos[1]),
        ],
        tmp_path,
        backbone_dir,
    )
    assert done.returncode == 1  # one image could not be read; the others were labelled
    assert str(bad) in done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == str(photos[0]) and lines[3] == str(photos[1])
    assert all(re.match(r"^\w+ \(score=[01]\.\d{5}\)$", line) for line in lines[1:3] + lines[4:6])


def test_label_without_a_model_says_so(tmp_path: Path, backbone_dir: Path) -> None:
    photo = tmp_path / "x.jpg"
    photo.write_bytes(b"")
    done = poets(["label", "--model", "nothing-here", str(photo)], tmp_path, backbone_dir)
    assert done.returncode == 1
    assert "error: No model at nothing-here" in done.stderr


def test_retrain_prints_final_test_accuracy(small_dataset: Path, backbone_dir: Path, tmp_path: Path) -> None:
    (small_dataset / "daisy" / "notes.txt").write_text("not a photo")
    home = tmp_path / "home"
    done = poets(
        [
            "retrain",
            "--image_dir",
            str(small_dataset),
            "--how_many_training_steps",
            "50",
            "--name",
            "small",
            "--print_misclassified_test_images",
            "--cross_validate",
            "2",
        ],
        home,
        backbone_dir,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    # Every printed accuracy carries its 95% interval and N.
    assert re.match(
        r"^Final test accuracy = \d{1,3}\.\d% \(95% CI \d{1,3}\.\d-\d{1,3}\.\d%, N=\d+\)$", lines[-1]
    ), lines[-1]
    assert re.match(r"^Cross-validated accuracy \(2-fold\) = \d{1,3}\.\d% \(95% CI .*, N=36\)$", lines[-2]), (
        lines[-2]
    )
    assert "Bottlenecks: 36 computed, 0 from cache" in lines
    assert "=== MISCLASSIFIED TEST IMAGES ===" in lines
    assert "skipped {}: not an image file".format(small_dataset / "daisy" / "notes.txt") in done.stderr
    assert (home / "models" / "small" / "1" / "saved_model.pb").is_file()
    (run,) = (home / "logs" / "small").iterdir()  # one TensorBoard run per retrain
    assert list((run / "train").iterdir())
    # Again: every bottleneck from the cache under $POETS_HOME, and a second version.
    again = poets(
        [
            "retrain",
            "--image_dir",
            str(small_dataset),
            "--how_many_training_steps",
            "10",
            "--name",
            "small",
            "--optimizer",
            "sgd",
        ],
        home,
        backbone_dir,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Bottlenecks: 0 computed, 36 from cache" in again.stdout
    assert (home / "models" / "small" / "2").is_dir()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--architecture", "resnet_50"], "error: architecture must be one of inception_v3, "),
        (["--learning_rate", "-1"], "error: learning_rate must be above 0 and at most 10, got -1.0."),
        (["--how_many_training_steps", "900"], "error: how_many_training_steps must be between 1 and 500"),
    ],
)
def test_retrain_refuses_bad_options(
    flags: List[str], message: str, small_dataset: Path, backbone_dir: Path, tmp_path: Path
) -> None:
    done = poets(
        ["retrain", "--image_dir", str(small_dataset), *flags],
        tmp_path,
        backbone_dir,
        POETS_MAX_TRAINING_STEPS="500",
    )
    assert done.returncode == 1
    assert message in done.stderr
    assert not (tmp_path / "models").exists()


def test_retrain_on_a_single_class_is_a_clear_error(
    tmp_path: Path, small_dataset: Path, backbone_dir: Path
) -> None:
    done = poets(["retrain", "--image_dir", str(small_dataset / "daisy")], tmp_path, backbone_dir)
    assert done.returncode == 1
    assert "retraining needs at least two, one sub-folder per label" in done.stderr


def test_final_accuracy_has_its_interval_and_small_test_sets_point_to_cross_validation(
    capsys: pytest.CaptureFixture,
) -> None:  # type: ignore[type-arg]
    from poets.cli.feedback import print_accuracy

    metrics = {
        "test_accuracy": 37 / 42,
        "test_n": 42,
        "test_interval": [0.745, 0.948],
        "images": {"training": 313, "validation": 45, "testing": 42},
    }
    print_accuracy(metrics)
    out, err = capsys.readouterr()
    assert out == "Final test accuracy = 88.1% (95% CI 74.5-94.8%, N=42)\n"
    assert "--cross_validate 5 scores all 400" in err
    print_accuracy(
        dict(metrics, cross_validation={"k": 5, "accuracy": 0.88, "n": 400, "interval": [0.845, 0.91]})
    )
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == "Cross-validated accuracy (5-fold) = 88.0% (95% CI 84.5-91.0%, N=400)"
    assert err == ""
