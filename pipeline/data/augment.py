"""Augmented views that can be replayed bit for bit: SAK's training augmentation as data.

A view records every random choice of one augmented image (stored as canonical JSON in the
commit row's ``view_params``). It is sampled deterministically from (image sha256, view index,
seed) with a hash-seeded numpy Generator (never a global RNG), plus, for the official policy,
the image's semseg label (the crop retry reads it), so extraction and training agree on every
view without talking to each other, and the trainer replays exactly the augmentation whose
teacher features were cached.

Policies (:data:`POLICIES`; ``--aug``):

- ``"sak"``: the official SAK pipeline (``datasets/custom_transforms.py``), a
  :class:`~.augment_sak.SakView` (JSON with ``"policy": "sak"``, version 2). The default.
- ``"sak-v1"``: sak's augmentation before issue 12 (bilinear antialiased scale, top-left
  crop and pad, torchvision photometric, depth kept), a :class:`~.augment_v1.ViewParams`
  (JSON without a policy key). Stores written before issue 12 hold these, and replay them as
  they always did.
- ``"none"``: the identity view.

Evaluation images are not augmented: :func:`pad_eval_image` / :func:`pad_eval_label` are the
official val transform (centre pad to the student input, labels at their stored resolution).
"""

from __future__ import annotations

import json

import numpy as np
import torch

from ...manifests.errors import ConfigError
from .augment_sak import SakView, apply_sak_image, apply_sak_label, pad_eval_image, pad_eval_label, sample_sak_view
from .augment_v1 import ViewParams, apply_image_v1, apply_label_v1, identity_view, sample_view_v1

#: Augmentation policies, the names ``--aug`` takes: official SAK, sak's pre-issue-12 one, none.
POLICIES = ("none", "sak", "sak-v1")
#: Policies whose crop retry reads the image's semseg label (extraction loads it for them).
NEEDS_SEMSEG = ("sak",)

View = ViewParams | SakView

__all__ = [
    "NEEDS_SEMSEG", "POLICIES", "SakView", "View", "ViewParams", "apply_view_image", "apply_view_label",
    "identity_view", "pad_eval_image", "pad_eval_label", "parse_view", "sample_view",
]


def sample_view(
    image_sha256: str,
    view: int,
    image_hw: tuple[int, int],
    *,
    policy: str = "sak",
    seed: int = 0,
    crop_hw: tuple[int, int] | None = None,
    semseg: np.ndarray | None = None,
) -> View:
    """The ``view``-th view of an image under ``policy``; a pure function of its arguments.

    ``crop_hw`` is the view size (H, W); None keeps the image's own size. ``semseg`` (policy
    "sak"): the image's decoded semseg label, for the max-class-ratio crop retry; None skips the
    retry (images without a semseg label, as official). Policy "none" returns the identity view.
    """
    if policy not in POLICIES:
        raise ConfigError(f"augmentation policy must be one of {POLICIES}, got {policy!r}")
    if view < 0:
        raise ConfigError(f"view index must be >= 0, got {view}")
    if policy == "none":
        return identity_view((int(image_hw[0]), int(image_hw[1])), view=view)
    if policy == "sak-v1":
        return sample_view_v1(image_sha256, view, image_hw, seed=seed, crop_hw=crop_hw)
    return sample_sak_view(image_sha256, view, image_hw, seed=seed, crop_hw=crop_hw, semseg=semseg)


def parse_view(text: str) -> View:
    """A stored view: a :class:`SakView` when its JSON names a policy, else a (v1) :class:`ViewParams`."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"stored view is not valid JSON ({exc}): the store is damaged; extract again") from exc
    if isinstance(data, dict) and "policy" in data:
        return SakView.from_dict(data)
    return ViewParams.from_dict(data)


def apply_view_image(img_chw: torch.Tensor | np.ndarray, params: View) -> torch.Tensor:
    """(3, H, W) float image in [0, 1] -> (3, h, w) view, (h, w) = ``params.out_hw``."""
    if isinstance(params, SakView):
        return apply_sak_image(img_chw, params)
    return apply_image_v1(img_chw, params)


def apply_view_label(label: torch.Tensor | np.ndarray, params: View, task: str) -> torch.Tensor:
    """(H, W) or (H, W, C) label -> the same layout at ``params.out_hw``, by the task's rules for the view's policy."""
    if isinstance(params, SakView):
        return apply_sak_label(label, params, task)
    return apply_label_v1(label, params, task)
