"""Semantic segmentation: (H, W) int64 class indices, 255 = ignore.

NYUD pngs store class c as c + 1 and 0 as "unlabeled" (-> 255): 40 classes. PASCAL-Context
pngs hold the class as stored: 21 classes. Other formats default to 40. Views pad with 255;
loss: pixel-pooled cross-entropy (weight 1); metric: mIoU and pixel accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import IGNORE_INDEX, PlotStyle, TaskDef
from .decode import class_map
from .losses import semseg_loss
from .metrics import MeanIoU

NAME = "semseg"

#: Formats whose semseg png stores class c as c + 1 and 0 as "unlabeled".
SHIFTED_FORMATS = ("nyud",)


def decode(arr: np.ndarray, path: Path, dataset: str) -> np.ndarray:
    return class_map(arr, path, NAME, shifted=dataset in SHIFTED_FORMATS)


def metric(channels: int, dataset: str) -> MeanIoU:
    return MeanIoU(channels)


TASK = TaskDef(
    name=NAME,
    channels=40,
    channels_by_format={"nyud": 40, "pascal": 21},
    label_kind="class",
    decode=decode,
    layout_dirs={"nyud": ("segmentation", (".png",)), "pascal": ("semseg/pascal-context", (".png",))},
    pad_value=IGNORE_INDEX,
    ignore_value=IGNORE_INDEX,
    loss=semseg_loss,
    loss_weight=1.0,
    metric=metric,
    higher_is_better={"mIoU": True, "pixAcc": True},
    plot=PlotStyle(kind="classes", activation="argmax"),
)
