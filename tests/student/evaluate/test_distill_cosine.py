"""Golden values of the distillation metric on val: per-token cosine, grid matching, standardization, keys, direction."""

from __future__ import annotations

import math

import pytest
import torch

from sak.pipeline.tasks import metric_direction
from sak.student.evaluate.distill_metric import DistillCosine, metric_key, split_key
from sak.student.evaluate.metrics import delta_m


def _map(tokens: list[list[float]], h: int, w: int) -> torch.Tensor:
    """(1, C, h, w) from h*w token vectors in row-major order."""
    return torch.tensor(tokens, dtype=torch.float32).T.reshape(1, -1, h, w)


def test_a_student_equal_to_its_target_scores_exactly_one_and_orthogonal_exactly_zero() -> None:
    g = torch.Generator().manual_seed(0)
    t = [torch.randn(3, 16, 4, 5, generator=g), torch.randn(3, 16, 4, 5, generator=g) * 50]
    same = DistillCosine()
    same.update({"dinov2": [m.clone() for m in t]}, {"dinov2": t})
    assert same.compute() == {"distill/dinov2/level1/cosine": 1.0, "distill/dinov2/level2/cosine": 1.0,
                              "distill/dinov2/cosine": 1.0}
    e0, e1 = torch.zeros(2, 4, 3, 3), torch.zeros(2, 4, 3, 3)
    e0[:, 0], e1[:, 1] = 1.0, -2.0
    ortho = DistillCosine()
    ortho.update({"sam": [e0]}, {"sam": [e1]})
    assert ortho.compute() == {"distill/sam/level1/cosine": 0.0, "distill/sam/cosine": 0.0}
    zero = DistillCosine()  # an all-zero student token has cosine 0 (as the loss's eps makes it), never NaN
    zero.update({"sam": [torch.zeros(1, 4, 2, 2)]}, {"sam": [e1[:1, :, :2, :2]]})
    assert zero.compute()["distill/sam/cosine"] == 0.0


def test_two_levels_with_a_grid_resize_by_hand() -> None:
    # level 1: same 2x2 grid; token cosines 24/25, 1, -1, 1/sqrt(2)
    s1 = _map([[3, 4], [1, 0], [0, 2], [1, 1]], 2, 2)
    t1 = _map([[4, 3], [1, 0], [0, -1], [1, 0]], 2, 2)
    # level 2: a 1x1 student map is resized to the target's 2x2 grid ("larger" grid wins, as in the loss):
    # every token is (1, 0); target tokens (1, 0), (0, 1), (1, 1), (-1, 0) -> 1, 0, 1/sqrt(2), -1
    s2 = _map([[1, 0]], 1, 1)
    t2 = _map([[1, 0], [0, 1], [1, 1], [-1, 0]], 2, 2)
    metric = DistillCosine()
    metric.update({"clip": [s1, s2]}, {"clip": [t1, t2]})
    got = metric.compute()
    l1 = (24 / 25 + 1 - 1 + 1 / math.sqrt(2)) / 4
    l2 = (1 + 0 + 1 / math.sqrt(2) - 1) / 4
    assert got["distill/clip/level1/cosine"] == pytest.approx(l1, abs=1e-7)
    assert got["distill/clip/level2/cosine"] == pytest.approx(l2, abs=1e-7)
    assert got["distill/clip/cosine"] == pytest.approx((l1 + l2) / 2, abs=1e-7)
    # the other way round: a 4x4 student map meets the 2x2 target, which is resized bilinearly to the student's grid
    s_big = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    up = DistillCosine()
    up.update({"clip": [s_big]}, {"clip": [t1]})
    t_up = torch.nn.functional.interpolate(t1, size=(4, 4), mode="bilinear", align_corners=False)
    want = torch.nn.functional.cosine_similarity(s_big.double(), t_up.double(), dim=1).mean().item()
    assert up.compute()["distill/clip/level1/cosine"] == pytest.approx(want, abs=1e-9)


def test_targets_are_standardized_with_the_stores_stats_as_the_loss_does() -> None:
    s = _map([[1, 0], [0, 1]], 1, 2)
    t = _map([[3, 5], [1, 9]], 1, 2)  # (t - mean) / std with mean (1, 5), var (4, 16): tokens (1, 0) and (0, 1)
    metric = DistillCosine({"d": [(torch.tensor([1.0, 5.0]), torch.tensor([4.0, 16.0]))]})
    metric.update({"d": [s]}, {"d": [t]})
    assert metric.compute()["distill/d/cosine"] == pytest.approx(1.0, abs=1e-6)
    raw = DistillCosine()
    raw.update({"d": [s]}, {"d": [t]})
    assert raw.compute()["distill/d/cosine"] == pytest.approx((3 / math.sqrt(34) + 9 / math.sqrt(82)) / 2, abs=1e-7)


def test_the_mean_weighs_every_image_once_whatever_the_batches() -> None:
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(5, 8, 3, 4, generator=g), torch.randn(5, 8, 3, 4, generator=g)
    whole, split = DistillCosine(), DistillCosine()
    whole.update({"a": [s]}, {"a": [t]})
    for lo, hi in ((0, 1), (1, 4), (4, 5)):
        split.update({"a": [s[lo:hi]]}, {"a": [t[lo:hi]]})
    per_image = torch.nn.functional.cosine_similarity(s.double(), t.double(), dim=1).mean((1, 2))
    assert whole.compute()["distill/a/cosine"] == pytest.approx(per_image.mean().item(), abs=1e-12)
    assert split.compute()["distill/a/cosine"] == pytest.approx(whole.compute()["distill/a/cosine"], abs=1e-12)


def test_keys_direction_and_delta_m() -> None:
    assert metric_key("dinov2", 2) == "distill/dinov2/level2/cosine" and metric_key("dinov2") == "distill/dinov2/cosine"
    assert split_key("distill/dinov2/level2/cosine") == ("dinov2", 2)
    assert split_key("distill/dinov2/cosine") == ("dinov2", None)
    assert split_key("distill/dinov2") is None and split_key("semseg/mIoU") is None
    assert metric_direction("distill/dinov2/level2/cosine") is True and metric_direction("distill/sam/cosine") is True
    assert metric_direction("distill/dinov2/level1") is None  # a loss part, not a metric
    assert delta_m({"distill/sam/cosine": 0.6, "depth/rmse": 0.5},
                   {"distill/sam/cosine": 0.5, "depth/rmse": 0.4}) == pytest.approx((20.0 - 25.0) / 2)
