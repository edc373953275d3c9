"""What a dense prediction task is: one frozen :class:`TaskDef` holds every per-task rule.

Label decoding, dataset-layout folders, augmentation (padding, flip, scale), the training loss
and its default weight, the evaluation metric with the direction of each of its keys, and the
plot style all come from one record, so no other module keeps a table of tasks: the label
loader, the augmentation, the student's data, losses, metrics and plots ask the registry
(:mod:`sak.pipeline.tasks.registry`) for the ``TaskDef`` of a name.

Label conventions, shared by every task: a ``"class"`` label is an (H, W) int64 map of class
indices where :data:`IGNORE_INDEX` marks pixels without ground truth; a ``"map"`` label is
(H, W) float32 (one channel) or (H, W, C) float32 as decoded, and (C, H, W) once it is a tensor
in a batch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from ...manifests.errors import ConfigError, DatasetError

#: The label value of a pixel without ground truth in class maps (and in edge/saliency losses and metrics).
IGNORE_INDEX = 255

LABEL_KINDS = ("class", "map")
PLOT_KINDS = ("classes", "vectors", "scalar")
ACTIVATIONS = ("argmax", "l2", "sigmoid", "none")

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

#: ``decode(array, path, dataset_format) -> label``: a file's raw array (png or .npy) in the task's convention.
Decoder = Callable[[np.ndarray, Path, str], np.ndarray]
#: ``loss(pred_bchw, label) -> scalar tensor`` over the valid pixels of a batch.
LossFn = Callable[[Any, Any], Any]
#: ``metric(channels, dataset_format) -> StreamingMetric`` (a fresh accumulator).
MetricFactory = Callable[[int, str], Any]


class UnknownTask(ConfigError, DatasetError):
    """A task name the registry does not know (a config error, and a dataset error where a label names it)."""


@dataclass(frozen=True, kw_only=True)
class PlotStyle:
    """How a label or a head output is drawn.

    - ``kind``: ``"classes"`` (class ids in a fixed palette, ignore black), ``"vectors"``
      ((H, W, 3) in [-1, 1] shown as RGB), ``"scalar"`` (one channel through ``cmap``).
    - ``activation``: how a head output (C, H, W) becomes the drawn map: ``"argmax"`` over
      channels, ``"l2"`` (unit vectors over channels), ``"sigmoid"`` (logit -> probability), ``"none"``.
    - ``cmap``, ``vmin``, ``vmax``: the colour scale of a scalar map; ``vmax=None`` takes the
      label's maximum, shared by the prediction drawn beside it (one scale hides no error).
    """

    kind: str
    activation: str = "none"
    cmap: str = "gray"
    vmin: float = 0.0
    vmax: float | None = 1.0

    def __post_init__(self) -> None:
        if self.kind not in PLOT_KINDS:
            raise ConfigError(f"plot kind must be one of {PLOT_KINDS}, got {self.kind!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"plot activation must be one of {ACTIVATIONS}, got {self.activation!r}")


@dataclass(frozen=True, kw_only=True)
class TaskDef:
    """Everything the pipeline and the student need to know about one task.

    - ``name``: the task's name (manifest column ``label_<name>``, student head, metric prefix).
    - ``channels``: output channels of the student's head; ``channels_by_format`` overrides it
      per dataset format (class counts differ between datasets).
    - ``label_kind``: ``"class"`` or ``"map"`` (see the module docstring); ``label_channels``:
      channels of a decoded map label (1 or C for (H, W, C)).
    - ``decode``: raw file array -> label convention (files are read by ``pipeline.data.labels``).
    - ``layout_dirs``: per dataset format (``nyud``, ``pascal``), the label folder relative to the
      root and the file extensions tried in order.
    - ``pad_value``: written where a view or an evaluation image is padded (official
      ``PadImage`` fills: 255 for class maps, edge and saliency; 0 for depth and normals, which
      mark invalid pixels), and the fill of a sample that lacks the label. ``ignore_value``: the label value losses and metrics skip
      (for map tasks: the value that marks an invalid pixel).
    - ``flip_negate``: label channels whose sign changes under a horizontal flip.
      ``scale_values``: divide label values by the view's scale factor (official: depth; off:
      values kept; labels are always resampled nearest).
    - ``all_ignored_if_only``: when every pixel of a view's label (after padding) is one of these
      values, the whole label becomes ``ignore_value`` (official ``AddIgnoreRegions``: a human
      parts map of only background 0 and 255 teaches nothing).
    - ``v1_pad_value`` / ``v1_scale_values``: the pad value and scale rule that ``sak-v1`` views
      (sak's augmentation before issue 12, in older stores) replay with, where they differ from
      the official ``pad_value`` / ``scale_values``; None: the same.
    - ``loss`` and ``loss_weight``: the training loss and its default weight in the total.
    - ``metric``: factory of the evaluation accumulator; ``higher_is_better``: direction of
      each key the metric reports (keys left out, e.g. thresholds, have no direction).
    - ``plot``: a :class:`PlotStyle`.
    """

    name: str
    channels: int
    channels_by_format: Mapping[str, int] = field(default_factory=dict)
    label_kind: str
    label_channels: int = 1
    decode: Decoder
    layout_dirs: Mapping[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    pad_value: float = 0
    ignore_value: float | None = None
    flip_negate: tuple[int, ...] = ()
    scale_values: bool = False
    all_ignored_if_only: tuple[float, ...] = ()
    v1_pad_value: float | None = None
    v1_scale_values: bool | None = None
    loss: LossFn
    loss_weight: float
    metric: MetricFactory
    higher_is_better: Mapping[str, bool]
    plot: PlotStyle

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError(
                f"task name {self.name!r} must start with a letter and use only letters, digits and '_' "
                "(it names a manifest column and student modules)"
            )
        if self.label_kind not in LABEL_KINDS:
            raise ConfigError(f"task {self.name!r}: label_kind must be one of {LABEL_KINDS}, got {self.label_kind!r}")
        counts = [self.channels, self.label_channels, *self.channels_by_format.values()]
        if any(not isinstance(c, int) or c <= 0 for c in counts):
            raise ConfigError(f"task {self.name!r}: channel counts must be positive integers, got {counts}")
        if any(not 0 <= c < self.label_channels for c in self.flip_negate):
            raise ConfigError(f"task {self.name!r}: flip_negate {self.flip_negate} names channels outside "
                              f"0..{self.label_channels - 1}")
        if self.label_kind == "class" and (self.scale_values or self.v1_scale_values or self.flip_negate):
            raise ConfigError(f"task {self.name!r}: class labels hold indices; scale_values and flip_negate "
                              "apply to map labels only")
        if not self.higher_is_better:
            raise ConfigError(f"task {self.name!r}: give the direction of at least one metric key in higher_is_better")
        for fn in ("decode", "loss", "metric"):
            if not callable(getattr(self, fn)):
                raise ConfigError(f"task {self.name!r}: {fn} must be callable")
        layout = {fmt: (str(folder), tuple(exts)) for fmt, (folder, exts) in self.layout_dirs.items()}
        object.__setattr__(self, "channels_by_format", MappingProxyType(dict(self.channels_by_format)))
        object.__setattr__(self, "layout_dirs", MappingProxyType(layout))
        object.__setattr__(self, "higher_is_better", MappingProxyType(dict(self.higher_is_better)))
        object.__setattr__(self, "flip_negate", tuple(self.flip_negate))
        object.__setattr__(self, "all_ignored_if_only", tuple(self.all_ignored_if_only))

    @property
    def is_class_map(self) -> bool:
        return self.label_kind == "class"

    def channels_for(self, dataset: str | None = None) -> int:
        """Head channels on a dataset format (its own count when the task declares one)."""
        return self.channels_by_format.get(dataset, self.channels) if dataset is not None else self.channels

    def new_metric(self, dataset: str = "nyud") -> Any:
        """A fresh metric accumulator for this task on a dataset format."""
        return self.metric(self.channels_for(dataset), dataset)
