"""The process a run lives in: device, torchrun ranks, bf16 autocast, seeds, cross-rank exchange.

Under ``torchrun`` (``WORLD_SIZE`` > 1) :func:`setup_distributed` joins the process group
(nccl on cuda, gloo on cpu) and gives each rank its GPU; :func:`teardown_distributed`
leaves only a group this module created. :func:`autocast` is off unless asked for: evaluation
runs in float32 as the official ``test.py`` (a run evaluates in bf16 only with ``amp="bf16"``).
"""

from __future__ import annotations

import os
import random
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ...pipeline.devices import resolve_device

_INITIALIZED_HERE = False


def setup_distributed(device: str = "auto") -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the torchrun process group when WORLD_SIZE > 1."""
    global _INITIALIZED_HERE
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world == 1:
        return 0, 1, dev
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        _INITIALIZED_HERE = True
    return dist.get_rank(), dist.get_world_size(), dev


def teardown_distributed() -> None:
    global _INITIALIZED_HERE
    if _INITIALIZED_HERE:
        dist.destroy_process_group()
        _INITIALIZED_HERE = False


def autocast(device: torch.device, amp: str = "off") -> AbstractContextManager:
    """bf16 autocast on cuda for ``amp="auto"`` or ``"bf16"``; nothing for ``"off"`` (the default) or on cpu."""
    if device.type == "cuda" and amp != "off":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def broadcast(value: Any, world: int) -> Any:
    """Rank 0's ``value`` on every rank (a picklable Python object)."""
    if world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any, world: int) -> list[Any]:
    """Every rank's ``value``, in rank order."""
    if world == 1:
        return [value]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, value)
    return out
