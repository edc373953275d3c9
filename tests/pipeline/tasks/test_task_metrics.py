"""Golden values for the streaming metric accumulators (hand computations in the comments), merging."""

from __future__ import annotations

import math

import pytest
import torch

from sak.manifests.errors import ConfigError
from sak.pipeline.tasks.metrics import BoundaryF, DepthRMSE, MeanIoU, NormalsAngle, SaliencyMaxF, disk_max_pool


def test_miou_golden_ignore_and_absent_classes():
    # label [0, 0, 1, 255], pred [0, 1, 1, 2] (3 classes). Valid pixels 0..2:
    # class 0: tp 1, fn 1 -> 1/2;  class 1: tp 1, fp 1 -> 1/2;  class 2: only predicted on the ignored
    # pixel -> absent from both -> excluded: mIoU = 50;  with absent="zero" (official): (.5 + .5 + 0) / 3
    label = torch.tensor([[[0, 0, 1, 255]]])
    pred_cls = torch.tensor([[[0, 1, 1, 2]]])
    logits = torch.nn.functional.one_hot(pred_cls, 3).permute(0, 3, 1, 2).float()
    m = MeanIoU(3)
    m.update(logits, label)
    res = m.compute()
    assert res["mIoU"] == pytest.approx(50.0) and res["pixAcc"] == pytest.approx(200 / 3)
    z = MeanIoU(3, absent="zero")
    z.update(pred_cls, label)
    assert z.compute()["mIoU"] == pytest.approx(100 / 3)
    assert MeanIoU(3).compute()["mIoU"] != MeanIoU(3).compute()["mIoU"]  # NaN when nothing was seen


def test_miou_streaming_merge_state_and_masks():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, 6, 7, generator=g)
    label = torch.randint(0, 5, (4, 6, 7), generator=g)
    label[0, 0] = 255
    whole = MeanIoU(5)
    whole.update(logits, label)
    a, b = MeanIoU(5), MeanIoU(5)
    a.update(logits[:1], label[:1])
    b.update(logits[1:], label[1:])
    first = a.state()
    assert torch.equal(a.merge(b.state()).confusion, whole.confusion)  # merge adds in place
    c = MeanIoU(5)
    c.load_state(whole.state())
    assert c.compute() == whole.compute()
    masked = MeanIoU(5)
    masked.update(logits, label, mask=torch.tensor([True, False, False, False]))
    assert torch.equal(masked.confusion, first["confusion"])
    with pytest.raises(ConfigError, match="shapes"):
        MeanIoU(5).merge(MeanIoU(4))


def test_depth_rmse_golden_pooled_over_pixels():
    # batch 1: pred (1, 2, 3), gt (2, 0, 5): valid 2 pixels, squared errors 1 and 4
    # batch 2: pred -1 (clamped to ~0), gt 1: squared error 1.  RMSE = sqrt(6 / 3) = sqrt(2)
    m = DepthRMSE()
    m.update(torch.tensor([1.0, 2.0, 3.0]).reshape(1, 1, 1, 3), torch.tensor([[[2.0, 0.0, 5.0]]]))
    assert m.compute()["rmse"] == pytest.approx(math.sqrt(2.5))
    m.update(torch.tensor([[[[-1.0]]]]), torch.tensor([[[1.0]]]))
    assert m.compute()["rmse"] == pytest.approx(math.sqrt(2.0))
    assert math.isnan(DepthRMSE().compute()["rmse"])


def test_normals_mean_angle_golden():
    # pred (1,0,0) vs gt (1,0,0): 0 deg; (0,1,0) vs (1,0,0): 90; (1,1,0) vs (1,0,0): 45; gt 0-vector ignored
    pred = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]]).T.reshape(1, 3, 1, 4)
    gt = torch.tensor([[1.0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 0, 0]]).reshape(1, 1, 4, 3)  # (B, H, W, 3)
    m = NormalsAngle()
    m.update(pred, gt)
    res = m.compute()
    assert res["mean_angle"] == pytest.approx(45.0)
    assert res["within_11.25"] == pytest.approx(100 / 3) and res["within_30"] == pytest.approx(100 / 3)


def test_disk_max_pool_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 9, 11, generator=g)
    radius = 2.3
    out = disk_max_pool(x, radius)
    for y in range(9):
        for xx in range(11):
            best = max(
                float(x[0, 0, j, i]) for j in range(9) for i in range(11) if (j - y) ** 2 + (i - xx) ** 2 <= radius**2
            )
            assert float(out[0, 0, y, xx]) == best


def _edge_case():
    # 10x10 image, ground-truth boundary = column 5. Predictions: column 5 at 0.95, column 6 at 0.65
    # (1 px from the boundary: within tolerance), a false positive at (0, 0) at 0.85 (5 px away).
    gt = torch.zeros(1, 10, 10)
    gt[0, :, 5] = 1
    p = torch.zeros(1, 1, 10, 10)
    p[0, 0, :, 5] = 0.95
    p[0, 0, :, 6] = 0.65
    p[0, 0, 0, 0] = 0.85
    return p, gt


def test_boundary_f_golden():
    p, gt = _edge_case()
    m = BoundaryF(max_dist=1.5 / math.hypot(10, 10), from_logits=False)  # tolerance radius 1.5 px
    m.update(p, gt)
    # t <= 0.65: P = 20 / 21, R = 1 -> F = 40 / 41;  0.65 < t <= 0.85: P = 10 / 11 -> F = 20 / 21
    # 0.85 < t <= 0.95: P = R = 1 -> F = 1 (ODS at the first threshold above 0.85: 0.86)
    f = [float(x) for x in (2 * (m.cnt_p / m.sum_p) / (m.cnt_p / m.sum_p + 1))]
    assert f[0] == pytest.approx(40 / 41) and f[70] == pytest.approx(20 / 21)  # t = 0.01, 0.71
    res = m.compute()
    assert res["odsF"] == pytest.approx(100.0) and res["ods_threshold"] == pytest.approx(0.86)
    assert res["oisF"] == pytest.approx(100.0)


def test_boundary_f_ignore_all_background_and_ois():
    p, gt = _edge_case()
    gt[0, 0, :] = 255  # the false positive's row is ignored; gt pixel (0, 5) too
    m = BoundaryF(max_dist=1.5 / math.hypot(10, 10), from_logits=False)
    m.update(p, gt)
    # t = 0.5: predictions in valid rows: 9 (col 5) + 9 (col 6) = 18, all hits; 9 gt, all recalled -> F = 1
    assert float(m.cnt_p[49]) == 18 and float(m.sum_p[49]) == 18 and float(m.sum_r) == 9
    # add an all-background image with a weak prediction everywhere (0.3): adds 100 predictions, 0 hits,
    # 0 gt pixels. Pooled ODS at t <= 0.3 drops, above 0.3 stays 1; OIS takes each image's best threshold.
    m.update(torch.full((1, 1, 10, 10), 0.3), torch.zeros(1, 10, 10))
    res = m.compute()
    assert res["odsF"] == pytest.approx(100.0) and res["ods_threshold"] > 0.3
    # image 2 alone: sum_r = 0 -> F = 0 at every threshold; its OIS counts come from threshold 0.01
    # (argmax of an all-zero F): 100 predictions, 0 hits. OIS pools (18 + 0) / (18 + 100) with R = 1
    p_ois = 18 / 118
    assert res["oisF"] == pytest.approx(100 * 2 * p_ois / (p_ois + 1))


def test_saliency_max_f_golden():
    # probs (0.92, 0.72, 0.32, 0.12), labels (1, 0, 1, 0). beta^2 = 0.3: F = 1.3 P R / (0.3 P + R)
    # 0.72 < t <= 0.92: P = 1,   R = .5 -> 0.65 / 0.8 = 0.8125 (the max)
    # 0.32 < t <= 0.72: P = .5,  R = .5 -> 0.5;  0.12 < t <= 0.32: P = 2/3, R = 1 -> 0.7222
    m = SaliencyMaxF(from_logits=False)
    m.update(torch.tensor([0.92, 0.72, 0.32, 0.12]).reshape(1, 1, 2, 2), torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]))
    assert m.compute()["maxF"] == pytest.approx(81.25, abs=1e-4)
    two = SaliencyMaxF()  # a 2-channel head: softmax[:, 1]
    logits = torch.stack([torch.zeros(4), torch.logit(torch.tensor([0.92, 0.72, 0.32, 0.12]))]).reshape(1, 2, 2, 2)
    two.update(logits, torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]))
    assert two.compute()["maxF"] == pytest.approx(81.25, abs=1e-4)


def test_boundary_f_from_logits():
    p, gt = _edge_case()
    a = BoundaryF(max_dist=0.1, from_logits=False)
    b = BoundaryF(max_dist=0.1)
    a.update(p, gt)
    b.update(torch.logit(p.clamp(1e-6, 1 - 1e-6)), gt)
    assert torch.allclose(a.cnt_p, b.cnt_p) and torch.allclose(a.cnt_r, b.cnt_r)
