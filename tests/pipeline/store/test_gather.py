"""Gather reads (ShardReader.read_into, StoreGather) equal zarr's reads for every codec and stored dtype."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import zarr

from sak.manifests.errors import StoreCorrupt
from sak.pipeline.storage import as_location
from sak.pipeline.store import quant
from sak.pipeline.store.gather import FILES, StoreGather
from sak.pipeline.store.shards import ShardReader, compressors_for, encode_shard
from sak.student.data.targets import TargetBatch, split_layers

N, SHARD = 11, 4  # three shards, the last one partly filled


def write_array(loc, values: np.ndarray, codec: str, shard: int = SHARD, present: int | None = None):
    """A sharded segment array as the writer lays it out; rows >= ``present`` are left unwritten (absent)."""
    arr = zarr.create_array(store=loc.zarr_store(read_only=False), shape=values.shape, chunks=(1, *values.shape[1:]),
                            shards=(shard, *values.shape[1:]), dtype=values.dtype,
                            compressors=compressors_for(codec, values.dtype.itemsize), fill_value=0)
    stop = values.shape[0] if present is None else present
    for k in range(0, stop, shard):
        block = values[k : min(stop, k + shard)]
        (loc / "c" / str(k // shard) / "/".join(["0"] * (values.ndim - 1))).put_bytes(encode_shard(block, shard, codec))
    del arr
    return zarr.open_array(loc.zarr_store(read_only=True), mode="r")


def values_of(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "int8":
        return rng.integers(-127, 128, size=shape, dtype=np.int8)
    if dtype == "uint16":  # bfloat16 bit patterns
        return rng.integers(0, 2**16, size=shape, dtype=np.uint16)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("where", ["local", "memory"])
@pytest.mark.parametrize("codec", ["none", "lz4", "zstd"])
@pytest.mark.parametrize("dtype", ["float16", "uint16", "float32", "int8"])
def test_read_into_equals_zarr(tmp_path, where, codec, dtype) -> None:
    shape = (N, 3, 5, 1) if dtype == "float32" else (N, 3, 5, 6)  # float32 with c=1: a token-scale part
    loc = as_location(tmp_path / "a") if where == "local" else as_location(f"memory://gather-{codec}-{dtype}/a")
    arr = write_array(loc, values_of(dtype, shape), codec)
    want = np.asarray(arr[:])
    reader = ShardReader(loc, arr)
    rows = [10, 3, 4, 5, 0, 3, 8, 9]  # any order, repeats, a run inside a shard, the partial last shard
    slots = [7, 0, 2, 3, 9, 5, 1, 4]
    out = np.full((10, *shape[1:]), 99, dtype=want.dtype)
    reader.read_into(rows, out, slots)
    for r, j in zip(rows, slots, strict=True):
        assert np.array_equal(out[j].view(np.uint8), want[r].view(np.uint8)), (r, j)
    assert (out[[6, 8]] == 99).all()  # untouched slots stay as they were
    assert np.array_equal(reader.read(2, 11), want[2:11])
    FILES.close_all()


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_absent_rows_read_as_zero_like_zarr(tmp_path, codec) -> None:
    loc = as_location(tmp_path / "a")
    arr = write_array(loc, values_of("float16", (N, 2, 2, 3)), codec, present=6)  # rows 6.. absent (shard 2 too)
    want = np.asarray(arr[:])
    assert not want[6:].any()
    out = np.full((N, 2, 2, 3), 7, dtype=np.float16)
    ShardReader(loc, arr).read_into(range(N), out)
    assert np.array_equal(out, want)


def test_damaged_index_is_reported(tmp_path) -> None:
    loc = as_location(tmp_path / "a")
    arr = write_array(loc, values_of("float16", (N, 2, 2, 3)), "none")
    shard = tmp_path / "a" / "c" / "0" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt, match="sak-cache verify"):
        ShardReader(loc, arr).read_into([0], np.empty((1, 2, 2, 3), np.float16))


class FakeStore:
    """What StoreGather needs of a FeatureStore: a spec and its segment arrays."""

    def __init__(self, spec, arrays: dict[tuple[str, str], object]) -> None:
        self.spec, self._arrays = spec, arrays

    def array(self, segment_id: str, name: str, *, fast: bool = False):
        return self._arrays[(segment_id, name)]


@pytest.mark.parametrize("mode", quant.QUANT_MODES)
def test_int8_parts_gathered_and_decoded_equal_dequantize(tmp_path, mode) -> None:
    """int8 codes + float32 scales (from quant.quantize) read by StoreGather, decoded by TargetBatch on the device."""
    spec = SimpleNamespace(dtype="int8", quant=mode, grid=(3, 5), width=6, layers=(2, 7))
    rng = np.random.default_rng(1)
    arrays, blocks = {}, {}
    for layer in spec.layers:
        x = torch.from_numpy(rng.standard_normal((N, 3, 5, 6)).astype(np.float32)) * torch.linspace(0.1, 30, 6)
        q = quant.quantize(x, mode).cpu_numpy()
        blocks[layer] = q
        for (name, _, dtype), part in zip(quant.stored_parts(spec, layer), q.parts, strict=True):
            loc = as_location(tmp_path / name)
            assert part.dtype == dtype
            arrays[("seg", name)] = ShardReader(loc, write_array(loc, np.ascontiguousarray(part), "none"))
    gather = StoreGather(FakeStore(spec, arrays))
    rows = [9, 1, 2, 10]
    bufs = gather.empty(len(rows))
    gather.gather("seg", rows, bufs)
    batch = TargetBatch(split_layers([torch.from_numpy(b) for b in bufs], gather.layer_parts), "int8", mode)
    for layer, got in zip(spec.layers, batch.decode(), strict=True):
        q = blocks[layer]
        want = quant.dequantize_block(q.select(rows))
        assert torch.equal(got, torch.from_numpy(want).permute(0, 3, 1, 2))


def test_layouts_shardreader_cannot_read_go_through_zarr(tmp_path) -> None:
    spec = SimpleNamespace(dtype="float16", quant=None, grid=(2, 2), width=3, layers=(0,))
    values = values_of("float16", (N, 2, 2, 3))
    arr = zarr.create_array(store=str(tmp_path / "z"), shape=values.shape, chunks=(3, 2, 2, 3), dtype=values.dtype)
    arr[:] = values
    gather = StoreGather(FakeStore(spec, {("seg", "layer_0"): arr}))
    out = gather.empty(4)
    gather.gather("seg", [5, 0, 10, 5], out, [3, 1, 0, 2])
    assert np.array_equal(out[0], values[[10, 0, 5, 5]])


def test_advise_requests_each_shards_span_of_the_rows_once(tmp_path, monkeypatch) -> None:
    """Cold batches: every chunk a batch will read is requested from the kernel (WILLNEED) before any read."""
    import os

    calls: list[tuple[str, int, int, int]] = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, advice: calls.append((os.readlink(f"/proc/self/fd/{fd}"),
                                                                                       off, n, advice)))
    loc = as_location(tmp_path / "a")
    arr = write_array(loc, values_of("float16", (N, 2, 2, 3)), "none")  # raw chunks of 24 bytes, shards of SHARD
    reader = ShardReader(loc, arr)
    reader.advise([1, 2, SHARD + 1, 1])
    chunk = 2 * 2 * 3 * 2
    assert calls == [(str(reader.shard_file(0)), 1 * chunk, 2 * chunk, os.POSIX_FADV_WILLNEED),
                     (str(reader.shard_file(1)), 1 * chunk, chunk, os.POSIX_FADV_WILLNEED)]
    ShardReader(as_location("memory://advise/a"), write_array(as_location("memory://advise/a"),
                                                              values_of("float16", (N, 2, 2, 3)), "none")).advise([0])
    assert len(calls) == 2  # remote locations: no hint
    FILES.close_all()


def test_page_cache_probe_tells_cold_from_warm(tmp_path) -> None:
    import os

    loc = as_location(tmp_path / "a")
    arr = write_array(loc, values_of("float16", (N, 64, 64, 8)), "none")  # 64 KB chunks: whole pages
    reader = ShardReader(loc, arr)
    out = np.empty((1, 64, 64, 8), np.float16)
    reader.read_into([1], out)
    assert reader.in_page_cache(1)  # just read
    with open(reader.shard_file(0), "rb+") as fh:  # written just now: dirty pages are not dropped before fsync
        os.fsync(fh.fileno())
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    if reader.in_page_cache(1):
        pytest.skip("this filesystem keeps the pages (or ignores DONTNEED / RWF_NOWAIT): nothing to tell apart")
    reader.read_into([1], out)
    assert reader.in_page_cache(1)
    FILES.close_all()
