"""poets.engine.model.config: the one definition of the retrain parameters."""

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

from poets.engine.errors import InvalidInput
from poets.engine.model.config import MAX_SEED, TrainConfig, parse_formats
from poets.engine.settings import Settings

pytestmark = pytest.mark.unit

ENGINE = Path(__file__).resolve().parents[3] / "poets" / "engine"


def test_defaults_keep_poets_names_and_values() -> None:
    config = TrainConfig()
    assert (config.learning_rate, config.how_many_training_steps, config.train_batch_size) == (
        0.01,
        4000,
        100,
    )
    assert (config.testing_percentage, config.validation_percentage) == (10, 10)
    assert config.architecture == "mobilenet_1.0_224"
    config.validate()
    config.validate(Settings())


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"architecture": "vgg16"}, "mobilenet_1.0_224"),
        ({"bottleneck": "pool5"}, "bottleneck"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"learning_rate": float("inf")}, "learning_rate"),
        ({"how_many_training_steps": 0}, "how_many_training_steps"),
        ({"train_batch_size": 0}, "train_batch_size"),
        ({"eval_step_interval": 0}, "eval_step_interval"),
        ({"validation_batch_size": 0}, "validation_batch_size"),
        ({"test_batch_size": -2}, "test_batch_size"),
        ({"testing_percentage": 60, "validation_percentage": 40}, "percentage"),
        ({"testing_percentage": -1}, "percentage"),
        ({"random_crop": 101}, "random_crop"),
        ({"random_scale": -5}, "random_scale"),
        ({"random_brightness": 200}, "random_brightness"),
        ({"distorted_views": 33}, "distorted_views"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"hidden_units": -1}, "hidden_units"),
        ({"resize": "stretch"}, "resize"),
        ({"seed": -1}, "seed must be between 0 and 2147483647"),
        ({"seed": 2**32}, "seed"),
        ({"export": "saved_model,coreml"}, "export"),
        ({"learning_rate": "fast"}, "learning_rate must be a number"),
        ({"how_many_training_steps": 1.5}, "how_many_training_steps must be an integer"),
        ({"flip_left_right": 1}, "flip_left_right must be true or false"),
    ],
)
def test_out_of_range_options_are_invalid(changes: Dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        TrainConfig(**changes).validate()


def test_the_step_limit_is_the_setting_alone() -> None:
    """One limit: POETS_MAX_TRAINING_STEPS, whatever its value (it used to be capped at 100000 too)."""
    with pytest.raises(InvalidInput, match=r"between 1 and 500 \(POETS_MAX_TRAINING_STEPS\)"):
        TrainConfig(how_many_training_steps=501).validate(Settings(max_training_steps=500))
    with pytest.raises(InvalidInput, match="between 1 and 100000"):
        TrainConfig(how_many_training_steps=100001).validate(Settings())
    TrainConfig(how_many_training_steps=250000).validate(Settings(max_training_steps=300000))
    TrainConfig(how_many_training_steps=250000).validate()  # the engine alone: no deployment cap


def test_largest_seed_is_accepted() -> None:
    TrainConfig(seed=MAX_SEED).validate()


def test_from_dict_checks_names_and_types() -> None:
    config = TrainConfig.from_dict(
        {"learning_rate": "0.1", "flip_left_right": "true", "how_many_training_steps": " 20 ", "seed": 7.0}
    )
    assert (config.learning_rate, config.flip_left_right, config.how_many_training_steps, config.seed) == (
        0.1,
        True,
        20,
        7,
    )
    with pytest.raises(InvalidInput, match="learning_rat"):
        TrainConfig.from_dict({"learning_rat": 0.1})
    with pytest.raises(InvalidInput, match="how_many_training_steps must be an integer"):
        TrainConfig.from_dict({"how_many_training_steps": "many"})
    with pytest.raises(InvalidInput, match="flip_left_right"):
        TrainConfig.from_dict({"flip_left_right": "maybe"})
    with pytest.raises(InvalidInput, match="optimizer must be a string"):
        TrainConfig.from_dict({"optimizer": 3})


def test_error_messages_do_not_echo_huge_values() -> None:
    with pytest.raises(InvalidInput) as caught:
        TrainConfig.from_dict({"learning_rate": "x" * 100000})
    assert len(caught.value.detail) < 300
    with pytest.raises(InvalidInput) as caught:
        TrainConfig(optimizer="y" * 100000).validate()
    assert len(caught.value.detail) < 300


def test_architecture_aliases_are_stored_under_one_name() -> None:
    assert TrainConfig(architecture="mobilenet_0.5_224").architecture == "mobilenet_0.50_224"


def test_every_parameter_is_fully_described() -> None:
    names = [spec.name for spec in TrainConfig.parameters()]
    assert names == list(TrainConfig().to_dict())
    for spec in TrainConfig.parameters():
        assert spec.help.endswith("."), spec.name
        schema = spec.json_schema()
        assert schema["default"] == spec.default
        assert spec.default == getattr(TrainConfig(), spec.name)
        spec.check(spec.default)  # every default is valid
    steps = TrainConfig.parameter("how_many_training_steps").json_schema(
        TrainConfig.caps(Settings(max_training_steps=900))
    )
    assert (steps["type"], steps["minimum"], steps["maximum"]) == ("integer", 1, 900)
    assert TrainConfig.parameter("optimizer").json_schema()["enum"] == ["sgd", "momentum", "adam"]
    assert TrainConfig.parameter("validation_batch_size").json_schema()["minimum"] == -1


def test_form_round_trip() -> None:
    config = TrainConfig(flip_left_right=True, learning_rate=0.5, export="tflite")
    form = config.to_form()
    assert form == {"flip_left_right": "true", "learning_rate": "0.5", "export": "tflite"}
    assert TrainConfig.from_dict(form) == config


def test_parse_formats() -> None:
    assert parse_formats("tflite") == ("saved_model", "tflite")
    assert parse_formats("onnx, poets_graph") == ("saved_model", "poets_graph", "onnx")
    with pytest.raises(InvalidInput, match="coreml"):
        parse_formats("saved_model,coreml")


def _imports(path: Path) -> set:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_import_circle_between_training_and_export() -> None:
    """export -> training is fine; training (and the config) must not import export back."""
    for module in ("model/training.py", "model/config.py"):
        imported = _imports(ENGINE / module)
        assert not [name for name in imported if name.startswith("poets.engine.export")], module
    assert not {"tensorflow", "numpy", "PIL"} & {
        name.split(".")[0] for name in _imports(ENGINE / "model/config.py")
    }


def test_the_config_loads_without_tensorflow() -> None:
    code = (
        "import sys; import poets.engine.model.config; "
        "heavy = [m for m in ('tensorflow', 'numpy', 'PIL') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(ENGINE.parents[1]))


def test_cli_help_survives_a_percent_sign() -> None:
    import argparse

    from poets.engine.model.config import Param

    parser = argparse.ArgumentParser()
    spec = Param("share", int, 10, "Share of images, in %.", minimum=0, maximum=100)
    parser.add_argument("--share", help=spec.cli_help())
    assert "in %." in parser.format_help()
