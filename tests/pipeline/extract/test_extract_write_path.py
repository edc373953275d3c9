"""Issue 13 item 5: extraction's write path. Statistics computed on the teacher's device equal the
host's float64 statistics of the stored values; shards written with writev from the appended batches
are byte for byte what :func:`encode_shard` gives; the CPU encode pool leaves torch its cores."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from sak.pipeline.extract.forward import forward, sample_sums, stats_from_sums
from sak.pipeline.extract.job import ExtractConfig, spec_for
from sak.pipeline.extract.segment import encode_threads_for
from sak.pipeline.storage import as_location
from sak.pipeline.store import quant
from sak.pipeline.store.shards import encode_shard, encode_shard_parts, write_parts
from sak.pipeline.store.stats import LayerStats
from sak.pipeline.teachers import create_teacher


class Maps:
    """A teacher stand-in: heavy-tailed maps (a large-mean outlier channel), one inf in sample 1 of layer 1."""

    name = "maps"

    def forward_layers(self, x, layers):
        g = torch.Generator().manual_seed(0)
        out = []
        for k, _ in enumerate(layers):
            m = torch.randn(x.shape[0], 6, 7, 16, generator=g) * 3 + 20
            m[..., 3] = m[..., 3] * 0.01 + 900.0  # mean >> spread: the sums' shift matters here
            if k == 0:
                m[1, 2, 3, 4] = float("inf")
            out.append(m)
        return out, None


@dataclasses.dataclass
class Spec:
    dtype: str
    quant: str | None = None
    layers: tuple = (1, 2)
    keep_prefix: bool = False
    teacher: str = "maps"


def _stored_values(dtype: str, block, keep: np.ndarray) -> np.ndarray:
    if dtype == "int8":
        parts = [None if p is None else torch.from_numpy(p[keep]) for p in (block.q, block.scale_token, block.scale_channel,
                                                                            block.offset_channel)]
        return quant.dequantize(*parts).numpy()
    if dtype == "bfloat16":
        return torch.from_numpy(block[keep].view(np.int16)).view(torch.bfloat16).float().numpy()
    return block[keep]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "int8"])
def test_device_stats_equal_the_host_stats_of_the_stored_values(dtype: str) -> None:
    spec = Spec(dtype, quant.DEFAULT_QUANT if dtype == "int8" else None)
    out = forward(Maps(), spec, [torch.zeros(3, 8, 8)] * 3, "cpu")
    assert out.finite.tolist() == [True, False, True] and out.stats is not None
    kept = out.select(out.finite)
    assert kept.stats is out.stats and out.select(np.array([True, False, False])).stats is None
    for block, st in zip(out.layers, out.stats, strict=True):
        want = LayerStats.from_values(_stored_values(dtype, block, out.finite))
        assert st.count == want.count == 2 * 6 * 7
        np.testing.assert_allclose(st.mean, want.mean, rtol=1e-6)
        np.testing.assert_allclose(st.m2, want.m2, rtol=1e-5)


def test_sample_sums_flag_non_finite_samples_and_handle_none() -> None:
    x = torch.ones(3, 300, 4, dtype=torch.float16)  # more tokens than one CPU slice
    x[2, 299, 1] = float("nan")
    shift, sums = sample_sums(x)
    assert torch.isfinite(sums).flatten(1).all(dim=1).tolist() == [True, True, False]
    assert stats_from_sums(0, torch.cat([shift[None], sums.sum(0)]).numpy()).count == 0
    st = stats_from_sums(600, torch.cat([shift[None], sums[:2].sum(0)]).numpy())
    np.testing.assert_array_equal(st.mean, 1.0) and np.testing.assert_array_equal(st.m2, 0.0)
    assert sample_sums(x[:0])[1].shape == (0, 2, 4)


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_shards_from_pieces_and_writev_are_the_joined_bytes(tmp_path: Path, codec: str) -> None:
    block = np.random.default_rng(0).standard_normal((7, 5, 3, 4)).astype(np.float16)
    want = encode_shard(block, 8, codec)
    assert encode_shard([block[:2], block[2:3], block[3:]], 8, codec) == want
    n = write_parts(as_location(tmp_path / "a" / "c" / "0"), encode_shard_parts([block[:4], block[4:]], 8, codec), fsync=True)
    assert (tmp_path / "a" / "c" / "0").read_bytes() == want and n == len(want)


def test_cpu_extraction_leaves_torch_its_cores(tmp_path: Path) -> None:
    teacher = create_teacher("test:tiny", random_init=True, seed=0, resolution=64)
    cfg = ExtractConfig(cache=str(tmp_path), teachers=("test:tiny",), random_init=True, dtype="float16",
                        input_protocol="native", resolution=64)
    spec = spec_for(teacher, cfg)
    fast = {"out_bps": 1e10, "per_thread_bps": 1e8}  # would ask for every core
    import os

    free = max(1, (os.cpu_count() or 1) - torch.get_num_threads())
    assert encode_threads_for(cfg, spec, fast, "cpu") == max(1, min(8, free))
    assert encode_threads_for(cfg, spec, fast, "cuda:0") == max(1, min(8, os.cpu_count() or 1))
