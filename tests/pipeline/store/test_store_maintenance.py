"""gc removes only uncommitted segments; verify finds corrupted and missing data."""

from __future__ import annotations

import json
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


def _two_segments(st, tmp_path: Path, **spec) -> tuple[FeatureStore, str, str]:
    store = FeatureStore.create(tmp_path, st.make_spec(**spec))
    shas = [f"{i:064x}" for i in range(6)]
    r1, _, _ = st.write_segment(store, shas[:4], failed={"e" * 64: "BadImage"})
    r2, _, _ = st.write_segment(store, shas[4:], seed=1)
    return store, r1.segment_id, r2.segment_id


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_verify_checks_every_stats_file_against_the_arrays(st, tmp_path: Path) -> None:
    store, a, b = _two_segments(st, tmp_path)
    assert store.verify().ok and store.verify().problems == []
    (store.path / "stats" / f"{a}.json").unlink()

    def shift_mean(d):  # 1% of the channel's spread: enough to shift training's standardization
        d["layers"]["3"]["mean"][5] += 0.01 * (d["layers"]["3"]["m2"][5] / d["layers"]["3"]["count"]) ** 0.5

    _edit_json(store.path / "stats" / f"{b}.json", shift_mean)
    report = FeatureStore.open(store.path).verify()
    assert not report.ok and report.corrupt == [] and report.checked == 6
    assert [(k, Path(w).name) for k, w, _ in report.problems] == [("stats", f"{a}.json"), ("stats", f"{b}.json")]
    assert "missing for committed segment" in report.problems[0][2]
    assert report.problems[1][2].startswith("layer 3: mean/M2 differ from the recomputed ones by 0.0")
    assert report.bad_stats == [a, b]
    (store.path / "stats" / f"{b}.json").write_text("{not json")
    report = FeatureStore.open(store.path).verify()
    assert [(k, Path(w).name) for k, w, _ in report.problems][1] == ("stats", f"{b}.json")
    assert "unreadable statistics file" in report.problems[1][2]


def test_verify_checks_int8_stats_too(st, tmp_path: Path) -> None:
    store, a, _ = _two_segments(st, tmp_path, dtype="int8", quant="token-channel-offset")
    assert store.verify().ok
    _edit_json(store.path / "stats" / f"{a}.json", lambda d: d["layers"]["1"].update(count=d["layers"]["1"]["count"] - 64))
    report = FeatureStore.open(store.path).verify()
    assert [(k, Path(w).name) for k, w, _ in report.problems] == [("stats", f"{a}.json")]
    assert report.problems[0][2] == "layer 1: count 192 (recomputed 256)"


def test_verify_reports_an_edited_grid_and_an_unknown_layer(st, tmp_path: Path) -> None:
    store, a, b = _two_segments(st, tmp_path)
    _edit_json(store.path / "spec.json", lambda d: d.update(grid=[8, 4]))
    report = FeatureStore.open(store.path).verify()
    kinds = [(k, Path(w).parent.name if Path(w).name == "zarr.json" else Path(w).name) for k, w, _ in report.problems]
    assert kinds == [("spec", "layer_1"), ("spec", "layer_3"), ("spec", "layer_1"), ("spec", "layer_3"), ("spec", "spec.json")]
    assert "layer_1 holds samples of (8, 8, 32) float16; spec.json says (8, 4, 32) float16 (grid [8, 4]" in report.problems[0][2]
    assert "but 2 segment(s)" in report.problems[-1][2] and "spec.json was edited" in report.problems[-1][2]


def test_verify_reports_unreadable_parts_and_parts_with_foreign_ids_and_goes_on(st, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    store, a, b = _two_segments(st, tmp_path)
    table = pq.read_table(store.part_path(a))
    table = table.set_column(table.column_names.index("segment_id"), "segment_id", pa.array(["../x"] * table.num_rows))
    pq.write_table(table, store.part_path(a))
    report = FeatureStore.open(store.path).verify()
    assert [(k, Path(w).name) for k, w, _ in report.problems] == [("part", f"part-{a}.parquet")]
    assert report.bad_parts == [f"part-{a}.parquet"] and report.checked == 2 and report.corrupt == []
    store.part_path(b).write_bytes(b"PAR1 not really")
    report = FeatureStore.open(store.path).verify()
    assert [Path(w).name for _, w, _ in report.problems] == [f"part-{a}.parquet", f"part-{b}.parquet"]
    assert "not a readable Parquet file" in report.problems[1][2] and report.checked == 0


def test_gc_never_deletes_through_a_link_out_of_the_store(st, tmp_path: Path) -> None:
    import pytest

    from sak.manifests.errors import StoreCorrupt

    store = FeatureStore.create(tmp_path / "cache", st.make_spec())
    st.write_segment(store, ["a" * 64])
    aborted = _garbage_writer(store, st, "c" * 64)
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data.bin").write_bytes(b"keep")
    (store.path / "segments" / "20240101T000000000000Z-otherhost-2-abcd").symlink_to(outside)
    with pytest.raises(StoreCorrupt, match="outside the store .* Nothing was deleted"):
        store.gc(dry_run=False, grace_seconds=0)
    assert (outside / "data.bin").read_bytes() == b"keep" and (store.path / "segments" / aborted).exists()
