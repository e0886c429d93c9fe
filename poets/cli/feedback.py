"""What ``poets retrain`` shows: progress bars while a job runs (here or on a server), its
TensorBoard run, and the accuracy line at the end."""

import sys
from pathlib import Path
from typing import Any, Dict, Optional

from poets.engine.phases import BOTTLENECKS, PHASES, TRAINING


def _later(phase: str, than: str) -> bool:
    """``phase`` comes after ``than`` in a job (not a redelivery starting over)."""
    return phase in PHASES and than in PHASES and PHASES.index(phase) > PHASES.index(than)


class Bars:
    """tqdm bars for the bottleneck and training phases of a job's progress events."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bar: Optional[Any] = None
        self._phase = ""

    def __call__(self, event: Dict[str, Any]) -> None:
        phase = event["phase"]
        if phase != self._phase:
            if self._bar is not None and self._bar.total and _later(phase, self._phase):
                # The phase ended (the service is polled, so its last event may be missed).
                self._bar.update(self._bar.total - self._bar.n)
            self.close()
            self._phase = phase
            total = event.get("total") or event.get("steps")
            if phase in (BOTTLENECKS, TRAINING) and total:
                unit = "img" if phase == BOTTLENECKS else "step"
                self._bar = self._tqdm(total=total, desc=phase, unit=unit, file=sys.stderr)
            elif phase not in (BOTTLENECKS, TRAINING):
                print("{}...".format(phase), file=sys.stderr)
        if self._bar is not None:
            position = event.get("done", event.get("step", 0))
            self._bar.update(position - self._bar.n)
            if phase == TRAINING and event.get("validation_accuracy") is not None:
                self._bar.set_postfix(
                    train="{:.3f}".format(event["train_accuracy"]),
                    val="{:.3f}".format(event["validation_accuracy"]),
                )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def tensorboard_run(folder: Path) -> Path:
    """A new TensorBoard run under ``folder`` for one retrain: runs of one model sit side
    by side instead of writing over each other's curves."""
    import time
    import uuid

    return folder / "{}-{}".format(time.strftime("%Y%m%d-%H%M%S"), uuid.uuid4().hex[:6])


def or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def print_accuracy(metrics: Dict[str, Any]) -> None:
    from poets.engine.model.metrics import accuracy_entry, format_accuracy

    n = metrics.get("test_n") or 0
    for variant, entry in sorted((metrics.get("tflite") or {}).items()):
        if entry.get("test_accuracy") is not None:
            # Scored on the same test images as the SavedModel.
            tflite = accuracy_entry(round(entry["test_accuracy"] * n), n)
            print(
                "TFLite {} test accuracy = {} ({} bytes)".format(
                    variant, format_accuracy(tflite["accuracy"], n, tflite["interval"]), entry["bytes"]
                )
            )
    cv = metrics.get("cross_validation")
    if cv:
        print(
            "Cross-validated accuracy ({}-fold) = {}".format(
                cv["k"], format_accuracy(cv["accuracy"], cv["n"], cv["interval"])
            )
        )
    print(
        "Final test accuracy = {}".format(
            format_accuracy(metrics.get("test_accuracy"), n, metrics.get("test_interval"))
        )
    )
    images = sum((metrics.get("images") or {}).values())
    if not cv and 0 < n < 100 and images > n:
        print(
            "Only {} test images: --cross_validate 5 scores all {} (5 more trainings).".format(n, images),
            file=sys.stderr,
        )
