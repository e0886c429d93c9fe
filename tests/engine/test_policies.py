"""Retrain policies: validation from one definition, storage, and when a policy is due."""

from pathlib import Path
from typing import Any

import pytest

from poets.engine.errors import InvalidInput
from poets.engine.policies import Policy, PolicyStore, Situation, due

pytestmark = pytest.mark.unit

HOUR = 3600.0
IDS = ["{:064x}.jpg".format(i) for i in range(100)]


def test_validation_names_what_to_fix() -> None:
    good = Policy.from_dict(
        {
            "dataset": "yard",
            "after_new_images": 50,
            "every_hours": 24,
            "params": {"how_many_training_steps": 500},
        }
    )
    assert good.to_dict() == {
        "dataset": "yard",
        "after_new_images": 50,
        "every_hours": 24.0,
        "min_interval_minutes": 30.0,
        "params": {"how_many_training_steps": 500},
    }
    cases: Any = [
        ([], "JSON object"),
        ({"dataset": "yard", "after_new_images": 5, "colour": "red"}, "Unknown policy field"),
        ({"after_new_images": 5}, "dataset must name"),
        ({"dataset": "yard"}, "after_new_images, every_hours or both"),
        ({"dataset": "yard", "after_new_images": -3}, "after_new_images must be between 1"),
        ({"dataset": "yard", "after_new_images": 2.5}, "after_new_images must be an integer"),
        ({"dataset": "yard", "after_new_images": True}, "must be an integer"),
        ({"dataset": "yard", "every_hours": 0}, "every_hours must be between"),
        ({"dataset": "yard", "every_hours": "daily"}, "every_hours must be a number"),
        (
            {"dataset": "yard", "every_hours": 1, "min_interval_minutes": -1},
            "min_interval_minutes must be between 0",
        ),
        ({"dataset": "yard", "every_hours": 1, "params": {"no_such_option": 1}}, "Unknown option"),
        ({"dataset": "yard", "every_hours": 1, "params": {"learning_rate": -1}}, "learning_rate"),
        ({"dataset": "yard", "every_hours": 1, "params": "fast"}, "params must be an object"),
    ]
    for body, message in cases:
        with pytest.raises(InvalidInput, match=message):
            Policy.from_dict(body)


def test_store_round_trip(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path / "policies")
    assert store.get("cams") is None and store.all() == {}
    policy = Policy.from_dict({"dataset": "yard", "after_new_images": 3})
    store.put("cams", policy)
    assert store.get("cams") == policy and store.all() == {"cams": policy}
    assert store.delete("cams") and not store.delete("cams")
    with pytest.raises(InvalidInput):
        store.put("../escape", policy)


def _situation(**changes: Any) -> Situation:
    base: Any = dict(
        now=100 * HOUR,
        images=IDS[:60],
        fingerprint="f2",
        trained_on=IDS[:10],
        trained_fingerprint="f1",
        trained_at=90 * HOUR,
        last_policy_job=None,
        busy=False,
    )
    base.update(changes)
    return Situation(**base)


def test_after_new_images_counts_images_added_since_the_current_version() -> None:
    policy = Policy.from_dict({"dataset": "yard", "after_new_images": 50})
    assert due(policy, _situation())["due"] is True
    assert due(policy, _situation())["new_images"] == 50
    waiting = due(policy, _situation(images=IDS[:59]))
    assert (
        not waiting["due"]
        and waiting["reason"] == "Waiting for 1 more image(s)."
        and waiting["next_due"] is None
    )
    # Deleting trained images and adding as many new ones still counts the new ones.
    assert due(policy, _situation(images=IDS[5:60] + IDS[60:65]))["new_images"] == 55
    first = due(policy, _situation(trained_on=None, images=IDS[:50]))
    assert first["due"] and first["new_images"] == 50  # no version yet: every image is new


def test_every_hours_needs_the_interval_and_a_changed_dataset() -> None:
    policy = Policy.from_dict({"dataset": "yard", "every_hours": 24})
    early = due(policy, _situation(now=100 * HOUR, trained_at=90 * HOUR))
    assert not early["due"] and early["next_due"] == 114 * HOUR
    late = due(policy, _situation(now=115 * HOUR, trained_at=90 * HOUR))
    assert late["due"] and "24 hour(s) passed" in late["reason"]
    same = due(policy, _situation(now=500 * HOUR, fingerprint="f1"))
    assert not same["due"] and same["reason"] == "Waiting for the dataset to change."


def test_never_while_busy_nor_within_the_minimum_interval() -> None:
    policy = Policy.from_dict({"dataset": "yard", "after_new_images": 10, "min_interval_minutes": 30})
    busy = due(policy, _situation(busy=True))
    assert not busy["due"] and busy["reason"] == "A job for this model is queued or running."
    recent = due(policy, _situation(last_policy_job=100 * HOUR - 600))
    assert not recent["due"] and recent["next_due"] == 100 * HOUR + 1200
    assert "min_interval_minutes" in recent["reason"]
    assert due(policy, _situation(last_policy_job=100 * HOUR - 1800))["due"]
    empty = due(policy, _situation(images=[], trained_on=None))
    assert not empty["due"] and empty["reason"] == "The dataset has no images."
