"""A new task is one TaskDef registered in one place: every path picks it up, no other table to edit.

The toy task ``slope`` is a horizontal image slope in [-1, 1]: a mirrored image has the opposite
slope (``flip_negate``), an image scaled by s has its slope divided by s (``scale_values``);
7.0 marks pixels without a value (pad and ignore). It is registered by the fixture below only.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sak.manifests.errors import ConfigError
from sak.pipeline.data.augment import apply_view_label, identity_view
from sak.pipeline.data.datasets import index_dataset, manifest_schema, open_dataset, write_dataset_index
from sak.pipeline.data.demo import make_demo_dataset
from sak.pipeline.data.formats import label_dirs
from sak.pipeline.data.labels import load_label
from sak.pipeline.tasks import TASKS, PlotStyle, TaskDef, get_task, list_tasks, metric_direction, register_task
from sak.pipeline.tasks.decode import single_channel
from sak.pipeline.tasks.metrics import StreamingMetric
from sak.student.data.cached import CachedTargets, empty_label, flip_label
from sak.student.data.views import label_tensor
from sak.student.evaluate.metrics import delta_m, metric_for_task
from sak.student.evaluate.plots import display_map, render_map
from sak.student.model.params import parse_tasks
from sak.student.train.losses import task_losses

INVALID = 7.0


def _decode(arr: np.ndarray, path: Path, dataset: str) -> np.ndarray:
    arr = single_channel(arr, path, "slope")
    out = arr.astype(np.float32) / 127.5 - 1.0
    out[arr == 255] = INVALID
    return out


def _loss(pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    valid = label != INVALID
    return (pred - label).abs()[valid].sum() / valid.sum().clamp(min=1)


class SlopeMAE(StreamingMetric):
    _fields = {"err": (), "count": ()}

    def update(self, pred: torch.Tensor, label: torch.Tensor, mask: Any = None) -> None:
        valid = label != INVALID
        self._add("err", (pred - label).abs()[valid].sum())
        self._add("count", valid.sum())

    def compute(self) -> dict[str, float]:
        return {"mae": float(self.err / self.count)}


SLOPE = TaskDef(
    name="slope", channels=1, label_kind="map", decode=_decode, layout_dirs={"nyud": ("slope", (".png",))},
    pad_value=INVALID, ignore_value=INVALID, flip_negate=(0,), scale_values=True, loss=_loss, loss_weight=3.0,
    metric=lambda channels, dataset: SlopeMAE(), higher_is_better={"mae": False},
    plot=PlotStyle(kind="scalar", cmap="coolwarm", vmin=-1.0, vmax=1.0),
)


@pytest.fixture
def slope():
    """The one registration line (and its removal, so other tests see the built-ins only)."""
    register_task(SLOPE)
    yield SLOPE
    del TASKS._entries["slope"]


def test_unregistered_until_registered():
    with pytest.raises(ConfigError, match="unknown task 'slope'"):
        get_task("slope")


def test_label_loader_augmentation_and_tensors(tmp_path, slope):
    path = tmp_path / "s.png"
    Image.fromarray(np.array([[0, 255, 255], [127, 255, 255]], dtype=np.uint8)).save(path)
    raw = np.array([[0, 255, 255], [127, 255, 255]], dtype=np.float32)
    expected = np.where(raw == 255, INVALID, raw / 127.5 - 1.0).astype(np.float32)
    label = load_label("slope", path)
    np.testing.assert_array_equal(label, expected)
    # a 2x scale-up of a 2x3 image into a 5x6 view: 4 rows from the 4x6 scaled image, 1 row padded;
    # flipped: values negated, divided by the scale 2, the padding is the task's 7
    grid = torch.tensor([[-1.0, 0.5, 0.25], [0.0, -0.5, 1.0]])
    view = dataclasses.replace(identity_view((2, 3)), scale=2.0, scaled_hw=(4, 6), crop_box=(0, 0, 5, 6), flip=True)
    out = apply_view_label(grid, view, "slope")
    scaled = grid.repeat_interleave(2, 0).repeat_interleave(2, 1)  # nearest 2x
    assert out.shape == (5, 6) and torch.equal(out[:4], -scaled.flip(1) / 2.0) and out[4].eq(INVALID).all()
    # student-side tensors: (1, H, W) float, empty labels filled with 7, flips negate
    t = label_tensor("slope", label)
    assert t.shape == (1, 2, 3) and t.dtype == torch.float32
    assert empty_label("slope", (2, 2)).eq(INVALID).all() and empty_label("slope", (2, 2)).shape == (1, 2, 2)
    assert torch.equal(flip_label("slope", t), -t.flip(-1))


def test_loss_metric_directions_plot_and_head(slope):
    pred = torch.tensor([[[[0.5, 0.0], [1.0, 0.0]]]])
    label = torch.tensor([[[[0.0, INVALID], [0.0, 1.0]]]])  # errors .5, 1, 1 over 3 valid pixels
    out = task_losses({"slope": pred}, {"slope": label})
    assert out["slope"].item() == pytest.approx(3.0 * 2.5 / 3) and out["total"].item() == out["slope"].item()
    metric = metric_for_task("slope", "nyud")
    metric.update(pred, label)
    assert isinstance(metric, SlopeMAE) and metric.compute()["mae"] == pytest.approx(2.5 / 3)
    assert metric_direction("slope/mae") is False
    assert delta_m({"slope/mae": 0.5}, {"slope/mae": 1.0}) == pytest.approx(50.0)
    arr, kw = render_map("slope", np.zeros((2, 2), np.float32))
    assert kw == {"cmap": "coolwarm", "vmin": -1.0, "vmax": 1.0}
    assert display_map("slope", torch.full((1, 2, 2), 0.25), prediction=True).tolist() == [[0.25, 0.25]] * 2
    assert parse_tasks(["slope", "semseg"], "nyud")[0].channels == 1


def test_indexing_and_training_data_pick_it_up(tmp_path, slope):
    root = make_demo_dataset(tmp_path / "nyud", n=4, size=(16, 20))
    (root / "slope").mkdir()
    ramp = np.tile(np.arange(20, dtype=np.uint8) * 10, (16, 1))
    for sid in ("000000", "000001"):
        Image.fromarray(ramp).save(root / "slope" / f"{sid}.png")
    assert label_dirs("nyud")["slope"] == ("slope", (".png",))
    table = index_dataset(root, workers=1)
    assert table.schema.equals(manifest_schema()) and manifest_schema().names[-3] == "label_slope"
    assert list_tasks()[-1] == "slope"
    labelled = [r["sample_id"] for r in table.to_pylist() if r["label_slope"] is not None]
    assert labelled == ["000000", "000001"]
    write_dataset_index(tmp_path / "cache", "nyud", table, root)
    ds = open_dataset(tmp_path / "cache", "nyud")
    assert ds.tasks == ("semseg", "depth", "normals", "edge", "slope")
    np.testing.assert_allclose(ds.load_label("000000", "slope")[0, :3], [-1.0, 10 / 127.5 - 1, 20 / 127.5 - 1])
    data = CachedTargets(ds, (), "train", (16, 20), tasks=("slope",))
    samples = {data[i]["sample_id"]: data[i] for i in range(len(data))}
    assert samples["000000"]["masks"]["slope"] is True
    assert torch.allclose(samples["000000"]["labels"]["slope"][0], torch.from_numpy(ramp / 127.5 - 1).float())
    assert samples["000002"]["masks"]["slope"] is False and samples["000002"]["labels"]["slope"].eq(INVALID).all()
    assert math.isclose(float(samples["000000"]["labels"]["slope"].max()), 190 / 127.5 - 1, rel_tol=1e-6)
