"""Recipes reproduce the official configs (research/official_recipe.md section 6.1, official configs/s1/*.yml,
configs/s2/*.yml; the L stage-2 runs are those files with vit_large and *_large teachers)."""

from __future__ import annotations

import pytest

from sak.manifests.errors import ConfigError
from sak.student.runs.recipes import RECIPES, get_recipe
from sak.student.train.losses import default_weights

# (backbone, teachers, levels, img, batch/GPU, GPUs, stage, lr, wd, schedule, warmup, min lr, grad clip, aligner)
OFFICIAL = {
    # configs/s1/BB_s1.yml:1-34, train_s1.py:153-167 (warmup 2 of 30 epochs from 1.25e-7, lr_min 1e-5), 8 GPUs
    "s1-vitb": ("vit_base_patch16_384.augreg_in21k_ft_in1k", ("dinov2", "clip", "sam"), (2, 5, 8, 11), (384, 384),
                16, 8, "distill", 1e-3, 0.01, "cosine", 2 * 10_009, 1e-5, 0.0, "auto"),
    "s1-vitl": ("vit_large_patch16_384.augreg_in21k_ft_in1k", ("dinov2-l", "clip-l", "sam-l"), (5, 11, 17, 23),
                (384, 384), 16, 8, "distill", 1e-3, 0.01, "cosine", 2 * 10_009, 1e-5, 0.0, "auto"),
    "s1-vits": ("vit_small_patch16_384.augreg_in21k_ft_in1k", ("dinov2", "clip", "sam"), (2, 5, 8, 11), (384, 384),
                16, 8, "distill", 1e-3, 0.01, "cosine", 2 * 10_009, 1e-5, 0.0, "linear"),  # BS_s1: aligner True
    "s1-vitb-lt": ("vit_base_patch16_384.augreg_in21k_ft_in1k", ("dinov2-l", "clip-l", "sam-l"), (2, 5, 8, 11),
                   (384, 384), 16, 8, "distill", 1e-3, 0.01, "cosine", 2 * 10_009, 1e-5, 0.0, "linear"),  # LB_s1
    # configs/s2/nyud_s2.yml:1-42, train_utils.py:6-51 (poly 0.9, no warmup), train_s2.py:64-66 (clip 10), 2 GPUs
    "nyud-vitb": ("vit_base_patch16_384.augreg_in21k_ft_in1k", ("dinov2", "clip", "sam"), (2, 5, 8, 11), (448, 576),
                  2, 2, "multitask", 2e-5, 1e-6, "poly", 0, 0.0, 10.0, "auto"),
    "nyud-vitl": ("vit_large_patch16_384.augreg_in21k_ft_in1k", ("dinov2-l", "clip-l", "sam-l"), (5, 11, 17, 23),
                  (448, 576), 2, 2, "multitask", 2e-5, 1e-6, "poly", 0, 0.0, 10.0, "auto"),
    # configs/s2/pascal_s2.yml:1-43
    "pascal-vitb": ("vit_base_patch16_384.augreg_in21k_ft_in1k", ("dinov2", "clip", "sam"), (2, 5, 8, 11), (512, 512),
                    2, 2, "multitask", 2e-5, 1e-6, "poly", 0, 0.0, 10.0, "auto"),
    "pascal-vitl": ("vit_large_patch16_384.augreg_in21k_ft_in1k", ("dinov2-l", "clip-l", "sam-l"), (5, 11, 17, 23),
                    (512, 512), 2, 2, "multitask", 2e-5, 1e-6, "poly", 0, 0.0, 10.0, "auto"),
}
# official losses.py:7-34: NYUD semseg 1, normals 10, edge 50, depth 1; PASCAL semseg 1, parts 2, normals 10, edge 50,
# saliency 5
LOSS_WEIGHTS = {"nyud": {"semseg": 1.0, "normals": 10.0, "edge": 50.0, "depth": 1.0},
                "pascal": {"semseg": 1.0, "parts": 2.0, "normals": 10.0, "edge": 50.0, "saliency": 5.0}}


def test_every_official_config_has_a_recipe() -> None:
    assert set(RECIPES) == set(OFFICIAL)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_recipe_reproduces_the_official_config(name: str) -> None:
    backbone, teachers, levels, img, batch, gpus, stage, lr, wd, schedule, warmup, min_lr, clip, aligner = OFFICIAL[name]
    recipe = get_recipe(name)
    cfg = recipe.config(cache="c").resolved()
    o = cfg.optim
    assert (cfg.model.backbone, cfg.model.backbone_weights, cfg.data.teachers, cfg.model.img_size) == (
        backbone, "hub", teachers, img)
    assert cfg.model.student == {"levels": levels, "aligner": aligner, "adapter_ratio": 0.25,
                                 **({"noisy_gating": True} if stage == "multitask" else {})}
    assert (cfg.loader.batch_size, recipe.gpus, o.stage, o.lr, o.weight_decay, o.schedule, o.warmup, o.min_lr,
            o.grad_clip) == (batch, gpus, stage, lr, wd, schedule, warmup, min_lr, clip)
    assert (o.decay_scope, o.schedule_style, o.alpha, cfg.data.standardize, cfg.runtime.recipe) == (
        "all", "timm", 1.0, False, name)
    assert cfg.runtime.amp == "off"  # official trains in float32 unless --fp16 (train_s1.py:35,170)
    if stage == "distill":  # 30 epochs of ImageNet-1k at 16 x 8 (drop_last), warmup from 1.25e-7
        assert (o.iters, o.warmup_lr, cfg.runtime.seed, cfg.eval.val_split) == (30 * 10_009, 1.25e-7, 42, None)
        assert recipe.loss_weights == {}
    else:
        data = name.split("-")[0]
        assert o.iters == 40_000 and recipe.loss_weights == LOSS_WEIGHTS[data]
        assert default_weights(LOSS_WEIGHTS[data]) == LOSS_WEIGHTS[data]  # what the run's task losses use
        # official eval_freq: NYUD 10 epochs of 795 // 2 // 2 = 198 steps, PASCAL 2 epochs of 4998 // 2 // 2 = 1249
        assert cfg.eval.eval_every == {"nyud": 1980, "pascal": 2498}[data]


def test_unknown_recipe_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"no recipe 'nyud'; the recipes are s1-vitb, .*sak-train recipes"):
        get_recipe("nyud")
