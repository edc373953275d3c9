"""Concurrent writers on one store split the work through block claims; a killed or frozen writer's
block is taken over (at once when its pid is gone, after its lease when it is alive but stalled)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sak.pipeline.extract.job import ExtractConfig, extract
from sak.pipeline.store.catalog import list_stores
from sak.pipeline.store.feature_store import FeatureStore
from sak.pipeline.store.writer import parse_segment_id
from sak.pipeline.teachers import create_teacher

pytestmark = pytest.mark.reliability

N = 12  # images of the demo dataset (tests/conftest.py)

RUNNER = """
import json, sys, time, torch
torch.set_num_threads(1)
from sak.pipeline.extract.job import ExtractConfig, extract
cfg = ExtractConfig.from_json(sys.argv[1])
delay = float(sys.argv[2])
rep = extract(cfg, progress=lambda n, **k: time.sleep(delay) if n and "total" not in k else None)
print(json.dumps({"done": rep.teachers[0].done, "skipped": rep.teachers[0].skipped_cached}))
"""


def _cfg(cache: Path, **kw) -> ExtractConfig:
    base = dict(cache=str(cache), teachers=("test:tiny",), random_init=True, batch_size=1, segment_size=1, layers=(1, 3))
    base.update(kw)
    return ExtractConfig(**base)


def _check_complete(cache: Path) -> FeatureStore:
    [store] = list_stores(cache)
    raw = store.raw_commits()
    shas = raw.column("image_sha256").to_pylist()
    assert len(shas) == len(set(shas)) == N  # every sample committed exactly once: no dedup needed
    assert set(raw.column("status").to_pylist()) == {"ok"}
    assert store.verify().ok
    return store


def _run_together(cfgs: list[ExtractConfig], delay: float) -> list:
    """extract() of each config in its own thread, started at once; per-batch ``delay`` keeps them overlapping."""
    create_teacher("test:tiny", random_init=True)  # import timm before the start line
    go = threading.Barrier(len(cfgs))
    reports: list = [None] * len(cfgs)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            go.wait()
            reports[i] = extract(cfgs[i], progress=lambda n, **k: time.sleep(delay) if n and "total" not in k else None)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(cfgs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    return reports


def test_two_concurrent_writers_split_the_work_and_commit_each_sample_once(demo_cache) -> None:
    cache, _ = demo_cache
    reports = _run_together([_cfg(cache), _cfg(cache)], delay=0.05)
    done = [r.teachers[0].done for r in reports]
    assert sum(done) == N  # claims: no sample extracted twice (today's main: ~1.8 N)
    assert all(d > 0 for d in done)  # both worked
    store = _check_complete(cache)
    assert not (store.path / "claims").exists() or not list((store.path / "claims").glob("*.json"))  # all released


def test_claimless_baseline_extracts_samples_twice(demo_cache) -> None:
    """The library switch the benchmark's baseline uses: without claims both writers redo most samples (dedup hides it)."""
    cache, _ = demo_cache
    reports = _run_together([_cfg(cache, claims=False), _cfg(cache, claims=False)], delay=0.05)
    assert sum(r.teachers[0].done for r in reports) > N
    [store] = list_stores(cache)
    assert store.commits().num_rows == N and store.verify().ok
    assert not (store.path / "claims").exists()


def _start(cfg: ExtractConfig, delay: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUNNER, cfg.to_json(), str(delay)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _claims_of(cache: Path, pid: int) -> list[dict]:
    out = []
    for claim in cache.glob("features/*/claims/*.json"):
        try:
            record = json.loads(claim.read_text())
        except (OSError, ValueError):
            continue
        if record["pid"] == pid:
            out.append(record)
    return out


def _freeze_inside_a_block(cache: Path, proc: subprocess.Popen, timeout: float = 240) -> dict:
    """SIGSTOP ``proc`` while it holds a block claim (a little into the block); returns that claim."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if _claims_of(cache, proc.pid):
            time.sleep(0.1)
            os.kill(proc.pid, signal.SIGSTOP)
            held = _claims_of(cache, proc.pid)
            if held:
                return held[0]
            os.kill(proc.pid, signal.SIGCONT)  # stopped between two blocks: try again
        time.sleep(0.02)
    raise AssertionError(f"process {proc.pid} was never stopped inside a block")


def test_kill9_mid_block_then_rerun_takes_the_dead_writers_block_at_once(demo_cache, caplog) -> None:
    cache, _ = demo_cache
    cfg = _cfg(cache, segment_size=3, lease_seconds=120.0)
    proc = _start(cfg, delay=0.3)  # 3 samples per block, 0.3 s each: killed inside a block
    try:
        held = _freeze_inside_a_block(cache, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert _claims_of(cache, proc.pid) == [held]  # the killed writer's claim is left behind
    t0 = time.time()
    with caplog.at_level(logging.INFO, logger="sak.pipeline.store.claims"):
        rerun = extract(cfg)
    assert time.time() - t0 < 60  # its pid is gone: no wait for the 120 s lease
    assert any("taking over block" in r.message and "its writer is gone" in r.message for r in caplog.records)
    rep = rerun.teachers[0]
    assert rep.done + rep.skipped_cached == N and rep.done > 0
    store = _check_complete(cache)
    assert not list((store.path / "claims").glob("*.json"))
    assert os.getpid() in {parse_segment_id(s)[1] for s in store.committed_segments()}


def test_frozen_writer_loses_its_block_after_the_lease_and_the_other_completes(demo_cache, caplog) -> None:
    cache, _ = demo_cache
    cfg = _cfg(cache, segment_size=3, lease_seconds=1.5)
    proc = _start(cfg, delay=0.3)
    try:
        held = _freeze_inside_a_block(cache, proc)  # alive (its pid exists) but no heartbeat: only the lease frees its block
        t0 = time.time()
        with caplog.at_level(logging.INFO, logger="sak.pipeline"):
            other = extract(cfg)
        took = time.time() - t0
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert any("taking over block" in r.message and "expired" in r.message for r in caplog.records)
    assert any("waiting for 1 block(s) claimed by" in r.message and f":{proc.pid}" in r.message for r in caplog.records)
    assert took >= held["expires"] - t0 - 0.5  # it waited for the lease, not less
    rep = other.teachers[0]
    assert rep.done + rep.skipped_cached == N
    _check_complete(cache)
