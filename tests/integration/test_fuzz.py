"""Fuzzing the running API from its own OpenAPI schema: no input may give a 5xx, and every
answer matches the model the schema gives for its status (what /docs promises is what comes).

Schemathesis' CLI (a separate process, so its Hypothesis state stays out of this
one) sends schema-derived valid and invalid requests to every operation of a real
``poets serve``: a model is loaded, POETS_DATA_ROOT is set (so ``image_dir`` paths
are resolved, not refused outright), no API key is needed (so every handler runs),
and the embedded broker is up. 503 is a 5xx too: with a model loaded and the broker
reachable none is legitimate. Bounded (examples per operation, request timeout) so it
stays well under two minutes; nothing is excluded.

The service runs with small limits (parts per /label request, training steps, listed files), so
the fuzzer's values cross them; the schema does not state these server-side limits, so they are
checked after the run: no queued job carries a value its settings refuse, and every job record
stays small.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from poets.engine.model.config import TrainConfig
from poets.engine.settings import Settings
from tests.integration import fault_helpers as fh
from tests.integration.test_service import make_home
from tests.worker import helpers

# Per operation; POETS_FUZZ_MAX_EXAMPLES=200 for a deeper run on demand.
MAX_EXAMPLES = int(os.environ.get("POETS_FUZZ_MAX_EXAMPLES", "25"))
SEED = 20240601
MAX_RECORD_BYTES = 64 * 1024  # a job record, as JSON: counts and capped lists, never every file


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory,
    backbone_dir: Path,
    flowers_dir: Path,
    trained: Any,
    session_home: Path,
) -> Iterator[fh.Cluster]:
    root = tmp_path_factory.mktemp("fuzz")
    home = make_home(root, trained, session_home / "bottlenecks")
    data = root / "data"
    helpers.copy_dataset(flowers_dir, data / "flowers", ("daisy", "roses"), per_label=3)
    env = helpers.service_env(
        home,
        backbone_dir,
        POETS_DATA_ROOT=str(data),
        POETS_MAX_UPLOAD_BYTES=str(2 * 1024 * 1024),
        POETS_MAX_LABEL_FILES="3",
        POETS_MAX_TRAINING_STEPS="300",
        POETS_MAX_LISTED_FILES="5",
    )
    service = fh.Cluster(root, env)
    try:
        service.start_api()
        yield service
    finally:
        service.close()


def schemathesis_cli() -> str:
    executable = Path(sys.executable).with_name("schemathesis")
    if executable.is_file():
        return str(executable)
    found = shutil.which("schemathesis")
    if found is None:
        pytest.fail("schemathesis is not installed: it is in the test extra (pip install -e .[test])")
    return found


def test_no_input_gives_a_server_error(api: fh.Cluster, tmp_path: Path) -> None:
    command = [
        schemathesis_cli(),
        "run",
        api.url + "/openapi.json",
        "--checks",
        "not_a_server_error,response_schema_conformance",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--request-timeout",
        "60",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--no-color",
    ]
    # cwd: Hypothesis keeps its example database in the working directory.
    run = subprocess.run(
        command, check=False, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600
    )
    output = run.stdout.decode("utf-8", "replace")
    print(output[-6000:])
    assert run.returncode == 0, output[-8000:] + "\n" + api.logs()
    assert api.api is not None and api.api.poll() is None, api.logs()
    # The API still answers normally after the storm.
    assert api.client.get("/readyz").status_code == 200
    # Whatever got through was within the limits: a queued job would run, never fail for its input.
    settings = Settings.from_env(api.env)
    found = api.jobs.list(100000)
    for job in found:
        size = len(json.dumps(job.to_dict()))
        assert size < MAX_RECORD_BYTES, (job.id, size)
        if job.state == "queued":
            TrainConfig.from_dict(dict(job.params.get("config") or {})).validate(settings)
    print(
        "job records after the run: {}, queued: {}".format(
            len(found), sum(job.state == "queued" for job in found)
        )
    )


@pytest.mark.parametrize(
    "image_dir", ["flowers\x00/daisy", "x" * 5000, "../../etc", "/etc", "flowers/" + "y" * 300]
)
def test_hostile_image_dir_values_are_refused_not_500(api: fh.Cluster, image_dir: str) -> None:
    """Found by hand next to the fuzzer: a NUL byte or an over-long name used to give a 500."""
    # Steps within the fuzzed service's POETS_MAX_TRAINING_STEPS: only image_dir is wrong.
    fields = {"image_dir": (None, image_dir), "how_many_training_steps": (None, "10")}
    response = api.client.post("/retrain", files=fields)
    assert response.status_code in (403, 422), response.text
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert "image_dir" in body["detail"] or "not a folder" in body["detail"], body
