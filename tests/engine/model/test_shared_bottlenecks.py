"""poets.engine.model.shared_bottlenecks: workers with their own POETS_HOME sharing bottlenecks
through a real S3 endpoint (moto in server mode), with the real MobileNet."""

import re
import shutil
from pathlib import Path
from typing import Any, List

import numpy as np
import pytest

from poets.engine.data.images import Distortion
from poets.engine.model import backbones
from poets.engine.model.bottlenecks import BottleneckResult, compute
from poets.engine.model.shared_bottlenecks import Damaged, decode, encode, pack_id
from poets.engine.model.training import TrainConfig
from poets.engine.retrain import retrain
from poets.engine.settings import Settings
from poets.engine.store.bucket import Bucket
from poets.engine.store.models import ModelStore
from poets.engine.workspace import Workspace
from tests.s3 import MotoServer


class Counting:
    """The backbone, counting the images it runs on."""

    def __init__(self, backbone: Any) -> None:
        self.backbone = backbone
        self.images = 0

    def features(self, pixels: np.ndarray) -> np.ndarray:
        self.images += len(pixels)
        return self.backbone.features(pixels)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backbone, name)


def worker(home: Path, url: str, s3_server: MotoServer, timeout_s: float = 5.0) -> Workspace:
    """One machine: its own POETS_HOME (so its own bottleneck cache), the shared bucket."""
    return Workspace(
        Settings(
            home=home, bottleneck_store_url=url, s3_endpoint_url=s3_server.url, store_timeout_s=timeout_s
        )
    )


def images(folder: Path) -> List[Path]:
    return sorted(folder.glob("*/*.jpg"))


def run(workspace: Workspace, paths: List[Path], backbone: Any, views: Any = None) -> BottleneckResult:
    views = views or [1] * len(paths)
    return compute(
        paths, views, backbone, workspace.bottlenecks, Distortion(flip_left_right=True), batch_size=16
    )


@pytest.mark.integration
def test_a_second_worker_pulls_what_the_first_computed(  # type: ignore[no-untyped-def]
    s3_server: MotoServer,
    mobilenet,
    backbone_dir: Path,
    small_dataset: Path,
    flowers_dir: Path,
    tmp_path: Path,
) -> None:
    url = s3_server.bucket("shared/bottlenecks")
    paths = images(small_dataset)
    views = [2 if i % 3 == 0 else 1 for i in range(len(paths))]  # some distorted views too
    vectors = sum(views)

    a = Counting(mobilenet)
    first = run(worker(tmp_path / "a", url, s3_server), paths, a, views)
    assert (first.computed, a.images) == (vectors, vectors)
    assert first.shared is not None
    assert (first.shared.pulled, first.shared.pushed, first.shared.packs_pushed) == (0, vectors, 1)
    assert first.shared.unavailable is None

    # Machine B: another POETS_HOME, the backbone file and the photos at other paths.
    elsewhere = tmp_path / "b-backbones"
    shutil.copytree(str(backbone_dir), str(elsewhere))
    b_backbone = backbones.load("mobilenet_1.0_224", elsewhere, "prelogits", allow_download=False)
    assert b_backbone.fingerprint == mobilenet.fingerprint
    b_paths = []
    for path in paths:
        copy = tmp_path / "b-photos" / path.parent.name / ("copy-" + path.name)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(str(path), str(copy))
        b_paths.append(copy)
    b = Counting(b_backbone)
    b_workspace = worker(tmp_path / "b", url, s3_server)
    second = run(b_workspace, b_paths, b, views)
    assert (second.computed, second.cached, b.images) == (0, vectors, 0)
    assert second.shared is not None
    assert (second.shared.pulled, second.shared.packs_pulled, second.shared.pushed) == (vectors, 1, 0)
    assert second.shared.bytes_pulled > vectors * 1024 * 4
    for mine, theirs in zip(first.features, second.features):
        assert mine is not None and theirs is not None
        assert np.array_equal(mine, theirs)
    # Objects are named by the backbone and preprocessing (folder) and by content (pack).
    names = [item.key for item in Bucket(url, s3_server.url).list()]
    assert len(names) == 2 and all(re.match(r"^v1/[0-9a-f]{16}/[0-9a-f]{64}\.(pack|idx)$", n) for n in names)

    # A grows the dataset by one photo: it computes that one, pushes a pack of one, and B
    # fetches that small pack only.
    extra = sorted((flowers_dir / "sunflowers").glob("*.jpg"))[0]
    grown = run(worker(tmp_path / "a", url, s3_server), [*paths, extra], a)
    assert grown.computed == 1 and grown.shared is not None
    assert (grown.shared.pushed, grown.shared.packs_pushed) == (1, 1)
    again = run(b_workspace, [*b_paths, extra], b)
    assert (again.computed, b.images) == (0, 0)
    assert again.shared is not None
    assert (again.shared.pulled, again.shared.packs_pulled) == (1, 1)
    assert again.shared.bytes_pulled < 2 * 1024 * 4 + 1024


@pytest.mark.integration
def test_a_bucket_that_does_not_answer_fails_no_retrain(  # type: ignore[no-untyped-def]
    s3_server: MotoServer,
    backbone_dir: Path,
    small_dataset: Path,
    flowers_dir: Path,
    mobilenet,
    tmp_path: Path,
) -> None:
    url = s3_server.bucket("outage")
    workspace = worker(tmp_path / "home", url, s3_server, timeout_s=0.5)
    s3_server.pause()
    try:
        result = retrain(
            small_dataset,
            TrainConfig(how_many_training_steps=20),
            ModelStore(tmp_path / "models"),
            workspace.bottlenecks,
            backbone_dir,
            allow_download=False,
        )
        # Warm locally: the bucket is not asked, so its outage costs nothing.
        warm = run(workspace, images(small_dataset), mobilenet)
    finally:
        s3_server.resume()
    assert result.bottlenecks_computed == 36 and result.version == 1
    shared = result.summary()["bottlenecks_shared"]
    assert shared["pulled"] == shared["pushed"] == 0
    assert "cannot be reached" in shared["unavailable"]
    assert workspace.shared_bottlenecks is not None and workspace.shared_bottlenecks.unavailable == 1
    assert (warm.computed, warm.cached) == (0, 36)
    assert warm.shared is not None and warm.shared.pull_s == 0 and warm.shared.unavailable is None

    # Back up: the next job that reaches it pushes what the outage kept local, too.
    extra = sorted((flowers_dir / "sunflowers").glob("*.jpg"))[0]
    later = run(workspace, [*images(small_dataset), extra], mobilenet)
    assert later.computed == 1 and later.shared is not None
    assert (later.shared.pushed, later.shared.unavailable) == (37, None)
    assert workspace.shared_bottlenecks.unavailable == 1


@pytest.mark.integration
@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_pack_is_refused_recomputed_and_replaced(  # type: ignore[no-untyped-def]
    damage: str, s3_server: MotoServer, mobilenet, flowers_dir: Path, tmp_path: Path
) -> None:
    url = s3_server.bucket("damaged")
    paths = sorted((flowers_dir / "roses").glob("*.jpg"))[:4]
    first = run(worker(tmp_path / "a", url, s3_server), paths, mobilenet)
    assert first.shared is not None and first.shared.packs_pushed == 1
    bucket = Bucket(url, s3_server.url)
    (pack,) = [item.key for item in bucket.list() if item.key.endswith(".pack")]
    data = bucket.get(pack)
    assert data is not None
    if damage == "truncated":  # e.g. a copy cut short
        data = data[: len(data) // 2]
    else:  # same size, one float's bit flipped
        data = data[:200] + bytes([data[200] ^ 0x40]) + data[201:]
    bucket.put(pack, data)

    counting = Counting(mobilenet)
    b_workspace = worker(tmp_path / "b", url, s3_server)
    second = run(b_workspace, paths, counting)
    assert (second.computed, counting.images) == (4, 4)
    assert second.shared is not None
    assert (second.shared.damaged, second.shared.pulled) == (1, 0)
    assert b_workspace.shared_bottlenecks is not None and b_workspace.shared_bottlenecks.damaged == 1
    for mine, theirs in zip(first.features, second.features):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)
    # B pushed the same vectors again: the same pack name, now sound; a third machine uses it.
    assert second.shared.pushed == 4
    assert [item.key for item in bucket.list() if item.key.endswith(".pack")] == [pack]
    third = run(worker(tmp_path / "c", url, s3_server), paths, mobilenet)
    assert third.shared is not None
    assert (third.computed, third.shared.pulled, third.shared.damaged) == (0, 4, 0)


@pytest.mark.unit
def test_packs_check_their_size_checksum_and_name() -> None:
    keys = sorted("{:064x}".format(i * 7919) for i in range(1, 4))
    vectors = np.arange(3 * 5, dtype=np.float32).reshape(3, 5)
    name = pack_id(keys)
    data = encode(keys, vectors, 5)
    got_keys, got = decode(data, name, 5, True)
    assert got_keys == keys and got is not None and np.array_equal(got, vectors)
    index = encode(keys, None, 5)
    assert decode(index, name, 5, False) == (keys, None)
    for bad, wanted_name, dim, with_vectors in [
        (data[:-1], name, 5, True),  # truncated
        (data[:40] + bytes([data[40] ^ 1]) + data[41:], name, 5, True),  # a bit flipped
        (data, name, 6, True),  # another backbone's dimension
        (data, pack_id(keys[:2]), 5, True),  # under another pack's name
        (index, name, 5, True),  # an index is not a pack
        (b"", name, 5, False),
    ]:
        with pytest.raises(Damaged):
            decode(bad, wanted_name, dim, with_vectors)
