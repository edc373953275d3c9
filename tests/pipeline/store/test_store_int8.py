"""int8 stores and codecs end to end: writer -> plain zarr, checksums, verify, stats, fidelity, compact/export, encode pool."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pytest
import torch
import zarr

from sak.manifests.errors import SakError
from sak.pipeline.store import encode_pool
from sak.pipeline.store.feature_store import FeatureStore
from sak.pipeline.store.quant import QUANT_MODES, dequantize_numpy, quantize, stored_parts
from sak.pipeline.store.shards import shard_codec
from sak.pipeline.store.stats import LayerStats
from sak.pipeline.store.transfer import compact_store, export_store
from sak.pipeline.store.writer import SampleKey

SHAS = [f"{i:02d}" * 32 for i in range(7)]


def _int8_store(tmp_path, st, quant="token-channel-offset", codec="none", **kw):
    spec = st.make_spec(dtype="int8", quant=quant, codec=codec, keep_prefix=True, **kw)
    return FeatureStore.create(tmp_path / "cache", spec)


def _plain_parts(store, segment_id, row, layer):
    """The layer's stored arrays of one row, read with zarr alone, and their numpy dequantization."""
    g = zarr.open_group(str(store.path / "segments" / segment_id), mode="r")
    parts = [np.asarray(g[name][row]) for name, _, _ in stored_parts(store.spec, layer)]
    names = [n for n, _, _ in stored_parts(store.spec, layer)]
    named = dict(zip(names, parts, strict=True))
    return parts, dequantize_numpy(named[f"layer_{layer}"], named.get(f"scale_token_{layer}"),
                                   named.get(f"scale_channel_{layer}"), named.get(f"offset_channel_{layer}"))


@pytest.mark.parametrize("quant", QUANT_MODES)
def test_int8_round_trip_plain_zarr_equals_read_rows_bit_for_bit(tmp_path, st, quant):
    store = _int8_store(tmp_path, st, quant)
    rep, layers, prefix = st.write_segment(store, SHAS, batch=3)
    seg = rep.segment_id
    got = store.read_rows(seg, [4, 0, 6])
    for j, layer in enumerate(store.spec.layers):
        assert got[layer].dtype == np.float32
        for k, row in enumerate([4, 0, 6]):
            parts, plain = _plain_parts(store, seg, row, layer)
            assert parts[0].dtype == np.int8 and all(p.dtype == np.float32 for p in parts[1:])
            assert np.array_equal(plain.view(np.uint32), got[layer][k].view(np.uint32))
        # the host quantization of the writer: the same codes as quantize() of the float input
        expect = quantize(torch.from_numpy(layers[j][4:5]), quant)
        assert np.array_equal(store.read_parts(seg, [4], layer)[0], expect.q.numpy())
    pre = store.read_prefix(seg, [1])
    assert pre[store.spec.layers[0]].dtype == np.float32
    assert np.array_equal(pre[store.spec.layers[0]][0], prefix[0][1].astype(np.float16).astype(np.float32))
    g = zarr.open_group(str(store.path / "segments" / seg), mode="r")
    assert g["prefix_1"].dtype == np.float16 and g["layer_1"].attrs["sak_quant"] == quant
    assert store.read_sample(SHAS[2])[3].shape == (8, 8, 32)


def test_checksums_recomputable_from_plain_zarr(tmp_path, st):
    store = _int8_store(tmp_path, st)
    rep, _, _ = st.write_segment(store, SHAS)
    g = zarr.open_group(str(store.path / "segments" / rep.segment_id), mode="r")
    names = [n for i in store.spec.layers for n, _, _ in stored_parts(store.spec, i)] + ["prefix_1", "prefix_3"]
    assert names[:4] == ["layer_1", "scale_token_1", "scale_channel_1", "offset_channel_1"]
    for r in store.commits().to_pylist():
        h = hashlib.sha256()
        for n in names:
            h.update(np.ascontiguousarray(g[n][r["row"]]).tobytes())
        assert h.hexdigest() == r["checksum"]


def test_verify_detects_a_flipped_byte_in_a_scale_array(tmp_path, st):
    store = _int8_store(tmp_path, st)  # codec none: the shard holds the raw float32 scales
    rep, _, _ = st.write_segment(store, SHAS)
    assert store.verify().ok
    shard = store.path / "segments" / rep.segment_id / "scale_token_3" / "c" / "0" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[4 * 64 * 2 + 1] ^= 0x01  # a mantissa byte of a token scale of row 2
    shard.write_bytes(bytes(data))
    report = FeatureStore.open(store.path).verify()
    assert [(r, why) for _, r, _, why in report.corrupt] == [(2, "checksum mismatch")]


def test_stats_are_those_of_the_dequantized_values(tmp_path, st):
    store = _int8_store(tmp_path, st)
    rep, _, _ = st.write_segment(store, SHAS)
    stats = store.stats()
    values = store.read_rows(rep.segment_id, range(len(SHAS)))
    for layer in store.spec.layers:
        want = LayerStats.from_values(values[layer])
        assert stats[layer].count == want.count == len(SHAS) * 64
        np.testing.assert_allclose(stats[layer].mean, want.mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(stats[layer].m2, want.m2, rtol=1e-11)


def test_precomputed_blocks_stats_and_fidelity(tmp_path, st):
    store = _int8_store(tmp_path, st)
    layers, prefix = st.random_features(store.spec, 4)
    blocks = [quantize(torch.from_numpy(a), store.spec.quant) for a in layers]  # "on the device": torch tensors
    given = [LayerStats(4 * 64, np.full(32, 7.0), np.full(32, 2.0)) for _ in store.spec.layers]
    w = store.writer(4)
    w.append([SampleKey(s, s, "src") for s in SHAS[:4]], blocks, prefix, stats=given)
    w.add_fidelity(1, "raw", 256, 255.5, 0.99)
    w.add_fidelity(1, "raw", 256, 256.0, 0.995)
    w.add_fidelity(1, "std", 512, 511.0, 0.98)
    with pytest.raises(ValueError, match="kind"):
        w.add_fidelity(1, "cosine", 1, 1.0, 1.0)
    seg = w.commit().segment_id
    assert np.array_equal(store.read_parts(seg, [0, 1, 2, 3], 1)[0], blocks[0].q.numpy())
    assert store.stats()[1].mean.tolist() == [7.0] * 32  # the caller's stats, not recomputed
    fid = store.fidelity()
    assert fid == {1: {"raw": {"mean": 511.5 / 512, "min": 0.99, "count": 512}, "std": {"mean": 511 / 512, "min": 0.98, "count": 512}}}
    with pytest.raises(ValueError, match="block of"):  # a block of another mode
        store.writer(1).append([SampleKey("ab" * 32, "x", "s")], [quantize(torch.from_numpy(a[:1]), "token") for a in layers],
                               [p[:1] for p in prefix])
    float_store = FeatureStore.create(tmp_path / "cache", st.make_spec())
    st.write_segment(float_store, SHAS[:2])
    assert float_store.fidelity() == {}


def test_compact_and_export_keep_int8_bytes_and_fidelity(tmp_path, st):
    store = _int8_store(tmp_path, st)
    st.write_segment(store, SHAS[:3], seed=1)
    rep2, _, _ = st.write_segment(store, SHAS[3:], seed=2)
    w = store.writer(1)
    w.add_fidelity(3, "std", 10, 9.5, 0.9)
    layers, prefix = st.random_features(store.spec, 1, seed=9)
    w.append([SampleKey("ff" * 32, "extra", "src")], layers, prefix)
    w.commit()
    before = {r["image_sha256"]: r["checksum"] for r in store.commits().to_pylist()}
    values = store.read_rows(rep2.segment_id, [0])
    report = compact_store(store, target_rows=100)
    assert len(report.new_segments) == 1 and len(report.removed_segments) == 3
    after = {r["image_sha256"]: r["checksum"] for r in store.commits().to_pylist()}
    assert after == before and store.verify().ok and store.fidelity()[3]["std"]["count"] == 10
    row = next(r for r in store.commits().to_pylist() if r["image_sha256"] == SHAS[3])
    assert np.array_equal(store.read_rows(row["segment_id"], [row["row"]])[1], values[1])
    exp = export_store(store, tmp_path / "other", samples=[SHAS[0]])
    dest = FeatureStore.open(exp.target)
    assert dest.spec.dtype == "int8" and dest.commits().column("checksum").to_pylist() == [before[SHAS[0]]]
    assert dest.verify().ok


@pytest.mark.parametrize("codec", ["none", "lz4", "zstd"])
@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_each_codec_is_readable_by_plain_zarr(tmp_path, st, codec, dtype):
    spec = st.make_spec(dtype=dtype, quant="token" if dtype == "int8" else None, codec=codec)
    store = FeatureStore.create(tmp_path / "cache", spec)
    rep, layers, _ = st.write_segment(store, SHAS)
    g = zarr.open_group(str(store.path / "segments" / rep.segment_id), mode="r")
    assert shard_codec(g["layer_1"]) == codec
    if dtype == "int8":
        assert shard_codec(g["scale_token_1"]) == "none"
        plain = dequantize_numpy(np.asarray(g["layer_1"][:]), np.asarray(g["scale_token_1"][:]))
    else:
        plain = np.asarray(g["layer_1"][:])
        assert np.array_equal(plain, layers[0].astype(np.float16))
    assert np.array_equal(plain, store.read_rows(rep.segment_id, range(len(SHAS)))[1])


def test_create_keeps_the_stores_codec(tmp_path, st, caplog):
    FeatureStore.create(tmp_path / "cache", st.make_spec(codec="lz4"))
    with caplog.at_level(logging.INFO, logger="sak.pipeline.store.feature_store"):
        again = FeatureStore.create(tmp_path / "cache", st.make_spec(codec="none"))
    assert again.spec.codec == "lz4"
    assert [r.message for r in caplog.records if "codec" in r.message][0].count("lz4") == 1


def _shard_files(store, seg):
    root = store.path / "segments" / seg
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "c" in p.relative_to(root).parts[1:2]}


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_encode_pool_writes_the_same_bytes_as_one_thread(tmp_path, st, dtype):
    spec = st.make_spec(dtype=dtype, quant="token-channel-offset" if dtype == "int8" else None, codec="zstd", keep_prefix=True)
    layers, prefix = st.random_features(spec, 150, seed=3)
    keys = [SampleKey(f"{i:064x}", str(i), "src") for i in range(150)]
    out = {}
    for threads in (1, 3):
        store = FeatureStore.create(tmp_path / f"c{threads}", spec)
        w = store.writer(150, encode_threads=threads)
        for i in range(0, 150, 7):
            w.append(keys[i : i + 7], [a[i : i + 7] for a in layers], [p[i : i + 7] for p in prefix])
        rep = w.commit()
        assert rep.encode_threads == threads and rep.encoded_bytes > 0 and rep.raw_bytes > rep.encoded_bytes // 2
        assert rep.write_seconds >= rep.encode_seconds > 0
        stats = store.stats()
        out[threads] = (_shard_files(store, rep.segment_id), rep.table.column("checksum").to_pylist(),
                        {k: (v.mean.tobytes(), v.m2.tobytes()) for k, v in stats.items()})
    arrays = 2 * (4 if dtype == "int8" else 1) + 2  # per layer: codes + 3 scale/offset arrays; 2 prefix arrays
    assert len(out[1][0]) == 3 * arrays and out[1] == out[3]  # 3 shards of 64 rows


def test_a_failing_write_surfaces_on_the_next_call(tmp_path, st, monkeypatch):
    store = FeatureStore.create(tmp_path / "cache", st.make_spec())
    calls = []

    def broken(block, shard_samples, codec="zstd"):
        calls.append(1)
        raise OSError("disk full")

    monkeypatch.setattr(encode_pool, "encode_shard_parts", broken)
    layers, _ = st.random_features(store.spec, 64)
    w = store.writer(64, encode_threads=2)
    keys = [SampleKey(f"{i:064x}", str(i), "src") for i in range(64)]
    with pytest.raises(SakError, match="disk full"):
        for i in range(0, 64, 8):  # shards of 8 rows: the first failure stops the next append or the commit
            w.append(keys[i : i + 8], [a[i : i + 8] for a in layers])
        w.commit()
    assert calls and not store.committed_segments()
    with pytest.raises(SakError, match="disk full|already committed"):
        w.commit()
    w.abort()


def test_stats_drop_duplicate_rows_of_int8_segments(tmp_path, st):
    store = _int8_store(tmp_path, st)
    first, _, _ = st.write_segment(store, SHAS[:4], seed=1)
    second, _, _ = st.write_segment(store, SHAS[2:], seed=2)  # SHAS[2:4] twice: dedup keeps the first segment's rows
    kept = np.concatenate([store.read_rows(first.segment_id, range(4))[3], store.read_rows(second.segment_id, [2, 3, 4])[3]])
    want = LayerStats.from_values(kept)
    got = store.stats()[3]
    assert got.count == want.count == 7 * 64
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got.m2, want.m2, rtol=1e-9)


def test_compact_counts_a_split_segments_fidelity_once(tmp_path, st):
    store = _int8_store(tmp_path, st)
    st.write_segment(store, SHAS[:3])
    layers, prefix = st.random_features(store.spec, 2)
    w = store.writer(2)
    w.append([SampleKey(s, s, "src") for s in SHAS[3:5]], layers, prefix)
    w.add_fidelity(1, "raw", 128, 127.0, 0.97)
    w.commit()
    report = compact_store(store, target_rows=4)  # 3 + 2 rows -> new segments of 4 + 1: the second one is split
    assert len(report.new_segments) == 2
    assert store.fidelity() == {1: {"raw": {"mean": 127.0 / 128, "min": 0.97, "count": 128}}}
