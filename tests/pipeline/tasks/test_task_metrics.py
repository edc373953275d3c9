"""Golden values for the streaming metric accumulators (hand computations in the comments), merging."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sak.manifests.errors import ConfigError
from sak.pipeline.tasks.metrics import BoundaryF, DepthRMSE, MeanIoU, NormalsAngle, SaliencyMaxF, disk_max_pool


def test_miou_golden_ignore_and_absent_classes():
    # label [0, 0, 1, 255], pred [0, 1, 1, 2] (3 classes). Valid pixels 0..2:
    # class 0: tp 1, fn 1 -> 1/2;  class 1: tp 1, fp 1 -> 1/2;  class 2: only predicted on the ignored
    # pixel -> absent from both -> 0 (official): (.5 + .5 + 0) / 3;  excluded with miou="present": 50
    label = torch.tensor([[[0, 0, 1, 255]]])
    pred_cls = torch.tensor([[[0, 1, 1, 2]]])
    logits = torch.nn.functional.one_hot(pred_cls, 3).permute(0, 3, 1, 2).float()
    m = MeanIoU(3)
    m.update(logits, label)
    res = m.compute()
    assert res["mIoU"] == pytest.approx(100 / 3) and res["pixAcc"] == pytest.approx(200 / 3)
    z = MeanIoU(3, miou="present")
    z.update(pred_cls, label)
    assert z.compute()["mIoU"] == pytest.approx(50.0)
    assert MeanIoU(3).compute()["mIoU"] != MeanIoU(3).compute()["mIoU"]  # NaN when nothing was seen
    with pytest.raises(ConfigError, match="official, present"):
        MeanIoU(3, miou="zero")


def test_miou_g7_official_convention():
    # research doc G7, official SemsegMeter('pascalcontext') (evaluation/eval_semseg.py:8-18 21 classes,
    # :23-33 tp/fp/fn over gt != 255, :40-47 mean over all classes): tp [3,3,0,0], fp [0,1,0,0], fn [1,0,0,0]
    gt = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 255]]])
    pred = torch.tensor([[[0, 1, 1, 1], [0, 0, 1, 3]]])
    official, present = MeanIoU(21), MeanIoU(21, miou="present")
    official.update(pred, gt)
    present.update(pred, gt)
    c = official.confusion
    tp, fp, fn = c.diag()[:4], (c.sum(0) - c.diag())[:4], (c.sum(1) - c.diag())[:4]
    assert tp.tolist() == [3, 3, 0, 0] and fp.tolist() == [0, 1, 0, 0] and fn.tolist() == [1, 0, 0, 0]
    assert official.compute()["mIoU"] == pytest.approx(7.142857142857142, abs=1e-9)  # (0.75 + 0.75) / 21 * 100
    assert present.compute()["mIoU"] == pytest.approx(75.0)


def _official_meter_inputs():
    """The inputs the official meters were run on once (numbers below); numpy's PCG64 ``random`` stream."""
    rng = np.random.default_rng(7)
    sal_logits = torch.tensor(rng.random((2, 2, 5, 6)) * 6 - 3, dtype=torch.float32)
    sal = (rng.random((2, 5, 6)) < 0.4).astype(np.float32)
    sal[rng.random((2, 5, 6)) < 0.15] = 255
    seg_logits = torch.tensor(rng.random((2, 40, 4, 5)), dtype=torch.float32)
    seg_logits[:, 6:] -= 2
    seg = torch.tensor((rng.random((2, 4, 5)) * 6).astype(np.int64))
    seg[0, 0, :2] = 255
    nrm_out = torch.tensor(rng.random((2, 3, 3, 4)) * 2 - 1, dtype=torch.float32)
    nrm = torch.tensor(rng.random((2, 3, 3, 4)) * 2 - 1, dtype=torch.float32)
    nrm[0, :, 0, 0] = 255
    dep_out = torch.tensor(rng.random((2, 1, 3, 4)) * 6 - 1, dtype=torch.float32)
    dep = torch.tensor(rng.random((2, 1, 3, 4)) * 90, dtype=torch.float32)
    dep[1, 0, 0, :2] = 0
    dep[0, 0, 1, 1] = 255
    return (sal_logits, torch.tensor(sal)), (seg_logits, seg), (nrm_out, nrm), (dep_out, dep)


def test_metrics_equal_official_meters_on_random_batches():
    # Values printed by the official meters fed through utils.get_output (utils.py:114-145) with these inputs:
    # SaliencyMeter (eval_sal.py) maxF, SemsegMeter('nyud') (eval_semseg.py) mIoU, NormalsMeter (eval_normals.py)
    # mErr, DepthMeter (eval_depth.py) RMSE over 21 valid pixels; torch 2.14.1, numpy 2.4.6.
    (sal_logits, sal), (seg_logits, seg), (nrm_out, nrm), (dep_out, dep) = _official_meter_inputs()
    s = SaliencyMaxF()
    s.update(sal_logits, sal)
    assert s.compute()["maxF"] == pytest.approx(35.5789452791214, abs=1e-5)  # official P/R in float32, ours float64
    m = MeanIoU(40)
    for i in range(2):
        m.update(seg_logits[i:i + 1], seg[i:i + 1])
    assert m.compute()["mIoU"] == pytest.approx(1.0606060606060606, abs=1e-12)
    n = NormalsAngle()
    n.update(nrm_out, nrm)
    assert n.compute()["mean_angle"] == pytest.approx(96.78910495923913, abs=1e-4)
    d = DepthRMSE()
    d.update(dep_out, dep)
    assert float(d.count) == 21 and d.compute()["rmse"] == pytest.approx(48.913917605988956, abs=1e-5)


def test_g8_depth_rmse_pooled_over_pixels():
    # research doc G8 (eval_depth.py:10-33, clamp utils.py:138-140): 255 and 0 are not valid depths;
    # squared errors 0.25, 0, 1 over 3 valid pixels of two batches -> sqrt(1.25 / 3)
    d = DepthRMSE()
    d.update(torch.tensor([[[[1.0, 2.0], [3.0, 0.5]]]]), torch.tensor([[[1.5, 2.0], [255.0, 0.0]]]))
    d.update(torch.tensor([[[[2.0]]]]), torch.tensor([[[1.0]]]))
    assert float(d.count) == 3 and d.compute()["rmse"] == pytest.approx(0.6454972243679028, abs=1e-12)


def test_g8_normals_mean_angle_and_ignore():
    # research doc G8 (eval_normals.py:20-37): raw outputs (1,0,0) vs gt (0,0,1): 90 deg, (1,1,0) vs (1,0,0): 45
    # -> 67.5; a third pixel whose gt has a 255 channel is not valid
    pred = torch.tensor([[1.0, 0, 0], [1, 1, 0], [0, 1, 0]]).T.reshape(1, 3, 1, 3)
    gt = torch.tensor([[0.0, 0, 1], [1, 0, 0], [255, 255, 255]]).T.reshape(1, 3, 1, 3)
    n = NormalsAngle()
    n.update(pred, gt)
    assert float(n.count) == 2 and n.compute()["mean_angle"] == pytest.approx(67.5, abs=1e-9)


def test_saliency_thresholds_are_the_official_float32_values():
    # eval_sal.py:11 thresholds = torch.arange(0.05, 1, 0.05) (float32): the 12th is 0.59999996, not 0.6, so a
    # probability of 0.59999996 is a positive at that threshold (pred >= t, eval_sal.py:33)
    m = SaliencyMaxF(from_logits=False)
    assert m.thresholds.numel() == 19 and float(m.thresholds[11]) == pytest.approx(0.5999999642372131, abs=0)
    m.update(torch.tensor([[[[0.5999999642372131]]]]), torch.tensor([[[1.0]]]))
    assert float(m.tp[11]) == 1 and float(m.tp[12]) == 0


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
