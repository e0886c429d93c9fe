"""TensorFlow for Poets 2, timed on the same photos and the same frozen MobileNet.

    .venv/bin/python -m bench.poets_baseline --poets-scripts DIR [--steps 4000] [--label-calls 5]

``DIR`` holds the codelab's ``scripts/retrain.py`` and ``scripts/label_image.py``
(https://github.com/googlecodelabs/tensorflow-for-poets-2; not shipped with Poets).
They are TensorFlow 1 programs; they run here, unmodified, under today's TensorFlow
through ``tensorflow.compat.v1`` with v2 behaviour off (what a user on a current
TensorFlow would do), in a child process each, so their time includes starting
Python and TensorFlow, as a user pays it.

The backbone is the same frozen graph Poets' tests and benches use
(``tests.assets.poets_graph()``: MobileNet v1 1.0 224), handed to retrain.py as the
``mobilenet_v1_1.0_224_frozen.tgz`` it would otherwise download, so nothing is
fetched. retrain.py's new layer is named ``poets_result`` because that graph already
holds a ``final_result``.

Rows: retrain.py cold (empty bottleneck folder), retrain.py warm (the same folder
again), and the mean time of one ``label_image.py`` call on a 500x333 photo.
"""

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import assets  # noqa: E402

# Runs a TF1 script under tensorflow.compat.v1: ``python -c SHIM script.py args...``.
SHIM = r"""
import runpy, sys
import tensorflow.compat.v1 as tf
tf.disable_v2_behavior()
from tensorflow.python.framework import graph_util, tensor_shape
if not hasattr(graph_util, "convert_variables_to_constants"):
    graph_util.convert_variables_to_constants = tf.graph_util.convert_variables_to_constants
if not hasattr(tensor_shape, "scalar"):
    tensor_shape.scalar = lambda: tensor_shape.TensorShape([])
sys.modules["tensorflow"] = tf
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, __import__("os").path.dirname(script))
runpy.run_path(script, run_name="__main__")
"""

ARCHITECTURE = "mobilenet_1.0_224"
TGZ = "mobilenet_v1_1.0_224_frozen.tgz"
FINAL = "poets_result"


def find_scripts(folder: Path) -> Tuple[Path, Path]:
    """retrain.py and label_image.py in ``folder`` or its ``scripts/``."""
    for base in (folder, folder / "scripts"):
        retrain, label = base / "retrain.py", base / "label_image.py"
        if retrain.is_file() and label.is_file():
            return retrain, label
    raise SystemExit(
        "--poets-scripts {}: no retrain.py and label_image.py there (nor in its scripts/)".format(folder)
    )


def run_timed(argv: Sequence[str], log: Any, env: Dict[str, str]) -> Tuple[float, float, str]:
    """(seconds, peak RSS MiB, output) of one child process; raises if it fails."""
    started = time.perf_counter()
    process = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert process.stdout is not None
    output = process.stdout.read()
    # wait4: this child's own peak RSS (ru_maxrss, KiB on Linux), not every child's.
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    rss = usage.ru_maxrss / 1024.0
    text = output.decode(errors="replace")
    log.write(text)
    if process.returncode != 0:
        raise RuntimeError(
            "{} exited with {}:\n{}".format(" ".join(argv[:4]), process.returncode, text[-3000:])
        )
    return seconds, rss, text


def run(
    scripts: Path,
    image_dir: Path,
    photos: Sequence[Path],
    steps: int = 4000,
    label_calls: int = 5,
    python: str = sys.executable,
    say: Any = print,
) -> List[Dict[str, Any]]:
    """Rows: {'name', 'value', 'unit', 'note', 'key'}; ``key`` pairs each with Poets' figure."""
    retrain_py, label_py = find_scripts(scripts)
    work = Path(tempfile.mkdtemp(prefix="poets-baseline-"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    rows: List[Dict[str, Any]] = []
    count = sum(1 for p in image_dir.glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg"))
    try:
        model_dir = work / "model"
        model_dir.mkdir()
        graph = assets.poets_graph().read_bytes()
        with tarfile.open(str(model_dir / TGZ), "w:gz") as archive:
            info = tarfile.TarInfo("mobilenet_v1_1.0_224/frozen_graph.pb")
            info.size = len(graph)
            archive.addfile(info, io.BytesIO(graph))
        output_graph, output_labels = work / "retrained_graph.pb", work / "retrained_labels.txt"
        argv = [
            python,
            "-c",
            SHIM,
            str(retrain_py),
            "--image_dir",
            str(image_dir),
            "--architecture",
            ARCHITECTURE,
            "--model_dir",
            str(model_dir),
            "--bottleneck_dir",
            str(work / "bottlenecks"),
            "--summaries_dir",
            str(work / "logs"),
            "--intermediate_output_graphs_dir",
            str(work / "intermediate") + "/",
            "--output_graph",
            str(output_graph),
            "--output_labels",
            str(output_labels),
            "--final_tensor_name",
            FINAL,
            "--how_many_training_steps",
            str(steps),
        ]
        with (work / "poets.log").open("w") as log:
            for label in ("cold", "warm"):
                say("poets baseline: retrain.py {} ({} photos, {} steps)...".format(label, count, steps))
                seconds, rss, text = run_timed(argv, log, env)
                accuracy = re.findall(r"Final test accuracy = ([0-9.]+)%", text)
                rows.append(
                    {
                        "key": "retrain_" + label,
                        "name": "TF for Poets retrain.py, {} ({} photos)".format(label, count),
                        "value": seconds,
                        "unit": "s",
                        "note": "{:.1f} img/s; test acc {}%; peak RSS {:.0f} MiB".format(
                            count / seconds, accuracy[-1] if accuracy else "?", rss
                        ),
                    }
                )
            times = []
            say("poets baseline: label_image.py x{}...".format(label_calls))
            for photo in list(photos)[:label_calls]:
                seconds, _, _ = run_timed(
                    [
                        python,
                        "-c",
                        SHIM,
                        str(label_py),
                        "--graph",
                        str(output_graph),
                        "--labels",
                        str(output_labels),
                        "--image",
                        str(photo),
                        "--input_layer",
                        "input",
                        "--output_layer",
                        FINAL,
                        "--input_height",
                        "224",
                        "--input_width",
                        "224",
                    ],
                    log,
                    env,
                )
                times.append(seconds)
            rows.append(
                {
                    "key": "label_image",
                    "name": "TF for Poets label_image.py, one call",
                    "value": sum(times) / len(times),
                    "unit": "s",
                    "note": "mean of {} calls on 500x333 photos".format(len(times)),
                }
            )
    finally:
        shutil.rmtree(str(work), ignore_errors=True)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--poets-scripts",
        type=Path,
        required=True,
        help="folder with TensorFlow for Poets 2's retrain.py and label_image.py",
    )
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--label-calls", type=int, default=5)
    args = parser.parse_args(argv)
    flowers = assets.datasets_dir() / "flowers_small"
    photos = sorted(flowers.glob("*/*.jpg"))
    for row in run(args.poets_scripts, flowers, photos, args.steps, args.label_calls):
        print("{:48} {:8.2f} {:3} {}".format(row["name"], row["value"], row["unit"], row["note"]))


if __name__ == "__main__":
    main()
