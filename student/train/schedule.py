"""Learning-rate schedules as pure functions of the step.

The trainer sets every parameter group's lr from :func:`lr_at` before each step,
so a schedule has no state of its own: resuming at step k gives the same lr as
never stopping.

- ``cosine``: linear warmup from 0 to ``lr`` over ``warmup`` steps, then cosine
  decay to ``min_lr`` at ``total`` (SAK stage 1, distillation).
- ``poly``: linear warmup, then ``lr * (1 - t)^power`` (SAK stage 2, power 0.9).
- ``constant``: linear warmup, then ``lr``.
"""

from __future__ import annotations

import math

from ...manifests.errors import ConfigError
from ..runs.config import SCHEDULES


def lr_at(
    step: int,
    *,
    lr: float,
    total: int,
    schedule: str = "cosine",
    warmup: int = 0,
    min_lr: float = 0.0,
    power: float = 0.9,
) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total`` steps."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if total <= 0:
        raise ConfigError(f"total steps must be positive, got {total}")
    if step < 0:
        raise ConfigError(f"step must be >= 0, got {step}")
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    if schedule == "cosine":
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * t))
    return min_lr + (lr - min_lr) * (1.0 - t) ** power
