"""SAK losses: feature distillation (cosine + SmoothL1) and the multi-task losses of the paper.

Reductions (all as in the official ``losses.py`` unless noted):

- distillation, per (teacher, level): ``0.9 * mean_b(1 - cos(s_b, t_b)) + 0.1 * SmoothL1(s, t)``,
  cosine over the flattened C*H*W map of each image (``nn.CosineEmbeddingLoss`` formula,
  eps 1e-12 inside the squared norms), SmoothL1 with beta 1 averaged over every element;
  :func:`distill_loss` *sums* the terms over teachers and levels.
- semseg / parts: cross-entropy summed over valid pixels (label != 255), divided by the
  number of valid pixels in the batch (pixel-pooled mean).
- depth: L1 summed over valid pixels / number of valid pixels; valid = finite and > 0.
  (Official: every pixel not marked 255 counts; our labels mark invalid depth with 0.)
- normals: predictions L2-normalized over channels, L1 summed over the 3 channels of valid
  pixels / number of valid pixels; valid = not the zero vector (official: != 255).
- edge: class-balanced BCE on logits, ``-(w y log p + (1-w)(1-y) log(1-p))`` with w = 0.95,
  averaged over pixels != 255 (equal to the official BCE(pos_weight=w/(1-w)) * (1-w)).
- saliency: balanced cross-entropy; class weights from the batch, negatives weighted by the
  positive fraction and positives by the negative fraction, weighted sum / valid pixels.
  A 1-channel head is treated as the logit of the salient class (the official head has 2
  channels; softmax over two logits is the sigmoid of their difference, so the loss is the same).

Missing labels: ``task_losses`` takes a per-sample bool mask per task; masked-out samples
are removed before the loss (never counted as zeros); a task with no sample contributes
an exact 0 that stays connected to the graph (no NaN, DDP-safe).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from ...manifests.errors import ConfigError

IGNORE_INDEX = 255
EDGE_POS_WEIGHT = 0.95

#: Loss weights per dataset, from the paper / official ``NYUD_LOSS_CONFIG``, ``PASCAL_LOSS_CONFIG``.
DATASET_TASK_WEIGHTS: dict[str, dict[str, float]] = {
    "nyud": {"semseg": 1.0, "depth": 1.0, "normals": 10.0, "edge": 50.0},
    "pascal": {"semseg": 1.0, "parts": 2.0, "saliency": 5.0, "normals": 10.0, "edge": 50.0},
}
#: One weight per task (the two datasets agree on every shared task).
TASK_WEIGHTS: dict[str, float] = {**DATASET_TASK_WEIGHTS["nyud"], **DATASET_TASK_WEIGHTS["pascal"]}


# -- distillation -----------------------------------------------------------------------------
def _stat_pair(stat: Any) -> tuple[Any, Any]:
    if hasattr(stat, "mean") and hasattr(stat, "var"):
        return stat.mean, stat.var
    mean, var = stat
    return mean, var


def standardize(
    target: torch.Tensor,
    mean: Any,
    var: Any,
    *,
    layout: str | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Per-channel ``(target - mean) / sqrt(var + eps)`` in float32.

    ``target`` is (B, H, W, C) (the store's layout) or (B, C, H, W); ``layout`` ("bhwc" or
    "bchw") is inferred from which axis has ``len(mean)`` channels and must be given when both do.
    """
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=target.device).flatten()
    var_t = torch.as_tensor(var, dtype=torch.float32, device=target.device).flatten()
    c = mean_t.numel()
    if layout is None:
        last, second = target.shape[-1] == c, target.ndim == 4 and target.shape[1] == c
        if last and second:
            raise ConfigError(
                f"standardize: target {tuple(target.shape)} has {c} channels on two axes; pass layout='bhwc' or 'bchw'"
            )
        if not (last or second):
            raise ConfigError(f"standardize: stats have {c} channels but target is {tuple(target.shape)}; "
                              "use the stats of this teacher layer")
        layout = "bhwc" if last else "bchw"
    inv = torch.rsqrt(var_t + eps)
    x = target.float()
    if layout == "bhwc":
        return (x - mean_t) * inv
    if layout == "bchw":
        return (x - mean_t[:, None, None]) * inv[:, None, None]
    raise ConfigError(f"standardize: layout must be 'bhwc' or 'bchw', got {layout!r}")


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
    eps = 1e-12  # as nn.CosineEmbeddingLoss
    cos = (s * t).sum(1) / torch.sqrt(((s * s).sum(1) + eps) * ((t * t).sum(1) + eps))
    return cos_weight * (1.0 - cos).mean() + l1_weight * F.smooth_l1_loss(s, t, beta=beta)


def _match_grids(s: torch.Tensor, t: torch.Tensor, resize: str) -> tuple[torch.Tensor, torch.Tensor]:
    # The official code compares heights only (tea H > stu H -> upsample the student, else resize
    # the teacher); we compare grid cells, which agrees whenever both grids have the same aspect.
    if s.shape[-2:] == t.shape[-2:]:
        return s, t
    if resize == "teacher" or (resize == "larger" and t.shape[-2] * t.shape[-1] > s.shape[-2] * s.shape[-1]):
        return F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False), t
    if resize == "larger":
        return s, F.interpolate(t.to(s.dtype), size=s.shape[-2:], mode="bilinear", align_corners=False)
    raise ConfigError(f"resize must be 'larger' or 'teacher', got {resize!r}")


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
    Every teacher in ``teacher_maps`` must be in ``student_maps`` with as many levels.
    """
    terms: dict[str, torch.Tensor] = {}
    for name, targets in teacher_maps.items():
        if name not in student_maps:
            raise ConfigError(
                f"teacher {name!r} has targets but the student has no distillation output for it "
                f"(student teachers: {sorted(student_maps)}); build the student with this teacher"
            )
        preds = student_maps[name]
        if len(preds) != len(targets):
            raise ConfigError(
                f"teacher {name!r}: the student gives {len(preds)} levels but {len(targets)} target layers were "
                "given; read the store layers that match the student's levels"
            )
        layer_stats = stats.get(name) if stats else None
        for k, (s, t) in enumerate(zip(preds, targets)):
            if layer_stats is not None:
                mean, var = _stat_pair(layer_stats[k])
                t = standardize(t, mean, var, layout=teacher_layout)
            if teacher_layout == "bhwc":
                t = t.permute(0, 3, 1, 2)
            elif teacher_layout != "bchw":
                raise ConfigError(f"teacher_layout must be 'bchw' or 'bhwc', got {teacher_layout!r}")
            if t.shape[:2] != s.shape[:2]:
                raise ConfigError(
                    f"teacher {name!r} level {k + 1}: target {tuple(t.shape)} (as B,C,H,W) does not match the "
                    f"student map {tuple(s.shape)} in batch or channels; check teacher_layout and the width"
                )
            s2, t2 = _match_grids(s, t.to(s.dtype), resize)
            terms[f"{name}/level{k + 1}"] = cosine_smoothl1(
                s2, t2, cos_weight=cos_weight, l1_weight=l1_weight, beta=beta
            )
    return terms


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
def _as_b1hw(x: torch.Tensor) -> torch.Tensor:
    return x[:, None] if x.ndim == 3 else x


def _as_b3hw(x: torch.Tensor) -> torch.Tensor:
    if x.ndim == 4 and x.shape[1] != 3 and x.shape[-1] == 3:
        return x.permute(0, 3, 1, 2)
    return x


def _class_map(label: torch.Tensor) -> torch.Tensor:
    return (label[:, 0] if label.ndim == 4 else label).long()


def _safe_div(total: torch.Tensor, count: torch.Tensor | int) -> torch.Tensor:
    count = torch.as_tensor(count, device=total.device)
    return total / count.clamp(min=1).to(total.dtype)


def semseg_loss(logits: torch.Tensor, label: torch.Tensor, *, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy over pixels != ``ignore_index``, pixel-pooled over the batch (also parts)."""
    label = _class_map(label)
    ce = F.cross_entropy(logits, label, ignore_index=ignore_index, reduction="sum")
    return _safe_div(ce, (label != ignore_index).sum())


def depth_loss(pred: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """L1 over valid pixels (finite and > 0)."""
    depth = _as_b1hw(depth).to(pred.dtype)
    valid = torch.isfinite(depth) & (depth > 0)
    diff = torch.where(valid, (pred - torch.where(valid, depth, 0.0)).abs(), 0.0)
    return _safe_div(diff.sum(), valid.sum())


def normals_loss(pred: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
    """L1 between unit-normalized predictions and labels, summed over channels, mean over valid pixels."""
    gt = _as_b3hw(normals).to(pred.dtype)
    valid = ((gt != 0).any(dim=1, keepdim=True) & (gt != IGNORE_INDEX).all(dim=1, keepdim=True))
    unit = F.normalize(pred, p=2, dim=1)
    diff = torch.where(valid, (unit - gt).abs(), 0.0)
    return _safe_div(diff.sum(), valid.sum())


def edge_loss(
    logits: torch.Tensor, edge: torch.Tensor, *, pos_weight: float = EDGE_POS_WEIGHT, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Class-balanced BCE: mean over valid pixels of ``-(w y log p + (1-w)(1-y) log(1-p))``."""
    y = _as_b1hw(edge).to(logits.dtype)
    valid = y != ignore_index
    y = torch.where(valid, y, 0.0)
    per_px = -(pos_weight * y * F.logsigmoid(logits) + (1 - pos_weight) * (1 - y) * F.logsigmoid(-logits))
    return _safe_div(torch.where(valid, per_px, 0.0).sum(), valid.sum())


def saliency_loss(logits: torch.Tensor, sal: torch.Tensor, *, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Balanced CE (official ``CELoss(balanced=True)``); 1-channel logits = salient-class logit."""
    y = _class_map(sal)
    valid = y != ignore_index
    pos = (y == 1) & valid
    n_valid = valid.sum()
    frac_neg = _safe_div(((y == 0) & valid).sum().float(), n_valid)  # official ``pos_weight``
    frac_pos = _safe_div(pos.sum().float(), n_valid)
    if logits.shape[1] == 1:
        logp_pos, logp_neg = F.logsigmoid(logits[:, 0]), F.logsigmoid(-logits[:, 0])
    elif logits.shape[1] == 2:
        logp = F.log_softmax(logits, dim=1)
        logp_pos, logp_neg = logp[:, 1], logp[:, 0]
    else:
        raise ConfigError(f"saliency logits must have 1 or 2 channels, got {logits.shape[1]}")
    neg = valid & ~pos
    per_px = torch.where(pos, -frac_neg * logp_pos, 0.0) + torch.where(neg, -frac_pos * logp_neg, 0.0)
    return _safe_div(per_px.sum(), n_valid)


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

TASK_LOSSES: dict[str, LossFn] = {
    "semseg": semseg_loss,
    "parts": semseg_loss,
    "depth": depth_loss,
    "normals": normals_loss,
    "edge": edge_loss,
    "saliency": saliency_loss,
}


def task_losses(
    preds: Mapping[str, torch.Tensor],
    labels: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None = None,
    *,
    weights: Mapping[str, float] | None = None,
    loss_fns: Mapping[str, LossFn] | None = None,
) -> dict[str, torch.Tensor]:
    """Weighted loss per labelled task plus ``"total"`` (their sum).

    ``preds[task]``: (B, C, H, W) head outputs; ``labels[task]``: the batch's labels (see the
    module docstring for shapes); ``masks[task]``: (B,) bool, True where the sample has that
    label (missing key = every sample has it). Tasks without labels are skipped; labels of
    tasks the student does not predict are ignored. ``weights`` default to
    :data:`TASK_WEIGHTS` (pass ``DATASET_TASK_WEIGHTS[...]`` or your own).
    """
    weights = TASK_WEIGHTS if weights is None else weights
    fns = TASK_LOSSES if loss_fns is None else {**TASK_LOSSES, **loss_fns}
    out: dict[str, torch.Tensor] = {}
    for task, label in labels.items():
        if task not in preds:
            continue
        if task not in fns or task not in weights:
            raise ConfigError(
                f"no loss or weight for task {task!r}; known: {sorted(set(fns) & set(weights))}. "
                "Pass loss_fns= and weights= for a new task"
            )
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
        out[task] = float(weights[task]) * fns[task](pred.float(), label.to(pred.device))
    if out:
        out["total"] = torch.stack(list(out.values())).sum()
    else:
        any_pred = next(iter(preds.values()), None)
        out["total"] = any_pred.sum() * 0.0 if any_pred is not None else torch.zeros(())
    return out
