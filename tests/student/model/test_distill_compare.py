"""The loss after standardize / grid matching / cosine moved to sak.student.model.distill: bit for bit what it was."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sak.student.model import distill
from sak.student.train import losses


def _old_term(s: torch.Tensor, t_bhwc: torch.Tensor, mean: torch.Tensor | None, var: torch.Tensor | None) -> torch.Tensor:
    """distill_loss_terms of one (teacher, level) as losses.py computed it before the move (teacher_layout bhwc)."""
    t = t_bhwc if mean is None else (t_bhwc.float() - mean) * torch.rsqrt(var + 1e-6)
    t = t.permute(0, 3, 1, 2).to(s.dtype)
    if t.shape[-2] * t.shape[-1] > s.shape[-2] * s.shape[-1]:
        s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
    elif t.shape[-2:] != s.shape[-2:]:
        t = F.interpolate(t, size=s.shape[-2:], mode="bilinear", align_corners=False)
    s, t = s.float().flatten(1), t.float().flatten(1)
    cos = (s * t).sum(1) / torch.sqrt(((s * s).sum(1) + 1e-12) * ((t * t).sum(1) + 1e-12))
    return 0.9 * (1.0 - cos).mean() + 0.1 * F.smooth_l1_loss(s, t, beta=1.0)


def test_moved_functions_give_bit_identical_losses() -> None:
    g = torch.Generator().manual_seed(0)
    student = {"a": [torch.randn(3, 8, 4, 6, generator=g), torch.randn(3, 8, 4, 6, generator=g)],
               "b": [torch.randn(3, 5, 4, 4, generator=g)]}
    targets = {"a": [torch.randn(3, 9, 8, 8, generator=g), torch.randn(3, 2, 3, 8, generator=g)],  # bigger, smaller grid
               "b": [torch.randn(3, 4, 4, 5, generator=g)]}
    stats = {k: [(torch.rand(m.shape[-1], generator=g), torch.rand(m.shape[-1], generator=g) + 0.5) for m in v]
             for k, v in targets.items()}
    for st in (None, stats):
        got = losses.distill_loss_terms(student, targets, st, teacher_layout="bhwc")
        for name, maps in targets.items():
            for k, t in enumerate(maps):
                mean, var = st[name][k] if st else (None, None)
                assert torch.equal(got[f"{name}/level{k + 1}"], _old_term(student[name][k], t, mean, var))
    assert losses.standardize is distill.standardize and losses._match_grids is distill.match_grids  # old names kept
