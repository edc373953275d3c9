"""Replaying stored augmentation views on images and labels (thin layer over ``sak.pipeline.augment``).

``params=None`` is the identity view (stores extracted with ``--aug none``): nothing
is resampled. Labels come back channels-first for dense tasks (see ``student.data``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

CLASS_TASKS = ("semseg", "parts")


def parse(view_params: str | None, image_hw: tuple[int, int]) -> Any:
    """The stored view of a commit row, or None for the identity view."""
    if view_params is None:
        return None
    from sak.pipeline.augment import ViewParams

    return ViewParams.from_json(view_params)


def apply_image(img01_chw: torch.Tensor, params: Any) -> torch.Tensor:
    if params is None:
        return img01_chw
    from sak.pipeline.augment import apply_view_image

    return apply_view_image(img01_chw, params)


def label_tensor(task: str, label: np.ndarray) -> torch.Tensor:
    """A loaded label as a tensor: class maps (H, W) int64; normals (3, H, W); others (1, H, W) float32."""
    t = torch.from_numpy(np.ascontiguousarray(label))
    if task in CLASS_TASKS:
        return t.long()
    if t.ndim == 3:  # normals (H, W, 3)
        return t.permute(2, 0, 1).float().contiguous()
    return t[None].float()


def apply_label(label: np.ndarray, params: Any, task: str) -> torch.Tensor:
    if params is None:
        return label_tensor(task, label)
    from sak.pipeline.augment import apply_view_label

    return label_tensor_from_view(task, apply_view_label(label, params, task))


def label_tensor_from_view(task: str, out: Any) -> torch.Tensor:
    return label_tensor(task, out.numpy() if torch.is_tensor(out) else out)
