"""int8 feature maps with float32 scales: quantize on the teacher's device, dequantize on the student's.

A store of ``dtype="int8"`` keeps each layer map ``x`` (sample, y, x, channel) as int8 codes
``q`` plus float32 scales that broadcast against it; ``quant`` picks which:

* ``token``: one scale per token, ``s_t = max_c |x| / 127`` (shape (n, h, w, 1));
* ``channel``: one scale per channel of each sample, ``s_c = max_yx |x| / 127`` (shape (n, 1, 1, c));
* ``token-channel``: both: ``s_c = max_yx |x|`` first equalizes the channels (real teachers have
  a few outlier channels 10-100x the others), then ``s_t = max_c |x / s_c| / 127`` per token
  (and high-norm tokens, which real ViTs also have, get their own scale).
* ``token-channel-offset``: each channel of each sample is first standardized: ``o_c`` = its mean
  over the sample's tokens, ``s_c`` = the root mean square of ``x - o_c`` (its std), then
  ``s_t = max_c |(x - o_c) / s_c| / 127`` per token. Measured by benchmarks/storage.py on
  heavy-tailed synthetic features: channels with a large constant offset keep only the few codes
  around the offset under ``token-channel`` (their variation, which standardization blows up, is
  lost), and a few high-norm tokens set every channel's absmax, so the absmax equalizer of
  ``token-channel`` equalizes nothing for the other tokens; mean and std are robust to both.

Codes are ``round_half_even(x / s)`` clamped to [-127, 127]; a scale of 0 (an all-zero token or
channel) is stored as 1. Dequantization is exactly ``q.float32 * s_t * s_c + o_c`` in that order
(missing scales/offset left out), so numpy and torch give bit-identical float32 values.

On disk (a segment of an int8 store) a layer is the arrays ``layer_<i>`` (int8) then
``scale_token_<i>`` and/or ``scale_channel_<i>`` then ``offset_channel_<i>`` (float32, the modes
that have them), in that order: :func:`stored_parts`.
Prefix tokens of an int8 store are kept as float16 (a few tokens; not worth a scale).

Fidelity (:func:`token_cosines`): the distillation loss compares the student with the standardized
target token by token (cosine over channels), so fidelity is the cosine between the dequantized
and the original map per token, both raw and after standardizing each channel by the batch's
mean and std (an outlier channel hides errors in the others from the raw cosine, not from this one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

QUANT_MODES = ("token", "channel", "token-channel", "token-channel-offset")
#: The mode ``--dtype int8`` uses unless ``--quant`` says otherwise: the only one that reaches a standardized
#: cosine >= 0.9999 on every layer of benchmarks/storage.py's heavy-tailed features (numbers in its output).
DEFAULT_QUANT = "token-channel-offset"
QMAX = 127

#: torch dtype of each float store dtype (what a teacher's maps are cast to before the host copy).
TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def scale_names(quant: str) -> tuple[str, ...]:
    """Which scales a mode stores, in on-disk order: ``("token",)``, ``("channel",)`` or both."""
    if quant not in QUANT_MODES:
        raise ValueError(f"quant must be one of {QUANT_MODES}, got {quant!r}")
    return tuple(k for k in ("token", "channel") if k in quant.split("-"))


def has_offset(quant: str) -> bool:
    """Whether a mode stores a per-channel offset (``offset_channel_<i>``) after its scales."""
    scale_names(quant)
    return quant.endswith("-offset")


def scale_array_name(kind: str, layer: int) -> str:
    return f"scale_{kind}_{layer}"


def offset_array_name(layer: int) -> str:
    return f"offset_channel_{layer}"


def scale_shape(kind: str, grid: tuple[int, int], width: int) -> tuple[int, int, int]:
    """Per-sample shape of a scale array: token (h, w, 1), channel (1, 1, c)."""
    return (grid[0], grid[1], 1) if kind == "token" else (1, 1, width)


def stored_parts(spec, layer: int) -> list[tuple[str, tuple[int, ...], np.dtype]]:
    """(array name, per-sample shape, on-disk dtype) of every array that stores ``layer``, in order.

    float16 / float32: one array; bfloat16: one uint16 array of bit patterns; int8: codes, then scales.
    """
    h, w = spec.grid
    name = f"layer_{layer}"
    if spec.dtype == "int8":
        parts: list[tuple[str, tuple[int, ...], np.dtype]] = [(name, (h, w, spec.width), np.dtype("int8"))]
        for kind in scale_names(spec.quant):
            parts.append((scale_array_name(kind, layer), scale_shape(kind, spec.grid, spec.width), np.dtype("float32")))
        if has_offset(spec.quant):
            parts.append((offset_array_name(layer), (1, 1, spec.width), np.dtype("float32")))
        return parts
    on_disk = {"float16": "float16", "bfloat16": "uint16", "float32": "float32"}[spec.dtype]
    return [(name, (h, w, spec.width), np.dtype(on_disk))]


@dataclass(frozen=True)
class QuantizedBlock:
    """int8 codes (B, h, w, c), their scales and offset (None where the mode has none); numpy or torch."""

    q: object
    scale_token: object | None = None
    scale_channel: object | None = None
    offset_channel: object | None = None

    @property
    def parts(self) -> tuple:
        """The arrays in on-disk order (codes, then the scales and offset the mode has)."""
        return tuple(p for p in (self.q, self.scale_token, self.scale_channel, self.offset_channel) if p is not None)

    @property
    def fields(self) -> tuple:
        """Every field in constructor order (codes, token scales, channel scales, channel offsets; None where absent)."""
        return self.q, self.scale_token, self.scale_channel, self.offset_channel

    def select(self, keep) -> QuantizedBlock:
        """The samples (first axis) picked by ``keep`` (a mask or indices), numpy or torch alike."""
        return QuantizedBlock(*(None if p is None else p[keep] for p in self.fields))

    def cpu_numpy(self) -> QuantizedBlock:
        """A copy on the host as numpy arrays (from torch tensors on any device)."""
        def host(t):
            return None if t is None else (t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t))
        return QuantizedBlock(host(self.q), host(self.scale_token), host(self.scale_channel), host(self.offset_channel))


def _safe(scale: torch.Tensor) -> torch.Tensor:
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def quantize(x: torch.Tensor, quant: str) -> QuantizedBlock:
    """(B, h, w, c) float tensor on any device -> :class:`QuantizedBlock` of tensors on that device."""
    kinds = scale_names(quant)
    if x.ndim != 4:
        raise ValueError(f"quantize expects (B, h, w, c) maps, got shape {tuple(x.shape)}")
    v = x.float()
    s_c = s_t = o_c = None
    if has_offset(quant):
        o_c = v.mean(dim=(1, 2), keepdim=True)
        v = v - o_c
        s_c = _safe(v.square().mean(dim=(1, 2), keepdim=True).sqrt())
        v = v / s_c
    elif "channel" in kinds:
        s_c = _safe(v.abs().amax(dim=(1, 2), keepdim=True) / (1.0 if "token" in kinds else QMAX))
        v = v / s_c
    if "token" in kinds:
        s_t = _safe(v.abs().amax(dim=3, keepdim=True) / QMAX)
        v = v / s_t
    q = torch.round(v).clamp_(-QMAX, QMAX).to(torch.int8)
    return QuantizedBlock(q, s_t, s_c, o_c)


def dequantize(q: torch.Tensor, scale_token: torch.Tensor | None = None, scale_channel: torch.Tensor | None = None,
               offset_channel: torch.Tensor | None = None, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``q.float32 * s_t * s_c + o_c`` (torch, any device), then cast to ``dtype``."""
    out = q.to(torch.float32)
    if scale_token is not None:
        out = out * scale_token
    if scale_channel is not None:
        out = out * scale_channel
    if offset_channel is not None:
        out = out + offset_channel
    return out if dtype == torch.float32 else out.to(dtype)


def dequantize_numpy(q: np.ndarray, scale_token: np.ndarray | None = None,
                     scale_channel: np.ndarray | None = None, offset_channel: np.ndarray | None = None) -> np.ndarray:
    """The numpy twin of :func:`dequantize` (bit-identical float32)."""
    out = q.astype(np.float32)  # a fresh array: the products below are taken in place (same rounding, no copies)
    if scale_token is not None:
        np.multiply(out, scale_token.astype(np.float32, copy=False), out=out)
    if scale_channel is not None:
        np.multiply(out, scale_channel.astype(np.float32, copy=False), out=out)
    if offset_channel is not None:
        np.add(out, offset_channel.astype(np.float32, copy=False), out=out)
    return out


def dequantize_block(block: QuantizedBlock) -> np.ndarray:
    """A :class:`QuantizedBlock` of numpy arrays -> float32 values (:func:`dequantize_numpy`)."""
    return dequantize_numpy(block.q, block.scale_token, block.scale_channel, block.offset_channel)  # type: ignore[arg-type]


def block_from_parts(quant: str, parts: Sequence) -> QuantizedBlock:
    """The on-disk parts of one layer (codes, scales, offset, as :func:`stored_parts` orders them) as a block."""
    kinds = scale_names(quant) + (("offset",) if has_offset(quant) else ())
    named = dict(zip(kinds, parts[1:], strict=True))
    return QuantizedBlock(parts[0], named.get("token"), named.get("channel"), named.get("offset"))


def decode_parts(spec_dtype: str, quant: str | None, parts: Sequence[torch.Tensor],
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """On-disk parts of one layer (as torch tensors, any device) -> (B, h, w, c) values in ``dtype``.

    The one place that knows every stored dtype: float16/float32 are cast, bfloat16 bit patterns
    (uint16 on disk, any 16-bit integer tensor here) are reinterpreted, int8 codes are dequantized.
    """
    if spec_dtype == "int8":
        b = block_from_parts(quant or "", parts)
        return dequantize(b.q, b.scale_token, b.scale_channel, b.offset_channel, dtype=dtype)  # type: ignore[arg-type]
    (values,) = parts
    if spec_dtype == "bfloat16" and values.dtype != torch.bfloat16:
        values = values.view(torch.bfloat16)
    elif spec_dtype not in TORCH_DTYPES:
        raise ValueError(f"unknown store dtype {spec_dtype!r}")
    return values.to(dtype)


def token_cosines(ref: torch.Tensor, approx: torch.Tensor, *, standardize: bool = False,
                  eps: float = 1e-12) -> torch.Tensor:
    """Cosine over channels between two (B, h, w, c) maps, per token: (B, h, w) float64.

    ``standardize``: first subtract each channel's mean and divide by its std over the batch's tokens
    (the reference's statistics, applied to both), as the loss standardizes targets.
    """
    a, b = ref.double(), approx.double()
    if standardize:
        flat = a.reshape(-1, a.shape[-1])
        mean, std = flat.mean(dim=0), flat.std(dim=0, unbiased=False).clamp_min(eps)
        a, b = (a - mean) / std, (b - mean) / std
    dot = (a * b).sum(dim=-1)
    norm = a.norm(dim=-1) * b.norm(dim=-1)
    both_zero = (a.abs().amax(dim=-1) == 0) & (b.abs().amax(dim=-1) == 0)
    cos = dot / norm.clamp_min(eps)
    return torch.where(both_zero, torch.ones_like(cos), cos)
