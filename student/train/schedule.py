"""Learning-rate schedules as pure functions of the step.

The trainer sets every parameter group's lr from :func:`lr_at` before each step,
so a schedule has no state of its own: resuming at step k gives the same lr as
never stopping.

``style="timm"`` (default) reproduces the official SAK schedulers:

- ``cosine``: timm ``CosineLRScheduler(t_initial=total - warmup, lr_min=min_lr,
  warmup_t=warmup, warmup_lr_init=warmup_lr, warmup_prefix=True)`` stepped after every
  iteration with the iteration count (official ``train_s1.py:85-86,160-167``). Its value
  at t is ``warmup_lr + t (lr - warmup_lr) / warmup`` for t < warmup, then the cosine
  from ``lr`` to ``min_lr`` over ``total - warmup`` steps, then ``min_lr``. Because
  ``scheduler.step(k)`` runs *after* step k, step k trains with the value at ``k - 1``
  (step 0 with ``warmup_lr``, set when the scheduler is built).
- ``poly``: the official ``PolynomialLR`` (``train_utils.py:6-17``), set before step k:
  ``min_lr + (lr - min_lr) (1 - k / total)^0.9``, no lag (after an optional linear
  warmup from ``warmup_lr``).
- ``constant``: ``lr`` (after an optional warmup).

``style="plain"`` is sak's schedule before issue 12 (runs recorded then keep it): warmup
``lr (k + 1) / warmup`` from 0, then the decay at k, without the one-step lag.
"""

from __future__ import annotations

import math
from functools import partial

from ...manifests.errors import ConfigError
from ..runs.config import SCHEDULE_STYLES, SCHEDULES


def _decay(t: float, *, lr: float, min_lr: float, schedule: str, power: float) -> float:
    """The decay part at fraction ``t`` in [0, 1] of the post-warmup span."""
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * t))
    return min_lr + (lr - min_lr) * (1.0 - t) ** power


def lr_at(
    step: int,
    *,
    lr: float,
    total: int,
    schedule: str = "cosine",
    warmup: int = 0,
    min_lr: float = 0.0,
    power: float = 0.9,
    warmup_lr: float = 0.0,
    style: str = "timm",
) -> float:
    """Learning rate used by optimizer step ``step`` (0-based) of ``total`` steps."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if style not in SCHEDULE_STYLES:
        raise ConfigError(f"schedule style must be one of {SCHEDULE_STYLES}, got {style!r}")
    if total <= 0:
        raise ConfigError(f"total steps must be positive, got {total}")
    if step < 0:
        raise ConfigError(f"step must be >= 0, got {step}")
    decay = partial(_decay, lr=lr, min_lr=min_lr, schedule=schedule, power=power)
    span = max(1, total - warmup)
    if style == "plain":
        if warmup > 0 and step < warmup:
            return lr * (step + 1) / warmup
        return decay(min(1.0, (step - warmup) / span))
    t = max(0, step - 1) if schedule == "cosine" else step  # timm's scheduler is stepped after the iteration
    if warmup > 0 and t < warmup:
        return warmup_lr + t * (lr - warmup_lr) / warmup
    if schedule == "cosine" and t - warmup >= span:
        return min_lr  # timm: past the one cycle, lr_min
    return decay(min(1.0, (t - warmup) / span))
