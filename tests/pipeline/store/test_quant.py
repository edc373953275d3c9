"""int8 quantization (pipeline/store/quant.py): exact codes and scales, torch == numpy, fidelity measure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sak.pipeline.store.quant import (
    QUANT_MODES,
    decode_parts,
    dequantize,
    dequantize_block,
    dequantize_numpy,
    quantize,
    scale_names,
    stored_parts,
    token_cosines,
)
from sak.pipeline.store.spec import FeatureSpec


def _spec(**kw) -> FeatureSpec:
    base = dict(teacher="test:tiny", weights="random-init:0", layers=(2,), resolution=(32, 32), resize="squash",
                mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), patch_size=4, width=4, grid=(2, 3))
    return FeatureSpec(**{**base, **kw})


def test_token_scales_and_codes_exact():
    # one sample, 1x2 tokens, 4 channels: token 0 absmax 2.54 -> scale 0.02; token 1 all zero -> scale 1
    x = torch.tensor([[[[2.54, -1.27, 0.01, 0.03], [0.0, 0.0, 0.0, 0.0]]]])
    qb = quantize(x, "token")
    assert qb.scale_channel is None
    assert qb.scale_token.shape == (1, 1, 2, 1)
    assert qb.scale_token[0, 0, :, 0].tolist() == pytest.approx([0.02, 1.0])
    # 0.01/0.02 = 0.5 rounds half to even -> 0; 0.03/0.02 = 1.5 -> 2
    assert qb.q[0, 0, 0].tolist() == [127, -64, 0, 2]  # -1.27/0.02 = -63.5 (float32: -63.50000x) -> -64
    assert qb.q[0, 0, 1].tolist() == [0, 0, 0, 0]
    assert qb.q.dtype == torch.int8


def test_channel_scales_shape_and_range():
    x = torch.randn(2, 3, 5, 7)
    qb = quantize(x, "channel")
    assert qb.scale_token is None and qb.scale_channel.shape == (2, 1, 1, 7)
    # every channel of every sample reaches +-127 exactly once at its absmax
    assert (qb.q.abs().amax(dim=(1, 2)) == 127).all()


def test_token_channel_equalizes_outlier_channel():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 8, 64, generator=g)
    x[..., 5] *= 100.0  # an outlier channel, as real DINOv2/CLIP features have
    std = {}
    for mode in QUANT_MODES:
        qb = quantize(x, mode)
        y = dequantize(qb.q, qb.scale_token, qb.scale_channel)
        std[mode] = token_cosines(x, y, standardize=True).mean().item()
    # per-token scales are set by the outlier channel: the other 63 channels lose precision
    assert std["token"] < 0.999 < 0.9999 < std["token-channel"]
    assert std["channel"] > 0.9999


@pytest.mark.parametrize("mode", QUANT_MODES)
def test_torch_and_numpy_dequantize_bit_identical(mode):
    x = torch.randn(3, 4, 5, 6, generator=torch.Generator().manual_seed(1)) * 3
    qb = quantize(x, mode)
    t = dequantize(qb.q, qb.scale_token, qb.scale_channel, offset_channel=qb.offset_channel)
    h = qb.cpu_numpy()
    n = dequantize_numpy(h.q, h.scale_token, h.scale_channel, h.offset_channel)
    assert np.array_equal(t.numpy().view(np.uint32), n.view(np.uint32))
    assert np.array_equal(dequantize_block(h).view(np.uint32), n.view(np.uint32))
    assert torch.equal(decode_parts("int8", mode, qb.parts), t)
    # half a step of the coarsest scale a code can have: the token's absmax (after centering) / 127
    centered = x - (qb.offset_channel if qb.offset_channel is not None else 0)
    assert (t - x).abs().max() <= (centered.abs().amax() / 127 / 2) * 1.0001


def test_token_channel_offset_standardizes_each_channel():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 8, 8, 128, generator=g)
    x[..., 3] = x[..., 3] * 0.01 + 50.0  # a constant-offset channel: its variation is 1/5000 of its value
    x[:, 0, 0] *= 10.0  # a high-norm token
    qb = quantize(x, "token-channel-offset")
    assert qb.offset_channel.shape == (2, 1, 1, 128) and qb.scale_channel.shape == (2, 1, 1, 128)
    assert torch.allclose(qb.offset_channel, x.mean(dim=(1, 2), keepdim=True))
    assert torch.allclose(qb.scale_channel, x.std(dim=(1, 2), unbiased=False, keepdim=True))
    assert (qb.q.abs().amax(dim=3) == 127).all()  # every token uses the full code range
    y = dequantize(qb.q, qb.scale_token, qb.scale_channel, offset_channel=qb.offset_channel)
    assert token_cosines(x, y, standardize=True).mean().item() > 0.9999
    other = quantize(x, "token-channel")
    y2 = dequantize(other.q, other.scale_token, other.scale_channel)
    assert token_cosines(x, y2, standardize=True).mean().item() < 0.9999


def test_stored_parts_and_decode():
    spec = _spec(dtype="int8", quant="token-channel")
    assert [(n, s, d.name) for n, s, d in stored_parts(spec, 2)] == [
        ("layer_2", (2, 3, 4), "int8"), ("scale_token_2", (2, 3, 1), "float32"), ("scale_channel_2", (1, 1, 4), "float32")]
    assert scale_names("token") == ("token",)
    assert [n for n, _, _ in stored_parts(_spec(dtype="int8", quant="token-channel-offset"), 2)] == [
        "layer_2", "scale_token_2", "scale_channel_2", "offset_channel_2"]
    x = torch.randn(2, 2, 3, 4)
    qb = quantize(x, "token-channel")
    assert torch.equal(decode_parts("int8", "token-channel", qb.parts),
                       dequantize(qb.q, qb.scale_token, qb.scale_channel))
    bits = torch.from_numpy(np.array([0x3F80, 0xC000], dtype=np.uint16))  # bf16 1.0, -2.0, as read from disk
    assert decode_parts("bfloat16", None, [bits]).tolist() == [1.0, -2.0]
    assert [d.name for _, _, d in stored_parts(_spec(dtype="bfloat16"), 2)] == ["uint16"]


def test_spec_int8_needs_quant_and_codec_is_not_hashed():
    from sak.manifests.errors import ConfigError

    with pytest.raises(ConfigError, match="--quant"):
        _spec(dtype="int8")
    with pytest.raises(ConfigError, match="--quant"):
        _spec(dtype="float16", quant="token")
    with pytest.raises(ConfigError, match="codec"):
        _spec(codec="gzip")
    assert _spec(codec="none").spec_id == _spec(codec="zstd").spec_id
    assert _spec(dtype="int8", quant="token").spec_id != _spec(dtype="int8", quant="channel").spec_id
    assert "quant" not in _spec().identity() and "codec" not in _spec().identity()


def test_token_cosines_exact():
    a = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    b = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    cos = token_cosines(a, b)
    assert cos.shape == (1, 1, 2)
    assert cos[0, 0, 0].item() == pytest.approx(2 ** -0.5) and cos[0, 0, 1].item() == 1.0
