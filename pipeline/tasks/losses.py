"""Task losses of the SAK paper, one function per label convention (golden values in the tests).

Reductions (as in the official ``losses.py`` unless noted):

- class maps (semseg, parts): cross-entropy summed over valid pixels (label != 255), divided by
  the number of valid pixels in the batch (pixel-pooled mean).
- depth: L1 summed over valid pixels / number of valid pixels; valid = finite and > 0.
  (Official: every pixel not marked 255 counts; our labels mark invalid depth with 0.)
- normals: predictions L2-normalized over channels, L1 summed over the 3 channels of valid
  pixels / number of valid pixels; valid = not the zero vector (official: != 255).
- edge: class-balanced BCE on logits, ``-(w y log p + (1-w)(1-y) log(1-p))`` with w = 0.95,
  averaged over pixels != 255 (equal to the official BCE(pos_weight=w/(1-w)) * (1-w)).
- saliency: balanced cross-entropy; class weights from the batch, negatives weighted by the
  positive fraction and positives by the negative fraction, weighted sum / valid pixels.
  A 1-channel head is treated as the logit of the salient class (the official head has 2
  channels; softmax over two logits is the sigmoid of their difference, so the loss is the same).

Every loss takes ``(pred (B, C, H, W), label)`` and returns an exact 0 (no NaN) when no pixel
of the batch is valid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...manifests.errors import ConfigError
from .base import IGNORE_INDEX

EDGE_POS_WEIGHT = 0.95


def _as_b1hw(x: torch.Tensor) -> torch.Tensor:
    return x[:, None] if x.ndim == 3 else x


def _as_b3hw(x: torch.Tensor) -> torch.Tensor:
    if x.ndim == 4 and x.shape[1] != 3 and x.shape[-1] == 3:
        return x.permute(0, 3, 1, 2)
    return x


def _class_map(label: torch.Tensor) -> torch.Tensor:
    return (label[:, 0] if label.ndim == 4 else label).long()


def _safe_div(total: torch.Tensor, count: torch.Tensor | int) -> torch.Tensor:
    count = torch.as_tensor(count, device=total.device)
    return total / count.clamp(min=1).to(total.dtype)


def semseg_loss(logits: torch.Tensor, label: torch.Tensor, *, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy over pixels != ``ignore_index``, pixel-pooled over the batch (every class-map task)."""
    label = _class_map(label)
    ce = F.cross_entropy(logits, label, ignore_index=ignore_index, reduction="sum")
    return _safe_div(ce, (label != ignore_index).sum())


def depth_loss(pred: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """L1 over valid pixels (finite and > 0)."""
    depth = _as_b1hw(depth).to(pred.dtype)
    valid = torch.isfinite(depth) & (depth > 0)
    diff = torch.where(valid, (pred - torch.where(valid, depth, 0.0)).abs(), 0.0)
    return _safe_div(diff.sum(), valid.sum())


def normals_loss(pred: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
    """L1 between unit-normalized predictions and labels, summed over channels, mean over valid pixels."""
    gt = _as_b3hw(normals).to(pred.dtype)
    valid = ((gt != 0).any(dim=1, keepdim=True) & (gt != IGNORE_INDEX).all(dim=1, keepdim=True))
    unit = F.normalize(pred, p=2, dim=1)
    diff = torch.where(valid, (unit - gt).abs(), 0.0)
    return _safe_div(diff.sum(), valid.sum())


def edge_loss(
    logits: torch.Tensor, edge: torch.Tensor, *, pos_weight: float = EDGE_POS_WEIGHT, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Class-balanced BCE: mean over valid pixels of ``-(w y log p + (1-w)(1-y) log(1-p))``."""
    y = _as_b1hw(edge).to(logits.dtype)
    valid = y != ignore_index
    y = torch.where(valid, y, 0.0)
    per_px = -(pos_weight * y * F.logsigmoid(logits) + (1 - pos_weight) * (1 - y) * F.logsigmoid(-logits))
    return _safe_div(torch.where(valid, per_px, 0.0).sum(), valid.sum())


def saliency_loss(logits: torch.Tensor, sal: torch.Tensor, *, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Balanced CE (official ``CELoss(balanced=True)``); 1-channel logits = salient-class logit."""
    y = _class_map(sal)
    valid = y != ignore_index
    pos = (y == 1) & valid
    n_valid = valid.sum()
    frac_neg = _safe_div(((y == 0) & valid).sum().float(), n_valid)  # official ``pos_weight``
    frac_pos = _safe_div(pos.sum().float(), n_valid)
    if logits.shape[1] == 1:
        logp_pos, logp_neg = F.logsigmoid(logits[:, 0]), F.logsigmoid(-logits[:, 0])
    elif logits.shape[1] == 2:
        logp = F.log_softmax(logits, dim=1)
        logp_pos, logp_neg = logp[:, 1], logp[:, 0]
    else:
        raise ConfigError(f"saliency logits must have 1 or 2 channels, got {logits.shape[1]}")
    neg = valid & ~pos
    per_px = torch.where(pos, -frac_neg * logp_pos, 0.0) + torch.where(neg, -frac_pos * logp_neg, 0.0)
    return _safe_div(per_px.sum(), n_valid)
