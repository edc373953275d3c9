"""Human parts (PASCAL-Context): (H, W) int64 part indices as stored, 255 = ignore; 7 classes.

PASCAL-Part ``human_parts/<id>.mat`` files are read as the official loader does (person class 15,
parts grouped into 6, union over persons, background 0; :func:`~sak.pipeline.tasks.pascal.human_parts`).
Views pad with 255; a view (or evaluation image) whose map holds only background 0 and 255
is all ignored (official ``AddIgnoreRegions``, ``custom_transforms.py:297-301``).
Loss: pixel-pooled cross-entropy (weight 2); metric: mIoU and pixel accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import IGNORE_INDEX, PlotStyle, TaskDef
from .decode import class_map
from .losses import semseg_loss
from .metrics import MeanIoU

NAME = "parts"


def decode(arr: np.ndarray, path: Path, dataset: str) -> np.ndarray:
    return class_map(arr, path, NAME)


def metric(channels: int, dataset: str) -> MeanIoU:
    return MeanIoU(channels)


TASK = TaskDef(
    name=NAME,
    channels=7,
    label_kind="class",
    decode=decode,
    layout_dirs={"pascal": ("human_parts", (".png", ".mat"))},
    pad_value=IGNORE_INDEX,
    ignore_value=IGNORE_INDEX,
    all_ignored_if_only=(0, IGNORE_INDEX),
    loss=semseg_loss,
    loss_weight=2.0,
    metric=metric,
    higher_is_better={"mIoU": True, "pixAcc": True},
    plot=PlotStyle(kind="classes", activation="argmax"),
)
