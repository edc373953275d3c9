"""Task heads: the official SAK ``DecodeHead`` (an all-MLP + conv decoder).

Per level a ``Linear(d, d // 4)`` on the routed tokens, each map bilinearly resized
to 1/4 of the input (``align_corners=False``), the levels concatenated,
``Conv3x3 -> BatchNorm -> GELU``, ``Conv1x1`` to the task channels, and a bilinear
upsample to the input size. With four levels the concatenation has ``d`` channels
and the fuse conv is ``d -> d`` exactly as in the official code; for another level
count it is ``levels * (d // 4) -> d`` (our generalization). Heads keep PyTorch's
default initialization, as the official code does (it only re-initializes the
backbone's SAK parts).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class TaskHead(nn.Module):
    """Routed level tokens [(B, N, d)] * levels -> (B, channels, H, W) at the input size."""

    def __init__(
        self,
        dim: int,
        channels: int,
        num_levels: int,
        grid: tuple[int, int],
        img_size: tuple[int, int],
        kernel: int = 3,
    ) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.work_size = (img_size[0] // 4, img_size[1] // 4)  # official ``opr_size``
        reduced = dim // 4
        self.linears = nn.ModuleList(nn.Linear(dim, reduced) for _ in range(num_levels))
        fused = reduced * num_levels
        self.fuse = nn.Sequential(
            nn.Conv2d(fused, dim, kernel_size=kernel, padding=kernel // 2),
            nn.BatchNorm2d(dim),
            nn.GELU(),
        )
        self.out = nn.Conv2d(dim, channels, kernel_size=1)

    def forward(self, levels_bnc: Sequence[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        gh, gw = self.grid
        maps = []
        for linear, tokens in zip(self.linears, levels_bnc, strict=True):
            b = tokens.shape[0]
            m = linear(tokens).transpose(1, 2).reshape(b, -1, gh, gw)
            maps.append(F.interpolate(m, size=self.work_size, mode="bilinear", align_corners=False))
        x = self.out(self.fuse(torch.cat(maps, dim=1)))
        return F.interpolate(x, size=tuple(out_size), mode="bilinear", align_corners=False)
