"""Mixture-of-Representations (MoR) routers: one gate vector per image, level and task.

As in the official ``MoR``/``GlobalRouter``: the stem's patch tokens go through
``Linear(d, d/2) -> LayerNorm -> GELU -> Linear(d/2, 2E)`` *per token*, the logits are
then averaged over tokens (one gate per image, not per token). With noisy gating
the 2E outputs split into clean logits (first E) and raw noise scales (last E); in
training mode ``logits = clean + N(0, 1) * (softplus(raw) + 0.01)``, in eval mode
``logits = clean`` (deterministic). Gates are ``softmax(logits)`` over the E experts
``("stem", *teachers)``; the routed representation is ``sum_e gate_e * rep_e``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import init_linear_trunc_normal


class MoRRouter(nn.Module):
    """Gate network for one (level, task): tokens (B, N, d) -> gates (B, E) summing to 1."""

    def __init__(self, dim: int, num_experts: int, *, noisy_gating: bool = True, noise_eps: float = 0.01) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.noisy_gating = noisy_gating
        self.noise_eps = noise_eps
        hidden = dim // 2
        out = 2 * num_experts if noisy_gating else num_experts
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, out))
        self.apply(init_linear_trunc_normal)

    def logits(self, tokens_bnc: torch.Tensor) -> torch.Tensor:
        """Gate logits (B, E), with noise in training mode when noisy gating is on."""
        pooled = self.mlp(tokens_bnc).mean(dim=1)  # (B, E or 2E): MLP per token, then mean
        if not self.noisy_gating:
            return pooled
        clean, raw_noise = pooled.chunk(2, dim=1)
        if not self.training:
            return clean
        std = F.softplus(raw_noise) + self.noise_eps
        return clean + torch.randn_like(clean) * std

    def forward(self, tokens_bnc: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(tokens_bnc), dim=1)


def mix(gates_be: torch.Tensor, reps: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_e gates[:, e] * reps[e]`` for reps shaped (B, N, d)."""
    stacked = torch.stack(list(reps), dim=1)  # (B, E, N, d)
    return (stacked * gates_be[:, :, None, None]).sum(dim=1)
