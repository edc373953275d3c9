"""Golden values for the distillation and task losses (hand computations in the comments)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sak.manifests.errors import ConfigError
from sak.student.train.losses import (
    DATASET_TASK_WEIGHTS,
    TASK_WEIGHTS,
    cosine_smoothl1,
    depth_loss,
    distill_loss,
    distill_loss_terms,
    edge_loss,
    normals_loss,
    saliency_loss,
    semseg_loss,
    standardize,
    task_losses,
)

LN2 = math.log(2.0)


def t(values, shape):
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


def test_cosine_smoothl1_golden():
    # image 1: s=[1,0], t=[0,1]: cos 0 -> 1-cos = 1; SmoothL1(beta 1) of |d|=1,1 -> 0.5, 0.5
    # image 2: s=[2,0], t=[1,0]: cos 1 -> 0;          SmoothL1 of |d|=1,0 -> 0.5, 0
    # 0.9 * mean(1, 0) + 0.1 * mean(0.5, 0.5, 0.5, 0) = 0.45 + 0.0375
    s = t([1, 0, 2, 0], (2, 1, 1, 2))
    tt = t([0, 1, 1, 0], (2, 1, 1, 2))
    assert cosine_smoothl1(s[:1], tt[:1]).item() == pytest.approx(0.95)
    assert cosine_smoothl1(s[1:], tt[1:]).item() == pytest.approx(0.025)
    assert cosine_smoothl1(s, tt).item() == pytest.approx(0.4875)
    # same as the official nn.CosineEmbeddingLoss + nn.SmoothL1Loss composition
    official = 0.9 * torch.nn.CosineEmbeddingLoss()(s.flatten(1), tt.flatten(1), torch.ones(2)) + 0.1 * F.smooth_l1_loss(s, tt)
    assert cosine_smoothl1(s, tt).item() == pytest.approx(official.item(), abs=1e-7)


def test_distill_resize_modes_golden():
    student = t([1, 3, 5, 7], (1, 1, 2, 2))
    teacher = t([2], (1, 1, 1, 1))
    # resize="teacher": student 2x2 -> 1x1 bilinear (align_corners=False) samples the centre = 4;
    # cos(4, 2) = 1 -> 0; SmoothL1 |4-2| = 2 -> 1.5; 0.1 * 1.5 = 0.15
    assert distill_loss({"x": [student]}, {"x": [teacher]}, resize="teacher").item() == pytest.approx(0.15)
    # resize="larger" (official): the teacher (fewer cells) is upsampled to 2x2 of 2s.
    # cos([1,3,5,7],[2,2,2,2]) = 32 / (sqrt(84) * 4) = 0.872872; SmoothL1 of d = -1,1,3,5 -> .5,.5,2.5,4.5 -> 2.0
    expected = 0.9 * (1 - 32 / (math.sqrt(84) * 4)) + 0.1 * 2.0
    assert distill_loss({"x": [student]}, {"x": [teacher]}).item() == pytest.approx(expected, rel=1e-6)
    # a student map on a smaller grid than the teacher is upsampled in both modes: 1x1 of 1 -> 2x2 of 1
    small, big = t([1], (1, 1, 1, 1)), t([2, 2, 2, 2], (1, 1, 2, 2))
    for mode in ("larger", "teacher"):
        assert distill_loss({"x": [small]}, {"x": [big]}, resize=mode).item() == pytest.approx(0.05)  # 0.1 * 0.5


def test_distill_sums_over_teachers_and_levels_and_reads_bhwc():
    s1, t1 = t([1, 0], (1, 1, 1, 2)), t([0, 1], (1, 1, 1, 2))  # 0.95 (see above)
    s2, t2 = t([2, 0], (1, 1, 1, 2)), t([1, 0], (1, 1, 1, 2))  # 0.025
    # teacher b: 2 channels on a 1x1 grid; same numbers as (s2, t2) with the values as channels -> 0.025
    sb, tb = t([2, 0], (1, 2, 1, 1)), t([1, 0], (1, 2, 1, 1))
    student = {"a": [s1, s2], "b": [sb]}
    to_bhwc = lambda x: x.permute(0, 2, 3, 1)  # noqa: E731 - the store's (B, H, W, C)
    teacher = {"a": [to_bhwc(t1), to_bhwc(t2)], "b": [to_bhwc(tb)]}
    with pytest.raises(ConfigError, match="teacher_layout"):
        distill_loss(student, teacher)  # (1, 1, 1, 2) read as B,C,H,W has 1 channel, the student 2
    terms = distill_loss_terms(student, teacher, teacher_layout="bhwc")
    assert list(terms) == ["a/level1", "a/level2", "b/level1"]
    assert [round(v.item(), 6) for v in terms.values()] == [0.95, 0.025, 0.025]
    assert distill_loss(student, teacher, teacher_layout="bhwc").item() == pytest.approx(0.95 + 0.025 + 0.025)


def test_distill_level_mismatch_is_a_clear_error():
    s = t([1, 0], (1, 1, 1, 2))
    with pytest.raises(ConfigError, match="levels"):
        distill_loss({"a": [s, s]}, {"a": [s]})
    with pytest.raises(ConfigError, match="no distillation output"):
        distill_loss({"a": [s]}, {"zz": [s]})


def test_standardize_golden_and_layouts():
    # channel 0: mean 1, var 4 -> (3 - 1) / 2 = 1;  channel 1: mean 2, var 16 -> (6 - 2) / 4 = 1
    x_bhwc = t([3, 6, 1, 2], (1, 1, 2, 2))  # (B, H, W, C=2): pixel0 (3, 6), pixel1 (1, 2)
    out = standardize(x_bhwc, [1.0, 2.0], [4.0, 16.0], eps=0.0, layout="bhwc")
    assert out.flatten().tolist() == [1.0, 1.0, 0.0, 0.0]
    x_bchw = t([3, 6], (1, 2, 1, 1))  # pixel0 as (B, C, H, W): layout inferred from the channel axis
    assert standardize(x_bchw, [1.0, 2.0], [4.0, 16.0], eps=0.0).flatten().tolist() == [1.0, 1.0]
    with pytest.raises(ConfigError, match="two axes"):
        standardize(torch.zeros(1, 2, 3, 2), [0.0, 0.0], [1.0, 1.0])
    # distill with stats: standardized target [1, 1] (from [3, 6]) vs student [1, 1] -> 0
    student = {"x": [t([1, 1], (1, 2, 1, 1))]}
    teacher = {"x": [t([3, 6], (1, 1, 1, 2))]}
    stats = {"x": [(torch.tensor([1.0, 2.0]), torch.tensor([4.0, 16.0]))]}
    assert distill_loss(student, teacher, stats, teacher_layout="bhwc").item() == pytest.approx(0.0, abs=1e-6)


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


def test_task_losses_masks_weights_and_no_nan():
    torch.manual_seed(0)
    preds = {"semseg": torch.randn(2, 3, 2, 2, requires_grad=True), "edge": torch.zeros(2, 1, 2, 2, requires_grad=True)}
    labels = {"semseg": torch.tensor([[[0, 1], [2, 255]], [[0, 0], [0, 0]]]), "edge": torch.ones(2, 2, 2)}
    masks = {"semseg": torch.tensor([True, False]), "edge": torch.tensor([False, False])}
    out = task_losses(preds, labels, masks)
    expected_semseg = semseg_loss(preds["semseg"][:1], labels["semseg"][:1])  # sample 2 dropped, not zeros
    assert out["semseg"].item() == pytest.approx(expected_semseg.item())
    assert out["edge"].item() == 0.0 and out["total"].item() == pytest.approx(expected_semseg.item())
    out["total"].backward()
    assert torch.isfinite(preds["edge"].grad).all() and preds["edge"].grad.abs().sum() == 0
    assert preds["semseg"].grad[1].abs().sum() == 0  # the unlabeled sample gets no gradient
    # weights: edge 50, all samples labelled (no mask key): 50 * 0.95 ln 2 (every pixel y=1, logit 0)
    out2 = task_losses({"edge": torch.zeros(2, 1, 2, 2)}, {"edge": torch.ones(2, 2, 2)})
    assert out2["edge"].item() == pytest.approx(50 * 0.95 * LN2)
    assert TASK_WEIGHTS == {"semseg": 1, "depth": 1, "normals": 10, "edge": 50, "parts": 2, "saliency": 5}
    assert DATASET_TASK_WEIGHTS["nyud"] == {"semseg": 1, "depth": 1, "normals": 10, "edge": 50}


def test_task_losses_all_masked_batch_and_unknown_task():
    pred = torch.randn(2, 1, 2, 2, requires_grad=True)
    out = task_losses({"depth": pred}, {"depth": torch.ones(2, 2, 2)}, {"depth": [False, False]})
    assert out["depth"].item() == 0.0 and out["total"].item() == 0.0
    out["total"].backward()
    assert pred.grad is not None and pred.grad.abs().sum() == 0
    with pytest.raises(ConfigError, match="no loss"):
        task_losses({"flow": pred}, {"flow": torch.ones(2, 2, 2)})
