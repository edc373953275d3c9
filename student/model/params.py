"""Parameter accounting for SAK students, without downloading or allocating weights.

:func:`count_parameters` groups a model's parameters the way the paper reports them
(the official ``cal_params``): backbone (TAS), adapters (TSAP bottlenecks, per
teacher), the TSAP output LayerNorms (``norms``; the official table counts them in
no group), routers (MoR), heads and aligners. :func:`describe_student` builds the
student on the ``meta`` device (no memory, no download), so even ViT-L counts in
well under a second.

Reference points (3 teachers, adapter ratio 1/4): the adapters add
3 * 13 * 295,873 = 11,539,047 parameters to ViT-B/16 (paper: 11.5M) and
3 * 25 * 525,569 = 39,417,675 to ViT-L/16 (paper: 39.4M).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ...manifests.errors import ConfigError, SakError
from ...pipeline.tasks import get_task
from ...pipeline.teachers import list_teachers, teacher_info
from .config import StudentConfig, TaskSpec, TeacherTarget, parse_img_size
from .student import SAKStudent

_GROUPS = ("backbone", "adapters", "norms", "routers", "heads", "aligners")


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts by group; ``total`` is the sum of the groups."""

    backbone: int
    adapters: int
    norms: int
    routers: int
    heads: int
    aligners: int
    adapters_per_teacher: dict[str, int] = field(default_factory=dict)
    config: StudentConfig | None = None

    @property
    def total(self) -> int:
        return self.backbone + self.adapters + self.norms + self.routers + self.heads + self.aligners

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {g: getattr(self, g) for g in _GROUPS}
        d["total"] = self.total
        d["adapters_per_teacher"] = dict(self.adapters_per_teacher)
        if self.config is not None:
            d["config"] = self.config.to_dict()
        return d


def count_parameters(model: nn.Module) -> ParamCounts:
    """Group the parameters of a :class:`~sak.student.model.student.SAKStudent` (works on meta tensors)."""
    counts = dict.fromkeys(_GROUPS, 0)
    cfg: StudentConfig | None = getattr(model, "cfg", None)
    names = cfg.teacher_names if cfg is not None else ()
    per_teacher = {n: 0 for n in names}
    for pname, param in model.named_parameters():
        n = param.numel()
        head = pname.split(".", 1)[0]
        if head == "vit":
            counts["backbone"] += n
        elif head == "tsap":
            m = re.match(r"tsap\.(\d+)\.(adapters|norms)\.", pname)
            if m is None:  # pragma: no cover - structure guard
                raise ConfigError(f"unexpected TSAP parameter {pname}")
            if m.group(2) == "adapters":
                counts["adapters"] += n
                key = names[int(m.group(1))] if names else m.group(1)
                per_teacher[key] = per_teacher.get(key, 0) + n
            else:
                counts["norms"] += n
        elif head in ("routers", "stem_norms"):
            counts["routers"] += n
        elif head == "heads":
            counts["heads"] += n
        elif head == "aligners":
            counts["aligners"] += n
        else:  # pragma: no cover - structure guard
            raise ConfigError(f"parameter {pname} belongs to no known group")
    return ParamCounts(**counts, adapters_per_teacher=per_teacher, config=cfg)


def teacher_width(name: str, overrides: Mapping[str, int] | None = None) -> int:
    """Width of teacher ``name``: ``overrides``, then the teacher registry (no weights, no download)."""
    if overrides and name in overrides:
        return int(overrides[name])
    try:
        return teacher_info(name).width
    except SakError as exc:
        raise ConfigError(
            f"unknown width for teacher {name!r} ({exc}); pass it, e.g. --teacher-widths '{name}=768' "
            f"(registered: {', '.join(sorted(list_teachers()))})"
        ) from None


def parse_tasks(tasks: Sequence[str], dataset: str = "nyud") -> tuple[TaskSpec, ...]:
    """``["semseg", "depth:1"]`` -> TaskSpecs; channels from the task registry (per dataset format) unless given."""
    specs = []
    for item in tasks:
        name, _, ch = item.partition(":")
        if ch:
            try:
                channels = int(ch)
            except ValueError:
                raise ConfigError(f"task {item!r}: channels after ':' must be an integer, e.g. semseg:21") from None
        else:
            channels = get_task(name).channels_for(dataset)
        specs.append(TaskSpec(name=name, channels=channels))
    return tuple(specs)


def describe_student(
    backbone: str,
    teachers: Sequence[str],
    tasks: Sequence[str],
    *,
    img_size: int | str | tuple[int, int] | None = None,
    teacher_widths: Mapping[str, int] | None = None,
    dataset: str = "nyud",
    **config_kwargs: Any,
) -> ParamCounts:
    """Parameter table of a student, built on the meta device with ``pretrained=False``."""
    targets = tuple(TeacherTarget(name=t, width=teacher_width(t, teacher_widths)) for t in teachers)
    cfg = StudentConfig.for_backbone(
        backbone,
        teachers=targets,
        tasks=parse_tasks(tasks, dataset),
        img_size=parse_img_size(img_size) if img_size is not None else None,
        **config_kwargs,
    )
    return count_config(cfg)


def count_config(cfg: StudentConfig) -> ParamCounts:
    """Parameter counts of ``cfg`` (meta device: nothing allocated, nothing downloaded)."""
    with torch.device("meta"):
        model = SAKStudent(replace(cfg, pretrained=False))
    counts = count_parameters(model)
    return replace(counts, config=cfg)
