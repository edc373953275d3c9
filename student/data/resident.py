"""Resident targets (``--targets ram|gpu``): every selected item's stored targets loaded once, batches gathered there.

:class:`ResidentTargets` reads each store's on-disk parts of every item of a
:class:`~.cached.CachedTargets` once (parallel gather reads, progress in the log) into one
``(N, h, w, c)`` array per (store, layer part), in pinned host memory (``ram``; pinned only when
CUDA is available) or on the GPU (``gpu``), in their stored dtype. A batch is then
``torch.index_select`` of its items' rows into a reused output buffer: no disk, no decode, and
for ``gpu`` no PCIe. Batches are bit-identical to streamed ones.

:func:`choose_targets` picks the mode for ``auto``: ``gpu`` when the targets fit in half of the
free GPU memory (the model, optimizer and activations need the rest), else ``ram`` when they fit in
half of ``MemAvailable`` (every rank of the node holds its own copy), else ``stream``; a
``--targets-budget`` caps both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from ...manifests.errors import ConfigError
from .targets import (
    BufferRing,
    TargetBatch,
    can_pin,
    flip_mask,
    host_view,
    slots_by_segment,
    split_layers,
    torch_dtype,
)

log = logging.getLogger(__name__)

TARGET_MODES = ("auto", "ram", "gpu", "stream")
#: Share of free GPU memory / MemAvailable that resident targets may take.
GPU_SHARE = 0.5
RAM_SHARE = 0.5
GB = 1e9


@dataclass(frozen=True)
class TargetsChoice:
    """Where the targets of a run live, and why (recorded in the run's config.json)."""

    mode: str
    reason: str
    need_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "reason": self.reason, "need_GB": round(self.need_bytes / GB, 3)}


def mem_available(meminfo: str = "/proc/meminfo") -> int | None:
    """``MemAvailable`` in bytes (None when unknown)."""
    try:
        with open(meminfo, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def gpu_free(device: torch.device) -> int | None:
    """Free memory of a CUDA device in bytes (None for other devices)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def choose_targets(mode: str, need: int, *, device: torch.device, gpu_free_bytes: int | None,
                   ram_available: int | None, budget_gb: float | None = None,
                   ranks_per_node: int = 1) -> TargetsChoice:
    """Where a run's targets (``need`` bytes per rank) live; see the module docstring."""
    if mode not in TARGET_MODES:
        raise ConfigError(f"--targets must be one of {', '.join(TARGET_MODES)}, got {mode!r}")
    size = f"{need / GB:.2f} GB of targets"
    budget = None if budget_gb is None else int(budget_gb * GB)
    if mode == "gpu":
        if device.type != "cuda":
            raise ConfigError(f"--targets gpu needs a CUDA device, this run trains on {device}: "
                              "pass --targets ram or --targets stream")
        if gpu_free_bytes is not None and need > gpu_free_bytes:
            raise ConfigError(f"--targets gpu: {size} do not fit in {gpu_free_bytes / GB:.2f} GB of free GPU memory; "
                              "pass --targets ram or --targets stream")
        return TargetsChoice("gpu", f"asked for (--targets gpu); {size}", need)
    if mode == "ram":
        if ram_available is not None and need * ranks_per_node > ram_available:
            raise ConfigError(f"--targets ram: {size} x {ranks_per_node} rank(s) do not fit in "
                              f"{ram_available / GB:.2f} GB MemAvailable; pass --targets stream")
        return TargetsChoice("ram", f"asked for (--targets ram); {size}", need)
    if mode == "stream":
        return TargetsChoice("stream", f"asked for (--targets stream); {size}", need)
    if budget is not None and need > budget:
        return TargetsChoice("stream", f"auto: {size} exceed --targets-budget {budget_gb:g} GB", need)
    why = []
    if gpu_free_bytes is not None:
        if need <= gpu_free_bytes * GPU_SHARE:
            return TargetsChoice("gpu", f"auto: {size} fit in half of the {gpu_free_bytes / GB:.2f} GB free on the GPU",
                                 need)
        why.append(f"not in half of the {gpu_free_bytes / GB:.2f} GB free on the GPU")
    ranks = max(1, ranks_per_node)
    if ram_available is None:
        why.append("MemAvailable unknown")
    elif need * ranks <= ram_available * RAM_SHARE:
        per = f" for {ranks} ranks" if ranks > 1 else ""
        return TargetsChoice("ram", f"auto: {size}{per} fit in half of MemAvailable {ram_available / GB:.2f} GB"
                             + (f" ({why[0]})" if why else ""), need)
    else:
        why.append(f"not in half of MemAvailable {ram_available / GB:.2f} GB for {ranks} rank(s)")
    return TargetsChoice("stream", f"auto: {size} read per batch ({'; '.join(why)})", need)


class ResidentTargets:
    """Targets of every item of ``data`` held in memory; see the module docstring.

    ``device``: ``cpu`` (pinned when CUDA is available) or a CUDA device. ``ring``: output buffer
    sets kept for reuse per store (a batch's buffers come back with :meth:`TargetBatch.release`).
    """

    def __init__(self, data: Any, device: torch.device | str, batch_size: int, *, workers: int = 4, ring: int = 8,
                 chunk: int = 32, progress: Callable[[int], None] | None = None) -> None:
        self.device = torch.device(device)
        self.mode = "gpu" if self.device.type == "cuda" else "ram"
        self.data, self.batch_size = data, batch_size
        self.stores, self.keys, self.gathers = list(data.stores), list(data.keys), list(data.gathers)
        n = len(data.items)
        pin = self.device.type == "cpu" and can_pin(True)
        self.arrays = [[torch.empty((n, *shape), dtype=torch_dtype(dtype), device=self.device, pin_memory=pin)
                        for _, shape, dtype in g.parts] for g in self.gathers]
        self.rings = [BufferRing(partial(self._alloc, s), ring) for s in range(len(self.gathers))]
        self.nbytes = sum(a.numel() * a.element_size() for arrays in self.arrays for a in arrays)
        self._load(workers, chunk, progress)

    def _alloc(self, s: int) -> list[torch.Tensor]:
        pin = self.device.type == "cpu" and can_pin(True)
        return [torch.empty((self.batch_size, *a.shape[1:]), dtype=a.dtype, device=self.device, pin_memory=pin)
                for a in self.arrays[s]]

    def _load_chunk(self, lo: int, hi: int) -> int:
        for s, gather in enumerate(self.gathers):
            dtypes = [dtype for _, _, dtype in gather.parts]
            staging = (self.arrays[s] if self.device.type == "cpu"
                       else [torch.empty((hi - lo, *a.shape[1:]), dtype=a.dtype) for a in self.arrays[s]])
            views = [host_view(t[lo:hi] if self.device.type == "cpu" else t, d)
                     for t, d in zip(staging, dtypes, strict=True)]
            for seg, (rows, slots) in slots_by_segment(self.data.items, s, range(lo, hi)):
                gather.gather(seg, rows, views, slots)
            if self.device.type != "cpu":
                for big, host in zip(self.arrays[s], staging, strict=True):
                    big[lo:hi].copy_(host)
        return hi - lo

    def _load(self, workers: int, chunk: int, progress: Callable[[int], None] | None) -> None:
        n = len(self.data.items)
        t0, done, next_log = time.perf_counter(), 0, 0.1
        log.info("loading %.2f GB of targets (%d items) into %s", self.nbytes / GB, n, self.mode)
        spans = [(lo, min(n, lo + chunk)) for lo in range(0, n, chunk)]
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="sak-resident") as pool:
            for got in pool.map(lambda span: self._load_chunk(*span), spans):
                done += got
                if progress is not None:
                    progress(got)
                if n and done / n >= next_log:
                    log.info("resident targets: %d/%d items (%.0f%%), %.1f s", done, n, 100 * done / n,
                             time.perf_counter() - t0)
                    next_log += 0.1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        s = time.perf_counter() - t0
        log.info("resident targets: %.2f GB in %s in %.1f s (%.2f GB/s)", self.nbytes / GB, self.mode, s,
                 self.nbytes / GB / max(s, 1e-9))

    def batch(self, indices: Sequence[int], flips: Sequence[bool]) -> dict[str, TargetBatch]:
        """The targets of items ``indices`` gathered from memory into reused buffers (as :class:`~.targets.StreamTargets`)."""
        n = len(indices)
        if n > self.batch_size:
            raise ValueError(f"a batch of {n} items does not fit buffers of {self.batch_size}")
        idx = torch.tensor(list(indices), dtype=torch.long).to(self.device, non_blocking=True)
        flip = flip_mask(flips)
        out = {}
        for s, (key, store, gather, ring) in enumerate(zip(self.keys, self.stores, self.gathers, self.rings,
                                                            strict=True)):
            bufs = ring.take()
            parts = [torch.index_select(big, 0, idx, out=buf[:n]) for big, buf in zip(self.arrays[s], bufs, strict=True)]
            out[key] = TargetBatch(split_layers(parts, gather.layer_parts), store.spec.dtype,
                                   getattr(store.spec, "quant", None), flip,
                                   _release=partial(ring.give, bufs))
        return out
