"""poets.engine.model.bottlenecks: the content-addressed cache and its computation on the real MobileNet."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest

from poets.engine.data.images import Distortion, prepare
from poets.engine.errors import Cancelled
from poets.engine.model.bottlenecks import BottleneckCache, cache_key, compute
from tests.assets import REPO
from tests.engine.imaging import corrupt_jpeg, truncated, write


def photos(flowers_dir: Path, per_label: int = 4) -> List[Path]:
    return [
        p
        for label in ("daisy", "roses", "tulips")
        for p in sorted((flowers_dir / label).glob("*.jpg"))[:per_label]
    ]


def entries(cache_root: Path) -> List[Path]:
    return sorted(p for p in cache_root.rglob("*.f32"))


def test_compute_then_everything_from_cache(mobilenet, flowers_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    paths = photos(flowers_dir)
    cache = BottleneckCache(tmp_path / "cache")
    first = compute(paths, [1] * len(paths), mobilenet, cache, batch_size=5)
    assert (first.computed, first.cached, first.failures) == (len(paths), 0, [])
    assert len(entries(tmp_path / "cache")) == len(paths)
    # The features are the backbone's on prepare()'s pixels, whatever the batching.
    direct = mobilenet.features(np.stack([prepare(p.read_bytes(), mobilenet.preprocessing) for p in paths]))
    np.testing.assert_allclose(np.stack([f[0] for f in first.features]), direct, atol=1e-5)
    second = compute(paths, [1] * len(paths), mobilenet, cache)
    assert (second.computed, second.cached) == (0, len(paths))
    for a, b in zip(first.features, second.features):
        assert np.array_equal(a, b)
    # Keys hash the bytes, not the path: a renamed copy hits the cache.
    copy = tmp_path / "renamed.jpg"
    shutil.copy(str(paths[0]), str(copy))
    third = compute([copy], [1], mobilenet, cache)
    assert (third.computed, third.cached) == (0, 1)
    # Each image's digest comes back (the promotion gate knows images by content), cached or not.
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    assert first.digests == second.digests == digests
    assert third.digests == digests[:1]


def test_unreadable_files_are_reported_not_fatal(mobilenet, flowers_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    good = photos(flowers_dir, 2)
    bad = [
        write(tmp_path / "truncated.jpg", truncated(good[0].read_bytes())),
        write(tmp_path / "corrupt.jpg", corrupt_jpeg()),
        write(tmp_path / "empty.jpg", b""),
        write(tmp_path / "notes.txt", b"hello"),
        tmp_path / "vanished.jpg",
    ]
    paths = [good[0], *bad, *good[1:]]
    result = compute(paths, [1] * len(paths), mobilenet, BottleneckCache(tmp_path / "cache"))
    failures = dict(result.failures)
    assert set(failures) == {str(p) for p in bad}
    assert all(failures.values())
    assert "truncated" in failures[str(bad[0])]
    assert "cannot read" in failures[str(bad[4])]
    assert [f is None for f in result.features] == [False] + [True] * 5 + [False] * (len(good) - 1)
    assert [d is None for d in result.digests] == [False] * 5 + [True] + [False] * (len(good) - 1)
    assert result.computed == len(good)


def test_damaged_cache_entry_is_recomputed(mobilenet, flowers_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    paths = photos(flowers_dir, 1)
    cache = BottleneckCache(tmp_path / "cache")
    original = compute(paths, [1] * 3, mobilenet, cache).features
    damaged = entries(tmp_path / "cache")
    damaged[0].write_bytes(damaged[0].read_bytes()[:100])  # e.g. a crash mid-copy
    damaged[1].write_bytes(b"")
    again = compute(paths, [1] * 3, mobilenet, cache)
    assert (again.computed, again.cached) == (2, 1)
    # The recomputed entries ran in a batch of 2, the originals in one of 3: float32 sums in
    # another order differ in the last digits (measured 1.5e-6 on values near 2).
    for a, b in zip(original, again.features):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert all(p.stat().st_size == 1024 * 4 for p in entries(tmp_path / "cache"))


def test_distorted_views_are_cached_per_view(mobilenet, flowers_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    paths = photos(flowers_dir, 1)
    cache = BottleneckCache(tmp_path / "cache")
    distortion = Distortion(flip_left_right=True, random_crop=10)
    result = compute(paths, [3, 1, 2], mobilenet, cache, distortion, batch_size=4)
    assert [f.shape for f in result.features] == [(3, 1024), (1, 1024), (2, 1024)]
    assert result.computed == 6
    views = result.features[0]
    assert np.abs(views[0] - views[1]).max() > 1e-3 and np.abs(views[1] - views[2]).max() > 1e-3
    plain = compute(paths, [1, 1, 1], mobilenet, cache)
    assert plain.computed == 0
    np.testing.assert_allclose(plain.features[0][0], views[0])
    # Another distortion is another cache entry.
    other = compute(paths[:1], [2], mobilenet, cache, Distortion(random_brightness=30))
    assert (other.computed, other.cached) == (1, 1)


def test_cancel_while_computing(mobilenet, flowers_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    paths = photos(flowers_dir)
    polls = []

    def should_stop() -> bool:
        polls.append(1)
        return len(polls) > 3

    with pytest.raises(Cancelled):
        compute(
            paths,
            [1] * len(paths),
            mobilenet,
            BottleneckCache(tmp_path / "cache"),
            batch_size=2,
            should_stop=should_stop,
        )
    # What was written is complete; no temporary files are left.
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".f32")]
    assert leftovers == []
    for entry in entries(tmp_path / "cache"):
        assert entry.stat().st_size == 1024 * 4


WORKER = """
import sys
from pathlib import Path
from poets.engine.model import backbones
from poets.engine.model.bottlenecks import BottleneckCache, compute
backbone = backbones.load("mobilenet_1.0_224", Path(sys.argv[1]), allow_download=False)
paths = [Path(p) for p in sys.argv[3:]]
result = compute(paths, [1] * len(paths), backbone, BottleneckCache(Path(sys.argv[2])),
                 batch_size=4, threads=1)
assert not result.failures, result.failures
print("computed", result.computed, "cached", result.cached)
"""


def test_two_processes_fill_one_cache(
    mobilenet,
    backbone_dir: Path,
    flowers_dir: Path,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    paths = photos(flowers_dir, 6)
    cache_root = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-c", WORKER, str(backbone_dir), str(cache_root)]
    workers = [
        subprocess.Popen(
            command + [str(p) for p in order],
            env=env,
            cwd=str(REPO),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for order in (paths, list(reversed(paths)))
    ]
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err.decode()[-2000:]
        assert b"computed" in out
    found = entries(cache_root)
    assert len(found) == len(paths)
    assert [p for p in cache_root.rglob("*") if p.is_file() and p.suffix != ".f32"] == []
    cache = BottleneckCache(cache_root)
    expected = mobilenet.features(np.stack([prepare(p.read_bytes(), mobilenet.preprocessing) for p in paths]))
    for path, want in zip(paths, expected):
        key = cache_key(hashlib.sha256(path.read_bytes()).hexdigest(), mobilenet, 0, Distortion())
        got = cache.get(key, mobilenet.feature_dim)
        assert got is not None
        np.testing.assert_allclose(got, want, atol=1e-5)
