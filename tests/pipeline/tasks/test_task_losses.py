"""Golden values for the task losses (hand computations in the comments); moved from tests/student."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sak.pipeline.tasks.losses import depth_loss, edge_loss, normals_loss, saliency_loss, semseg_loss

LN2 = math.log(2.0)


def t(values, shape):
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


def test_semseg_ce_golden_with_ignore():
    # pixel 0: logits (0, 0), label 0 -> ln 2;  pixel 1: logits (ln 3, 0), label 1 -> -ln(1/4) = ln 4
    # pixel 2: label 255, ignored.  mean over 2 valid pixels = 1.5 ln 2
    logits = torch.tensor([[0.0, math.log(3.0), 9.0], [0.0, 0.0, -9.0]]).reshape(1, 2, 1, 3)
    label = torch.tensor([[[0, 1, 255]]])
    assert semseg_loss(logits, label).item() == pytest.approx(1.5 * LN2)
    all_ignored = semseg_loss(logits, torch.full((1, 1, 3), 255))
    assert all_ignored.item() == 0.0


def test_depth_l1_golden_valid_pixels_only():
    # valid gt: 1.5 and 5 (0 and NaN invalid): |1 - 1.5| + |3 - 5| = 2.5 over 2 pixels
    pred = t([1, 2, 3, 4], (1, 1, 2, 2))
    gt = torch.tensor([[[1.5, 0.0], [5.0, float("nan")]]])
    loss = depth_loss(pred, gt)
    assert loss.item() == pytest.approx(1.25)
    pred.requires_grad_(True)
    depth_loss(pred, gt).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.flatten().tolist() == [-0.5, 0.0, -0.5, 0.0]
    assert depth_loss(pred, torch.zeros(1, 2, 2)).item() == 0.0


def test_normals_l1_golden():
    # pixel 0: pred (2,0,0) -> unit (1,0,0) = gt -> 0;  pixel 1: pred (0,3,0) -> (0,1,0) vs gt (1,0,0): 1 + 1 = 2
    # pixel 2: gt (0,0,0) invalid.  (0 + 2) / 2 valid pixels = 1
    pred = torch.tensor([[2.0, 0.0, 5.0], [0.0, 3.0, 5.0], [0.0, 0.0, 5.0]]).reshape(1, 3, 1, 3)
    gt_bhwc = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]).reshape(1, 1, 3, 3)
    assert normals_loss(pred, gt_bhwc).item() == pytest.approx(1.0)
    assert normals_loss(pred, gt_bhwc.permute(0, 3, 1, 2)).item() == pytest.approx(1.0)


def test_edge_balanced_bce_golden():
    # logit 0 -> p = 0.5. y=1: -0.95 ln .5 = 0.95 ln2; y=0: 0.05 ln2; 255 ignored -> mean = 0.5 ln 2
    logits = torch.zeros(1, 1, 1, 3)
    assert edge_loss(logits, torch.tensor([[[1.0, 0.0, 255.0]]])).item() == pytest.approx(0.5 * LN2)
    # all-background image: every pixel 0.05 ln 2
    assert edge_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2)).item() == pytest.approx(0.05 * LN2)
    # equals the official BCE(pos_weight = w / (1 - w)) / (1 / (1 - w))
    x, y = torch.tensor([0.3, -1.2, 2.0]), torch.tensor([1.0, 0.0, 1.0])
    official = F.binary_cross_entropy_with_logits(x, y, pos_weight=torch.tensor(0.95 / 0.05)) * 0.05
    assert edge_loss(x.reshape(1, 1, 1, 3), y.reshape(1, 1, 3)).item() == pytest.approx(official.item(), rel=1e-6)


def test_saliency_balanced_ce_golden():
    # labels (1, 0, 0, 0), logit 0: positives weighted by the negative share 3/4, negatives by 1/4.
    # (3/4 ln2 + 3 * 1/4 ln2) / 4 pixels = 0.375 ln 2
    label = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    assert saliency_loss(torch.zeros(1, 1, 2, 2), label).item() == pytest.approx(0.375 * LN2)
    assert saliency_loss(torch.zeros(1, 2, 2, 2), label).item() == pytest.approx(0.375 * LN2)
    # the official weighted cross-entropy (2-channel) on random logits
    logits2 = torch.randn(1, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    official = F.cross_entropy(logits2, label.long(), weight=torch.tensor([0.25, 0.75]), reduction="sum") / 4
    assert saliency_loss(logits2, label).item() == pytest.approx(official.item(), rel=1e-6)
    # all-background image: the negatives get weight 0 (official behaviour)
    assert saliency_loss(torch.randn(1, 1, 2, 2), torch.zeros(1, 2, 2)).item() == 0.0
