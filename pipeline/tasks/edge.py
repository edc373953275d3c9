"""Boundaries: (H, W) float32 in {0, 1} (png values > 127 are edges), 255 = ignore in losses and metrics.

PASCAL-Context has no boundary pngs: as in the official loader, the label is derived from the
459-class ``pascal-context/trainval/<id>.mat`` ``LabelMap`` (:func:`~sak.pipeline.tasks.pascal.context_boundaries`).

Views and evaluation images pad with 255 (ignored; official ``PadImage``,
``custom_transforms.py:212-220``); ``sak-v1`` views (older stores) padded with 0 (no edge), and still do.
Loss: class-balanced BCE on logits (weight 50); metric: odsF/oisF with a distance tolerance of 0.011 (NYUD)
or 0.0075 (PASCAL) of the image diagonal (the official SEISM maxDist; the matching itself is not SEISM's,
see :class:`~sak.pipeline.tasks.metrics.BoundaryF`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import IGNORE_INDEX, PlotStyle, TaskDef
from .decode import binary_map
from .losses import edge_loss
from .metrics import BoundaryF
from .pascal import context_boundaries

NAME = "edge"

#: Boundary tolerance (fraction of the image diagonal) per dataset format; others use the NYUD one.
MAX_DIST = {"nyud": 0.011, "pascal": 0.0075}


def decode(arr: np.ndarray, path: Path, dataset: str) -> np.ndarray:
    if path.suffix.lower() == ".mat":  # a context LabelMap (pipeline.data.labels reads .mat files)
        return context_boundaries(arr)
    return binary_map(arr, path, NAME)


def metric(channels: int, dataset: str) -> BoundaryF:
    return BoundaryF(max_dist=MAX_DIST.get(dataset, MAX_DIST["nyud"]))


TASK = TaskDef(
    name=NAME,
    channels=1,
    label_kind="map",
    decode=decode,
    layout_dirs={"nyud": ("edge", (".png",)), "pascal": ("pascal-context/trainval", (".mat",))},
    pad_value=IGNORE_INDEX,
    ignore_value=IGNORE_INDEX,
    v1_pad_value=0.0,
    loss=edge_loss,
    loss_weight=50.0,
    metric=metric,
    higher_is_better={"odsF": True, "oisF": True},
    plot=PlotStyle(kind="scalar", activation="sigmoid"),
)
