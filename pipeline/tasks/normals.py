"""Surface normals: (H, W, 3) float32 unit vectors in [-1, 1], the zero vector = invalid.

png: v / 255 * 2 - 1 with a (0, 0, 0) pixel invalid; ``.npy`` as stored (non-finite -> 0).
A horizontal flip negates the x component (channel 0). Views pad with 0 (the zero vector:
invalid, so ignored, as official ``PadImage`` 0 then ``AddIgnoreRegions`` norm 0 -> 255). Loss: L1 between
unit-normalized predictions and labels (weight 10); metric: mean angle (lower is better) and
the share within 11.25/22.5/30 degrees (higher is better).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import PlotStyle, TaskDef
from .decode import unit_vectors
from .losses import normals_loss
from .metrics import NormalsAngle

NAME = "normals"


def decode(arr: np.ndarray, path: Path, dataset: str) -> np.ndarray:
    return unit_vectors(arr, path, NAME)


def metric(channels: int, dataset: str) -> NormalsAngle:
    return NormalsAngle()


TASK = TaskDef(
    name=NAME,
    channels=3,
    label_kind="map",
    label_channels=3,
    decode=decode,
    layout_dirs={"nyud": ("normals", (".png", ".npy")), "pascal": ("normals_distill", (".png",))},
    pad_value=0.0,
    ignore_value=0.0,
    flip_negate=(0,),
    loss=normals_loss,
    loss_weight=10.0,
    metric=metric,
    higher_is_better={"mean_angle": False, "within_11.25": True, "within_22.5": True, "within_30": True},
    plot=PlotStyle(kind="vectors", activation="l2"),
)
