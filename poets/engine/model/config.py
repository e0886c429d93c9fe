"""Retraining options: the one definition of every retrain parameter.

Each field of :class:`TrainConfig` is declared with :func:`param`: its name, type,
default (TensorFlow for Poets' flag names and defaults), help text, and its range
or choices. Everything else is derived from that one declaration:

* the engine: :meth:`TrainConfig.from_dict` (names and types) and
  :meth:`TrainConfig.validate` (ranges, choices, cross-field rules);
* the API: ``POST /retrain``'s form fields and their OpenAPI schema
  (:meth:`Param.json_schema`), validated at submit time, so an invalid option is a
  422 and never a failed job;
* the CLI: ``poets retrain``'s flags (:meth:`Param.cli_help`), and the form fields
  it sends with ``--url`` (:meth:`TrainConfig.to_form`);
* the worker: it validates a queued job's options again before training.

Adding a parameter is a change to this module only (then use it where it takes
effect, e.g. in ``training.py``)::

    warmup_steps: int = param(0, "Steps of linearly rising learning rate.", minimum=0,
                              maximum=100000)

``minimum``/``maximum`` bound numbers (``exclusive_minimum`` for "> minimum"),
``also`` admits extra values outside the range (``-1`` meaning "all"), ``choices``
lists the valid strings (``listed=True``: a comma-separated list of them), and
``cap`` names a :class:`poets.engine.settings.Settings` attribute that bounds the
value from above (one limit, one setting: add the setting in ``settings.py``).
Rules between fields go at the end of :meth:`TrainConfig.validate`.

This module imports no TensorFlow, numpy or Pillow: the API, the CLI's help and
the worker's check stay fast, and the export modules can import the training code
without an import circle.
"""

import contextlib
import importlib.util
import math
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, cast

from poets.engine.errors import InvalidInput, UnsupportedExport
from poets.engine.model import architectures

OPTIMIZERS = ("sgd", "momentum", "adam")
SCHEDULES = ("cosine", "constant")
# Presets for TrainConfig.from_dict; 'poets' reproduces TensorFlow for Poets' retrain.py head.
RECIPES: Dict[str, Dict[str, Any]] = {
    "default": {},
    "poets": {
        "bottleneck": "logits",
        "optimizer": "sgd",
        "learning_rate": 0.01,
        "learning_rate_schedule": "constant",
        "label_smoothing": 0.0,
        "early_stopping_patience": 0,
        "hidden_units": 0,
    },
}
RESIZE_MODES = ("squash", "center_crop")
EXPORT_FORMATS = ("saved_model", "poets_graph", "tflite", "onnx")
# Formats that need packages of an optional extra: format -> (modules, extra).
EXPORT_NEEDS = {"onnx": (("tf2onnx", "onnx"), "onnx")}
# numpy's RandomState takes seeds below 2**32 and training also uses seed + 1.
MAX_SEED = 2**31 - 1

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string"}
_SHOWN = 80  # longest echo of a bad value in an error message


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


@dataclass(frozen=True)
class Param:
    """One retrain parameter: what it is called, holds, defaults to and may be."""

    name: str
    kind: type
    default: Any
    help: str
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    exclusive_minimum: bool = False
    also: Tuple[Any, ...] = ()
    choices: Optional[Tuple[str, ...]] = None
    listed: bool = False
    cap: Optional[str] = None

    def parse(self, value: Any) -> Any:
        """The typed value from user input (form text, JSON, CLI); InvalidInput if it is not."""
        kind = self.kind
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
                return value.strip().lower() in _TRUE
        elif kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                try:
                    return int(value.strip())
                except ValueError:
                    pass
        elif kind is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):
                try:
                    return float(value.strip())
                except ValueError:
                    pass
        elif isinstance(value, str):
            return value
        raise InvalidInput("{} must be {}, got {}.".format(self.name, _TYPE_NAMES[kind], _shown(value)))

    def upper(self, caps: Mapping[str, float]) -> Optional[float]:
        """The largest value allowed: the static maximum, or the setting named by ``cap``."""
        if self.cap is not None and self.cap in caps:
            return caps[self.cap]
        return self.maximum

    def describe(self, caps: Optional[Mapping[str, float]] = None) -> str:
        """What values are valid, in words ("between 1 and 100000", "one of a, b")."""
        caps = caps or {}
        if self.choices is not None:
            words = "one or more of {} (comma-separated)" if self.listed else "one of {}"
            return words.format(", ".join(self.choices))
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            return "a string"
        upper = self.upper(caps)
        cap_note = ""
        if self.cap is not None:
            cap_note = " ({})".format(_setting_env(self.cap))
        if self.minimum is not None and upper is not None:
            if self.exclusive_minimum:
                text = "above {} and at most {}{}".format(_number(self.minimum), _number(upper), cap_note)
            else:
                text = "between {} and {}{}".format(_number(self.minimum), _number(upper), cap_note)
        elif self.minimum is not None:
            text = "{} {}".format("above" if self.exclusive_minimum else "at least", _number(self.minimum))
        elif upper is not None:
            text = "at most {}{}".format(_number(upper), cap_note)
        else:
            text = _TYPE_NAMES[self.kind]
        if self.also:
            text = "{} or {}".format(" or ".join(str(v) for v in self.also), text)
        return text

    def check(self, value: Any, caps: Optional[Mapping[str, float]] = None) -> None:
        """Raise :class:`InvalidInput` naming the parameter and its valid values."""
        caps = caps or {}
        if self.kind is float:
            typed_ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            typed_ok = type(value) is self.kind
        if not typed_ok:
            raise InvalidInput(
                "{} must be {}, got {}.".format(self.name, _TYPE_NAMES[self.kind], _shown(value))
            )
        if not self._ok(value, caps):
            raise InvalidInput("{} must be {}, got {}.".format(self.name, self.describe(caps), _shown(value)))

    def _ok(self, value: Any, caps: Mapping[str, float]) -> bool:
        if self.choices is not None:
            if self.listed:
                items = [item.strip() for item in value.split(",") if item.strip()]
                return all(item in self.choices for item in items)
            return bool(value in self.choices)
        if self.kind not in (int, float):
            return True
        if value in self.also:
            return True
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.minimum is not None and (
            value < self.minimum or (self.exclusive_minimum and value == self.minimum)
        ):
            return False
        upper = self.upper(caps)
        return upper is None or value <= upper

    def json_schema(self, caps: Optional[Mapping[str, float]] = None) -> Dict[str, Any]:
        """This parameter as an OpenAPI/JSON-schema property (a form field)."""
        caps = caps or {}
        schema: Dict[str, Any] = {
            "type": _JSON_TYPES[self.kind],
            "default": self.default,
            "description": "{} Valid: {}.".format(self.help, self.describe(caps)),
        }
        if self.choices is not None and not self.listed:
            schema["enum"] = list(self.choices)
        if self.kind in (int, float):
            if self.minimum is not None:
                # OpenAPI 3.0 and 3.1 spell exclusive bounds differently: the text says it.
                schema["minimum"] = min([self.minimum, *self.also])
            upper = self.upper(caps)
            if upper is not None:
                schema["maximum"] = upper
        return schema

    def cli_help(self) -> str:
        """Help text for this parameter's ``poets retrain --<name>`` flag.

        ``%`` is doubled: argparse formats help text with ``%``, so a bare one would break
        ``poets retrain --help``.
        """
        text = self.help
        if self.kind is not bool:
            text = "{} Valid: {}. Default: {}.".format(self.help, self.describe(), self.format(self.default))
        return text.replace("%", "%%")

    def format(self, value: Any) -> str:
        """The value as form text (what ``from_dict`` parses back)."""
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)


def _setting_env(attribute: str) -> str:
    return "POETS_" + attribute.upper()


def param(
    default: Any,
    help: str,
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    exclusive_minimum: bool = False,
    also: Sequence[Any] = (),
    choices: Optional[Sequence[str]] = None,
    listed: bool = False,
    cap: Optional[str] = None,
) -> Any:
    """A :class:`TrainConfig` field with its definition (see the module docstring)."""
    spec = {
        "help": help,
        "minimum": minimum,
        "maximum": maximum,
        "exclusive_minimum": exclusive_minimum,
        "also": tuple(also),
        "choices": tuple(choices) if choices is not None else None,
        "listed": listed,
        "cap": cap,
    }
    return field(default=default, metadata={"param": spec})


@dataclass
class TrainConfig:
    """Retraining options, named and defaulted as TensorFlow for Poets' flags."""

    architecture: str = param(
        "mobilenet_1.0_224", "Backbone, by its TensorFlow for Poets name.", choices=architectures.names()
    )
    bottleneck: str = param(
        "prelogits",
        "Backbone output the head is trained on: the pre-logits features (better) "
        "or the ImageNet logits (what TensorFlow for Poets' graphs expose).",
        choices=architectures.BOTTLENECKS,
    )
    learning_rate: float = param(
        0.01, "How large a learning rate to use when training.", minimum=0, maximum=10, exclusive_minimum=True
    )
    how_many_training_steps: int = param(
        4000, "How many training steps to run.", minimum=1, cap="max_training_steps"
    )
    train_batch_size: int = param(100, "How many images to train on at a time.", minimum=1, maximum=10000)
    eval_step_interval: int = param(
        10, "How often to evaluate the training results (steps).", minimum=1, maximum=1000000
    )
    validation_batch_size: int = param(
        100,
        "How many images to use in an evaluation batch; -1 uses the whole validation set.",
        minimum=1,
        maximum=100000,
        also=(-1,),
    )
    test_batch_size: int = param(
        -1,
        "How many images to test on; -1 uses the whole test set (kept for TensorFlow for "
        "Poets' command lines; Poets always tests on the whole set).",
        minimum=1,
        maximum=100000,
        also=(-1,),
    )
    testing_percentage: int = param(
        10, "What percentage of images to use as a test set.", minimum=0, maximum=99
    )
    validation_percentage: int = param(
        10, "What percentage of images to use as a validation set.", minimum=0, maximum=99
    )
    flip_left_right: bool = param(False, "Whether to randomly flip half of the training images horizontally.")
    random_crop: int = param(
        0,
        "A percentage determining how much of a margin to randomly crop off the training images.",
        minimum=0,
        maximum=100,
    )
    random_scale: int = param(
        0,
        "A percentage determining how much to randomly scale up the size of the training images by.",
        minimum=0,
        maximum=100,
    )
    random_brightness: int = param(
        0,
        "A percentage determining how much to randomly multiply the training image input "
        "pixels up or down by.",
        minimum=0,
        maximum=100,
    )
    distorted_views: int = param(
        4, "Distorted views cached per training image when a distortion is on.", minimum=0, maximum=32
    )
    optimizer: str = param("adam", "Optimizer for the head.", choices=OPTIMIZERS)
    hidden_units: int = param(
        0,
        "Units of one hidden ReLU layer before the softmax; 0: none (poets' plain softmax).",
        minimum=0,
        maximum=8192,
    )
    resize: str = param(
        "squash", "How images are fitted to the backbone's square input.", choices=RESIZE_MODES
    )
    seed: int = param(
        0, "Seed of the head's initialisation and the batch draws.", minimum=0, maximum=MAX_SEED
    )
    print_misclassified_test_images: bool = param(
        False, "Whether to print out a list of all misclassified test images."
    )
    export: str = param(
        "saved_model",
        "Formats to export; the SavedModel is always written.",
        choices=EXPORT_FORMATS,
        listed=True,
    )
    recipe: str = param(
        "default",
        "A preset for the options you do not give: 'default' (Poets': pre-logits, Adam, "
        "cosine schedule, early stopping) or 'poets' (TensorFlow for "
        "Poets' head: logits bottleneck, plain SGD 0.01, constant rate, no early stopping).",
        choices=tuple(RECIPES),
    )
    learning_rate_schedule: str = param(
        "cosine",
        "'cosine': the rate rises over the first 5 percent of the steps, then decays to zero "
        "along a half cosine; 'constant': poets' fixed rate.",
        choices=SCHEDULES,
    )
    label_smoothing: float = param(
        0.0,
        "Share of each training target spread over all classes (0: plain one-hot).",
        minimum=0,
        maximum=0.5,
    )
    early_stopping_patience: int = param(
        1000,
        "Stop once this many steps pass without a lower validation cross-entropy, and keep "
        "the best weights (the exported head is the evaluated one); 0: run every step and "
        "keep the last weights, as poets does.",
        minimum=0,
        maximum=1000000,
    )
    cross_validate: int = param(
        0,
        "Also estimate accuracy by K-fold cross-validation over all images (K more "
        "trainings; for small datasets); the published head is still the one trained on "
        "the training split. 0: off.",
        minimum=2,
        maximum=20,
        also=(0,),
    )

    def __post_init__(self) -> None:
        # One spelling per architecture in the metadata (mobilenet_0.5_224 -> mobilenet_0.50_224).
        if isinstance(self.architecture, str):
            with contextlib.suppress(InvalidInput):  # if unknown, validate() says what is valid
                self.architecture = architectures.get(self.architecture).name

    @classmethod
    def parameters(cls) -> List[Param]:
        """Every parameter's definition, in declaration order."""
        found = []
        for spec in fields(cls):
            kind = cast(type, spec.type)
            found.append(Param(name=spec.name, kind=kind, default=spec.default, **spec.metadata["param"]))
        return found

    @classmethod
    def parameter(cls, name: str) -> Param:
        for found in cls.parameters():
            if found.name == name:
                return found
        raise KeyError(name)

    def to_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)

    def to_form(self, changed_only: bool = True) -> Dict[str, str]:
        """Form fields for ``POST /retrain`` (by default only values that differ from defaults)."""
        return {
            spec.name: spec.format(getattr(self, spec.name))
            for spec in self.parameters()
            if not changed_only or getattr(self, spec.name) != spec.default
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """Build from user input, rejecting unknown names and wrong types (not ranges: see validate).

        ``recipe`` is applied here: its preset fills the parameters ``data`` does not
        name (``TrainConfig(recipe="poets")`` alone only records the name).
        """
        specs = {spec.name: spec for spec in cls.parameters()}
        unknown = sorted(str(name) for name in data if name not in specs)
        if unknown:
            raise InvalidInput(
                "Unknown option(s) {}: valid ones are {}.".format(
                    ", ".join(_shown(name)[1:-1] for name in unknown[:10]), ", ".join(sorted(specs))
                )
            )
        values = {name: specs[name].parse(value) for name, value in data.items()}
        recipe = values.get("recipe", specs["recipe"].default)
        if isinstance(recipe, str) and recipe in RECIPES:
            # A preset fills what the caller did not give; given values win.
            values = dict(RECIPES[recipe], **values)
        return cls(**values)

    @classmethod
    def caps(cls, settings: Any) -> Dict[str, float]:
        """The deployment limits ``settings`` put on the parameters (their ``cap``)."""
        if settings is None:
            return {}
        return {spec.cap: getattr(settings, spec.cap) for spec in cls.parameters() if spec.cap is not None}

    def validate(self, settings: Any = None) -> None:
        """Raise :class:`InvalidInput` naming the first invalid value and what is valid.

        Args:
            settings: a :class:`poets.engine.settings.Settings`; its limits (such as
                ``POETS_MAX_TRAINING_STEPS``) apply. None: only the parameters' own ranges.
        """
        caps = self.caps(settings)
        for spec in self.parameters():
            spec.check(getattr(self, spec.name), caps)
        architectures.get(self.architecture)
        if self.testing_percentage + self.validation_percentage >= 100:
            raise InvalidInput(
                "testing_percentage + validation_percentage must be below 100, got {} + {}.".format(
                    self.testing_percentage, self.validation_percentage
                )
            )
        check_installed(parse_formats(self.export))


def check_installed(formats: Sequence[str]) -> None:
    """Refuse, at submit time, a format whose converter this installation lacks."""
    for fmt in formats:
        modules, extra = EXPORT_NEEDS.get(fmt, ((), ""))
        missing = [name for name in modules if importlib.util.find_spec(name) is None]
        if missing:
            raise UnsupportedExport(
                "The {} export needs {}, which this installation lacks: install the {} extra "
                "(pip install 'poets[{}]') or leave {} out of export.".format(
                    fmt, " and ".join(missing), extra, extra, fmt
                )
            )


def parse_formats(text: str) -> Tuple[str, ...]:
    """``"poets_graph,tflite"`` to the formats to write; ``saved_model`` is always in."""
    wanted = [item.strip() for item in (text or "").split(",") if item.strip()]
    unknown = [item for item in wanted if item not in EXPORT_FORMATS]
    if unknown:
        raise InvalidInput(
            "Unknown export format(s) {}: use a comma-separated list of {}.".format(
                ", ".join(_shown(item) for item in unknown[:10]), ", ".join(EXPORT_FORMATS)
            )
        )
    return tuple(f for f in EXPORT_FORMATS if f == "saved_model" or f in wanted)
