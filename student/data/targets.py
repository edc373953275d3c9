"""Teacher targets of a batch in their stored form, from the store (or resident memory) to the training device.

A batch's targets never become float on the CPU: each teacher's layers travel as their on-disk
parts (float16 / bfloat16 bits / float32 maps, or int8 codes plus float32 scales; see
:func:`sak.pipeline.store.quant.stored_parts`) in the stored layout ``(B, h, w, c)``, and
:meth:`TargetBatch.decode` turns them into ``(B, C, h, w)`` float maps on whatever device they are
on (dequantize after the copy: PCIe moves the stored bytes).

:class:`StreamTargets` gathers a batch's rows from the stores (:class:`~sak.pipeline.store.gather.StoreGather`)
straight into batch buffers from a :class:`BufferRing` (pinned when asked and CUDA is available).
A ring hands a buffer out again only after the batch holding it was released
(:meth:`TargetBatch.release`, which the trainer calls after its step); batches nobody releases
keep their own buffers, so collecting batches is always safe.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import torch

from ...pipeline.store.gather import StoreGather
from ...pipeline.store.quant import decode_parts

#: On-disk numpy dtype -> the torch dtype of its buffers (bfloat16 bit patterns ride in int16).
_TORCH = {np.dtype("float16"): torch.float16, np.dtype("float32"): torch.float32, np.dtype("uint16"): torch.int16,
          np.dtype("int8"): torch.int8}


def torch_dtype(dtype: np.dtype) -> torch.dtype:
    return _TORCH[np.dtype(dtype)]


def host_view(t: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """A numpy view (no copy) of a CPU buffer tensor, typed as the on-disk ``dtype``."""
    return t.numpy().view(np.dtype(dtype))


def can_pin(pin_memory: bool) -> bool:
    return pin_memory and torch.cuda.is_available()


@dataclass
class TargetBatch:
    """One teacher's targets of a batch: per layer, the on-disk parts ``(B, ...)`` in their stored dtype.

    ``flip``: per sample, whether its maps are mirrored along the width (``feature_flip``), applied
    in :meth:`decode` on the device. ``release`` gives the buffers back to their ring (once).
    """

    parts: list[list[torch.Tensor]]
    spec_dtype: str
    quant: str | None = None
    flip: tuple[bool, ...] | None = None
    _release: Callable[[], None] | None = field(default=None, repr=False)

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> TargetBatch:
        return replace(self, parts=[[fn(p) for p in layer] for layer in self.parts])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TargetBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> TargetBatch:
        """Pinned copies of host parts (buffers from a pinned ring already are; device tensors stay)."""
        return self._map(lambda t: t if t.device.type != "cpu" or t.is_pinned() else t.pin_memory())

    @property
    def batch_size(self) -> int:
        return int(self.parts[0][0].shape[0])

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for layer in self.parts for p in layer)

    def decode(self, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
        """Per layer, ``(B, C, h, w)`` maps in ``dtype`` on the parts' device (a channels-last view)."""
        out = []
        for layer in self.parts:
            x = decode_parts(self.spec_dtype, self.quant, layer, dtype)
            if self.flip is not None and any(self.flip):
                mask = torch.tensor(self.flip, dtype=torch.bool).to(x.device, non_blocking=True)
                x = torch.where(mask.view(-1, 1, 1, 1), x.flip(2), x)
            out.append(x.permute(0, 3, 1, 2))
        return out

    def release(self) -> None:
        """Hand the buffers back to the loader for reuse; use no tensor of this batch (or its host copies) after."""
        done, self._release = self._release, None
        if done is not None:
            done()


class BufferRing:
    """Reusable sets of buffers: :meth:`take` returns a released set, or makes a new one; :meth:`give` returns one.

    At most ``keep`` released sets are kept for reuse; a set never given back is simply garbage-collected.
    """

    def __init__(self, make: Callable[[], Any], keep: int) -> None:
        self._make, self.keep = make, keep
        self._free: list[Any] = []
        self._lock = threading.Lock()
        self.made = 0

    def take(self) -> Any:
        with self._lock:
            if self._free:
                return self._free.pop()
            self.made += 1
        return self._make()

    def give(self, buffers: Any) -> None:
        with self._lock:
            if len(self._free) < self.keep:
                self._free.append(buffers)


def split_layers(tensors: Sequence[torch.Tensor], layer_parts: Sequence[Sequence[Any]]) -> list[list[torch.Tensor]]:
    """A flat list of part tensors (layer by layer) -> one list per layer."""
    out, k = [], 0
    for layer in layer_parts:
        out.append(list(tensors[k : k + len(layer)]))
        k += len(layer)
    return out


def slots_by_segment(items: Sequence[Any], store: int, indices: Sequence[int]) -> list[tuple[str, tuple[list[int], list[int]]]]:
    """Where items ``indices`` live in store number ``store``: [(segment, (rows, batch slots))], by segment id."""
    by_seg: dict[str, tuple[list[int], list[int]]] = {}
    for slot, i in enumerate(indices):
        seg, row = items[i].locations[store]
        rows, slots = by_seg.setdefault(seg, ([], []))
        rows.append(row)
        slots.append(slot)
    return sorted(by_seg.items())


def flip_mask(flips: Sequence[bool]) -> tuple[bool, ...] | None:
    return tuple(bool(f) for f in flips) if any(flips) else None


class StreamTargets:
    """Targets read from the stores for every batch (``--targets stream``); see the module docstring.

    ``items`` are the dataset's items (each with ``locations``: (segment, row) per store), ``keys``
    the teacher keys in store order. ``ring``: released buffer sets kept per store.
    """

    mode = "stream"

    def __init__(self, stores: Sequence[Any], keys: Sequence[str], items: Sequence[Any], batch_size: int, *,
                 pin_memory: bool = False, ring: int = 8, gathers: Sequence[StoreGather] | None = None) -> None:
        self.stores, self.keys, self.items = list(stores), list(keys), items
        self.batch_size = batch_size
        self.gathers = list(gathers) if gathers is not None else [StoreGather(s) for s in self.stores]
        pin = can_pin(pin_memory)
        self.rings = [BufferRing(partial(self._alloc, g, pin), ring) for g in self.gathers]

    def _alloc(self, gather: StoreGather, pin: bool) -> list[tuple[torch.Tensor, np.ndarray]]:
        bufs = []
        for _, shape, dtype in gather.parts:
            t = torch.empty((self.batch_size, *shape), dtype=torch_dtype(dtype), pin_memory=pin)
            bufs.append((t, host_view(t, dtype)))
        return bufs

    def batch(self, indices: Sequence[int], flips: Sequence[bool]) -> dict[str, TargetBatch]:
        """The targets of items ``indices`` (in batch order), one :class:`TargetBatch` per teacher key."""
        n = len(indices)
        if n > self.batch_size:
            raise ValueError(f"a batch of {n} items does not fit buffers of {self.batch_size}")
        flip = flip_mask(flips)
        plans = []
        for s_idx, gather in enumerate(self.gathers):
            plans.append(slots_by_segment(self.items, s_idx, indices))
            first_seg, (first_rows, _) = plans[-1][0]
            if not gather.in_page_cache(first_seg, first_rows[0]):  # cold: every chunk of the batch requested at once
                for seg, (rows, _) in plans[-1]:
                    gather.advise(seg, rows)
        out = {}
        for key, store, gather, ring, segs in zip(self.keys, self.stores, self.gathers, self.rings, plans, strict=True):
            bufs = ring.take()
            views = [arr for _, arr in bufs]
            for seg, (rows, slots) in segs:
                gather.gather(seg, rows, views, slots)
            parts = split_layers([t[:n] for t, _ in bufs], gather.layer_parts)
            out[key] = TargetBatch(parts, store.spec.dtype, getattr(store.spec, "quant", None), flip,
                                   _release=partial(ring.give, bufs))
        return out


def decode_item(gather: StoreGather, store: Any, segment_id: str, row: int) -> list[np.ndarray]:
    """One stored sample's layers as float32 ``(h, w, c)`` maps (tests, ``CachedTargets[i]``)."""
    bufs = gather.empty(1)
    gather.gather(segment_id, [row], bufs)
    tensors = [torch.from_numpy(b.view(np.int16) if b.dtype == np.uint16 else b) for b in bufs]
    layers = split_layers(tensors, gather.layer_parts)
    return [decode_parts(store.spec.dtype, getattr(store.spec, "quant", None), layer)[0].numpy() for layer in layers]
