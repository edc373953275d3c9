"""Golden values for the distillation losses and the weighted task-loss sum (hand computations in the comments).

The per-task loss functions' golden values are in tests/pipeline/tasks/test_task_losses.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sak.manifests.errors import ConfigError
from sak.pipeline.data.formats import label_dirs
from sak.pipeline.tasks import list_tasks
from sak.pipeline.tasks.losses import semseg_loss
from sak.student.train.losses import (
    cosine_smoothl1,
    default_weights,
    distill_loss,
    distill_loss_terms,
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
    to_bhwc = lambda x: x.permute(0, 2, 3, 1)
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
    assert default_weights(list_tasks()) == {"semseg": 1, "depth": 1, "normals": 10, "edge": 50, "parts": 2,
                                             "saliency": 5}
    assert default_weights(label_dirs("nyud")) == {"semseg": 1, "depth": 1, "normals": 10, "edge": 50}


def test_task_losses_all_masked_batch_and_unknown_task():
    pred = torch.randn(2, 1, 2, 2, requires_grad=True)
    out = task_losses({"depth": pred}, {"depth": torch.ones(2, 2, 2)}, {"depth": [False, False]})
    assert out["depth"].item() == 0.0 and out["total"].item() == 0.0
    out["total"].backward()
    assert pred.grad is not None and pred.grad.abs().sum() == 0
    with pytest.raises(ConfigError, match="no loss"):
        task_losses({"flow": pred}, {"flow": torch.ones(2, 2, 2)})
    # an unregistered task trains with a loss and a weight passed in; a registered one takes overrides
    flow = task_losses({"flow": pred}, {"flow": torch.ones(2, 2, 2)}, loss_fns={"flow": lambda p, y: p.sum() * 0 + 2.0},
                       weights={"flow": 3.0})
    assert flow["flow"].item() == 6.0
    with pytest.raises(ConfigError, match="no loss or weight for task 'depth'"):
        task_losses({"depth": pred}, {"depth": torch.ones(2, 2, 2)}, weights={"edge": 1.0})
