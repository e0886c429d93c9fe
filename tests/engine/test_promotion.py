"""The promotion gate's decision: which images are compared, with which labels, and the verdict."""

from typing import Dict, List, Optional, Sequence

import pytest

from poets.engine.errors import InvalidInput
from poets.engine.promotion import GatePolicy, Scored, judge, mcnemar_p, read_record, record, write_record

pytestmark = pytest.mark.unit

LABELS = ["daisy", "roses", "tulips"]
SPLIT = {"testing_percentage": 20.0, "validation_percentage": 10.0}


def _images(
    truths: Sequence[str], answers: Sequence[str], start: int = 0, reviewed: bool = False
) -> List[Scored]:
    return [
        Scored("{:064x}".format(start + i), "{}/{}.jpg".format(t, start + i), t, a, reviewed)
        for i, (t, a) in enumerate(zip(truths, answers))
    ]


def _reference(truths: Sequence[str], answers: Sequence[str]) -> Dict:  # type: ignore[type-arg]
    return record(_images(truths, answers), LABELS, SPLIT)


def _never(images: List[Scored]) -> List[str]:
    raise AssertionError("the current version was scored although its record answers: {}".format(images))


def _judge(
    candidate: List[Scored], reference: Optional[Dict], policy: GatePolicy = GatePolicy(), **kw
) -> Dict:  # type: ignore[type-arg, no-untyped-def]
    return judge(
        candidate,
        kw.pop("candidate_labels", LABELS),
        kw.pop("accuracy", 0.9),
        kw.pop("current_version", 1),
        reference,
        kw.pop("current_labels", LABELS),
        kw.pop("score_current", _never),
        policy,
        **kw,
    )


TRUTH = ["daisy"] * 4 + ["roses"] * 4 + ["tulips"] * 4
CURRENT_ANSWERS = [*TRUTH[:10], "daisy", "daisy"]  # 10 of 12 right


def test_a_poisoned_dataset_cannot_vouch_for_itself() -> None:
    """Labels shuffled between classes: the candidate agrees with its own wrong labels, and is held."""
    shuffled = {"daisy": "roses", "roses": "tulips", "tulips": "daisy"}
    poisoned = [shuffled[t] for t in TRUTH]
    candidate = _images(poisoned, poisoned)  # 100% on its own (wrong) test labels
    outcome = _judge(candidate, _reference(TRUTH, CURRENT_ANSWERS), accuracy=1.0)
    assert outcome["decision"] == "held"
    assert outcome["compared"]["n"] == 12 and outcome["compared"]["relabelled"] == 12
    assert outcome["candidate"]["accuracy"] == 0.0
    assert outcome["current"] == {"version": 1, "accuracy": 10 / 12}
    assert "Less accurate than the current version on 12 image(s)" in outcome["reason"]
    assert "0.0% against 83.3% (-83.3 points" in outcome["reason"]


def test_a_better_candidate_goes_live_and_a_worse_one_within_tolerance_too() -> None:
    better = _judge(_images(TRUTH, TRUTH), _reference(TRUTH, CURRENT_ANSWERS))
    assert better["decision"] == "promoted"
    assert better["compared"]["candidate_only"] == 2 and better["compared"]["current_only"] == 0
    assert better["compared"]["change_points"] == pytest.approx(100 * 2 / 12)

    # 9 of 12: wrong on the two the current gets wrong, and on one it gets right.
    worse = _images(TRUTH, [*TRUTH[:9], "daisy", "daisy", "daisy"])
    assert _judge(worse, _reference(TRUTH, CURRENT_ANSWERS))["decision"] == "held"
    tolerant = _judge(worse, _reference(TRUTH, CURRENT_ANSWERS), GatePolicy(tolerance=10.0))
    assert tolerant["decision"] == "promoted"  # -8.3 points, within 10


def test_equal_accuracy_is_at_least_as_good() -> None:
    outcome = _judge(_images(TRUTH, CURRENT_ANSWERS), _reference(TRUTH, CURRENT_ANSWERS))
    assert outcome["decision"] == "promoted"
    assert outcome["compared"]["change_points"] == 0.0


def test_floor_and_always() -> None:
    held = _judge(_images(TRUTH, TRUTH), _reference(TRUTH, CURRENT_ANSWERS), GatePolicy(min_accuracy=0.99))
    assert held["decision"] == "promoted"  # 100% clears 99%
    low = _images(TRUTH, CURRENT_ANSWERS)
    floor = _judge(low, _reference(TRUTH, CURRENT_ANSWERS), GatePolicy(min_accuracy=0.9))
    assert floor["decision"] == "held" and "POETS_PROMOTE_MIN_ACCURACY" in floor["reason"]
    shuffled = _images(["roses"] * 12, ["roses"] * 12)
    always = _judge(shuffled, _reference(TRUTH, CURRENT_ANSWERS), GatePolicy(mode="always"))
    assert always["decision"] == "promoted" and "POETS_PROMOTE=always" in always["reason"]
    assert always["compared"]["candidate_accuracy"] == 4 / 12  # the figures are still there


def test_the_first_version_has_nothing_to_beat_but_the_floor() -> None:
    first = _judge(_images(TRUTH, TRUTH), None, current_version=None, accuracy=0.5)
    assert first["decision"] == "promoted" and first["current"] is None
    floor = _judge(
        _images(TRUTH, TRUTH), None, GatePolicy(min_accuracy=0.6), current_version=None, accuracy=0.5
    )
    assert floor["decision"] == "held" and "under the floor 60.0%" in floor["reason"]


def test_changed_split_and_changed_classes_leave_images_out_and_say_so() -> None:
    reference = _reference(TRUTH, CURRENT_ANSWERS)
    candidate = _images(TRUTH[:8], TRUTH[:8])  # the tulips moved to training (percentages changed)
    trained = ["{:064x}".format(i) for i in range(8, 10)]  # two of them; the other two were deleted
    outcome = _judge(candidate, reference, training_digests=trained)
    assert outcome["compared"]["n"] == 8
    assert outcome["compared"]["left_out"] == {
        "unverified": 0,
        "trained_on": 2,
        "gone": 2,
        "label_not_shared": 0,
    }

    # A class removed from the candidate: its images cannot be scored fairly by both.
    fewer = _judge(_images(TRUTH, TRUTH), reference, candidate_labels=["daisy", "roses"])
    assert fewer["compared"]["n"] == 8 and fewer["compared"]["left_out"]["label_not_shared"] == 4


def test_new_images_count_only_when_a_person_filed_them() -> None:
    reference = _reference(TRUTH, CURRENT_ANSWERS)
    unverified = _images(["roses"] * 3, ["roses"] * 3, start=100)
    frames = _images(["tulips", "tulips"], ["tulips", "tulips"], start=200, reviewed=True)
    asked: List[List[str]] = []

    def current_answers(images: List[Scored]) -> List[str]:
        asked.append([image.sha256 for image in images])
        return ["daisy" for _ in images]  # the current version gets both frames wrong

    outcome = _judge(_images(TRUTH, TRUTH) + unverified + frames, reference, score_current=current_answers)
    assert asked == [[frame.sha256 for frame in frames]]  # only the frames it had not answered
    assert outcome["compared"]["n"] == 14 and outcome["compared"]["reviewed"] == 2
    assert outcome["compared"]["left_out"]["unverified"] == 3
    assert outcome["compared"]["candidate_only"] == 4


def test_without_a_record_the_new_test_split_is_scored_by_both() -> None:
    candidate = _images(TRUTH, TRUTH)
    outcome = _judge(candidate, None, score_current=lambda images: [i.label for i in images])
    assert outcome["decision"] == "promoted" and outcome["compared"]["on"] == "candidate_test_split"
    assert outcome["compared"]["n"] == 12


def test_nothing_to_compare_on_holds() -> None:
    outcome = _judge(_images(["roses"] * 3, ["roses"] * 3, start=50), _reference(TRUTH, CURRENT_ANSWERS))
    assert outcome["decision"] == "held" and "No image to compare" in outcome["reason"]


def test_mcnemar_exact() -> None:
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(10, 0) == pytest.approx(2 * 0.5**10)
    assert mcnemar_p(3, 3) == 1.0
    assert mcnemar_p(1, 4) == pytest.approx(2 * (1 + 5) / 32)


def test_record_round_trip_and_policy_checks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    evaluation = _reference(TRUTH, CURRENT_ANSWERS)
    write_record(tmp_path, evaluation)
    assert read_record(tmp_path) == evaluation
    assert read_record(tmp_path / "none") is None
    for bad in (dict(mode="sometimes"), dict(tolerance=-1.0), dict(min_accuracy=2.0)):
        with pytest.raises(InvalidInput, match="POETS_PROMOTE"):
            GatePolicy(**bad)  # type: ignore[arg-type]
