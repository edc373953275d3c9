"""ENOSPC for real: ``sak-cache extract`` into a cache on a small tmpfs. It stops with exit 2 and a message that
names the file and the fix, no partial segment is committed, the store verifies clean, and once space is freed
the same command completes. Needs root (mount); skipped with the reason otherwise."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from _harness import cli, copy_index, ok, only_store, run

from sak.pipeline.store.feature_store import FeatureStore

pytestmark = pytest.mark.reliability

SAMPLES = 12
SMALL, LARGE = "256k", "4m"  # the finished store takes ~520 KB of tmpfs pages (6 segments of 2 samples)


@pytest.fixture()
def small_fs(tmp_path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("ENOSPC is reproduced on a small tmpfs, and mounting one needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL}", "tmpfs", str(mnt)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_extract_into_a_full_disk_exits_2_keeps_the_store_clean_and_resumes(demo_cache, small_fs, cli_env) -> None:
    cache = copy_index(demo_cache[0], small_fs / "cache")
    extract = cli("sak-cache", "extract", "-t", "test:tiny", "--random-init", "--cache", str(cache), "--device", "cpu",
                  "--segment-size", "2", "--batch-size", "2", "--io-threads", "1")
    full = run(extract, cli_env)
    text = " ".join(full.stdout.split() + full.stderr.split())
    assert full.returncode == 2, text[-3000:]
    assert "Traceback" not in text
    assert f"error: no space left on the device holding {cache}/features/" in text, text[-3000:]
    assert "(ENOSPC): free space there (or use a bigger disk), then run the same command again; committed work is " \
           "kept" in text

    store = FeatureStore.open(only_store(cache))
    raw = store.raw_commits()
    committed = raw.num_rows
    assert 0 < committed < SAMPLES  # it stopped part-way, after some segments were committed
    for seg in store.committed_segments():  # no partial segment: every part's rows are all there and intact
        assert (store.path / "segments" / seg).is_dir()
    assert len(set(raw.column("image_sha256").to_pylist())) == committed
    assert store.verify().ok

    subprocess.run(["mount", "-o", f"remount,size={LARGE}", str(small_fs)], check=True)  # space freed
    again = ok(run(extract, cli_env))
    store = FeatureStore.open(only_store(cache))
    shas = store.raw_commits().column("image_sha256").to_pylist()
    assert len(shas) == len(set(shas)) == SAMPLES, again.stdout
    assert f"reused {committed} sample(s) already in the cache" in " ".join(again.stdout.split())
    assert store.verify().ok
