"""Teacher-Specific Adapter Paths (TSAP): one residual bottleneck adapter chain per teacher.

For a backbone with ``depth`` blocks, a branch holds ``depth + 1`` adapters: ``A_0``
after the patch embedding and ``A_i`` after block ``i``. With ``x_0`` the embedded
tokens (prefix tokens included, as in the official code) and ``x_i`` the output of
block ``i``::

    r_0 = A_0(x_0)          r_i = A_i(r_{i-1} + x_i)
    A(z) = z + s * up(GELU(down(z)))      (s: learnable scalar, initialized to 1)

and one LayerNorm per feature level turns ``r_level`` into the branch's representation.
Initialization as in the official code: Linear weights trunc-normal(std 0.02),
biases 0, LayerNorm weight 1 / bias 0.
"""

from __future__ import annotations

import torch
from torch import nn


def init_linear_trunc_normal(module: nn.Module) -> None:
    """The official ``_init_weights`` for adapters, norms, aligners and routers."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Adapter(nn.Module):
    """Residual bottleneck ``z + scale * up(GELU(down(z)))``: d -> int(d * ratio) -> d."""

    def __init__(self, dim: int, ratio: float = 0.25) -> None:
        super().__init__()
        # int(d * 0.25) == d // 4 (official ``int(input_dim // down_ratio)``) for every d.
        hidden = max(1, int(dim * ratio))
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.up(self.act(self.down(z))) * self.scale


class TSAPBranch(nn.Module):
    """One teacher's adapter chain plus its per-level output LayerNorms."""

    def __init__(self, dim: int, depth: int, num_levels: int, ratio: float = 0.25) -> None:
        super().__init__()
        self.adapters = nn.ModuleList(Adapter(dim, ratio) for _ in range(depth + 1))
        # nn.LayerNorm default eps 1e-5, as the official ``nn.LayerNorm(embed_dim)``.
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_levels))
        self.apply(init_linear_trunc_normal)

    def start(self, x0_bnc: torch.Tensor) -> torch.Tensor:
        """``r_0 = A_0(x_0)`` on the embedded tokens."""
        return self.adapters[0](x0_bnc)

    def step(self, block: int, r_prev_bnc: torch.Tensor, x_bnc: torch.Tensor) -> torch.Tensor:
        """``r_i = A_i(r_{i-1} + x_i)`` after block ``i`` (0-based)."""
        return self.adapters[block + 1](r_prev_bnc + x_bnc)

    def represent(self, level_idx: int, r_bnc: torch.Tensor) -> torch.Tensor:
        """The branch's representation at feature level ``level_idx`` (patch tokens only)."""
        return self.norms[level_idx](r_bnc)
