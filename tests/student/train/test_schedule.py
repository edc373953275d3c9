"""Learning-rate schedules: exact values at hand-computed steps."""

from __future__ import annotations

import math

import pytest

from sak.manifests.errors import ConfigError
from sak.student.train.schedule import lr_at


def test_plain_cosine_warmup_then_decay() -> None:
    """style="plain": sak's schedule before issue 12, kept for the runs recorded with it."""
    kw = dict(lr=1e-3, total=110, schedule="cosine", warmup=10, style="plain")
    assert lr_at(0, **kw) == pytest.approx(1e-4)  # (0 + 1) / 10 of the peak
    assert lr_at(9, **kw) == pytest.approx(1e-3)
    assert lr_at(10, **kw) == pytest.approx(1e-3)  # cosine starts at the peak
    assert lr_at(60, **kw) == pytest.approx(0.5e-3)  # half way: (1 + cos(pi/2)) / 2
    assert lr_at(110, **kw) == pytest.approx(0.0, abs=1e-15)
    assert lr_at(35, **kw) == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * 0.25)))


def test_poly_power() -> None:
    kw = dict(lr=2e-5, total=100, schedule="poly", power=0.9)
    assert lr_at(0, **kw) == pytest.approx(2e-5)
    assert lr_at(50, **kw) == pytest.approx(2e-5 * 0.5**0.9)
    assert lr_at(100, **kw) == 0.0


def test_constant_and_min_lr() -> None:
    assert lr_at(7, lr=0.1, total=10, schedule="constant") == 0.1
    assert lr_at(10, lr=0.1, total=10, schedule="cosine", min_lr=0.01, style="plain") == pytest.approx(0.01)
    assert lr_at(11, lr=0.1, total=10, schedule="cosine", min_lr=0.01) == pytest.approx(0.01)


def test_bad_schedule_is_refused() -> None:
    with pytest.raises(ConfigError, match="schedule must be one of"):
        lr_at(0, lr=1.0, total=10, schedule="step")


# Golden values G3 (research/official_recipe.md): timm CosineLRScheduler as built in the official
# train_s1.py:160-167 (t_initial=(30-2)*N, lr_min=1e-5, warmup_t=2*N, warmup_lr_init=1.25e-7,
# warmup_prefix=True) and stepped after every iteration (train_s1.py:85-86), with N = 10 it/epoch.
STAGE1 = dict(lr=1e-3, total=300, schedule="cosine", warmup=20, min_lr=1e-5, warmup_lr=1.25e-7)
G3_USED_LR = {0: 1.25e-7, 1: 1.25e-7, 2: 5.011875e-05, 10: 4.5006875e-04, 20: 9.5000625e-04, 21: 1.0e-3,
              22: 9.999688431e-04, 160: 5.105537705e-04, 300: 1.003115691e-05, 301: 1e-05}


@pytest.mark.parametrize("step", sorted(G3_USED_LR))
def test_stage1_cosine_matches_the_official_timm_scheduler(step: int) -> None:
    assert lr_at(step, **STAGE1) == pytest.approx(G3_USED_LR[step], rel=1e-8)


def test_stage1_cosine_at_imagenet_scale() -> None:
    # G3: ImageNet-1k at 8 GPUs x 16: 10,009 it/epoch, warmup 20,018, 300,270 in all; lr(t) is used at t + 1
    kw = dict(STAGE1, total=300_270, warmup=20_018)
    assert lr_at(10_010, **kw) == pytest.approx(5.000625e-4, rel=1e-7)
    assert lr_at(20_019, **kw) == pytest.approx(1e-3, rel=1e-12)
    assert lr_at(160_145, **kw) == pytest.approx(5.05e-4, rel=1e-6)


# Golden values G4: the official PolynomialLR (train_utils.py:6-17,44-51), max_iterations 40000,
# gamma 0.9, min_lr 0, stepped every iteration (train_s2.py:110-111): step k uses 2e-5 (1 - k/40000)^0.9.
G4_USED_LR = {0: 2e-5, 1: 1.999955e-05, 100: 1.995499437e-05, 10_000: 1.543779013e-05, 20_000: 1.071773463e-05,
              30_000: 5.743491775e-06, 39_999: 1.442699906e-09, 40_000: 0.0}


@pytest.mark.parametrize("step", sorted(G4_USED_LR))
def test_stage2_poly_matches_the_official_polynomial_lr(step: int) -> None:
    got = lr_at(step, lr=2e-5, total=40_000, schedule="poly", warmup=0, min_lr=0.0)
    assert got == pytest.approx(G4_USED_LR[step], rel=1e-6, abs=1e-15)


def test_stage_defaults_resolve_to_the_official_schedule() -> None:
    from sak.student.runs.config import OptimConfig

    s1 = OptimConfig(stage="distill", iters=300).resolved()
    assert (s1.schedule, s1.schedule_style, s1.warmup, s1.warmup_lr, s1.min_lr) == ("cosine", "timm", 20, 1.25e-7, 1e-5)
    s2 = OptimConfig(stage="multitask", iters=40_000).resolved()
    assert (s2.schedule, s2.warmup, s2.min_lr, s2.grad_clip, s2.decay_scope) == ("poly", 0, 0.0, 10.0, "all")
