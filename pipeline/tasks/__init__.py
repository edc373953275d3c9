"""Dense prediction tasks: one :class:`TaskDef` per task, in one registry (see ``registry.py``)."""

from .base import IGNORE_INDEX, PlotStyle, TaskDef, UnknownTask
from .registry import TASKS, all_tasks, get_task, list_tasks, metric_direction, register_task

__all__ = ["IGNORE_INDEX", "PlotStyle", "TASKS", "TaskDef", "UnknownTask", "all_tasks", "get_task", "list_tasks",
           "metric_direction", "register_task"]
