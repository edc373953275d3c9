"""Task-specific sub-models: keep only the teacher branches a task's routers actually use.

After multi-task training, the MoR gates of a task show how much each teacher's adapter
path contributes. :func:`routing_weights` averages them over a set of images;
:func:`export_submodel` builds a one-task student with the stem, the kept TSAP branches,
that task's routers and head, and no aligners. A dropped branch is removed from the
router's last layer (its clean and noise rows), so the sub-model's gates are the full
model's gates renormalized over the kept experts (softmax of a subset of logits). The
sub-model's output equals the full model's exactly when nothing is dropped and within
the dropped gate mass otherwise.

A task routes over its own experts (``cfg.task_experts(task)``): every teacher, or the teachers it
had before the student was extended with more (``--add-teacher``). Its weights, kept teachers and
router rows are counted over those experts only; a teacher the task never routed over is not part
of its sub-model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any, cast

import torch

from ...manifests.errors import ConfigError
from .router import MoRRouter
from .student import SAKStudent

log = logging.getLogger(__name__)


def _images_of(batch: Any) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict) and "image" in batch:
        return batch["image"]
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise ConfigError(
        f"routing_weights: cannot find images in a batch of type {type(batch).__name__}; "
        "pass (B, 3, H, W) tensors, dicts with an 'image' key, or (image, ...) tuples"
    )


@torch.no_grad()
def routing_weights(
    model: SAKStudent,
    images: torch.Tensor | Iterable[Any],
    task: str,
    *,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Mean gates (levels, E) of ``task`` over all images (eval mode: no gate noise).

    ``images``: one (B, 3, H, W) tensor or an iterable of batches (tensors, dicts with
    ``"image"``, or tuples whose first item is the image batch). Experts are
    ``model.cfg.task_experts(task)`` (stem first).
    """
    if task not in model.cfg.task_names:
        raise ConfigError(f"task {task!r} is not one of the student's tasks {list(model.cfg.task_names)}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    batches = [images] if isinstance(images, torch.Tensor) else images
    was_training = model.training
    model.eval()
    total = torch.zeros(len(model.cfg.levels), len(model.cfg.task_experts(task)), dtype=torch.float64)
    count = 0
    try:
        for batch in batches:
            x = _images_of(batch).to(device)
            gates = model(x, distill=False).gates[task]  # (B, levels, E)
            total += gates.double().sum(0).cpu()
            count += gates.shape[0]
    finally:
        model.train(was_training)
    if count == 0:
        raise ConfigError("routing_weights: no images given")
    return (total / count).float()


def select_teachers(model: SAKStudent, weights: torch.Tensor, threshold: float, *,
                    task: str | None = None) -> tuple[str, ...]:
    """Teachers whose routing weight, averaged over levels, exceeds ``threshold``; ``weights`` are over
    ``task``'s experts (None: over every teacher, which is every task's unless the student was extended)."""
    cfg = model.cfg
    teachers = cfg.task_teachers(task) if task is not None else cfg.teacher_names
    if tuple(weights.shape) != (len(cfg.levels), 1 + len(teachers)):
        raise ConfigError(
            f"routing weights have shape {tuple(weights.shape)}; expected (levels, experts) = "
            f"({len(cfg.levels)}, {1 + len(teachers)}) from routing_weights(model, images, task)"
        )
    mean = weights.float().mean(dim=0)
    return tuple(name for k, name in enumerate(teachers) if float(mean[k + 1]) > threshold)


@torch.no_grad()
def export_submodel(
    model: SAKStudent,
    task: str,
    threshold: float,
    *,
    weights: torch.Tensor | None = None,
    images: torch.Tensor | Iterable[Any] | None = None,
) -> tuple[SAKStudent, tuple[str, ...]]:
    """A one-task student keeping the stem and the teacher branches whose mean gate > ``threshold``.

    Give the routing evidence as ``weights`` (from :func:`routing_weights`) or ``images``.
    Returns ``(submodel, kept_teacher_names)``; the sub-model is in eval mode, has no
    aligners (``aligner="none"``) and is built with ``pretrained=False`` (weights copied).
    """
    cfg = model.cfg
    spec = cfg.task(task)
    if weights is None:
        if images is None:
            raise ConfigError("export_submodel needs routing evidence: pass weights= (routing_weights) or images=")
        weights = routing_weights(model, images, task)
    kept = select_teachers(model, weights, threshold, task=task)
    kept_idx = [cfg.teacher_names.index(n) for n in kept]  # adapter paths to keep
    sub_cfg = replace(
        cfg,
        teachers=tuple(cfg.teachers[k] for k in kept_idx),
        tasks=(replace(spec, teachers=None),),  # the sub-model's one task routes over all its teachers
        aligner="none",
        pretrained=False,
    )
    task_teachers = cfg.task_teachers(task)
    experts = [0] + [task_teachers.index(n) + 1 for n in kept]  # gate rows of the kept experts
    n_experts = 1 + len(task_teachers)
    rows = experts + [n_experts + e for e in experts] if cfg.noisy_gating else experts
    last = len(cast("Sequence[MoRRouter]", model.routers[task])[0].mlp) - 1

    state = {}
    for key, value in model.state_dict().items():
        head, _, rest = key.partition(".")
        if head in ("vit", "stem_norms"):
            state[key] = value
        elif head == "tsap":
            old, _, tail = rest.partition(".")
            if int(old) in kept_idx:
                state[f"tsap.{kept_idx.index(int(old))}.{tail}"] = value
        elif head == "routers" and rest.startswith(f"{task}."):
            parts = key.split(".")  # routers.<task>.<level>.mlp.<i>.<weight|bias>
            if parts[4] == str(last):
                value = value.index_select(0, torch.tensor(rows, device=value.device))
            state[key] = value
        elif head == "heads" and rest.startswith(f"{task}."):
            state[key] = value
    device = next(model.parameters()).device
    sub = SAKStudent(sub_cfg).to(device)
    sub.load_state_dict(state, strict=True)
    dropped = [n for n in task_teachers if n not in kept]
    log.info("sub-model for %s keeps teachers %s, drops %s (threshold %.3g)", task, list(kept), dropped, threshold)
    return sub.eval(), kept


def dropped_gate_mass(weights: torch.Tensor, kept: Sequence[str], teacher_names: Sequence[str]) -> float:
    """Mean total gate of the dropped teachers (the error budget of the export); ``teacher_names``: the task's
    teachers in gate order (``cfg.task_teachers(task)``)."""
    drop = [k + 1 for k, n in enumerate(teacher_names) if n not in kept]
    return float(weights[:, drop].sum(dim=1).mean()) if drop else 0.0
