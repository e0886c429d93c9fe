"""The promotion gate as a phase of retrain: judge the candidate before it is published.

The candidate's answers on its test split come from its head on the bottlenecks already
computed (no second pass through the backbone); the current version's come from its recorded
test (:mod:`poets.engine.promotion`), or, for images its record lacks, from loading it once. What
the new version keeps, written beside its SavedModel: its own test record (so the next candidate
can be judged against it), the image ids it was trained on (retrain policies count what was added
since), and in ``poets.json`` the decision and its test set's distribution (drift is measured
against it while it serves).
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from poets.engine import drift, promotion
from poets.engine.data import library
from poets.engine.data.images import DEFAULT_MAX_PIXELS
from poets.engine.errors import ModelLoadError
from poets.engine.model.training import Head, predict
from poets.engine.store.models import VersionStore


@dataclass
class Judged:
    """The gate's outcome and what the new version records of itself."""

    outcome: Dict[str, Any]
    record: Dict[str, Any]
    drift_reference: Dict[str, Any]

    @property
    def promoted(self) -> bool:
        return bool(self.outcome["decision"] == "promoted")


def _current_answers(folder: Path, max_pixels: int) -> Any:
    """Answers of the version in ``folder`` for images, loaded only when first asked."""

    def answer(images: List[promotion.Scored]) -> List[str]:
        from poets.engine.predictor import Predictor  # TensorFlow; only when a frame needs it

        predictor = Predictor(folder)
        encoded = [Path(image.file).read_bytes() for image in images]
        return [ranked[0][0] for ranked in predictor.label(encoded, 1, max_pixels)]

    return answer


def judge(
    store: VersionStore,
    name: str,
    policy: promotion.GatePolicy,
    head: Head,
    test_x: np.ndarray,
    test_y: np.ndarray,
    test_paths: Sequence[str],
    digests: Dict[str, str],
    labels: Sequence[str],
    dataset_root: Path,
    dataset_images: Sequence[str],
    split: Dict[str, float],
    candidate_accuracy: Optional[float],
    training_paths: Sequence[str] = (),
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Judged:
    """Decide whether the candidate (``head`` on its test split) goes live.

    ``test_paths`` are absolute; ``digests`` maps a path to its content's SHA-256; the record
    names images relative to ``dataset_root``. Frames a person filed from review are known by
    the snapshot's record of them (:func:`poets.engine.data.library.snapshot_reviewed`).
    """
    scores = predict(head, test_x) if len(test_x) else np.zeros((0, len(labels)), np.float32)
    answers = scores.argmax(axis=1) if len(scores) else np.zeros((0,), np.int64)
    reviewed = library.snapshot_reviewed(dataset_root)
    candidate = [
        promotion.Scored(
            digests[path], path, labels[int(truth)], labels[int(answer)], os.path.basename(path) in reviewed
        )
        for path, truth, answer in zip(test_paths, test_y, answers)
    ]
    current = store.current(name)
    folder = store.path(name, current) if current is not None else None
    try:
        outcome = promotion.judge(
            candidate,
            labels,
            candidate_accuracy,
            current,
            promotion.read_record(folder) if folder is not None else None,
            list(store.metadata(name, current).get("labels") or []) if current is not None else [],
            _current_answers(folder, max_pixels) if folder is not None else lambda images: [],
            policy,
            training_digests=[digests[p] for p in training_paths if p in digests],
        )
    except ModelLoadError as exc:  # a current version that cannot load serves nobody: replace it
        outcome = promotion.judge(candidate, labels, candidate_accuracy, None, None, [], lambda i: [], policy)
        outcome["current"] = {"version": current, "accuracy": None, "error": exc.detail}
        if outcome["decision"] == "promoted":
            outcome["reason"] = (
                "Version {} cannot be loaded to compare with, so it serves nobody: like a first "
                "version, the new one only had the floor to clear.".format(current)
            )
    pinned = store.pinned(name)
    if pinned is not None and outcome["decision"] == "promoted":
        outcome["pinned"] = pinned
        outcome["reason"] += " It is published but not current: version {} is pinned.".format(pinned)
    relative = [
        promotion.Scored(
            s.sha256, os.path.relpath(s.file, str(dataset_root)), s.label, s.predicted, s.reviewed
        )
        for s in candidate
    ]
    record = dict(promotion.record(relative, labels, split), dataset_images=sorted(dataset_images))
    tops = scores.max(axis=1).tolist() if len(scores) else []
    reference = drift.reference(tops, [c.predicted for c in candidate], labels)
    return Judged(outcome, record, reference)
