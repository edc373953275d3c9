"""Metrics by task name (settings per dataset format) and the golden Delta_m.

The accumulators' golden values are in tests/pipeline/tasks/test_task_metrics.py.
"""

from __future__ import annotations

import pytest

from sak.manifests.errors import ConfigError
from sak.pipeline.tasks.metrics import BoundaryF, MeanIoU
from sak.student.evaluate.evaluator import evaluate_model
from sak.student.evaluate.metrics import delta_m, metric_for_task


def test_edge_metric_tolerance_per_dataset():
    assert isinstance(metric_for_task("edge", "pascal"), BoundaryF)
    assert metric_for_task("edge", "pascal").max_dist == 0.0075
    assert metric_for_task("edge", "nyud").max_dist == 0.011


def test_parts_miou_and_factory():
    assert isinstance(metric_for_task("parts", "pascal"), MeanIoU)
    assert metric_for_task("parts", "pascal").num_classes == 7
    assert metric_for_task("semseg", "pascal").num_classes == 21
    assert metric_for_task("semseg", "nyud").num_classes == 40
    with pytest.raises(ConfigError, match="unknown task 'flow'; known tasks: semseg, depth"):
        metric_for_task("flow")


def test_delta_m_golden():
    # semseg +10 % (55 vs 50, higher better); depth rmse 0.5 vs 0.625 (lower better): -(-20 %) = +20 %
    metrics = {"semseg/mIoU": 55.0, "depth/rmse": 0.5}
    baselines = {"semseg/mIoU": 50.0, "depth/rmse": 0.625}
    assert delta_m(metrics, baselines) == pytest.approx(15.0)
    assert delta_m({"x": 2.0}, {"x": 4.0}, {"x": False}) == pytest.approx(50.0)
    with pytest.raises(ConfigError, match="direction"):
        delta_m({"x": 2.0}, {"x": 4.0})
    with pytest.raises(ConfigError, match="baseline"):
        delta_m({"x": 2.0}, {}, {"x": True})
    # directions come from the tasks' declarations: normals' within_* shares are higher-is-better
    assert delta_m({"normals/within_30": 60.0}, {"normals/within_30": 50.0}) == pytest.approx(20.0)
    assert delta_m({"normals/mean_angle": 20.0}, {"normals/mean_angle": 25.0}) == pytest.approx(20.0)
    with pytest.raises(ConfigError, match="direction"):
        delta_m({"edge/ods_threshold": 0.5}, {"edge/ods_threshold": 0.4})


def test_miou_convention_by_task_official_by_default():
    # official SemsegMeter / HumanPartsMeter average over every class (eval_semseg.py:40-47); "present" is opt-in
    assert metric_for_task("semseg", "nyud").miou == "official"
    assert metric_for_task("parts", "pascal", miou="present").miou == "present"
    assert metric_for_task("depth", "nyud", miou="present") is not None  # no mIoU: the option does not apply
    with pytest.raises(ConfigError, match="miou convention"):
        metric_for_task("semseg", "nyud", miou="all")


def test_evaluate_model_refuses_unknown_precision():
    with pytest.raises(ConfigError, match="off: fp32"):
        evaluate_model(None, None, amp="fp16")  # type: ignore[arg-type]
