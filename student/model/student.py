"""The SAK student: Teacher-Agnostic Stem + Teacher-Specific Adapter Paths + MoR routers + heads.

``SAKStudent(cfg)(x_bchw)`` returns a :class:`StudentOutput`:

- ``tasks[name]``: (B, C_task, H, W) raw head outputs (logits / regressions) at the input size;
- ``distill[teacher]``: one (B, C_teacher, gh, gw) map per level at the student's patch
  grid, after the aligner and before any resize to the teacher's grid (the loss resizes);
- ``gates[task]``: (B, levels, E) router weights over the task's experts
  (``cfg.task_experts(task)``: ``("stem", *teachers)`` unless the student was extended with a
  teacher); in noisy training the gates differ per pixel (as official) and this is their mean
  over the pixels.

Frozen parts (``frozen``: module paths, set by :func:`sak.student.train.extend.freeze`) stay in
eval mode whatever ``train()`` asks: their BatchNorm statistics do not move, no gate noise, no
drop-path, so a frozen part computes in training exactly what it computes in evaluation.

The backbone's prefix tokens (CLS / registers) run through the blocks and the adapter
paths (as in the official code) but are dropped from every map: distillation targets,
router inputs and heads only see patch tokens.

Deviations from the official ``models/backbones/sak.py`` (all deliberate):
- the backbone is any timm ViT with ``img_size`` (official: its own copy of timm's
  ViT-S/B/L 16x384); the grid is read from the patch embedding instead of ``img // 16``;
- the blocks after the last feature level are not run (their outputs are unused, so
  every output is unchanged);
- the final norm is replaced by ``nn.Identity`` (official: set to ``None``); same effect;
- aligners ``"auto"`` reproduce the official ``aligner`` switch per teacher width
  (see :class:`~sak.student.model.config.StudentConfig`); ``stem_norm`` is an opt-in extra.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from ...manifests.errors import ConfigError, SakError
from .adapters import TSAPBranch, init_linear_trunc_normal
from .config import StudentConfig
from .heads import TaskHead
from .router import MoRRouter, image_gates, mix

log = logging.getLogger(__name__)


class BackboneUnavailable(SakError):
    """The timm backbone cannot be built or its pretrained weights cannot be fetched."""


@dataclass
class StudentOutput:
    tasks: dict[str, torch.Tensor] = field(default_factory=dict)
    distill: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    gates: dict[str, torch.Tensor] = field(default_factory=dict)


def build_backbone(cfg: StudentConfig) -> Any:
    """``timm.create_model(backbone, pretrained, img_size, num_classes=0)`` with the final norm removed."""
    import timm

    try:
        vit = timm.create_model(
            cfg.backbone,
            pretrained=cfg.pretrained,
            img_size=tuple(cfg.img_size),
            num_classes=0,
            drop_path_rate=cfg.drop_path_rate,
        )
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ConfigError(
                f"unknown timm backbone {cfg.backbone!r}; use a ViT such as vit_base_patch16_384, "
                "vit_large_patch16_384 or vit_small_patch16_224"
            ) from None
        raise BackboneUnavailable(f"could not build backbone {cfg.backbone!r}: {exc}") from exc
    except (OSError, ValueError) as exc:
        hint = " (pretrained weights could not be fetched: check the network / HF cache, or use pretrained=False)"
        raise BackboneUnavailable(f"could not build backbone {cfg.backbone!r}: {exc}{hint if cfg.pretrained else ''}") from exc
    needed = ("patch_embed", "blocks", "_pos_embed", "num_prefix_tokens", "embed_dim")
    missing = [a for a in needed if not hasattr(vit, a)]
    if missing:
        raise ConfigError(
            f"backbone {cfg.backbone!r} is not a plain timm VisionTransformer (missing {missing}); "
            "SAK needs patch tokens after every block: use a vit_* model"
        )
    vit.norm = nn.Identity()  # official: ``self.vit.norm = None``; features are taken pre-norm
    return vit


class SAKStudent(nn.Module):
    """The multi-teacher, multi-task SAK student built from a :class:`StudentConfig`."""

    def __init__(self, cfg: StudentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vit: Any = build_backbone(cfg)  # a timm VisionTransformer; its submodules are typed as Module
        dim = int(self.vit.embed_dim)
        depth = len(self.vit.blocks)
        if cfg.levels[-1] >= depth:
            raise ConfigError(
                f"levels {cfg.levels} reach past backbone {cfg.backbone!r} with {depth} blocks; "
                "use (2, 5, 8, 11) for 12-block ViT-S/B or (5, 11, 17, 23) for 24-block ViT-L"
            )
        patch = tuple(self.vit.patch_embed.patch_size)
        h, w = cfg.img_size
        if h % patch[0] or w % patch[1]:
            raise ConfigError(
                f"img_size {h}x{w} is not a multiple of {cfg.backbone}'s patch size {patch[0]}x{patch[1]}; "
                f"use e.g. {h // patch[0] * patch[0]}x{w // patch[1] * patch[1]}"
            )
        self.dim = dim
        self.grid: tuple[int, int] = (h // patch[0], w // patch[1])
        self.num_prefix_tokens = int(self.vit.num_prefix_tokens)
        n_levels = len(cfg.levels)
        self._level_index = {blk: i for i, blk in enumerate(cfg.levels)}

        self.tsap = nn.ModuleList(TSAPBranch(dim, depth, n_levels, cfg.adapter_ratio) for _ in cfg.teachers)
        self.aligners = nn.ModuleList()
        if cfg.aligner != "none":
            for t in cfg.teachers:
                linear = cfg.aligner == "linear" or t.width != dim
                self.aligners.append(
                    nn.ModuleList(nn.Linear(dim, t.width) if linear else nn.Identity() for _ in cfg.levels)
                )
            self.aligners.apply(init_linear_trunc_normal)
        self.stem_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in cfg.levels) if cfg.stem_norm else None
        # each task's routers mix the stem and its own teachers' branches (every teacher unless extended)
        self._task_branches = {t.name: tuple(cfg.teacher_names.index(n) for n in cfg.task_teachers(t.name))
                               for t in cfg.tasks}
        self.routers = nn.ModuleDict(
            {
                t.name: nn.ModuleList(
                    MoRRouter(dim, 1 + len(self._task_branches[t.name]), noisy_gating=cfg.noisy_gating,
                              noise_eps=cfg.noise_eps, per_pixel=cfg.gate_noise == "pixel")
                    for _ in cfg.levels
                )
                for t in cfg.tasks
            }
        )
        self.heads = nn.ModuleDict(
            {t.name: TaskHead(dim, t.channels, n_levels, self.grid, cfg.img_size, cfg.head_kernel) for t in cfg.tasks}
        )
        self.frozen: tuple[str, ...] = ()  # module paths that stay in eval mode (see the module docstring)

    def train(self, mode: bool = True) -> SAKStudent:
        """As :meth:`nn.Module.train`, but the ``frozen`` parts stay in eval mode."""
        super().train(mode)
        for name in getattr(self, "frozen", ()):  # nn.Module.__init__ may call train() before it is set
            self.get_submodule(name).eval()
        return self

    @property
    def expert_names(self) -> tuple[str, ...]:
        return self.cfg.expert_names

    @property
    def has_distill(self) -> bool:
        return len(self.aligners) > 0

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ConfigError(f"student input must be (B, 3, H, W), got {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != tuple(self.cfg.img_size):
            h, w = self.cfg.img_size
            raise ConfigError(
                f"student input is {x.shape[-2]}x{x.shape[-1]} but the student was built for {h}x{w}; "
                "resize/crop the batch to img_size or build the student with this img_size"
            )

    def forward(self, x_bchw: torch.Tensor, *, distill: bool = True) -> StudentOutput:
        """Run the student; ``distill=False`` skips the aligners (evaluation / export)."""
        self._check_input(x_bchw)
        cfg = self.cfg
        out_size = tuple(x_bchw.shape[-2:])
        b = x_bchw.shape[0]
        gh, gw = self.grid
        p = self.num_prefix_tokens
        want_distill = distill and self.has_distill
        branches = cast("Sequence[TSAPBranch]", self.tsap)  # a ModuleList of TSAPBranch; nn.Module hides that

        x = self.vit.patch_embed(x_bchw)
        x = self.vit._pos_embed(x)
        x = self.vit.patch_drop(x)
        x = self.vit.norm_pre(x)
        res = [branch.start(x) for branch in branches]

        maps: dict[str, list[torch.Tensor]] = {t: [] for t in cfg.teacher_names} if want_distill else {}
        routed: dict[str, list[torch.Tensor]] = {t: [] for t in cfg.task_names}
        gates: dict[str, list[torch.Tensor]] = {t: [] for t in cfg.task_names}
        for i, block in enumerate(self.vit.blocks):
            if i > cfg.levels[-1]:
                break  # nothing after the last level reaches an output
            x = block(x)
            res = [branch.step(i, r, x) for branch, r in zip(branches, res, strict=True)]
            li = self._level_index.get(i)
            if li is None:
                continue
            reps = [branch.represent(li, r[:, p:]) for branch, r in zip(branches, res, strict=True)]
            if want_distill:
                for name, aligners, rep in zip(cfg.teacher_names, self.aligners, reps, strict=True):
                    a = cast(nn.ModuleList, aligners)[li](rep)  # (B, N, C_t)
                    maps[name].append(a.transpose(1, 2).reshape(b, a.shape[-1], gh, gw))
            if cfg.tasks:
                stem = x[:, p:]
                if self.stem_norms is not None:
                    stem = self.stem_norms[li](stem)
                for task in cfg.task_names:
                    experts = [stem, *(reps[k] for k in self._task_branches[task])]
                    g = cast(nn.ModuleList, self.routers[task])[li](stem)  # (B, E), or (B, E, N) when noisy
                    gates[task].append(image_gates(g))
                    routed[task].append(mix(g, experts))

        tasks = {t: self.heads[t](routed[t], out_size) for t in cfg.task_names}
        return StudentOutput(
            tasks=tasks,
            distill=maps,
            gates={t: torch.stack(g, dim=1) for t, g in gates.items()},
        )
