"""Extraction across processes: SIGKILL + resume, two writers at once, the dask LocalCluster path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from sak.pipeline.data.datasets import index_dataset, write_dataset_index
from sak.pipeline.extract.job import ExtractConfig, extract
from sak.pipeline.store.catalog import list_stores
from sak.pipeline.store.feature_store import FeatureStore
from sak.pipeline.store.writer import parse_segment_id
from sak.pipeline.teachers import create_teacher

RUNNER = """
import sys, time, torch
torch.set_num_threads(1)
from sak.pipeline.extract.job import ExtractConfig, extract
cfg = ExtractConfig.from_json(sys.argv[1])
delay = float(sys.argv[2])
extract(cfg, progress=lambda n, **k: time.sleep(delay) if n else None)
"""


def _cfg(cache: Path, **kw) -> ExtractConfig:
    base = dict(cache=str(cache), teachers=("test:tiny",), random_init=True, batch_size=2, segment_size=2, layers=(1, 3))
    base.update(kw)
    return ExtractConfig(**base)


def _start(cfg: ExtractConfig, delay: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUNNER, cfg.to_json(), str(delay)], stderr=subprocess.PIPE)


def _features(store: FeatureStore) -> dict[str, dict[int, np.ndarray]]:
    return {r["image_sha256"]: {k: v[0] for k, v in store.read_rows(r["segment_id"], [r["row"]]).items()} for r in store.commits().to_pylist()}


def test_sigkill_mid_run_then_resume_gives_every_image_once(demo_cache, tmp_path: Path) -> None:
    cache, root = demo_cache
    cfg = _cfg(cache)
    proc = _start(cfg, delay=0.4)
    deadline = time.time() + 240
    parts: list[Path] = []
    while time.time() < deadline and proc.poll() is None:
        parts = list((cache / "features").glob("*/manifest/part-*.parquet"))
        if parts:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert parts, proc.stderr.read().decode()[-2000:]
    store = FeatureStore.open(parts[0].parent.parent)
    committed = store.commits().num_rows
    assert 0 < committed < 12  # killed mid-run
    garbage = store.gc()  # the killed writer's segment (if it had started one) is garbage, nothing else
    assert all(p.name not in store.committed_segments() for p in garbage)

    resumed = extract(cfg)
    assert (resumed.teachers[0].done, resumed.teachers[0].skipped_cached) == (12 - committed, committed)
    raw = store.raw_commits()
    shas = raw.column("image_sha256").to_pylist()
    assert len(shas) == len(set(shas)) == 12  # every image exactly once, no dedup needed
    assert store.verify().ok

    other = tmp_path / "uninterrupted"
    write_dataset_index(other, "nyud", index_dataset(root, name="nyud", fmt="nyud", workers=1), root)
    clean = FeatureStore.open(extract(_cfg(other)).stores[0])
    mine, ref = _features(store), _features(clean)
    assert mine.keys() == ref.keys()
    for sha in ref:
        for layer in (1, 3):
            np.testing.assert_array_equal(mine[sha][layer], ref[sha][layer])


def test_two_concurrent_extractions_lose_and_double_nothing(demo_cache) -> None:
    cache, _ = demo_cache
    cfg = _cfg(cache, segment_size=3)
    create_teacher("test:tiny", random_init=True)  # import timm now, so this process joins quickly
    other = _start(cfg, delay=0.5)  # another process; this one joins once it has committed something
    deadline = time.time() + 240
    while time.time() < deadline and other.poll() is None and not list((cache / "features").glob("*/manifest/part-*")):
        time.sleep(0.05)
    mine = extract(cfg, progress=lambda n, **k: time.sleep(0.05) if n else None)
    assert other.wait(timeout=300) == 0, other.stderr.read().decode()[-2000:]
    assert mine.teachers[0].done > 0 and mine.teachers[0].skipped_cached > 0  # the runs overlapped
    [store] = list_stores(cache)
    rows = store.commits()
    shas = rows.column("image_sha256").to_pylist()
    assert len(shas) == len(set(shas)) == 12
    raw = store.raw_commits()
    assert raw.num_rows >= 12 and set(raw.column("image_sha256").to_pylist()) == set(shas)
    writers = {parse_segment_id(s)[1] for s in store.committed_segments()}
    assert writers == {other.pid, os.getpid()}
    assert store.verify().ok
    stats = store.stats()
    tokens = store.spec.grid[0] * store.spec.grid[1]  # 8x10: the student protocol at the demo's 64x80
    assert all(s.count == 12 * tokens for s in stats.values())  # duplicates removed from the statistics too


def test_workers_2_runs_segments_on_a_local_cluster(demo_cache) -> None:
    cache, _ = demo_cache
    report = extract(_cfg(cache, segment_size=3, workers=2, limit=9))
    assert (report.teachers[0].done, report.teachers[0].failed) == (9, 0)
    store = FeatureStore.open(report.stores[0])
    assert store.commits().num_rows == 9 and len(store.committed_segments()) == 3
    pids = {parse_segment_id(s)[1] for s in store.committed_segments()}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert store.verify().ok
