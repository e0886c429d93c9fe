"""The promotion gate: a new version goes live only when it is at least as good as the current one.

As TFX's Evaluator and Pusher do, a candidate is judged against the version now serving by
scoring both on the same images, images neither trained on, and only then made current. The
hard part is which labels to trust: a dataset whose labels went wrong must not vouch for itself.
So the comparison uses:

* the **reference**: the images the current version was tested on, with the labels they had
  when it was published (each version records them in :data:`EVALUATION_FILE`, with its own
  answer for each). An image is recognised by its content, wherever it was filed since, and
  keeps its recorded label even where the new dataset files it elsewhere;
* **reviewed frames**: camera frames that a person filed from the review inbox (their label is
  a person's word, and they come from where the model is deployed), scored by both versions;
* nothing else: a new image that only the new dataset labels is not evidence.

Only images in the candidate's test split count (it did not train on them). Poets' split is
stable by file name, and stored names follow content, so a reference image stays in the test
split as the dataset grows; when the split percentages change, reference images that moved into
the candidate's training or validation split are left out and counted. Images whose trusted label
is not a class of both versions are left out too (a class added or removed): neither can be
scored fairly on them. The decision is a paired comparison on what is left: both versions score
the same images, and the candidate may lose at most ``tolerance`` points of accuracy there.
A current version with no record (published by an older Poets, or imported) is compared on the
candidate's own test images, scored by both, and the result says so.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from poets.engine.errors import InvalidInput

EVALUATION_FILE = "evaluation.json"
MODES = ("if_better", "always")


@dataclass(frozen=True)
class GatePolicy:
    """How a candidate is judged (POETS_PROMOTE, POETS_PROMOTE_TOLERANCE, POETS_PROMOTE_MIN_ACCURACY)."""

    mode: str = "if_better"
    tolerance: float = 0.0  # points of accuracy the candidate may lose on the compared images
    min_accuracy: float = 0.0  # an absolute floor, 0 to 1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidInput(
                "POETS_PROMOTE must be one of {}, not {!r}.".format(", ".join(MODES), self.mode)
            )
        if not 0.0 <= self.tolerance <= 100.0:
            raise InvalidInput("POETS_PROMOTE_TOLERANCE is in points of accuracy, 0 to 100.")
        if not 0.0 <= self.min_accuracy <= 1.0:
            raise InvalidInput("POETS_PROMOTE_MIN_ACCURACY is an accuracy, 0 to 1.")


def policy_of(settings: Any) -> GatePolicy:
    """The gate's policy from :class:`poets.engine.settings.Settings`."""
    return GatePolicy(settings.promote, settings.promote_tolerance, settings.promote_min_accuracy)


@dataclass(frozen=True)
class Scored:
    """One test image of a version: its content digest, where it was filed, its label, the answer."""

    sha256: str
    file: str
    label: str
    predicted: str
    reviewed: bool = False


def record(images: Sequence[Scored], labels: Sequence[str], split: Dict[str, float]) -> Dict[str, Any]:
    """What a version keeps of its test: every test image with its label and the version's answer."""
    return {
        "labels": list(labels),
        "split": dict(split),
        "images": [
            {
                "sha256": s.sha256,
                "file": s.file,
                "label": s.label,
                "predicted": s.predicted,
                "reviewed": s.reviewed,
            }
            for s in images
        ],
    }


def write_record(folder: Path, evaluation: Dict[str, Any]) -> None:
    (folder / EVALUATION_FILE).write_text(json.dumps(evaluation), encoding="utf-8")


def read_record(folder: Path) -> Optional[Dict[str, Any]]:
    """A version's record; None for a version published without one."""
    try:
        data = json.loads((folder / EVALUATION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("images"), list) else None


def mcnemar_p(candidate_only: int, current_only: int) -> float:
    """Two-sided exact McNemar test: how likely a split this uneven of the discordant pairs is by chance."""
    n = candidate_only + current_only
    if n == 0:
        return 1.0
    low = min(candidate_only, current_only)
    # P(X <= low) for X ~ Binomial(n, 1/2), term by term (math.comb is Python 3.8+).
    term = tail = 0.5**n
    for k in range(1, low + 1):
        term *= (n - k + 1) / k
        tail += term
    return min(1.0, 2.0 * tail)


def _figures(pairs: Sequence[Any]) -> Dict[str, Any]:
    """Paired counts over (truth, candidate answer, current answer) triples."""
    both = sum(1 for truth, cand, cur in pairs if cand == truth and cur == truth)
    candidate_only = sum(1 for truth, cand, cur in pairs if cand == truth and cur != truth)
    current_only = sum(1 for truth, cand, cur in pairs if cand != truth and cur == truth)
    n = len(pairs)
    return {
        "n": n,
        "both_right": both,
        "candidate_only": candidate_only,
        "current_only": current_only,
        "both_wrong": n - both - candidate_only - current_only,
        "candidate_accuracy": (both + candidate_only) / n if n else None,
        "current_accuracy": (both + current_only) / n if n else None,
        "change_points": 100.0 * (candidate_only - current_only) / n if n else None,
        "p_value": mcnemar_p(candidate_only, current_only),
    }


def compared_images(
    candidate: Sequence[Scored],
    candidate_labels: Sequence[str],
    reference: Optional[Dict[str, Any]],
    current_labels: Sequence[str],
    training_digests: Sequence[str],
) -> Dict[str, Any]:
    """Which images the two versions are compared on, with the label trusted for each.

    Returns ``{"images": [(Scored, trusted label, current's recorded answer or None)], "left_out": {...}}``.
    """
    shared_labels = set(candidate_labels) & set(current_labels)
    left_out = {"unverified": 0, "trained_on": 0, "gone": 0, "label_not_shared": 0}
    chosen: List[Any] = []
    if reference is None:  # nothing recorded: the candidate's own test images, as labelled now
        for image in candidate:
            if image.label in shared_labels:
                chosen.append((image, image.label, None))
            else:
                left_out["label_not_shared"] += 1
        return {"images": chosen, "left_out": left_out, "relabelled": 0}
    recorded = {entry["sha256"]: entry for entry in reference["images"]}
    in_test = {image.sha256 for image in candidate}
    trained = set(training_digests)
    for digest in recorded:
        if digest not in in_test:
            left_out["trained_on" if digest in trained else "gone"] += 1
    for image in candidate:
        entry = recorded.get(image.sha256)
        if entry is None and not image.reviewed:
            left_out["unverified"] += 1
            continue
        truth = entry["label"] if entry is not None else image.label
        if truth not in shared_labels:
            left_out["label_not_shared"] += 1
            continue
        chosen.append((image, truth, entry["predicted"] if entry is not None else None))
    # Not left out: filed under another label now, they are compared with their recorded one.
    relabelled = sum(
        1 for image in candidate if recorded.get(image.sha256, {}).get("label", image.label) != image.label
    )
    return {"images": chosen, "left_out": left_out, "relabelled": relabelled}


def judge(
    candidate: Sequence[Scored],
    candidate_labels: Sequence[str],
    candidate_accuracy: Optional[float],
    current_version: Optional[int],
    reference: Optional[Dict[str, Any]],
    current_labels: Sequence[str],
    score_current: Callable[[List[Scored]], List[str]],
    policy: GatePolicy,
    training_digests: Sequence[str] = (),
) -> Dict[str, Any]:
    """Decide whether the candidate goes live: ``{"decision": "promoted" | "held", "reason", ...}``.

    ``score_current`` answers, with the current version, for the images its record lacks (reviewed
    frames filed since, or every image when it has no record); it is not called otherwise.
    """
    if current_version is None:
        return _first_version(candidate_accuracy, policy)
    chosen = compared_images(candidate, candidate_labels, reference, current_labels, training_digests)
    unscored = [image for image, _, answer in chosen["images"] if answer is None]
    answers = iter(score_current(unscored) if unscored else [])
    pairs = [
        (truth, image.predicted, answer if answer is not None else next(answers))
        for image, truth, answer in chosen["images"]
    ]
    figures = _figures(pairs)
    outcome: Dict[str, Any] = {
        "policy": {"mode": policy.mode, "tolerance": policy.tolerance, "min_accuracy": policy.min_accuracy},
        "current": {"version": current_version, "accuracy": figures["current_accuracy"]},
        "candidate": {"accuracy": figures["candidate_accuracy"], "test_accuracy": candidate_accuracy},
        "compared": dict(
            figures,
            on="reference" if reference is not None else "candidate_test_split",
            reviewed=sum(1 for image, _, _ in chosen["images"] if image.reviewed),
            left_out=chosen["left_out"],
            relabelled=chosen["relabelled"],
        ),
    }
    decision, reason = _decide(figures, policy, reference is not None)
    outcome.update(decision=decision, reason=reason)
    return outcome


def _decide(figures: Dict[str, Any], policy: GatePolicy, has_reference: bool) -> Any:
    n = figures["n"]
    if policy.mode == "always":
        return "promoted", "POETS_PROMOTE=always: every new version goes live."
    if n == 0:
        return "held", (
            "No image to compare the two versions on: none of the current version's test images is in "
            "the new test split, and no reviewed frame is. Activate it by hand if it is right."
        )
    cand, cur, change = figures["candidate_accuracy"], figures["current_accuracy"], figures["change_points"]
    where = "on {} image(s) {}".format(
        n, "the current version was tested on or a person filed" if has_reference else "of the new test split"
    )
    if cand < policy.min_accuracy:
        return "held", "Accuracy {:.1%} {} is under the floor {:.1%} (POETS_PROMOTE_MIN_ACCURACY).".format(
            cand, where, policy.min_accuracy
        )
    if change < -policy.tolerance:
        return "held", (
            "Less accurate than the current version {}: {:.1%} against {:.1%} ({:+.1f} points; "
            "{} right only by the current, {} only by the new; POETS_PROMOTE_TOLERANCE={:g})."
        ).format(
            where, cand, cur, change, figures["current_only"], figures["candidate_only"], policy.tolerance
        )
    return (
        "promoted",
        "At least as accurate as the current version {}: {:.1%} against {:.1%} ({:+.1f} points).".format(
            where, cand, cur, change
        ),
    )


def _first_version(accuracy: Optional[float], policy: GatePolicy) -> Dict[str, Any]:
    outcome: Dict[str, Any] = {
        "policy": {"mode": policy.mode, "tolerance": policy.tolerance, "min_accuracy": policy.min_accuracy},
        "current": None,
        "candidate": {"accuracy": accuracy, "test_accuracy": accuracy},
        "compared": None,
    }
    if policy.mode == "if_better" and accuracy is not None and accuracy < policy.min_accuracy:
        reason = (
            "The first version has nothing to beat, but its test accuracy {:.1%} is under the floor "
            "{:.1%} (POETS_PROMOTE_MIN_ACCURACY).".format(accuracy, policy.min_accuracy)
        )
        return dict(outcome, decision="held", reason=reason)
    return dict(outcome, decision="promoted", reason="The first version of this model: nothing to beat.")
