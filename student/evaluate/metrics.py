"""Evaluation metrics by task name, and the multi-task gain Delta_m.

The accumulators (mIoU, depth RMSE, normals angle, boundary F, saliency maxF) live in
:mod:`sak.pipeline.tasks.metrics`; which one a task uses, with which settings on which
dataset, and which direction each metric key improves in, is the task's declaration
(:mod:`sak.pipeline.tasks`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch

from ...manifests.errors import ConfigError
from ...pipeline.tasks import get_task, metric_direction
from ...pipeline.tasks.metrics import MeanIoU, check_miou


class TaskMetric(Protocol):
    """What evaluation asks of a task's accumulator (a :class:`~sak.pipeline.tasks.metrics.StreamingMetric`)."""

    def reset(self) -> None: ...

    def update(self, pred: torch.Tensor, label: torch.Tensor, mask: Any = None) -> None: ...

    def compute(self) -> dict[str, float]: ...


def metric_for_task(task: str, dataset: str = "nyud", *, miou: str = "official") -> TaskMetric:
    """A fresh accumulator of the paper's metric for ``task`` on a dataset format ("nyud", "pascal", ...).

    ``miou`` sets the convention of every mIoU accumulator (semseg, parts): ``"official"`` (mean
    over all classes, absent = 0) or ``"present"`` (sak's earlier mean over the classes seen).
    """
    metric = get_task(task).new_metric(dataset)
    if isinstance(metric, MeanIoU):
        metric.miou = check_miou(miou)
    return metric


def delta_m(
    metrics: Mapping[str, float],
    baselines: Mapping[str, float],
    higher_is_better: Mapping[str, bool] | None = None,
) -> float:
    """Multi-task gain (percent): mean over ``metrics`` of ``(-1)^l (M - M_b) / M_b * 100``,
    l = 1 when lower is better. Directions come from ``higher_is_better`` or from the tasks'
    declared metric directions (:func:`sak.pipeline.tasks.metric_direction`).

    ``baselines`` are the single-task models' metrics, given by the user: the official SAK
    repository has neither the Delta_m code nor the single-task numbers, so sak cannot supply
    them. Score the baselines with the same convention (``miou``) and data as ``metrics``.
    """
    if not metrics:
        raise ConfigError("delta_m: no metrics given")
    declared: Mapping[str, bool] = higher_is_better or {}
    gains = []
    for key, value in metrics.items():
        if key not in baselines:
            raise ConfigError(f"delta_m: no baseline for {key!r}; baselines have {sorted(baselines)}")
        base = float(baselines[key])
        if base == 0:
            raise ConfigError(f"delta_m: baseline of {key!r} is 0; relative gain is undefined")
        up = declared[key] if key in declared else metric_direction(key)
        if up is None:
            raise ConfigError(f"delta_m: unknown direction for {key!r}; pass higher_is_better={{{key!r}: True/False}}")
        sign = 1.0 if up else -1.0
        gains.append(sign * (float(value) - base) / base * 100.0)
    return sum(gains) / len(gains)
