"""Recipes: the official SAK training configurations as named presets of :class:`TrainConfig` values.

Each recipe reproduces one config file of the official code (GitHub ``innovator-zero/SAK``,
``configs/s1/*.yml``, ``configs/s2/*.yml``; the stage-2 ViT-L runs are the same files with
``vit_large`` and the ``*_large`` teachers). ``sak-train fit --recipe nyud-vitb`` starts from a
recipe's values; every flag given on the command line overrides its value, and the run config
records the recipe's name (``recipe``).

What a recipe cannot hold, it states: ``gpus`` (the official global batch is ``batch_size`` per GPU
x ``gpus``: run under ``torchrun --nproc-per-node <gpus>``), and the task loss weights, which are
the tasks' registered defaults (``sak.pipeline.tasks``) and are checked against the official ones.

Stage 1 (``s1-*``) distills on an ImageNet-style folder at 384x384 for 30 epochs; ``iters`` and
``warmup`` are those 30 and 2 epochs for ImageNet-1k (1,281,167 images) at 16 per GPU x 8 GPUs with
``drop_last`` (10,009 steps per epoch). Stage 2 runs 40,000 steps at 2 per GPU x 2 GPUs; it starts
from the stage-1 run with ``--init`` (train_s2.py:276-285).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ...manifests.config import Config
from ...manifests.errors import ConfigError
from .config import OWNER, TrainConfig

IMAGENET_TRAIN = 1_281_167
S1_STEPS_PER_EPOCH = IMAGENET_TRAIN // (16 * 8)  # DistributedSampler(drop_last) + DataLoader(drop_last): 10,009

B_TEACHERS = ("dinov2", "clip", "sam")  # official order: dinov2_base, timmclip_base, sam_base
L_TEACHERS = ("dinov2-l", "clip-l", "sam-l")
B_LEVELS, L_LEVELS = (2, 5, 8, 11), (5, 11, 17, 23)
VIT_S = "vit_small_patch16_384.augreg_in21k_ft_in1k"
VIT_B = "vit_base_patch16_384.augreg_in21k_ft_in1k"  # the AugReg IN-21k -> 1k 384 weights of vit.py:761
VIT_L = "vit_large_patch16_384.augreg_in21k_ft_in1k"  # vit.py:767

NYUD_LOSS_WEIGHTS = {"semseg": 1.0, "normals": 10.0, "edge": 50.0, "depth": 1.0}
PASCAL_LOSS_WEIGHTS = {"semseg": 1.0, "parts": 2.0, "normals": 10.0, "edge": 50.0, "saliency": 5.0}

#: Values every official run shares: AdamW on all parameters, the official schedules, raw targets, float32
#: (official AMP only with --fp16: train_s1.py:35,170).
COMMON: dict[str, Any] = {"backbone_weights": "hub", "decay_scope": "all", "schedule_style": "timm",
                          "standardize": False, "alpha": 1.0, "amp": "off"}
STAGE1: dict[str, Any] = {
    **COMMON, "stage": "distill", "img_size": (384, 384), "batch_size": 16, "iters": 30 * S1_STEPS_PER_EPOCH,
    "warmup": 2 * S1_STEPS_PER_EPOCH, "lr": 1e-3, "weight_decay": 0.01, "schedule": "cosine", "warmup_lr": 1.25e-7,
    "min_lr": 1e-5, "grad_clip": 0.0, "seed": 42, "val_split": None,
}
STAGE2: dict[str, Any] = {
    **COMMON, "stage": "multitask", "batch_size": 2, "iters": 40_000, "warmup": 0, "lr": 2e-5, "weight_decay": 1e-6,
    "schedule": "poly", "warmup_lr": 0.0, "min_lr": 0.0, "grad_clip": 10.0,
}


@dataclass(frozen=True, kw_only=True)
class Recipe(Config):
    """One official configuration: TrainConfig field values plus what the official run also fixed."""

    name: str
    description: str
    official: str  # the official config file it reproduces
    gpus: int  # official GPUs (global batch = batch_size x gpus)
    fields: dict[str, Any] = field(default_factory=dict)  # flat TrainConfig field -> value
    loss_weights: dict[str, float] = field(default_factory=dict)  # task -> weight (the tasks' registered defaults)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.fields) - set(OWNER))
        if unknown:
            raise ConfigError(f"recipe {self.name!r}: {unknown} are not TrainConfig fields")

    def config(self, **overrides: Any) -> TrainConfig:
        """The TrainConfig of this recipe, ``overrides`` (e.g. ``cache``, ``out``) on top; it records the name."""
        return TrainConfig(**{**self.fields, **overrides, "recipe": self.name})


def _s1(name: str, backbone: str, teachers: tuple[str, ...], levels: tuple[int, ...], aligner: str, official: str,
        what: str) -> Recipe:
    return Recipe(name=name, official=official, gpus=8, description=f"stage 1: {what}, ImageNet folder at 384x384",
                  fields={**STAGE1, "backbone": backbone, "teachers": teachers,
                          "student": {"levels": levels, "aligner": aligner, "adapter_ratio": 0.25}})


def _s2(name: str, backbone: str, teachers: tuple[str, ...], levels: tuple[int, ...], data: str) -> Recipe:
    nyud = data == "nyud"
    return Recipe(
        name=name, official=f"configs/s2/{'nyud' if nyud else 'pascal'}_s2.yml" + ("" if "vitb" in name else
                                                                                 " with vit_large + *_large teachers"),
        gpus=2, loss_weights=NYUD_LOSS_WEIGHTS if nyud else PASCAL_LOSS_WEIGHTS,
        description=f"stage 2: {'NYUD-v2' if nyud else 'PASCAL-Context'} multi-task at "
                    f"{'448x576' if nyud else '512x512'}, --init the stage-1 run",
        fields={**STAGE2, "backbone": backbone, "teachers": teachers, "img_size": (448, 576) if nyud else (512, 512),
                # official eval_freq: NYUD every 10 epochs of 198 steps, PASCAL every 2 of 1,249
                "eval_every": 10 * (795 // 2 // 2) if nyud else 2 * (4998 // 2 // 2),
                "student": {"levels": levels, "aligner": "auto", "adapter_ratio": 0.25, "noisy_gating": True}},
    )


_ALL = (
    _s1("s1-vitb", VIT_B, B_TEACHERS, B_LEVELS, "auto", "configs/s1/BB_s1.yml", "ViT-B student, B teachers"),
    _s1("s1-vitl", VIT_L, L_TEACHERS, L_LEVELS, "auto", "configs/s1/LL_s1.yml", "ViT-L student, L teachers"),
    _s1("s1-vits", VIT_S, B_TEACHERS, B_LEVELS, "linear", "configs/s1/BS_s1.yml", "ViT-S student, B teachers"),
    _s1("s1-vitb-lt", VIT_B, L_TEACHERS, B_LEVELS, "linear", "configs/s1/LB_s1.yml", "ViT-B student, L teachers"),
    _s2("nyud-vitb", VIT_B, B_TEACHERS, B_LEVELS, "nyud"),
    _s2("nyud-vitl", VIT_L, L_TEACHERS, L_LEVELS, "nyud"),
    _s2("pascal-vitb", VIT_B, B_TEACHERS, B_LEVELS, "pascal"),
    _s2("pascal-vitl", VIT_L, L_TEACHERS, L_LEVELS, "pascal"),
)
RECIPES: MappingProxyType[str, Recipe] = MappingProxyType({r.name: r for r in _ALL})


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"no recipe {name!r}; the recipes are {', '.join(RECIPES)} (sak-train recipes lists them)")
    return RECIPES[name]
