"""The promotion gate's cost in a warm retrain's wall time.

Trains a first version of flowers_small with the real MobileNet (bottlenecks computed once,
outside the figures), then retrains it warm several times, alternating the gate on
(``if_better``: judged against the current version's record) and off (``always``: the figures
are still computed, nothing decides). Prints the judging phase's own time, each retrain's total,
and the gate's share: the baseline is the same warm retrain measured in the same run.

    .venv/bin/python -m bench.gate [--steps 1000] [--rounds 3]
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from poets.engine.model.bottlenecks import BottleneckCache
from poets.engine.model.training import TrainConfig
from poets.engine.promotion import GatePolicy
from poets.engine.retrain import retrain
from poets.engine.store.models import ModelStore
from tests import assets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    flowers = assets.datasets_dir() / "flowers_small"
    backbones = assets.backbone_dir()
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        store, cache = ModelStore(home / "models"), BottleneckCache(home / "bottlenecks")
        config = TrainConfig(how_many_training_steps=args.steps)

        def once(policy: GatePolicy) -> Dict[str, float]:
            started = time.perf_counter()
            result = retrain(flowers, config, store, cache, backbones, name="flowers", promote=policy)
            return {"total": time.perf_counter() - started, "judging": result.timings.get("judging_s", 0.0)}

        print("first version (cold: bottlenecks)...", file=sys.stderr)
        once(GatePolicy(mode="always"))
        runs: Dict[str, List[Dict[str, float]]] = {"if_better": [], "always": []}
        for round_ in range(args.rounds):
            for mode in ("if_better", "always"):
                print("round {} {}...".format(round_ + 1, mode), file=sys.stderr)
                runs[mode].append(once(GatePolicy(mode=mode)))
    print("| gate | warm retrain (median of {}) | judging phase | judging / retrain |".format(args.rounds))
    print("|---|---:|---:|---:|")
    for mode, found in runs.items():
        total = statistics.median(r["total"] for r in found)
        judging = statistics.median(r["judging"] for r in found)
        print("| {} | {:.2f} s | {:.3f} s | {:.1%} |".format(mode, total, judging, judging / total))
    return 0


if __name__ == "__main__":
    sys.exit(main())
