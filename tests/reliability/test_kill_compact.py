"""kill -9 ``sak-cache compact`` at seeded random points: the store stays readable with every sample exactly once
(dedup serves one copy of rows held twice), a rerun completes, verify is clean and the data are bit-identical. The kills are of the real CLI; the store
and the reruns are made in-process (each CLI start-up costs seconds on a loaded machine)."""

from __future__ import annotations

import shutil

import pytest
from _harness import assert_each_sample_once, assert_same_features, cli, entries, kill_at_event, only_store

from sak.pipeline.extract.job import ExtractConfig, extract
from sak.pipeline.store.feature_store import FeatureStore
from sak.pipeline.store.transfer import compact_store

pytestmark = pytest.mark.reliability

KILLS = 3
SAMPLES = 12


def test_kill_compact_at_random_points_then_rerun(demo_cache, tmp_path, rng, cli_env) -> None:
    cache, _ = demo_cache
    extract(ExtractConfig(cache=str(cache), teachers=("test:tiny",), random_init=True, device="cpu", segment_size=2,
                          batch_size=2, io_threads=1))
    original = only_store(cache)
    pristine = tmp_path / "pristine"
    shutil.copytree(original, pristine)
    before = entries(pristine)
    spec = FeatureStore.open(pristine).spec
    tokens = spec.grid[0] * spec.grid[1]
    # 6 segments of 2 rows -> 3 of 4: 3 x (segment, stats, part) written, then 6 x (part, stats, segment) removed
    events = 3 * 3 + 6 * 3
    points = []  # (event, delay, killed, segments after the kill)
    for i in range(KILLS):
        shutil.rmtree(original)
        shutil.copytree(pristine, original)
        event, delay = rng.randrange(0, events), rng.uniform(0.0, 0.05)
        compact = cli("sak-cache", "compact", original.name, "--cache", str(cache), "--target-rows", "4")
        kill = kill_at_event(compact, cli_env, lambda: len(entries(original) ^ before), event, delay,
                             tmp_path / f"kill{i}.log")
        assert kill.killed or kill.returncode == 0, f"kill points {points}\n{kill.output[-3000:]}"
        store = FeatureStore.open(original)
        points.append((event, round(delay, 3), kill.killed, len(store.committed_segments())))
        assert_each_sample_once(store, SAMPLES)  # readable, every sample exactly once (dedup)
        assert store.verify().ok, f"kill points {points}"
        assert_same_features(store, FeatureStore.open(pristine))

        compact_store(FeatureStore.open(original, read_only=False), target_rows=4)  # the rerun (in-process: faster)
        store = FeatureStore.open(original)
        assert_each_sample_once(store, SAMPLES)
        assert store.verify().ok, f"kill points {points}"
        assert_same_features(store, FeatureStore.open(pristine))
        # a kill between the new parts and the removal of the old ones can leave rows held twice (raw commits > 12)
        # after the rerun: readers and the stats drop the copies, and the next compact rewrites them away
        assert all(s.count == SAMPLES * tokens for s in store.stats().values())
        compact_store(FeatureStore.open(original, read_only=False), target_rows=4)
        store = FeatureStore.open(original)
        raw = store.raw_commits()
        assert raw.num_rows == SAMPLES, f"rows committed twice survive compaction: {raw.num_rows} (kill points {points})"
        assert store.verify().ok and all(s.count == SAMPLES * tokens for s in store.stats().values())
        assert_same_features(store, FeatureStore.open(pristine))
    assert sum(p[2] for p in points) >= KILLS - 1, f"most runs must be killed mid-work: {points}"
