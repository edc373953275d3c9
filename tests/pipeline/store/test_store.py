"""FeatureStore: round trips per dtype, plain-zarr readability, spec refusal, dedup, read-only, verify."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hst

from sak.manifests.errors import SakError, SpecMismatch, StoreCorrupt
from sak.pipeline.storage import ReadOnlyStorage
from sak.pipeline.store.arrays import contiguous_runs, float32_to_bf16_bits, read_rows_contiguous
from sak.pipeline.store.catalog import list_stores, resolve_store
from sak.pipeline.store.feature_store import FeatureStore
from sak.pipeline.store.writer import SampleKey, new_segment_id, parse_segment_id

PLAIN_READER = textwrap.dedent(
    """
    import glob, hashlib, json, sys
    import numpy as np, pyarrow.parquet as pq, zarr
    root, out = sys.argv[1], sys.argv[2]
    spec = json.load(open(root + "/spec.json"))
    names = [f"layer_{i}" for i in spec["layers"]] + ([f"prefix_{i}" for i in spec["layers"]] if spec["keep_prefix"] else [])
    result = {}
    for part in sorted(glob.glob(root + "/manifest/part-*.parquet")):
        for r in pq.read_table(part).to_pylist():
            if r["status"] != "ok":
                continue
            g = zarr.open_group(root + "/segments/" + r["segment_id"], mode="r")
            stored = [np.asarray(g[n][r["row"]]) for n in names]
            h = hashlib.sha256()
            for a in stored:
                h.update(np.ascontiguousarray(a).tobytes())
            assert h.hexdigest() == r["checksum"], "checksum differs"
            assert g[names[0]].metadata.dimension_names == ("sample", "y", "x", "channel")
            for n, a in zip(names, stored):
                if g[n].attrs["sak_dtype"] == "bfloat16":
                    a = (a.astype(np.uint32) << 16).view(np.float32)
                result[r["image_sha256"] + "/" + n] = a.astype(np.float32)
    assert not [m for m in sys.modules if m == "sak" or m.startswith("sak.")], "sak was imported"
    np.savez(out, **result)
    """
)


@pytest.mark.parametrize("dtype,tol", [("float16", 5e-3), ("bfloat16", 3e-2), ("float32", 0.0)])
def test_round_trip_is_readable_with_plain_zarr_and_pyarrow(st, tmp_path: Path, dtype: str, tol: float) -> None:
    spec = st.make_spec(dtype=dtype, keep_prefix=True)
    store = FeatureStore.create(tmp_path / "cache", spec)
    shas = [f"{i:064x}" for i in range(7)]
    report, layers, prefix = st.write_segment(store, shas, capacity=10, failed={"f" * 64: "BadImage: broken"})
    assert (report.n_ok, report.n_failed) == (7, 1)

    ro = FeatureStore.open(store.path)
    got = ro.read_rows(report.segment_id, [6, 0, 1, 2, 5])
    pre = ro.read_prefix(report.segment_id, [3])
    for j, layer in enumerate(spec.layers):
        assert got[layer].dtype == (np.float16 if dtype == "float16" else np.float32)
        assert got[layer].shape == (5, 8, 8, 32)
        rel = np.abs(got[layer].astype(np.float32) - layers[j][[6, 0, 1, 2, 5]]) / (np.abs(layers[j][[6, 0, 1, 2, 5]]) + 1e-3)
        assert rel.max() <= tol
        np.testing.assert_allclose(pre[layer][0].astype(np.float32), prefix[j][3], rtol=tol, atol=1e-6)

    out = tmp_path / "plain.npz"
    subprocess.run([sys.executable, "-c", PLAIN_READER, str(store.path), str(out)], check=True, cwd=tmp_path)
    plain = np.load(out)
    assert len(plain.files) == 7 * 4
    for layer in spec.layers:
        mine = ro.read_rows(report.segment_id, [4])[layer][0].astype(np.float32)
        np.testing.assert_array_equal(plain[f"{shas[4]}/layer_{layer}"], mine)


def test_bf16_bits_match_torch_rounding() -> None:
    x = np.random.default_rng(1).standard_normal(10_000).astype(np.float32) * 100
    x[:3] = [np.inf, -np.inf, 0.0]
    ours = float32_to_bf16_bits(x)
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, theirs)


def test_contiguous_runs_exact() -> None:
    assert contiguous_runs([4, 1, 2, 3, 9, 9, 11, 10]) == [(1, 5), (9, 12)]
    assert contiguous_runs([]) == []


class _CountingArray:
    """An array stand-in that records the slices it is read with."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.reads, self.path = data, [], "fake"
        self.shape, self.dtype = data.shape, data.dtype

    def __getitem__(self, key):
        assert isinstance(key, slice), "only slice reads are allowed"
        self.reads.append((key.start, key.stop))
        return self.data[key]


@settings(max_examples=60, deadline=None)
@given(hst.lists(hst.integers(0, 39), min_size=1, max_size=25))
def test_read_rows_uses_one_slice_per_run_and_keeps_order(rows: list[int]) -> None:
    arr = _CountingArray(np.arange(40 * 3).reshape(40, 3))
    got = read_rows_contiguous(arr, rows)
    np.testing.assert_array_equal(got, arr.data[rows])
    assert arr.reads == contiguous_runs(rows)


def test_spec_mismatch_is_refused_with_the_fields_and_flags(st, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    a, b = st.make_spec(layers=(1, 3)), st.make_spec(layers=(3,), dtype="bfloat16")
    FeatureStore.create(cache, a)
    assert FeatureStore.create(cache, a).spec == a  # idempotent for an equal spec
    # A directory named for spec b that holds spec a (renamed by hand) must be refused.
    FeatureStore.path_for(cache, a).rename(FeatureStore.path_for(cache, b))
    with pytest.raises(SpecMismatch) as err:
        FeatureStore.create(cache, b)
    msg = str(err.value)
    assert "layers [1, 3] (you asked for [3]; pass --layers" in msg
    assert "dtype 'float16' (you asked for 'bfloat16'; pass --dtype" in msg
    store = FeatureStore.open(FeatureStore.path_for(cache, b))
    with pytest.raises(SpecMismatch, match=r"you asked for \[11\]: pass --layers 1,3"):
        store.read_rows("x", [0], layers=[11])
    with pytest.raises(SpecMismatch, match="keep_prefix False"):
        store.require(keep_prefix=True)


def test_unknown_format_version_is_refused(st, tmp_path: Path) -> None:
    store = FeatureStore.create(tmp_path, st.make_spec())
    data = json.loads((store.path / "spec.json").read_text())
    data["format_version"] = 99
    (store.path / "spec.json").write_text(json.dumps(data))
    with pytest.raises(SpecMismatch, match="format version 99 is not supported"):
        FeatureStore.open(store.path)


def test_read_only_store_cannot_write(st, tmp_path: Path) -> None:
    store = FeatureStore.create(tmp_path, st.make_spec())
    report, _, _ = st.write_segment(store, ["a" * 64, "b" * 64])
    ro = FeatureStore.open(store.path, read_only=True)
    with pytest.raises(SakError, match="read-only"):
        ro.writer(4)
    ro.read_rows(report.segment_id, [0])
    arr = ro.array(report.segment_id, "layer_1")
    with pytest.raises(ValueError, match="read-only"):
        arr[0] = np.zeros(arr.shape[1:], arr.dtype)
    before = {p: p.read_bytes() for p in store.path.rglob("*") if p.is_file()}
    with pytest.raises(ReadOnlyStorage, match="read-only"):  # its folder is a read-only view too
        (ro.path / "manifest" / f"part-{report.segment_id}.parquet").write_atomic(b"x")
    with pytest.raises(ReadOnlyStorage):
        (ro.path / "segments" / report.segment_id).remove_tree()
    assert {p: p.read_bytes() for p in store.path.rglob("*") if p.is_file()} == before
    ro.read_only = False  # reopening for writing (sak-cache gc --delete does this) makes the folder writable
    assert not ro.path.read_only and ro.path == store.path
    assert pickle.loads(pickle.dumps(FeatureStore.open(store.path))).path.read_only  # dask workers too


def test_read_time_dedup_rule(st, tmp_path: Path) -> None:
    store = FeatureStore.create(tmp_path, st.make_spec())
    s1, _, _ = st.write_segment(store, ["a" * 64, "b" * 64], failed={"c" * 64: "first error", "d" * 64: "old"}, seed=1)
    s2, _, _ = st.write_segment(store, ["b" * 64, "c" * 64], failed={"d" * 64: "new"}, seed=2)
    assert s1.segment_id < s2.segment_id
    assert store.raw_commits().num_rows == 7
    ok = store.commits()
    got = {(r["image_sha256"][0], r["segment_id"]) for r in ok.to_pylist()}
    assert got == {("a", s1.segment_id), ("b", s1.segment_id), ("c", s2.segment_id)}
    failed = store.commits("failed").to_pylist()
    assert [(r["image_sha256"][0], r["error"]) for r in failed] == [("d", "new")]
    assert store.commits(None).num_rows == 4


def test_segment_ids_sort_by_time_and_name_their_writer() -> None:
    a, b = new_segment_id(), new_segment_id()
    assert a < b
    host, pid = parse_segment_id(a)
    import os

    assert pid == os.getpid() and host


def test_list_and_resolve_stores(st, tmp_path: Path) -> None:
    a = FeatureStore.create(tmp_path, st.make_spec())
    b = FeatureStore.create(tmp_path, st.make_spec(dtype="float32"))
    assert [s.name for s in list_stores(tmp_path)] == sorted([a.name, b.name])
    assert resolve_store(a.name, tmp_path).path == a.path
    assert resolve_store(str(b.path)).spec == b.spec
    with pytest.raises(SakError, match="matches several stores"):
        resolve_store("tiny", tmp_path)


def test_writer_rejects_wrong_shapes_and_overflow(st, tmp_path: Path) -> None:
    store = FeatureStore.create(tmp_path, st.make_spec())
    layers, _ = st.random_features(store.spec, 3)
    w = store.writer(2)
    keys = [SampleKey(f"{i}" * 64, str(i), "s") for i in range(3)]
    with pytest.raises(ValueError, match="do not fit"):
        w.append(keys, layers)
    with pytest.raises(ValueError, match="expected shape"):
        w.append(keys[:2], [a[:2, :4] for a in layers])
    w.abort()
    assert store.commits().num_rows == 0


def test_direct_shard_encoder_matches_zarrs_own_writes(st, tmp_path: Path, monkeypatch) -> None:
    """The writer encodes whole shards itself when the metadata matches; zarr reads them like its own."""
    from sak.pipeline.store import writer as store_writer

    monkeypatch.setattr(store_writer, "MAX_SHARD_SAMPLES", 4)  # 11 samples: shards of 4, 4 and 3
    spec = st.make_spec(dtype="bfloat16", keep_prefix=True)
    shas = [f"{i:064x}" for i in range(11)]
    fast_store = FeatureStore.create(tmp_path / "fast", spec)
    fast, layers, _ = st.write_segment(fast_store, shas, capacity=13, batch=3)
    shards = sorted(p.relative_to(fast_store.path / "segments" / fast.segment_id / "layer_3").as_posix()
                    for p in (fast_store.path / "segments" / fast.segment_id / "layer_3").rglob("c/*/0/0/0"))
    assert shards == ["c/0/0/0/0", "c/1/0/0/0", "c/2/0/0/0"]
    monkeypatch.setattr(store_writer, "fast_shards_supported", lambda array: False)
    slow_store = FeatureStore.create(tmp_path / "slow", spec)
    slow, _, _ = st.write_segment(slow_store, shas, capacity=13, batch=3)
    assert fast.table.column("checksum").to_pylist() == slow.table.column("checksum").to_pylist()
    rows = list(range(11))
    a, b = fast_store.read_rows(fast.segment_id, rows), slow_store.read_rows(slow.segment_id, rows)
    for layer in spec.layers:
        np.testing.assert_array_equal(a[layer], b[layer])
    np.testing.assert_array_equal(
        fast_store.read_prefix(fast.segment_id, rows)[3], slow_store.read_prefix(slow.segment_id, rows)[3]
    )
    assert fast_store.verify().ok and slow_store.verify().ok


def test_shard_reader_equals_zarr_and_rejects_a_damaged_index(st, tmp_path: Path, monkeypatch) -> None:
    from sak.pipeline.store import writer as store_writer
    from sak.pipeline.store.shards import ShardReader

    monkeypatch.setattr(store_writer, "MAX_SHARD_SAMPLES", 4)
    store = FeatureStore.create(tmp_path, st.make_spec())
    report, _, _ = st.write_segment(store, [f"{i:064x}" for i in range(10)], capacity=12, batch=5)
    fast, plain = store.array(report.segment_id, "layer_1", fast=True), store.array(report.segment_id, "layer_1")
    assert isinstance(fast, ShardReader) and fast.shape == plain.shape == (10, 8, 8, 32)
    for a, b in [(0, 10), (3, 9), (4, 8), (9, 10), (5, 5)]:
        np.testing.assert_array_equal(fast[a:b], plain[a:b])
    shard = store.path / "segments" / report.segment_id / "layer_1" / "c" / "1" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # inside the index
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt, match="index checksum"):
        FeatureStore.open(store.path).read_rows(report.segment_id, [5])


def test_spec_mismatch_names_the_protocol_flags(st, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    native, student = st.make_spec(), st.make_spec(input_protocol="student", img_size=(64, 80), resize="none")
    FeatureStore.create(cache, native)
    FeatureStore.path_for(cache, native).rename(FeatureStore.path_for(cache, student))
    with pytest.raises(SpecMismatch) as err:
        FeatureStore.create(cache, student)
    assert "input_protocol 'native' (you asked for 'student'; pass --input-protocol to match)" in str(err.value)
    assert "img_size None (you asked for [64, 80]; pass --img-size to match)" in str(err.value)
    assert "pass resize" not in str(err.value)  # every field names a real flag
