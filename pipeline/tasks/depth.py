"""Depth: (H, W) float32 meters, 0 = invalid (NaN/inf/negative become 0).

``.npy`` as stored; 16-bit png in millimeters. Views pad with 0 (invalid, so ignored: official
``PadImage`` 0 then ``AddIgnoreRegions`` 0 -> 255) and divide the values by the view's scale
(official ``RandomScaling``, ``custom_transforms.py:101-102``: an object shown twice as large looks
twice as near). ``sak-v1`` views (older stores) kept the values, and still do.
Loss: L1 over valid pixels (weight 1); metric: RMSE (lower is better); plots: viridis on
[0, the label's maximum].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import PlotStyle, TaskDef
from .decode import metric_depth
from .losses import depth_loss
from .metrics import DepthRMSE

NAME = "depth"


def decode(arr: np.ndarray, path: Path, dataset: str) -> np.ndarray:
    return metric_depth(arr, path, NAME)


def metric(channels: int, dataset: str) -> DepthRMSE:
    return DepthRMSE()


TASK = TaskDef(
    name=NAME,
    channels=1,
    label_kind="map",
    decode=decode,
    layout_dirs={"nyud": ("depth", (".npy", ".png"))},
    pad_value=0.0,
    ignore_value=0.0,
    scale_values=True,
    v1_scale_values=False,
    loss=depth_loss,
    loss_weight=1.0,
    metric=metric,
    higher_is_better={"rmse": False},
    plot=PlotStyle(kind="scalar", cmap="viridis", vmax=None),
)
