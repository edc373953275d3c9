"""One batched teacher forward on its device, and what crosses to the host.

* float16 / bfloat16 / float32 stores: each map is converted to the store dtype on the device
  (bfloat16 as its uint16 bits) and copied to the host.
* int8 stores: each map is quantized ON THE DEVICE (:func:`..store.quant.quantize`), so only the
  int8 codes and float32 scales cross PCIe (half the bytes of float16). The fidelity of the codes
  is measured there too, per layer over the batch's finite samples: the cosine per token between
  the dequantized codes and the teacher's map, raw and standardized per channel
  (:func:`..store.quant.token_cosines`), summed and minimized on the device (one scalar copy).
  :func:`check_fidelity` gates on the standardized mean: below ``--min-cosine`` the extraction
  stops before the batch is written (:class:`FidelityError`), unless ``--force-quant``.
  Prefix tokens of an int8 store are stored as float16 (quant.py).
* Per-layer statistics (:class:`..store.stats.LayerStats`) of what readers will get (the store-dtype
  values; for int8 the dequantized codes) are computed on the device too, over the batch's finite
  samples (:func:`sample_sums`), and handed to the writer (``append(..., stats=)``), so its threads
  only checksum and write: float32 per-channel sums (torch's cascade summation) around a per-channel
  shift, reduced to float64 on the host, within ~1e-7 relative of the host's float64 statistics.

Non-finite values (float16 overflow) are found per sample on the device in every dtype; the
caller records those samples as failed. On CUDA the copies go to pinned host buffers
(non-blocking, one synchronize per batch); on the CPU the tensors are the host arrays.
"""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ...manifests.errors import SakError
from ..store import quant
from ..store.spec import FeatureSpec
from ..store.stats import LayerStats

log = logging.getLogger(__name__)

#: Default fidelity gate: standardized per-token cosine of int8 codes to the teacher's maps, per layer and batch.
DEFAULT_MIN_COSINE = 0.9999
_STATS_TOKENS = 256  # tokens per slice of sample_sums on the CPU
_AMP = {"float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.float16}


class FidelityError(SakError):
    """int8 codes of a layer are further from the teacher's maps than ``--min-cosine`` allows."""


@dataclass(frozen=True)
class Fidelity:
    """Per-token cosines of one layer over one batch's finite samples (sums, so batches add up)."""

    layer: int
    count: int  # tokens
    raw_sum: float
    raw_min: float
    std_sum: float
    std_min: float

    @property
    def std_mean(self) -> float:
        return self.std_sum / self.count if self.count else 1.0

    @property
    def raw_mean(self) -> float:
        return self.raw_sum / self.count if self.count else 1.0


@dataclass
class Forwarded:
    """A batch ready for a writer: per-layer host blocks (numpy, or quant.QuantizedBlock of numpy)."""

    layers: list
    prefix: list | None
    finite: np.ndarray  # (B,) bool
    fidelity: list[Fidelity] = field(default_factory=list)
    stats: list[LayerStats] | None = None  # per layer, over the finite samples (None: the writer computes them)

    @property
    def nbytes(self) -> int:
        """Bytes of features handed to the writer (what crossed from the device)."""
        return sum(_nbytes(b) for b in self.layers + (self.prefix or []))

    def select(self, keep: np.ndarray) -> Forwarded:
        """Only the samples where ``keep`` is True (statistics are kept only when ``keep`` is the finite mask: theirs)."""
        stats = self.stats if np.array_equal(np.asarray(keep, bool), self.finite) else None
        return replace(self, layers=[_take(b, keep) for b in self.layers], stats=stats,
                       prefix=None if self.prefix is None else [_take(b, keep) for b in self.prefix], finite=self.finite[keep])


def _nbytes(block) -> int:
    return sum(p.nbytes for p in block.parts) if isinstance(block, quant.QuantizedBlock) else int(block.nbytes)


def _take(block, keep):
    """The samples of ``block`` (array or QuantizedBlock, numpy or torch) where ``keep`` is True."""
    if isinstance(block, quant.QuantizedBlock):
        return block.select(keep)
    return block[keep]


def _host(tensors: list[torch.Tensor]) -> list[np.ndarray]:
    """Device tensors -> host numpy arrays; pinned buffers and one synchronize on CUDA."""
    if not tensors or tensors[0].device.type != "cuda":
        return [t.detach().contiguous().numpy() for t in tensors]
    out = []
    for t in tensors:
        buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        buf.copy_(t, non_blocking=True)
        out.append(buf)
    torch.cuda.current_stream(tensors[0].device).synchronize()
    return [b.numpy() for b in out]


def _finite(t: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(t).flatten(1).all(dim=1)


def _store_tensor(t: torch.Tensor, dtype: str) -> torch.Tensor:
    conv = t.to(quant.TORCH_DTYPES[dtype])
    return conv.view(torch.int16) if dtype == "bfloat16" else conv


def sample_sums(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift (C,), per-sample sums (B, 2, C)) of (B, ..., C) values, float32 on their device.

    Per sample and channel: the sum of ``x - shift`` and of its square. The shift (the first
    token of the first sample, 0 where it is not finite) keeps the squares' sum from cancelling when a channel's
    mean is large against its spread; :func:`stats_from_sums` finishes in float64 on the host. A sample
    with a non-finite value has non-finite sums (float16 values cannot overflow them: a finiteness
    test for free).
    """
    v = values.reshape(values.shape[0], math.prod(values.shape[1:-1]), values.shape[-1])
    if v.shape[0] == 0 or v.shape[1] == 0:
        return torch.zeros(v.shape[-1], device=v.device), torch.zeros(v.shape[0], 2, v.shape[-1], device=v.device)
    shift = v[0, 0].to(torch.float32)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    out = torch.zeros(v.shape[0], 2, v.shape[-1], dtype=torch.float32, device=v.device)
    # CPU: slices of tokens whose float32 temporaries stay in cache and reuse the allocator's memory
    # (one 50 MB temporary per layer costs ~10x the arithmetic in page faults); CUDA: one pass
    step = v.shape[1] if v.device.type == "cuda" else _STATS_TOKENS
    for i in range(0, v.shape[1], step):
        d = v[:, i : i + step] - shift  # float32 (type promotion)
        out[:, 0] += d.sum(dim=1)
        out[:, 1] += d.square_().sum(dim=1)
    return shift, out


def stats_from_sums(count: int, sums: np.ndarray) -> LayerStats:
    """:class:`LayerStats` of ``count`` observations from (3, C) = shift and the sums of :func:`sample_sums` over samples."""
    if count == 0:
        return LayerStats.empty(sums.shape[-1])
    shift, s1, s2 = (np.asarray(r, np.float64) for r in sums)
    dmean = s1 / count
    return LayerStats(count, shift + dmean, np.maximum(s2 - s1 * dmean, 0.0))


#: Tokens per layer and batch the fidelity is measured on (evenly strided over samples and positions): the
#: gate's mean is then exact to ~1e-6 while its cost no longer grows with the maps (whole paper-size batches
#: in float64 took longer than the CPU forward).
FIDELITY_TOKENS = 4096


def _token_sample(maps: torch.Tensor) -> torch.Tensor:
    """(B, h, w, c) -> (n, c): every token when there are at most FIDELITY_TOKENS, else an even stride of them."""
    flat = maps.reshape(-1, maps.shape[-1])
    step = -(-flat.shape[0] // FIDELITY_TOKENS)
    return flat if step <= 1 else flat[::step]


def measure(layer: int, maps: torch.Tensor, block: quant.QuantizedBlock, finite: torch.Tensor) -> Fidelity:
    """Fidelity of ``block`` (device tensors) to ``maps`` over the finite samples, computed on their device."""
    return _measure(layer, maps, block, finite)[0]


def _measure(layer: int, maps: torch.Tensor, block: quant.QuantizedBlock, finite: torch.Tensor) -> tuple[Fidelity, torch.Tensor]:
    """:func:`measure`, and the dequantized values of the finite samples (what readers get: for the statistics)."""
    if not bool(finite.all()):
        maps, block = maps[finite], _take(block, finite)
    approx = quant.dequantize(*block.fields)
    if maps.shape[0] == 0:
        return Fidelity(layer=layer, count=0, raw_sum=0.0, raw_min=1.0, std_sum=0.0, std_min=1.0), approx
    ref, got = _token_sample(maps), _token_sample(approx)
    raw = quant.token_cosines(ref, got)
    std = quant.token_cosines(ref, got, standardize=True)
    raw_sum, raw_min, std_sum, std_min = torch.stack([raw.sum(), raw.min(), std.sum(), std.min()]).tolist()
    return Fidelity(layer=layer, count=int(raw.numel()), raw_sum=raw_sum, raw_min=raw_min, std_sum=std_sum,
                    std_min=std_min), approx


def forward(teacher, spec: FeatureSpec, inputs: list, device: str) -> Forwarded:
    """Batched teacher forward -> host blocks in the store's on-disk form, finite mask, int8 fidelity."""
    x = torch.stack(inputs)
    on_cuda = device.startswith("cuda")
    if on_cuda:
        x = x.pin_memory().to(device, non_blocking=True)
    amp = _AMP.get(spec.dtype)
    ctx = torch.autocast("cuda", dtype=amp) if (on_cuda and amp is not None) else nullcontext()
    with torch.inference_mode(), ctx:
        maps, prefix = teacher.forward_layers(x, spec.layers)
    if spec.keep_prefix and prefix is None:
        raise SakError(f"teacher {spec.teacher} returned no prefix tokens; extract it without --keep-prefix")
    with torch.inference_mode():
        finite = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        device_layers: list = []
        fidelity = []
        sums = []  # per layer: sample_sums of what readers get (int8: of the samples finite in that layer)
        for layer, m in zip(spec.layers, maps, strict=True):
            if spec.dtype == "int8":
                ok = _finite(m)
                block = quant.quantize(m, spec.quant or quant.DEFAULT_QUANT)
                fid, approx = _measure(layer, m, block, ok)
                fidelity.append(fid)
                device_layers.append(block)
                sums.append(sample_sums(approx))
            else:
                conv = m.to(quant.TORCH_DTYPES[spec.dtype])
                sums.append(sample_sums(conv))
                # float16: non-finite sums <=> a non-finite value (no separate pass); wider dtypes may overflow the sums
                ok = torch.isfinite(sums[-1][1]).flatten(1).all(dim=1) if spec.dtype == "float16" else _finite(conv)
                device_layers.append(_store_tensor(conv, spec.dtype))
            finite &= ok
        device_prefix = None
        if spec.keep_prefix:
            pdtype = "float16" if spec.dtype == "int8" else spec.dtype
            conv_p = [p.to(quant.TORCH_DTYPES[pdtype]) for p in prefix or []]
            for p in conv_p:
                finite &= _finite(p)
            device_prefix = [_store_tensor(p, pdtype) for p in conv_p]
        all_finite = bool(finite.all())
        layer_sums = []  # (3, C) per layer over the samples the caller keeps (finite everywhere)
        for b, (shift, per_sample) in zip(device_layers, sums, strict=True):
            if all_finite:
                total = per_sample.sum(dim=0)
            elif isinstance(b, quant.QuantizedBlock):
                shift, per_sample = sample_sums(quant.dequantize(*_take(b, finite).fields))
                total = per_sample.sum(dim=0)
            else:
                total = per_sample[finite].sum(dim=0)
            layer_sums.append(torch.cat([shift[None], total]))
        flat = [t for b in device_layers for t in (b.parts if isinstance(b, quant.QuantizedBlock) else (b,))]
        host = _host(flat + (device_prefix or []) + [finite, torch.stack(layer_sums)])
    it = iter(host)
    layers: list[Any] = []
    for b in device_layers:
        if isinstance(b, quant.QuantizedBlock):
            layers.append(quant.block_from_parts(spec.quant or quant.DEFAULT_QUANT, [next(it) for _ in b.parts]))
        else:
            arr = next(it)
            layers.append(arr.view(np.uint16) if spec.dtype == "bfloat16" else arr)
    pre = [next(it) for _ in device_prefix] if device_prefix is not None else None
    if pre is not None and spec.dtype == "bfloat16":
        pre = [p.view(np.uint16) for p in pre]
    finite_host = next(it).astype(bool)
    tokens = [m.numel() // max(1, m.shape[0] * m.shape[-1]) for m in maps]  # h * w
    stats = [stats_from_sums(int(finite_host.sum()) * n, st) for n, st in zip(tokens, next(it), strict=True)]
    return Forwarded(layers=layers, prefix=pre, finite=finite_host, fidelity=fidelity, stats=stats)


def check_fidelity(spec: FeatureSpec, fidelity: list[Fidelity], min_cosine: float, force: bool) -> None:
    """Stop (:class:`FidelityError`) when a layer's standardized mean cosine is below ``min_cosine``; warn with ``force``."""
    for f in fidelity:
        if f.count == 0 or f.std_mean >= min_cosine:
            continue
        what = (f"teacher {spec.teacher} layer {f.layer}: int8 codes ({spec.quant} scales) have a standardized mean "
                f"cosine of {f.std_mean:.6f} to the teacher's maps on a batch (raw {f.raw_mean:.6f}, worst token "
                f"{f.std_min:.4f}), below --min-cosine {min_cosine:g}")
        if force:
            log.warning("%s; kept because of --force-quant (the fidelity is recorded in the store)", what)
            continue
        raise FidelityError(
            f"{what}. Nothing of this batch was written. Pass --quant token-channel (a scale per token and per channel: "
            "handles outlier channels), or --dtype float16 (exact, twice the bytes), or --force-quant to keep going "
            "with a warning (the fidelity is recorded and shown by `sak-cache info`)."
        )
