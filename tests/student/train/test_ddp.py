"""DDP: torchrun with 2 CPU processes (gloo) ends with identical parameters on both ranks; ranks read disjoint data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _caches import extract_store, indexed_cache

from sak.pipeline.data.datasets import open_dataset
from sak.student.data.cached import CachedTargets
from sak.student.data.stores import select_stores


@pytest.fixture(scope="module")
def cache(tmp_path_factory, demo_nyud) -> Path:
    cache = indexed_cache(tmp_path_factory.mktemp("ddp"), demo_nyud)
    extract_store(cache)
    return cache


def test_ranks_read_disjoint_blocks_of_equal_length(cache) -> None:
    ds = open_dataset(cache, "nyud")
    data = CachedTargets(ds, select_stores(str(cache), ds), "train", (64, 80))
    ids = []
    for rank in (0, 1):
        sampler = data.sampler(block_size=2, window=2, seed=3, rank=rank, world=2)
        with data.batches(2, sampler, workers=0, drop_last_epoch=True) as loader:
            ids.append([sid for batch in loader for sid in batch.sample_ids])
    assert len(ids[0]) == len(ids[1]) >= 4
    assert not set(ids[0]) & set(ids[1])


def test_torchrun_two_cpu_ranks_end_with_equal_parameters(cache, tmp_path) -> None:
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "sak.cli.train", "fit", "--cache", str(cache), "--backbone", "test_vit", "--iters", "3",
           "--batch-size", "2", "--block-size", "2", "--workers", "0", "--device", "cpu", "--lr", "1e-3",
           "--log-every", "1", "--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    sums = summary["param_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    assert summary["steps"] == 3
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # rank 0 alone writes the run dir
    assert "val metrics after 3 steps" in proc.stdout
