"""Learning-rate schedules: exact values at hand-computed steps."""

from __future__ import annotations

import math

import pytest

from sak.manifests.errors import ConfigError
from sak.student.train.schedule import lr_at


def test_cosine_warmup_then_decay() -> None:
    kw = dict(lr=1e-3, total=110, schedule="cosine", warmup=10)
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
    assert lr_at(10, lr=0.1, total=10, schedule="cosine", min_lr=0.01) == pytest.approx(0.01)


def test_bad_schedule_is_refused() -> None:
    with pytest.raises(ConfigError, match="schedule must be one of"):
        lr_at(0, lr=1.0, total=10, schedule="step")
