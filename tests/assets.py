"""Real test assets that cannot live in git: fetched once from PyPI, then cached.

The pretrained MobileNet v1 1.0 224 (ImageNet weights) used in tests and benches is the
TensorFlow for Poets frozen graph inside the sdist of ``nudity==0.2.3`` (MIT).
"""

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NUDITY_SDIST = "nudity==0.2.3"
GRAPH_MEMBER = "nudity-0.2.3/nudity/files/retrained_graph.pb"
GRAPH_SHA256 = "3b90af536f810f5f75e9f6d431bc2e8a3c4fc2ff4f693aa0dd4ae429816f8735"
# The graph's own poets head: labels in the order of final_result.
NUDITY_LABELS = ("nonnude", "nude")


def cache_dir() -> Path:
    return Path(os.environ.get("POETS_TEST_CACHE", str(REPO / ".cache" / "test-assets")))


def datasets_dir() -> Path:
    return Path(os.environ.get("POETS_TEST_DATASETS", str(REPO.parent / "shared" / "datasets")))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def poets_graph() -> Path:
    """The nudity sdist's retrained_graph.pb (MobileNet v1 1.0 224 + a 2-label poets head)."""
    target = cache_dir() / "nudity" / "retrained_graph.pb"
    if target.is_file() and _sha256(target) == GRAPH_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.check_call(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                NUDITY_SDIST,
                "-d",
                tmp,
            ]
        )
        sdist = next(Path(tmp).glob("nudity-*.tar.gz"))
        with tarfile.open(str(sdist)) as archive:
            member = archive.extractfile(GRAPH_MEMBER)
            assert member is not None
            partial = target.with_suffix(".partial")
            partial.write_bytes(member.read())
    if _sha256(partial) != GRAPH_SHA256:
        raise RuntimeError("{} from {} has an unexpected checksum".format(GRAPH_MEMBER, NUDITY_SDIST))
    os.replace(str(partial), str(target))
    return target


def backbone_dir() -> Path:
    """A POETS_BACKBONE_DIR holding the real MobileNet as mobilenet_1.0_224/frozen_graph.pb."""
    root = cache_dir() / "backbones"
    graph = root / "mobilenet_1.0_224" / "frozen_graph.pb"
    if not graph.is_file():
        graph.parent.mkdir(parents=True, exist_ok=True)
        tmp = graph.with_suffix(".partial")
        tmp.write_bytes(poets_graph().read_bytes())
        os.replace(str(tmp), str(graph))
    return root


if __name__ == "__main__":
    print(backbone_dir())
