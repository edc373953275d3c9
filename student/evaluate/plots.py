"""Training plots with matplotlib's Agg backend: loss curves and a prediction grid.

``loss_plot(records, path)`` draws every loss part of ``metrics.jsonl`` records
against the step; ``predictions_plot(samples, path)`` draws, per validation image,
the image and each task's label next to the student's prediction. How a task's label or
head output is drawn is its ``plot`` style (:class:`sak.pipeline.tasks.PlotStyle`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...pipeline.tasks import IGNORE_INDEX, get_task


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def loss_plot(records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Loss parts (``record["losses"]``: name -> value) against ``record["step"]``, log y axis."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = sorted({k for r in records for k in r.get("losses", {})})
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name in names:
        pts = [(r["step"], r["losses"][name]) for r in records if name in r.get("losses", {})]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, label=name, linewidth=2 if name == "total" else 1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if records and all(v > 0 for r in records for v in r.get("losses", {}).values()):
        ax.set_yscale("log")
    if names:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _class_colours(n: int = 256) -> np.ndarray:
    rng = np.random.default_rng(0)
    colours = rng.uniform(0.15, 1.0, size=(n, 3))
    colours[IGNORE_INDEX] = 0.0
    return colours


def render_map(task: str, value: np.ndarray, depth_max: float | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """A label or prediction as something ``imshow`` draws: (array, imshow kwargs), by the task's plot style.

    classes: (H, W) class ids (ignore 255 black); vectors: (H, W, 3) in [-1, 1]; scalar: (H, W)
    coloured on [vmin, vmax], where a style without vmax takes ``depth_max`` (pass the label's
    maximum so label and prediction share one scale) or else the map's own valid maximum.
    """
    style = get_task(task).plot
    if style.kind == "classes":
        return _class_colours()[np.clip(value.astype(np.int64), 0, 255)], {}
    if style.kind == "vectors":
        return np.clip((value + 1.0) / 2.0, 0.0, 1.0), {}
    hi = style.vmax
    if hi is None:
        valid = value[value > 0]
        hi = depth_max if depth_max else (float(valid.max()) if valid.size else 1.0)
    return value, {"cmap": style.cmap, "vmin": style.vmin, "vmax": hi}


def display_map(task: str, x_chw: torch.Tensor, *, prediction: bool) -> np.ndarray:
    """A sample's label or head output (C, H, W) as the array :func:`render_map` takes.

    A prediction goes through the task's plot activation first (argmax, unit vectors, sigmoid).
    """
    spec = get_task(task)
    act = spec.plot.activation if prediction else "none"
    if act == "argmax":
        return x_chw.argmax(0).numpy()
    if spec.is_class_map:
        return x_chw.numpy()
    if act == "l2":
        x_chw = torch.nn.functional.normalize(x_chw, dim=0)
    elif act == "sigmoid":
        x_chw = torch.sigmoid(x_chw)
    return x_chw.permute(1, 2, 0).numpy() if spec.label_channels > 1 else x_chw[0].numpy()


def predictions_plot(samples: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """One row per sample: image, then label | prediction per task.

    Each sample: ``{"image": (H, W, 3) float in [0, 1], "labels": {task: array}, "preds": {task: array}}``
    with the conventions of :func:`render_map`.
    """
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tasks = sorted({t for s in samples for t in s["preds"]})
    cols = 1 + 2 * len(tasks)
    rows = max(1, len(samples))
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 1.8 * rows), dpi=100, squeeze=False)
    for r, sample in enumerate(samples):
        axes[r][0].imshow(np.clip(sample["image"], 0.0, 1.0))
        if r == 0:
            axes[r][0].set_title("image", fontsize=8)
        for t, task in enumerate(tasks):
            label = sample["labels"].get(task)
            shared = get_task(task).plot.vmax is None and label is not None and np.max(label) > 0
            vmax = float(np.max(label)) if shared else None
            for k, (kind, source) in enumerate((("label", sample["labels"]), ("pred", sample["preds"]))):
                ax = axes[r][1 + 2 * t + k]
                if task in source:
                    arr, kw = render_map(task, np.asarray(source[task]), vmax)
                    ax.imshow(arr, **kw)
                if r == 0:
                    ax.set_title(f"{task} {kind}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
