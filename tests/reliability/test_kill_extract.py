"""kill -9 ``sak-cache extract`` at seeded random points, run it again each time: every sample is committed
exactly once, the store verifies clean after every kill, and the final features equal an uninterrupted
extraction's bit for bit."""

from __future__ import annotations

import pytest
from _harness import (
    assert_each_sample_once,
    assert_same_features,
    cli,
    copy_index,
    entries,
    kill_at_event,
    ok,
    only_store,
    open_store,
    run,
)

from sak.pipeline.extract.job import ExtractConfig, extract
from sak.pipeline.store.feature_store import FeatureStore

pytestmark = pytest.mark.reliability

KILLS = 5
SAMPLES = 12  # the demo dataset (tests/conftest.py)
SEGMENT = 2
EVENTS_PER_SEGMENT = 3  # segment folder, stats file, commit part


def _extract(cache) -> list[str]:
    return cli("sak-cache", "extract", "-t", "test:tiny", "--random-init", "--cache", str(cache), "--device", "cpu",
               "--segment-size", str(SEGMENT), "--batch-size", "2", "--io-threads", "1")


def test_kill_extract_at_random_points_then_rerun(demo_cache, tmp_path, rng, cli_env) -> None:
    cache, _ = demo_cache
    points = []  # (event, delay, killed, rows committed after the kill): the failure messages show them
    for i in range(KILLS):
        store = open_store(cache)
        done = 0 if store is None else store.commits(status=None).num_rows
        before = entries(only_store(cache)) if store is not None else set()
        remaining = (SAMPLES - done + SEGMENT - 1) // SEGMENT * EVENTS_PER_SEGMENT
        # spread the kills over the work: each may use up to its share of the events still ahead
        event, delay = rng.randrange(0, max(1, remaining // (KILLS - i))), rng.uniform(0.0, 0.2)

        def changed(before: set[str] = before) -> int:
            stores = list((cache / "features").glob("*")) if (cache / "features").exists() else []
            return len(entries(stores[0]) ^ before) if stores else 0

        kill = kill_at_event(_extract(cache), cli_env, changed, event, delay, tmp_path / f"kill{i}.log")
        assert kill.killed or kill.returncode == 0, f"kill points {points}\n{kill.output[-3000:]}"
        store = open_store(cache)
        points.append((event, round(delay, 3), kill.killed, 0 if store is None else store.commits(status=None).num_rows))
        if store is not None:  # after every kill: readable, each sample at most once, verify clean
            assert_each_sample_once(store)
            assert store.verify().ok, f"kill points {points}"

    assert sum(p[2] for p in points) >= KILLS - 1, f"most runs must be killed mid-work: {points}"
    ok(run(_extract(cache), cli_env))  # the final rerun: the CLI, to its end
    store = FeatureStore.open(only_store(cache))
    raw = store.raw_commits()
    keys = list(zip(raw.column("image_sha256").to_pylist(), raw.column("view").to_pylist(), strict=True))
    assert len(keys) == len(set(keys)) == SAMPLES, f"kill points {points}"  # committed exactly once, no dedup needed
    assert store.verify().ok

    reference = copy_index(cache, tmp_path / "uninterrupted")  # in-process (same code, one torch thread): faster
    extract(ExtractConfig(cache=str(reference), teachers=("test:tiny",), random_init=True, device="cpu",
                          segment_size=SEGMENT, batch_size=2, io_threads=1))
    assert_same_features(store, FeatureStore.open(only_store(reference)))
