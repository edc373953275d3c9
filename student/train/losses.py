"""SAK losses: feature distillation (cosine + SmoothL1) and the weighted sum of the task losses.

Distillation, per (teacher, level), as in the official ``losses.py``:
``0.9 * mean_b(1 - cos(s_b, t_b)) + 0.1 * SmoothL1(s, t)``, cosine over the flattened C*H*W map
of each image (``nn.CosineEmbeddingLoss`` formula, eps 1e-12 inside the squared norms),
SmoothL1 with beta 1 averaged over every element; :func:`distill_loss` *sums* the terms over
teachers and levels. Standardization, grid matching and the cosine are
:mod:`sak.student.model.distill` (shared with the val metric); ``standardize`` stays importable here.

Task losses: each task's loss function and default weight are its declaration in
:mod:`sak.pipeline.tasks` (reductions documented in ``sak.pipeline.tasks.losses``);
:func:`task_losses` weights and sums them. Missing labels: ``task_losses`` takes a per-sample
bool mask per task; masked-out samples are removed before the loss (never counted as zeros);
a task with no sample contributes an exact 0 that stays connected to the graph (no NaN, DDP-safe).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ...manifests.errors import ConfigError
from ...pipeline.tasks import TASKS, get_task, list_tasks
from ..model.distill import aligned_pairs, cosine, match_grids, stat_pair
from ..model.distill import standardize as standardize  # re-exported: its home before the val metric

# -- distillation -----------------------------------------------------------------------------
# standardize, grid matching and the cosine live in sak.student.model.distill (the val metric uses them
# too); the old names stay importable from here.
_stat_pair = stat_pair
_match_grids = match_grids


def cosine_smoothl1(
    student_bchw: torch.Tensor,
    teacher_bchw: torch.Tensor,
    *,
    cos_weight: float = 0.9,
    l1_weight: float = 0.1,
    beta: float = 1.0,
) -> torch.Tensor:
    """``cos_weight * mean_b(1 - cos) + l1_weight * SmoothL1`` for maps of equal shape."""
    # float32 like autocast does for the official CosineEmbeddingLoss / SmoothL1Loss: fp16 sums of
    # squares over a whole C*H*W map overflow.
    s = student_bchw.float().flatten(1)
    t = teacher_bchw.float().flatten(1)
    return cos_weight * (1.0 - cosine(s, t, 1)).mean() + l1_weight * F.smooth_l1_loss(s, t, beta=beta)


def distill_loss_terms(
    student_maps: Mapping[str, Sequence[torch.Tensor]],
    teacher_maps: Mapping[str, Sequence[torch.Tensor]],
    stats: Mapping[str, Sequence[Any]] | None = None,
    *,
    teacher_layout: str = "bchw",
    resize: str = "larger",
    cos_weight: float = 0.9,
    l1_weight: float = 0.1,
    beta: float = 1.0,
) -> dict[str, torch.Tensor]:
    """One loss per (teacher, level), keyed ``"<teacher>/level<k>"`` (k from 1, as the official logs).

    ``student_maps[t][k]``: (B, C_t, h, w) from ``StudentOutput.distill``; ``teacher_maps[t][k]``:
    the targets, (B, C_t, h', w') or (B, h', w', C_t) with ``teacher_layout="bhwc"`` (the store's
    layout); ``stats[t][k]``: (mean, var) or an object with ``.mean``/``.var`` to standardize the
    target per channel first. ``resize="larger"`` (official) resizes whichever map has fewer
    grid cells bilinearly to the other's grid; ``"teacher"`` always resizes the student map.
    Every teacher in ``teacher_maps`` must be in ``student_maps`` with as many levels
    (:func:`~sak.student.model.distill.aligned_pairs`, shared with the val metric).
    """
    return {
        f"{name}/level{level}": cosine_smoothl1(s, t, cos_weight=cos_weight, l1_weight=l1_weight, beta=beta)
        for name, level, s, t in aligned_pairs(student_maps, teacher_maps, stats, teacher_layout=teacher_layout,
                                               resize=resize)
    }


def distill_loss(
    student_maps: Mapping[str, Sequence[torch.Tensor]],
    teacher_maps: Mapping[str, Sequence[torch.Tensor]],
    stats: Mapping[str, Sequence[Any]] | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Sum over teachers and levels of :func:`distill_loss_terms` (the official ``total``)."""
    terms = distill_loss_terms(student_maps, teacher_maps, stats, **kwargs)
    if not terms:
        raise ConfigError("distill_loss: no teacher targets given")
    return torch.stack(list(terms.values())).sum()


# -- task losses --------------------------------------------------------------------------------
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def default_weights(tasks: Iterable[str]) -> dict[str, float]:
    """Each task's default loss weight (the paper's: NYUD 1/1/10/50, PASCAL parts 2, saliency 5)."""
    return {t: get_task(t).loss_weight for t in tasks}


def _loss_and_weight(
    task: str, weights: Mapping[str, float] | None, loss_fns: Mapping[str, LossFn] | None
) -> tuple[LossFn, float]:
    spec = get_task(task) if task in TASKS else None
    fn = loss_fns[task] if loss_fns and task in loss_fns else (spec.loss if spec else None)
    weight = (spec.loss_weight if spec else None) if weights is None else weights.get(task)
    if fn is None or weight is None:
        raise ConfigError(
            f"no loss or weight for task {task!r}; registered tasks: {', '.join(list_tasks())}. "
            "Register it (sak.pipeline.tasks.register_task) or pass loss_fns= and weights= for it"
        )
    return fn, float(weight)


def task_losses(
    preds: Mapping[str, torch.Tensor],
    labels: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None = None,
    *,
    weights: Mapping[str, float] | None = None,
    loss_fns: Mapping[str, LossFn] | None = None,
) -> dict[str, torch.Tensor]:
    """Weighted loss per labelled task plus ``"total"`` (their sum).

    ``preds[task]``: (B, C, H, W) head outputs; ``labels[task]``: the batch's labels (conventions in
    ``sak.pipeline.tasks.base``); ``masks[task]``: (B,) bool, True where the sample has that
    label (missing key = every sample has it). Tasks without labels are skipped; labels of
    tasks the student does not predict are ignored. ``weights`` default to each task's
    registered ``loss_weight`` (:func:`default_weights`); ``loss_fns`` override registered losses.
    """
    out: dict[str, torch.Tensor] = {}
    for task, label in labels.items():
        if task not in preds:
            continue
        fn, weight = _loss_and_weight(task, weights, loss_fns)
        pred = preds[task]
        mask = masks.get(task) if masks else None
        if mask is not None:
            mask = torch.as_tensor(mask, dtype=torch.bool, device=pred.device).flatten()
            if mask.numel() != pred.shape[0]:
                raise ConfigError(f"mask for task {task!r} has {mask.numel()} entries for a batch of {pred.shape[0]}")
            if not bool(mask.any()):
                out[task] = pred.sum() * 0.0  # no sample has this label: exact 0, graph kept
                continue
            if not bool(mask.all()):
                pred, label = pred[mask], label[mask.to(label.device)]
        # losses in float32 (autocast runs the official losses in float32; fp16 pixel sums overflow)
        out[task] = weight * fn(pred.float(), label.to(pred.device))
    if out:
        out["total"] = torch.stack(list(out.values())).sum()
    else:
        any_pred = next(iter(preds.values()), None)
        out["total"] = any_pred.sum() * 0.0 if any_pred is not None else torch.zeros(())
    return out
