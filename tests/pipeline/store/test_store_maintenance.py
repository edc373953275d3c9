"""gc removes only uncommitted segments; verify finds corrupted and missing data."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sak.pipeline.store.feature_store import FeatureStore, gc
from sak.pipeline.store.writer import SampleKey


def _garbage_writer(store: FeatureStore, st, sha: str) -> str:
    layers, _ = st.random_features(store.spec, 1, seed=5)
    w = store.writer(4)
    w.append([SampleKey(sha, "g", "s")], layers)
    w.abort()
    return w.segment_id


def test_gc_removes_only_uncommitted_segments(st, tmp_path: Path) -> None:
    store = FeatureStore.create(tmp_path, st.make_spec())
    committed, _, _ = st.write_segment(store, ["a" * 64, "b" * 64])
    aborted = _garbage_writer(store, st, "c" * 64)  # this process, writer closed: garbage at once
    live = store.writer(4)  # this process, still open: never touched
    layers, _ = st.random_features(store.spec, 1)
    live.append([SampleKey("d" * 64, "d", "s")], layers)
    foreign_new = store.path / "segments" / "20250101T000000000000Z-otherhost-1-abcd"
    foreign_old = store.path / "segments" / "20240101T000000000000Z-otherhost-2-abcd"
    for p in (foreign_new, foreign_old):
        (p / "layer_1").mkdir(parents=True)
        (p / "layer_1" / "zarr.json").write_text("{}")
    old = time.time() - 7200
    for f in [foreign_old, *foreign_old.rglob("*")]:
        os.utime(f, (old, old))
    stale_tmp = store.path / "manifest" / ".part-x.parquet.123.tmp"
    stale_tmp.write_bytes(b"x")
    os.utime(stale_tmp, (old, old))

    plan = gc(store)  # dry run
    expected = {store.path / "segments" / aborted, foreign_old, stale_tmp}
    assert set(plan) == expected
    assert all(p.exists() for p in expected)
    store.gc(dry_run=False)
    assert not any(p.exists() for p in expected)
    assert (store.path / "segments" / committed.segment_id).exists()
    assert (store.path / "segments" / live.segment_id).exists() and foreign_new.exists()
    assert store.verify().ok and store.commits().num_rows == 2
    live.commit()
    assert store.commits().num_rows == 3 and store.gc() == []
    assert set(store.gc(grace_seconds=0)) == {foreign_new}


def _flip_middle_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 3
    for i in range(mid, mid + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_detects_a_corrupted_shard_and_a_missing_segment(st, tmp_path: Path) -> None:
    store = FeatureStore.create(tmp_path, st.make_spec(keep_prefix=True))
    shas = [f"{i:064x}" for i in range(6)]
    r1, _, _ = st.write_segment(store, shas[:4])
    r2, _, _ = st.write_segment(store, shas[4:])
    report = store.verify()
    assert report.ok and report.checked == 6

    shard_files = sorted(p for p in (store.path / "segments" / r1.segment_id / "layer_3").rglob("*") if p.is_file() and p.name != "zarr.json")
    assert len(shard_files) == 1  # 4 samples fit one shard
    _flip_middle_bytes(shard_files[0])
    report = FeatureStore.open(store.path).verify()
    bad = {(seg, row) for seg, row, _, _ in report.corrupt}
    assert bad and all(seg == r1.segment_id for seg, _ in bad)
    assert report.checked == 6

    import shutil

    shutil.rmtree(store.path / "segments" / r2.segment_id)
    report = FeatureStore.open(store.path).verify()
    missing = [c for c in report.corrupt if c[0] == r2.segment_id]
    assert len(missing) == 2 and "unreadable" in missing[0][3]
    assert report.checked == 6
