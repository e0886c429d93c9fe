"""Retrain policies: when a model retrains itself, and why.

A policy names a dataset and when to retrain on it: once ``after_new_images`` images were added
since the model's newest version was trained (frames filed from the review inbox count: they are
images of the dataset like any other), and/or every ``every_hours`` hours when the dataset
changed. The newest version, current or not: one the promotion gate held was trained on those
images too, and retraining on them again at every tick would change nothing.
``min_interval_minutes`` keeps policy jobs apart, and no policy job starts while a job for the
model is queued or running. Deciding is :func:`due`, a pure function of what the caller read;
the scheduler (Celery beat, one per deployment) asks it on every tick.

Policies are small JSON files, ``<POETS_HOME>/policies/<model>.json``, written atomically.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from poets.engine.errors import InvalidInput
from poets.engine.model.config import TrainConfig
from poets.engine.store.models import check_name, write_atomic

FIELDS = ("dataset", "after_new_images", "every_hours", "min_interval_minutes", "params")
MAX_EVERY_HOURS = 24 * 366.0
MAX_INTERVAL_MINUTES = 7 * 24 * 60.0


def _number(data: Mapping[str, Any], key: str, kind: type, low: float, high: float) -> Any:
    value = data.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and int(value) != value)
    ):
        raise InvalidInput(
            "{} must be {}, got {!r}.".format(key, "an integer" if kind is int else "a number", value)
        )
    if not low <= value <= high:
        raise InvalidInput("{} must be between {:g} and {:g}, got {!r}.".format(key, low, high, value))
    return kind(value)


@dataclass(frozen=True)
class Policy:
    dataset: str
    after_new_images: Optional[int] = None
    every_hours: Optional[float] = None
    min_interval_minutes: float = 30.0
    params: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, settings: Any = None) -> "Policy":
        """Validate user input; ``params`` are retrain options, checked by their one definition."""
        if not isinstance(data, dict):
            raise InvalidInput("A policy is a JSON object with {}.".format(", ".join(FIELDS)))
        unknown = sorted(str(key) for key in data if key not in FIELDS)
        if unknown:
            raise InvalidInput(
                "Unknown policy field(s) {}: valid ones are {}.".format(", ".join(unknown), ", ".join(FIELDS))
            )
        dataset = data.get("dataset")
        if not isinstance(dataset, str) or not dataset:
            raise InvalidInput("dataset must name a dataset (see the datasets list).")
        after = _number(data, "after_new_images", int, 1, 10**9)
        every = _number(data, "every_hours", float, 0.01, MAX_EVERY_HOURS)
        if after is None and every is None:
            raise InvalidInput(
                "A policy needs after_new_images, every_hours or both: when should it retrain?"
            )
        interval = _number(data, "min_interval_minutes", float, 0, MAX_INTERVAL_MINUTES)
        params = data.get("params") or {}
        if not isinstance(params, dict):
            raise InvalidInput("params must be an object of retrain options.")
        TrainConfig.from_dict(params).validate(settings)
        return cls(dataset, after, every, 30.0 if interval is None else interval, dict(params))

    def to_dict(self) -> Dict[str, Any]:
        return {
            "dataset": self.dataset,
            "after_new_images": self.after_new_images,
            "every_hours": self.every_hours,
            "min_interval_minutes": self.min_interval_minutes,
            "params": dict(self.params),
        }


class PolicyStore:
    """One policy per model, as JSON files in a folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _path(self, name: str) -> Path:
        return self.folder / "{}.json".format(check_name(name))

    def get(self, name: str) -> Optional[Policy]:
        try:
            data = json.loads(self._path(name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return Policy(**data)

    def put(self, name: str, policy: Policy) -> None:
        write_atomic(self._path(name), json.dumps(policy.to_dict()))

    def delete(self, name: str) -> bool:
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            return False
        return True

    def all(self) -> Dict[str, Policy]:
        found = {}
        for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
            policy = self.get(path.stem)
            if policy is not None:
                found[path.stem] = policy
        return found


@dataclass(frozen=True)
class Situation:
    """What :func:`due` needs to know, read by the caller at one moment."""

    now: float
    images: Sequence[str]  # the dataset's image ids now
    fingerprint: Optional[str]  # the dataset's content fingerprint now
    trained_on: Optional[Sequence[str]]  # the newest version's image ids; None: no version yet
    trained_fingerprint: Optional[str] = None
    trained_at: Optional[float] = None  # when the newest version was made
    last_policy_job: Optional[float] = None  # when this policy last started a job
    busy: bool = False  # a job for the model is queued or running


def due(policy: Policy, situation: Situation) -> Dict[str, Any]:
    """``{"due": bool, "reason": str, "new_images": int, "next_due": UNIX time or None}``.

    ``next_due`` is the earliest time the policy may start a job (None: only when images come).
    """
    new = len(set(situation.images) - set(situation.trained_on or ()))
    answer: Dict[str, Any] = {"due": False, "new_images": new, "next_due": None}
    earliest = (situation.last_policy_job or 0.0) + policy.min_interval_minutes * 60.0
    reasons: List[str] = []
    if policy.after_new_images is not None and new >= policy.after_new_images:
        reasons.append(
            "{} image(s) added since the newest version was trained (after_new_images={}).".format(
                new, policy.after_new_images
            )
        )
    if policy.every_hours is not None:
        since = situation.trained_at if situation.trained_on is not None else None
        changed = situation.trained_on is None or situation.fingerprint != situation.trained_fingerprint
        period_end = (since or 0.0) + policy.every_hours * 3600.0
        if changed and situation.now >= period_end:
            reasons.append(
                "{:g} hour(s) passed and the dataset changed (every_hours).".format(policy.every_hours)
            )
        elif changed:
            answer["next_due"] = max(period_end, earliest)
    if not situation.images:
        answer["reason"] = "The dataset has no images."
        return answer
    if situation.busy:
        answer["reason"] = "A job for this model is queued or running."
        return answer
    if not reasons:
        waiting = []
        if policy.after_new_images is not None:
            waiting.append("{} more image(s)".format(policy.after_new_images - new))
        if answer["next_due"] is not None:
            waiting.append("the interval to pass")
        elif policy.every_hours is not None:
            waiting.append("the dataset to change")
        answer["reason"] = "Waiting for {}.".format(" or ".join(waiting))
        return answer
    if situation.now < earliest:
        answer.update(
            next_due=earliest,
            reason="Due, but a policy job started less than min_interval_minutes ago: " + reasons[0],
        )
        return answer
    answer.update(due=True, next_due=situation.now, reason=reasons[0])
    return answer
