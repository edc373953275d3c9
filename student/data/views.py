"""Replaying stored augmentation views on images and labels (thin layer over ``sak.pipeline.data.augment``).

``params=None`` is the identity view (stores extracted with ``--aug none``): nothing
is resampled. A stored view replays with its own policy's rules: official ``sak`` views
(``SakView``) or the ``sak-v1`` views of stores written before issue 12 (``ViewParams``).
Labels come back channels-first for dense tasks (see ``student.data``).
"""

from __future__ import annotations

import numpy as np
import torch

from ...pipeline.data.augment import View, apply_view_image, apply_view_label, parse_view
from ...pipeline.tasks import get_task


def parse(view_params: str | None) -> View | None:
    """The stored view of a commit row, or None for the identity view."""
    return None if view_params is None else parse_view(view_params)


def apply_image(img01_chw: torch.Tensor, params: View | None) -> torch.Tensor:
    return img01_chw if params is None else apply_view_image(img01_chw, params)


def label_tensor(task: str, label: np.ndarray) -> torch.Tensor:
    """A loaded label as a tensor: class maps (H, W) int64; maps (C, H, W) float32 ((H, W) -> (1, H, W))."""
    t = torch.from_numpy(np.ascontiguousarray(label))
    if get_task(task).is_class_map:
        return t.long()
    if t.ndim == 3:  # (H, W, C), e.g. normals
        return t.permute(2, 0, 1).float().contiguous()
    return t[None].float()


def apply_label(label: np.ndarray, params: View | None, task: str) -> torch.Tensor:
    if params is not None:
        label = apply_view_label(label, params, task).numpy()
    return label_tensor(task, label)
