"""Settings are range-checked once, where they are read: a clear error names the variable and
the allowed range, so no caller clamps them."""

from dataclasses import fields
from typing import Any, List, Tuple

import pytest

from poets.engine.settings import Settings

pytestmark = pytest.mark.unit


def _ranged() -> List[Tuple[str, Any, Any, Any]]:
    """(variable, parse, at_least, at_most) of every range-checked setting."""
    rows = []
    for spec in fields(Settings):
        meta = spec.metadata
        if meta["at_least"] is not None or meta["at_most"] is not None:
            rows.append((meta["env"], meta["parse"], meta["at_least"], meta["at_most"]))
    return rows


RANGED = _ranged()
IDS = [row[0] for row in RANGED]


def test_every_number_has_a_range() -> None:
    """A new numeric setting gets a range too (strings, paths and flags have none)."""
    numeric = {spec.metadata["env"] for spec in fields(Settings) if spec.metadata["parse"] in (int, float)}
    assert numeric == set(IDS)


def test_the_defaults_are_in_range() -> None:
    Settings()


@pytest.mark.parametrize("variable, parse, at_least, at_most", RANGED, ids=IDS)
def test_the_bounds_are_allowed(variable: str, parse: Any, at_least: Any, at_most: Any) -> None:
    for bound in (at_least, at_most):
        if bound is not None:
            Settings.from_env({variable: str(parse(bound))})


@pytest.mark.parametrize("variable, parse, at_least, at_most", RANGED, ids=IDS)
def test_out_of_range_is_refused_naming_the_variable_and_range(
    variable: str, parse: Any, at_least: Any, at_most: Any
) -> None:
    outside = []
    if at_least is not None:
        outside.append(at_least - 1 if parse is int else at_least / 2 - 0.01)
    if at_most is not None:
        outside.append(at_most + 1)
    allowed = "at least {:g}".format(at_least)
    if at_most is not None:
        allowed += " and at most {:g}".format(at_most)
    for value in outside:
        with pytest.raises(ValueError) as caught:
            Settings.from_env({variable: str(parse(value))})
        assert str(caught.value).startswith(variable + "=")
        assert "allowed: {}.".format(allowed) in str(caught.value)


def test_not_a_number_is_refused() -> None:
    refused = "POETS_COLLECT_FRACTION=nan: out of range; allowed: at least 0 and at most 1"
    with pytest.raises(ValueError, match=refused):
        Settings.from_env({"POETS_COLLECT_FRACTION": "nan"})


def test_settings_built_in_code_are_checked_too() -> None:
    with pytest.raises(ValueError, match="POETS_MAX_LOADED_MODELS=0: out of range; allowed: at least 1"):
        Settings(max_loaded_models=0)


def test_a_threshold_above_every_score_is_allowed() -> None:
    """POETS_COLLECT_THRESHOLD above 1 keeps every frame (the browser tests use 1.01)."""
    assert Settings.from_env({"POETS_COLLECT_THRESHOLD": "1.01"}).collect_threshold == 1.01
