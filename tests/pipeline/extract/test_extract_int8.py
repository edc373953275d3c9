"""int8 extraction, device side: quantize before the host copy, fidelity per layer and batch, the gate.

Until the writer accepts int8 (store format of issue 13) a fake writer stands in for it: it records
what the extractor hands over (codes + scales, fidelity sums) and what it is told (abort, commit).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from sak.pipeline.extract import forward as fwd
from sak.pipeline.extract.forward import FidelityError, check_fidelity, forward, measure
from sak.pipeline.extract.job import ExtractConfig, extract, spec_for
from sak.pipeline.extract.segment import encode_threads_for
from sak.pipeline.store import quant
from sak.pipeline.store.feature_store import FeatureStore
from sak.pipeline.store.writer import WriteReport
from sak.pipeline.teachers import create_teacher


class FakeWriter:
    def __init__(self, log: dict) -> None:
        self.log = log
        self.n_ok = self.n_failed = 0

    def append(self, keys, layers, prefix=None, *, stats=None) -> None:
        self.log.setdefault("append", []).append((len(keys), layers, prefix))
        self.n_ok += len(keys)

    def add_failed(self, key, error) -> None:
        self.n_failed += 1

    def add_fidelity(self, layer, kind, count, total, minimum) -> None:
        self.log.setdefault("fidelity", []).append((layer, kind, count, total, minimum))

    def commit(self) -> WriteReport:
        self.log["committed"] = self.log.get("committed", 0) + 1
        return WriteReport("fake-segment", n_ok=self.n_ok, n_failed=self.n_failed, bytes_written=1, write_seconds=0.01)

    def abort(self) -> None:
        self.log["aborted"] = self.log.get("aborted", 0) + 1


@pytest.fixture()
def fake_writer(monkeypatch) -> dict:
    log: dict = {}
    monkeypatch.setattr(FeatureStore, "writer", lambda self, capacity, **kw: FakeWriter(log))
    return log


def _cfg(cache: Path, **kw) -> ExtractConfig:
    base = dict(cache=str(cache), teachers=("test:tiny",), random_init=True, batch_size=4, segment_size=8, dtype="int8",
                input_protocol="native", resolution=64, layers=(1, 3))
    return ExtractConfig(**{**base, **kw})


def test_int8_batches_reach_the_writer_as_codes_and_scales_with_fidelity(demo_cache, fake_writer) -> None:
    cache, _ = demo_cache
    report = extract(_cfg(cache, min_cosine=0.9))
    assert report.teachers[0].done == 12 and not report.failures
    n, layers, prefix = fake_writer["append"][0]
    assert prefix is None and len(layers) == 2
    for block in layers:
        assert isinstance(block, quant.QuantizedBlock) and block.q.dtype == np.int8 and isinstance(block.q, np.ndarray)
        # the default token-channel-offset: float32 token scales, channel scales and channel offsets
        assert block.scale_token.dtype == block.scale_channel.dtype == block.offset_channel.dtype == np.float32
        assert block.q.shape[0] == n
    kinds = {(layer, kind) for layer, kind, *_ in fake_writer["fidelity"]}
    assert kinds == {(1, "raw"), (1, "std"), (3, "raw"), (3, "std")}
    for _, _, count, total, minimum in fake_writer["fidelity"]:
        assert count > 0 and 0.9 < total / count <= 1.0 + 1e-9 and minimum <= total / count
    rep = report.teachers[0]
    # per sample and layer: 8x8x32 int8 codes + 8x8 token scales + 32 channel scales + 32 offsets (float32)
    assert rep.feature_bytes == 12 * 2 * (8 * 8 * 32 + 4 * (8 * 8 + 32 + 32)) and rep.feature_gb_per_s > 0


def test_gate_stops_before_the_batch_is_written(demo_cache, fake_writer) -> None:
    cache, _ = demo_cache
    with pytest.raises(FidelityError) as err:
        extract(_cfg(cache, min_cosine=1.0))
    text = str(err.value)
    assert "teacher test:tiny layer 1" in text and "below --min-cosine 1" in text
    for fix in ("--quant token-channel", "--dtype float16", "--force-quant"):
        assert fix in text
    assert "append" not in fake_writer and "fidelity" not in fake_writer
    assert fake_writer["aborted"] == 1 and "committed" not in fake_writer


def test_force_quant_keeps_going_and_records(demo_cache, fake_writer, caplog) -> None:
    cache, _ = demo_cache
    with caplog.at_level(logging.WARNING, logger="sak.pipeline.extract.forward"):
        report = extract(_cfg(cache, min_cosine=1.0, force_quant=True))
    assert report.teachers[0].done == 12
    assert sum(n for n, _, _ in fake_writer["append"]) == 12 and fake_writer["fidelity"]
    assert any("--force-quant" in r.message for r in caplog.records)


@pytest.mark.parametrize("mode", quant.QUANT_MODES)
def test_device_quantize_gives_the_host_codes(mode: str, tmp_path: Path) -> None:
    teacher = create_teacher("test:tiny", random_init=True, seed=0, resolution=64)
    spec = spec_for(teacher, _cfg(tmp_path, quant=mode))
    inputs = [torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = forward(teacher.to(device), spec, inputs, device)
    with torch.inference_mode():
        maps, _ = teacher.to("cpu").forward_layers(torch.stack(inputs), spec.layers)
    for got, m in zip(out.layers, maps, strict=True):
        want = quant.quantize(m, mode).cpu_numpy()
        if device == "cpu":
            np.testing.assert_array_equal(got.q, want.q)
        else:  # another device's float maps may differ in the last bits: codes by at most one step
            assert np.abs(got.q.astype(np.int16) - want.q).max() <= 1
        for a, b in ((got.scale_token, want.scale_token), (got.scale_channel, want.scale_channel)):
            assert (a is None) == (b is None)
    assert out.finite.all() and out.nbytes == sum(p.nbytes for b in out.layers for p in b.parts)


def test_non_finite_samples_are_left_out_of_the_fidelity() -> None:
    maps = torch.randn(3, 4, 4, 8, dtype=torch.float64).float()
    maps[1, 0, 0, 0] = float("inf")
    finite = torch.isfinite(maps).flatten(1).all(dim=1)
    block = quant.quantize(maps, "token-channel")
    f = measure(5, maps, block, finite)
    assert f.count == 2 * 16 and 0.999 < f.std_mean <= 1.0 + 1e-9 and np.isfinite(f.raw_sum)
    none = measure(5, maps[1:2], quant.quantize(maps[1:2], "token"), finite[1:2])
    assert none.count == 0 and none.std_mean == 1.0


def test_check_fidelity_passes_warns_and_stops(caplog) -> None:
    spec = spec_for(create_teacher("test:tiny", random_init=True, seed=0, resolution=64), _cfg(Path("/tmp")))
    good = fwd.Fidelity(layer=1, count=10, raw_sum=10.0, raw_min=1.0, std_sum=9.99995, std_min=0.9999)
    bad = fwd.Fidelity(layer=3, count=10, raw_sum=9.99, raw_min=0.99, std_sum=9.9, std_min=0.9)
    check_fidelity(spec, [good], 0.9999, force=False)
    with pytest.raises(FidelityError, match=r"layer 3: .* 0\.990000"):
        check_fidelity(spec, [good, bad], 0.9999, force=False)
    with caplog.at_level(logging.WARNING, logger="sak.pipeline.extract.forward"):
        check_fidelity(spec, [bad], 0.9999, force=True)
    assert "layer 3" in caplog.text


def test_encode_threads_follow_the_output_rate(tmp_path: Path) -> None:
    teacher = create_teacher("test:tiny", random_init=True, seed=0, resolution=64)
    spec = spec_for(teacher, _cfg(tmp_path, dtype="float16"))
    cfg = _cfg(tmp_path, dtype="float16")
    assert encode_threads_for(cfg, spec, {}) == 1  # small maps, nothing measured yet
    many = encode_threads_for(cfg, spec, {"out_bps": 1e9, "per_thread_bps": 2e8})
    assert many == min(7, fwd_cores())
    assert encode_threads_for(cfg, spec, {"out_bps": 1e8, "per_thread_bps": 1e9}) == 1
    assert encode_threads_for(_cfg(tmp_path, dtype="float16", encode_threads=3), spec, {}) == 3


def fwd_cores() -> int:
    import os

    return max(1, min(8, os.cpu_count() or 1))


def test_fidelity_of_large_maps_is_measured_on_an_even_stride_of_tokens() -> None:
    from sak.pipeline.extract import forward as fw

    x = torch.randn(2, 64, 64, 16, generator=torch.Generator().manual_seed(0))  # 8192 tokens
    x[1, :, :, 3] += 50.0  # a large-offset channel in the second sample: the stride must reach it
    block = quant.quantize(x, "token-channel-offset")
    f = fw.measure(1, x, block, torch.ones(2, dtype=torch.bool))
    assert f.count == fw.FIDELITY_TOKENS == 4096
    tokens = x.reshape(-1, 16)[::2], quant.dequantize(*block.fields).reshape(-1, 16)[::2]
    want = quant.token_cosines(*tokens, standardize=True)
    assert f.std_sum == pytest.approx(want.sum().item(), rel=1e-12) and f.std_min == want.min().item()
    small = x[:, :8, :8]
    assert fw.measure(1, small, quant.quantize(small, "token"), torch.ones(2, dtype=torch.bool)).count == 2 * 8 * 8
