"""What a retrain returns, and the small JSON summary a job reports of it."""

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple


@dataclass
class RetrainResult:
    name: str
    version: int
    path: Path
    metrics: Dict[str, Any]
    labels: List[str]
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    bottlenecks_computed: int = 0
    bottlenecks_cached: int = 0  # includes those pulled from the shared bucket
    timings: Dict[str, float] = field(default_factory=dict)
    root: Optional[Path] = None  # the dataset folder: listed paths are relative to it
    promotion: Optional[Dict[str, Any]] = None  # the gate's decision (poets.engine.promotion)
    # What the shared bottleneck bucket gave and took (Transfer.to_dict), when there is one.
    bottlenecks_shared: Optional[Dict[str, Any]] = None

    def summary(self, max_listed: int = 100) -> Dict[str, Any]:
        """JSON-friendly result, as jobs report it: small whatever the dataset's size.

        Paths are relative to the dataset (the version as ``<name>/<version>``, relative to
        the store); the skipped and misclassified lists hold at most ``max_listed`` entries
        (POETS_MAX_LISTED_FILES), with their full counts beside them.
        """

        def relative(path: str) -> str:
            if self.root is None or not os.path.isabs(path):
                return path
            return os.path.relpath(path, str(self.root))

        metrics = dict(self.metrics)
        misclassified = list(metrics.get("misclassified") or [])
        metrics["misclassified"] = [
            dict(entry, path=relative(str(entry["path"]))) for entry in misclassified[:max_listed]
        ]
        metrics["misclassified_count"] = len(misclassified)
        return {
            "name": self.name,
            "version": self.version,
            "path": "{}/{}".format(self.name, self.version),
            "metrics": metrics,
            "labels": self.labels,
            "skipped": [{"path": relative(p), "reason": r} for p, r in self.skipped[:max_listed]],
            "skipped_count": len(self.skipped),
            "bottlenecks_computed": self.bottlenecks_computed,
            "bottlenecks_cached": self.bottlenecks_cached,
            "bottlenecks_shared": self.bottlenecks_shared,
            "timings": self.timings,
            "promotion": self.promotion,
        }
