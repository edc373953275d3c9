"""Mixture-of-Representations (MoR) routers: gates per image (eval) or per pixel (noisy training), level and task.

As in the official ``MoR``/``GlobalRouter`` (``models/backbones/sak.py:33-111``): the stem's patch
tokens go through ``Linear(d, d/2) -> LayerNorm -> GELU -> Linear(d/2, 2E)`` *per token*, the logits
are averaged over tokens and expanded back to every token (official: to (B, 2E, H, W)). With noisy
gating the 2E outputs split into clean logits (first E) and raw noise scales (last E); in training
mode ``logits = clean + eps * (softplus(raw) + 0.01)`` with ``eps = randn_like`` of the *expanded*
(B, E, H, W) clean logits (``sak.py:90-96``), so the noise, and the gates, differ per pixel; in eval
mode ``logits = clean``, one gate vector per image. Gates are ``softmax(logits)`` over the E experts
``("stem", *teachers)``; the routed representation is ``sum_e gate_e * rep_e`` per token.

Shapes: eval (or no noisy gating) gives gates (B, E); noisy training gives (B, E, N) with N = H*W
tokens in row-major order, which is the memory order of the official (B, E, H, W) noise, so one seed
draws the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import init_linear_trunc_normal


class MoRRouter(nn.Module):
    """Gate network for one (level, task): tokens (B, N, d) -> gates (B, E), or (B, E, N) with noise; sum 1 over E."""

    def __init__(self, dim: int, num_experts: int, *, noisy_gating: bool = True, noise_eps: float = 0.01,
                 per_pixel: bool = True) -> None:
        super().__init__()
        self.per_pixel = per_pixel  # False: one noise draw per image (sak before issue 12)
        self.num_experts = num_experts
        self.noisy_gating = noisy_gating
        self.noise_eps = noise_eps
        hidden = dim // 2
        out = 2 * num_experts if noisy_gating else num_experts
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, out))
        self.apply(init_linear_trunc_normal)

    def logits(self, tokens_bnc: torch.Tensor) -> torch.Tensor:
        """Gate logits: (B, E) clean; (B, E, N) with per-token noise in training mode when noisy gating is on."""
        pooled = self.mlp(tokens_bnc).mean(dim=1)  # (B, E or 2E): MLP per token, then mean
        if not self.noisy_gating:
            return pooled
        clean, raw_noise = pooled.chunk(2, dim=1)
        if not self.training:
            return clean
        if not self.per_pixel:
            return clean + torch.randn_like(clean) * (F.softplus(raw_noise) + self.noise_eps)
        n = tokens_bnc.shape[1]
        clean_ben = clean[:, :, None].expand(-1, -1, n)  # official: pooled logits expanded to (B, E, H, W)
        std_ben = (F.softplus(raw_noise) + self.noise_eps)[:, :, None].expand(-1, -1, n)
        return clean_ben + torch.randn_like(clean_ben) * std_ben

    def forward(self, tokens_bnc: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(tokens_bnc), dim=1)


def mix(gates: torch.Tensor, reps: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_e gates[:, e] * reps[e]`` for reps shaped (B, N, d); gates (B, E) per image or (B, E, N) per token."""
    stacked = torch.stack(list(reps), dim=1)  # (B, E, N, d)
    weights = gates[:, :, None, None] if gates.ndim == 2 else gates[:, :, :, None]
    return (stacked * weights).sum(dim=1)


def image_gates(gates: torch.Tensor) -> torch.Tensor:
    """(B, E) gates of an image: per-token gates (B, E, N) averaged over the tokens, (B, E) unchanged."""
    return gates if gates.ndim == 2 else gates.mean(dim=2)
