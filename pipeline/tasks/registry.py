"""The task registry: built-in tasks plus plugins of the ``sak.tasks`` entry-point group.

A plugin package declares ``[project.entry-points."sak.tasks"] mytask = "mypkg.tasks:TASK"``
(a :class:`TaskDef` whose ``name`` is the entry point's name); inside this package a new task
is one module beside ``semseg.py`` plus one ``register_task`` line below.

Registration order is the order of the ``label_<task>`` columns of a dataset manifest, so the
built-ins are registered in the order of the version-1 manifests: never reorder them, append.
"""

from __future__ import annotations

from ...manifests.errors import ConfigError
from ...manifests.registry import Registry
from . import depth, edge, normals, parts, saliency, semseg
from .base import TaskDef, UnknownTask

TASKS: Registry[TaskDef] = Registry("task", entry_point_group="sak.tasks")


def register_task(task: TaskDef, *, replace: bool = False) -> TaskDef:
    """Add ``task`` under its own name (``replace=True`` to override one on purpose)."""
    if not isinstance(task, TaskDef):
        raise ConfigError(f"register_task expects a TaskDef, got {type(task).__name__}")
    return TASKS.register(task.name, task, replace=replace)


def get_task(name: str) -> TaskDef:
    """The task called ``name``, or :class:`UnknownTask` (a ConfigError) listing the known ones."""
    try:
        task = TASKS.get(name)
    except ConfigError as exc:
        raise UnknownTask(f"{exc}. A new task is a TaskDef registered with sak.pipeline.tasks.register_task "
                          "or the 'sak.tasks' entry-point group.") from None
    if not isinstance(task, TaskDef) or task.name != name:
        raise ConfigError(f"task plugin {name!r} must be a TaskDef named {name!r}, got {task!r}; fix the plugin's "
                          "'sak.tasks' entry point")
    return task


def list_tasks() -> tuple[str, ...]:
    """Names of the registered tasks, in registration (manifest column) order."""
    return TASKS.names()


def all_tasks() -> tuple[TaskDef, ...]:
    """Every registered :class:`TaskDef`, in registration order."""
    return tuple(get_task(name) for name in list_tasks())


#: Direction of the distillation metrics on val (``distill/<teacher>[/level<k>]/<metric>``): True = higher is better.
DISTILL_METRICS: dict[str, bool] = {"cosine": True}


def metric_direction(key: str) -> bool | None:
    """True if a larger value of metric ``key`` is better, False if smaller, None if unknown.

    ``key`` is ``"<task>/<metric>"`` (as evaluation reports it) or a bare metric name. The task's
    own declaration decides; otherwise the metric name is looked up in every task (None when
    no task declares it, or when tasks disagree). Distillation metrics ``"distill/.../<metric>"`` (evaluation
    of the student against teacher targets, not a task; ``"<dataset>/distill/..."`` in a multi-dataset run)
    improve as :data:`DISTILL_METRICS` says.
    """
    head, _, short = key.rpartition("/")
    if key.startswith("distill/") or "/distill/" in key:  # a multi-dataset run: <dataset>/distill/...
        return DISTILL_METRICS.get(short)
    if head in TASKS and short in get_task(head).higher_is_better:
        return get_task(head).higher_is_better[short]
    found = {task.higher_is_better[short] for task in all_tasks() if short in task.higher_is_better}
    return found.pop() if len(found) == 1 else None


register_task(semseg.TASK)
register_task(depth.TASK)
register_task(normals.TASK)
register_task(edge.TASK)
register_task(parts.TASK)
register_task(saliency.TASK)
