"""The task registry: built-in facts (golden), unknown names, validation, plugins, the ignore-value contract."""

from __future__ import annotations

import dataclasses
from importlib.metadata import EntryPoint

import pytest
import torch

from sak.manifests import registry as registry_mod
from sak.manifests.errors import ConfigError, DatasetError
from sak.pipeline.tasks import (
    IGNORE_INDEX,
    TASKS,
    TaskDef,
    UnknownTask,
    all_tasks,
    get_task,
    list_tasks,
    metric_direction,
    register_task,
)
from sak.pipeline.tasks.registry import Registry

BUILTINS = ("semseg", "depth", "normals", "edge", "parts", "saliency")


def test_builtins_in_manifest_column_order():
    assert list_tasks()[: len(BUILTINS)] == BUILTINS
    assert tuple(t.name for t in all_tasks()) == list_tasks()


def test_channel_tables():
    # (moved from tests/pipeline/data/test_labels.py: the tables it checked are the tasks' declarations now)
    assert {t: get_task(t).channels for t in BUILTINS} == {
        "semseg": 40, "depth": 1, "normals": 3, "edge": 1, "parts": 7, "saliency": 1}
    assert dict(get_task("semseg").channels_by_format) == {"nyud": 40, "pascal": 21}
    assert get_task("semseg").channels_for("pascal") == 21
    assert get_task("semseg").channels_for("folder") == 40
    assert get_task("normals").channels_for("pascal") == 3


def test_pad_flip_kind_and_weights_of_the_builtins():
    # official PadImage fills (SAK datasets/custom_transforms.py:212-220): 255 = ignored; depth/normals 0 = invalid
    assert {t: get_task(t).pad_value for t in BUILTINS} == {
        "semseg": 255, "parts": 255, "depth": 0, "normals": 0, "edge": 255, "saliency": 255}
    # sak-v1 views (stores before issue 12) replay with the pads they were written with
    assert {t: get_task(t).v1_pad_value for t in BUILTINS if get_task(t).v1_pad_value is not None} == {
        "edge": 0, "saliency": 0}
    assert [t for t in BUILTINS if get_task(t).is_class_map] == ["semseg", "parts"]
    assert {t: get_task(t).flip_negate for t in BUILTINS if get_task(t).flip_negate} == {"normals": (0,)}
    # official RandomScaling divides depth by the scale (custom_transforms.py:101-102); sak-v1 views kept it
    assert [t for t in BUILTINS if get_task(t).scale_values] == ["depth"]
    assert get_task("depth").v1_scale_values is False
    # official AddIgnoreRegions (custom_transforms.py:297-301): a parts map of only 0/255 is all ignored
    assert {t: get_task(t).all_ignored_if_only for t in BUILTINS if get_task(t).all_ignored_if_only} == {
        "parts": (0, 255)}
    assert {t: get_task(t).loss_weight for t in BUILTINS} == {
        "semseg": 1, "depth": 1, "normals": 10, "edge": 50, "parts": 2, "saliency": 5}
    assert IGNORE_INDEX == 255


def test_unknown_task_is_a_config_error_listing_the_known_ones():
    with pytest.raises(ConfigError, match="unknown task 'albedo'; known tasks: semseg, depth, normals, edge, parts, "
                                          "saliency") as info:
        get_task("albedo")
    assert isinstance(info.value, UnknownTask) and isinstance(info.value, DatasetError)
    assert "register_task" in str(info.value)


def test_metric_directions():
    assert metric_direction("semseg/mIoU") is True and metric_direction("depth/rmse") is False
    assert metric_direction("normals/within_11.25") is True and metric_direction("normals/mean_angle") is False
    assert metric_direction("edge/ods_threshold") is None and metric_direction("x") is None
    assert metric_direction("maxF") is True  # a bare key is looked up in every task
    assert metric_direction("distill/dinov2/level1") is None


def _ignored_label(task: TaskDef, b: int = 2, h: int = 3, w: int = 4) -> torch.Tensor:
    if task.is_class_map:
        return torch.full((b, h, w), int(task.ignore_value), dtype=torch.int64)
    return torch.full((b, task.label_channels, h, w), float(task.ignore_value))


@pytest.mark.parametrize("name", BUILTINS)
def test_a_label_of_only_ignored_pixels_contributes_nothing(name):
    task = get_task(name)
    pred = torch.randn(2, task.channels, 3, 4, generator=torch.Generator().manual_seed(0))
    label = _ignored_label(task)
    assert task.loss(pred, label).item() == 0.0
    metric = task.new_metric("nyud")
    metric.update(pred, label)
    assert all(bool((v == 0).all()) for v in metric.state().values())  # no pixel, prediction or class counted


def test_taskdef_validation_says_what_is_wrong():
    base = get_task("depth")
    with pytest.raises(ConfigError, match="task name 'bad-name'"):
        dataclasses.replace(base, name="bad-name")
    with pytest.raises(ConfigError, match="label_kind"):
        dataclasses.replace(base, label_kind="points")
    with pytest.raises(ConfigError, match="flip_negate"):
        dataclasses.replace(base, flip_negate=(1,))
    with pytest.raises(ConfigError, match="map labels only"):
        dataclasses.replace(get_task("semseg"), scale_values=True)
    with pytest.raises(ConfigError, match="positive integers"):
        dataclasses.replace(base, channels_by_format={"nyud": 0})
    with pytest.raises(ConfigError, match="higher_is_better"):
        dataclasses.replace(base, higher_is_better={})
    with pytest.raises(ConfigError, match="expects a TaskDef"):
        register_task("depth")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="registered twice"):
        register_task(dataclasses.replace(base))
    # the declarations are frozen, their tables too
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.pad_value = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        get_task("semseg").channels_by_format["nyud"] = 3  # type: ignore[index]


def test_entry_point_plugin_task(monkeypatch):
    """A package's 'sak.tasks' entry point registers a TaskDef; a wrongly named one is refused on use."""
    import sys
    import types

    mod = types.ModuleType("sak_plugin_tasks_for_test")
    mod.ALBEDO = dataclasses.replace(get_task("depth"), name="albedo")
    mod.WRONG = dataclasses.replace(get_task("depth"), name="other")
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    eps = [EntryPoint("albedo", f"{mod.__name__}:ALBEDO", "sak.tasks"),
           EntryPoint("wrong", f"{mod.__name__}:WRONG", "sak.tasks")]
    monkeypatch.setattr(registry_mod, "entry_points", lambda group: eps if group == "sak.tasks" else [])
    reg: Registry[TaskDef] = Registry("task", entry_point_group="sak.tasks")
    for t in all_tasks():
        reg.register(t.name, t)
    monkeypatch.setattr(TASKS, "_entries", reg._entries)
    monkeypatch.setattr(TASKS, "_plugins_loaded", False)
    assert get_task("albedo") is mod.ALBEDO
    assert list_tasks()[-2:] == ("albedo", "wrong")
    with pytest.raises(ConfigError, match="must be a TaskDef named 'wrong'"):
        get_task("wrong")
