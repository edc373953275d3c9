"""Saliency: (H, W) float32 in {0, 1} (png values > 127 are salient), 255 = ignore in losses and metrics.

Views and evaluation images pad with 255 (ignored; official ``PadImage``); ``sak-v1``
views (older stores) padded with 0, and still do. Loss: balanced cross-entropy (weight 5; a 1-channel head is the salient
logit); metric: maxF (beta^2 = 0.3).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import IGNORE_INDEX, PlotStyle, TaskDef
from .decode import binary_map
from .losses import saliency_loss
from .metrics import SaliencyMaxF

NAME = "saliency"


def decode(arr: np.ndarray, path: Path, dataset: str) -> np.ndarray:
    return binary_map(arr, path, NAME)


def metric(channels: int, dataset: str) -> SaliencyMaxF:
    return SaliencyMaxF()


TASK = TaskDef(
    name=NAME,
    channels=1,
    label_kind="map",
    decode=decode,
    layout_dirs={"pascal": ("sal_distill", (".png",))},
    pad_value=IGNORE_INDEX,
    ignore_value=IGNORE_INDEX,
    v1_pad_value=0.0,
    loss=saliency_loss,
    loss_weight=5.0,
    metric=metric,
    higher_is_better={"maxF": True},
    plot=PlotStyle(kind="scalar", activation="sigmoid"),
)
