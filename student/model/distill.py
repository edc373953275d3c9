"""How a student's distillation maps are compared with teacher targets: one definition for the loss and the metric.

Training (:mod:`sak.student.train.losses`) and evaluation (:mod:`sak.student.evaluate.distill_metric`) both
go through :func:`aligned_pairs`, so the val metric sees exactly what the loss sees:

1. the target is standardized per channel with the store's stats when the run asks for it
   (:func:`standardize`, ``--standardize``; official: raw block outputs);
2. a store's ``(B, h, w, C)`` layout becomes ``(B, C, h, w)``;
3. the map with fewer grid cells is resized bilinearly to the other's grid (:func:`match_grids`,
   official ``resize="larger"``).

Then the loss takes :func:`cosine` over each image's whole flattened C*H*W map (official
``nn.CosineEmbeddingLoss``), the metric over each token's C channels (:func:`token_cosine`): a
per-token cosine is what "feature similarity" means in distillation papers, and it is not dominated
by a few high-norm tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ...manifests.errors import ConfigError

#: Inside both squared norms of a cosine, as ``nn.CosineEmbeddingLoss``.
COSINE_EPS = 1e-12


def stat_pair(stat: Any) -> tuple[Any, Any]:
    """(mean, var) of a layer's stats: a pair, or an object with ``.mean`` and ``.var``."""
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


def match_grids(s: torch.Tensor, t: torch.Tensor, resize: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and target maps (B, C, h, w) on one grid: ``"larger"`` resizes the one with fewer cells, ``"teacher"``
    always the student's (bilinear, ``align_corners=False``)."""
    # The official code compares heights only (tea H > stu H -> upsample the student, else resize
    # the teacher); we compare grid cells, which agrees whenever both grids have the same aspect.
    if s.shape[-2:] == t.shape[-2:]:
        return s, t
    if resize == "teacher" or (resize == "larger" and t.shape[-2] * t.shape[-1] > s.shape[-2] * s.shape[-1]):
        return F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False), t
    if resize == "larger":
        return s, F.interpolate(t.to(s.dtype), size=s.shape[-2:], mode="bilinear", align_corners=False)
    raise ConfigError(f"resize must be 'larger' or 'teacher', got {resize!r}")


def cosine(s: torch.Tensor, t: torch.Tensor, dim: int) -> torch.Tensor:
    """Cosine similarity along ``dim`` as ``nn.CosineEmbeddingLoss`` computes it (:data:`COSINE_EPS` in both
    squared norms, so an all-zero vector has cosine 0)."""
    return (s * t).sum(dim) / torch.sqrt(((s * s).sum(dim) + COSINE_EPS) * ((t * t).sum(dim) + COSINE_EPS))


def token_cosine(student_bchw: torch.Tensor, teacher_bchw: torch.Tensor) -> torch.Tensor:
    """(B,) per image: the mean over its h*w tokens of the cosine over channels, in float64.

    ``dot / sqrt(max(|s|^2 |t|^2, eps^2))``: equal tokens give exactly 1, a zero token 0 (float64 would see the
    loss's ``+ eps`` inside the norms: 1 - 3e-14 for equal maps).
    """
    s = student_bchw.double().flatten(2)
    t = teacher_bchw.double().flatten(2)
    norms = ((s * s).sum(1) * (t * t).sum(1)).clamp_min(COSINE_EPS**2)
    return ((s * t).sum(1) / torch.sqrt(norms)).mean(1)


def aligned_pairs(
    student_maps: Mapping[str, Sequence[torch.Tensor]],
    teacher_maps: Mapping[str, Sequence[torch.Tensor]],
    stats: Mapping[str, Sequence[Any]] | None = None,
    *,
    teacher_layout: str = "bchw",
    resize: str = "larger",
) -> Iterator[tuple[str, int, torch.Tensor, torch.Tensor]]:
    """``(teacher, level k from 1, student map, target)`` on one grid, both (B, C, h, w), for every teacher of
    ``teacher_maps`` (see the module docstring; arguments as :func:`~sak.student.train.losses.distill_loss_terms`).
    """
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
        for k, (s, t) in enumerate(zip(preds, targets, strict=True)):
            if layer_stats is not None:
                mean, var = stat_pair(layer_stats[k])
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
            s2, t2 = match_grids(s, t.to(s.dtype), resize)
            yield name, k + 1, s2, t2


def target_stats(keys: Sequence[str], stores: Sequence[Any], device: torch.device | str) -> dict | None:
    """Per-level (mean, var) of every store that has stats for all its layers (``--standardize``); None when none has."""
    stats = {}
    for key, store in zip(keys, stores, strict=True):
        st = store.stats()
        if all(st[layer].count > 0 for layer in store.spec.layers):
            stats[key] = [(torch.as_tensor(st[i].mean, dtype=torch.float32, device=device),
                           torch.as_tensor(st[i].var, dtype=torch.float32, device=device))
                          for i in store.spec.layers]
    return stats or None
