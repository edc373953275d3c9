"""The SAK student's configuration: backbone, teachers to distill, tasks to predict.

A :class:`StudentConfig` is the complete record of a student's architecture:
``SAKStudent(cfg)`` rebuilds the same module tree (and so loads the same state
dict) on any machine, and ``StudentConfig.from_dict(cfg.to_dict()) == cfg``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, cast

from ...manifests.config import Config
from ...manifests.errors import ConfigError
from ...manifests.sizes import parse_hw as parse_img_size  # the project's one HxW parser

#: Feature levels (block indices) of the official SAK code, by backbone depth
#: (``out_indices_cfg`` there: small/base 12 blocks, large 24, huge 32, giant 40).
LEVELS_BY_DEPTH: dict[int, tuple[int, ...]] = {
    12: (2, 5, 8, 11),
    24: (5, 11, 17, 23),
    32: (7, 15, 23, 31),
    40: (9, 19, 29, 39),
}

#: Block count of the timm ViT families, read from the model name (no model is built).
_DEPTH_BY_SIZE = {"tiny": 12, "small": 12, "base": 12, "medium": 12, "large": 24, "huge": 32, "giant": 40}

_TASK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

ALIGNER_MODES = ("auto", "linear", "none")
GATE_NOISE = ("pixel", "image")


@dataclass(frozen=True, kw_only=True)
class TeacherTarget(Config):
    """One teacher the student distills: its name (as in the feature store), channel width and grid."""

    name: str
    width: int
    grid: tuple[int, int] | None = None  # the teacher's patch grid (h, w); informational, None if unknown

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("TeacherTarget.name is empty; use the teacher's name, e.g. 'dinov2' or 'test:tiny'")
        if self.width <= 0:
            raise ConfigError(f"teacher {self.name!r}: width must be a positive channel count, got {self.width}")
        if self.grid is not None and (len(self.grid) != 2 or min(self.grid) <= 0):
            raise ConfigError(f"teacher {self.name!r}: grid must be (h, w) with positive sides, got {self.grid}")


@dataclass(frozen=True, kw_only=True)
class TaskSpec(Config):
    """One dense prediction task: its head's name (``semseg``, ``depth``, ...), output channels, kind and router experts.

    ``kind``: the registered task the head predicts (its loss and metrics), when the name is not one:
    a multi-dataset run names a second head of a task after its dataset format (``semseg_pascal``,
    kind ``semseg``). None (configs written before it existed): the name is the kind.

    ``teachers``: the teachers whose adapter paths this task's routers mix besides the stem, in the
    student's teacher order; None (every config written before the field) means every teacher. A student
    extended with a teacher (``sak-train fit --init RUN --add-teacher NAME``) keeps its old tasks on their
    old teachers: their routers keep their shape and weights, so their outputs stay bit-identical.
    """

    name: str
    channels: int
    kind: str | None = None
    teachers: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not _TASK_NAME.match(self.name):
            raise ConfigError(
                f"task name {self.name!r} must start with a letter and use only letters, digits and '_' "
                "(it names modules in the state dict); e.g. 'semseg', 'depth', 'normals', 'edge'"
            )
        if self.channels <= 0:
            raise ConfigError(f"task {self.name!r}: channels must be positive, got {self.channels}")
        if self.kind is not None and not _TASK_NAME.match(self.kind):
            raise ConfigError(f"task {self.name!r}: kind {self.kind!r} must name a registered task, e.g. 'semseg'")
        if self.teachers is not None and len(set(self.teachers)) != len(self.teachers):
            raise ConfigError(f"task {self.name!r}: its router teachers must be unique, got {list(self.teachers)}")


@dataclass(frozen=True, kw_only=True)
class StudentConfig(Config):
    """The SAK student (ICLR 2025) as built by :class:`sak.student.model.student.SAKStudent`.

    - ``backbone``: a timm ViT name (the Teacher-Agnostic Stem, TAS); built with
      ``pretrained``, ``img_size`` and ``num_classes=0``; its final norm is removed.
    - ``levels``: block indices whose outputs feed the distillation and the heads.
    - ``teachers``: one Teacher-Specific Adapter Path (TSAP) per teacher, in this order;
      a task's router experts are ``("stem", *its teachers)``: every teacher unless its
      :class:`TaskSpec` names a subset (:meth:`task_experts`).
    - ``adapter_ratio``: bottleneck width of the adapters as a fraction of the
      embedding dim (official ``down_ratio=4`` -> 0.25).
    - ``aligner``: ``"auto"`` (official behaviour: a Linear(d, C_t) per (level, teacher)
      only when C_t != d, else identity; the official ViT-B/L configs with equal-width
      teachers run with ``aligner: False``), ``"linear"`` (always a Linear) or
      ``"none"`` (no distillation outputs at all; exported sub-models).
    - ``noisy_gating``: the routers emit 2E logits (clean + noise scale) and add
      Gaussian noise in training mode (official default True).
    - ``gate_noise``: ``"pixel"`` (official: one draw per pixel, ``sak.py:90-96``) or
      ``"image"`` (one draw per image: sak before issue 12; configs without the field).
    - ``stem_norm``: a LayerNorm on the stem features per level before routing.
      The official code feeds the raw block output (the backbone's final norm is
      removed), so the default is False; True is an option we offer.
    """

    backbone: str = "vit_small_patch16_224"
    img_size: tuple[int, int] = (224, 224)
    levels: tuple[int, ...] = (2, 5, 8, 11)
    teachers: tuple[TeacherTarget, ...] = ()
    tasks: tuple[TaskSpec, ...] = ()
    adapter_ratio: float = 0.25
    pretrained: bool = False
    aligner: str = "auto"
    noisy_gating: bool = True
    noise_eps: float = 0.01  # floor of the noise std: softplus(raw) + noise_eps (official 1e-2)
    gate_noise: str = "pixel"
    stem_norm: bool = False
    head_kernel: int = 3
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        if len(self.img_size) != 2 or min(self.img_size) <= 0:
            raise ConfigError(f"img_size must be (H, W) with positive sides, got {self.img_size}; e.g. (448, 576)")
        if not self.levels:
            raise ConfigError("levels is empty; use the official levels (2, 5, 8, 11) for ViT-S/B, (5, 11, 17, 23) for ViT-L")
        if any(b <= a for a, b in pairwise(self.levels)) or self.levels[0] < 0:
            raise ConfigError(f"levels must be increasing non-negative block indices, got {self.levels}")
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ConfigError(f"teacher names must be unique, got {names}")
        tasks = [t.name for t in self.tasks]
        if len(set(tasks)) != len(tasks):
            raise ConfigError(f"task names must be unique, got {tasks}")
        for t in self.tasks:
            if t.teachers is not None and [n for n in names if n in t.teachers] != list(t.teachers):
                raise ConfigError(
                    f"task {t.name!r} routes over teachers {list(t.teachers)}, which must be some of the student's "
                    f"teachers {names} in the same order"
                )
        if not 0.0 < self.adapter_ratio <= 1.0:
            raise ConfigError(f"adapter_ratio must be in (0, 1], got {self.adapter_ratio} (official: 0.25)")
        if self.aligner not in ALIGNER_MODES:
            raise ConfigError(f"aligner must be one of {ALIGNER_MODES}, got {self.aligner!r}")
        if self.gate_noise not in GATE_NOISE:
            raise ConfigError(f"gate_noise must be one of {GATE_NOISE}, got {self.gate_noise!r}")
        if self.noise_eps < 0:
            raise ConfigError(f"noise_eps must be >= 0, got {self.noise_eps}")
        if self.head_kernel <= 0 or self.head_kernel % 2 == 0:
            raise ConfigError(f"head_kernel must be a positive odd size, got {self.head_kernel}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ConfigError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    @classmethod
    def from_dict(cls, data: Any) -> StudentConfig:
        """As :meth:`Config.from_dict`; a config written before ``gate_noise`` existed drew it per image."""
        if isinstance(data, dict) and "gate_noise" not in data:
            data = {**data, "gate_noise": "image"}
        return super().from_dict(data)

    # -- derived views -------------------------------------------------------------------
    @property
    def teacher_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.teachers)

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    @property
    def expert_names(self) -> tuple[str, ...]:
        """Every expert in gate order: the stem first, then the teachers (official order); a task's own
        experts are :meth:`task_experts` (the same unless the student was extended with a teacher)."""
        return ("stem", *self.teacher_names)

    @property
    def num_experts(self) -> int:
        return 1 + len(self.teachers)

    def task_teachers(self, task: str) -> tuple[str, ...]:
        """The teachers whose adapter paths ``task``'s routers mix, in the student's teacher order."""
        spec = self.task(task)
        return self.teacher_names if spec.teachers is None else spec.teachers

    def task_experts(self, task: str) -> tuple[str, ...]:
        """``task``'s router experts in gate order: ``("stem", *task_teachers(task))``."""
        return ("stem", *self.task_teachers(task))

    def teacher(self, name: str) -> TeacherTarget:
        for t in self.teachers:
            if t.name == name:
                return t
        raise ConfigError(f"student has no teacher {name!r}; its teachers are {list(self.teacher_names)}")

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise ConfigError(f"student has no task {name!r}; its tasks are {list(self.task_names)}")

    # -- helpers -------------------------------------------------------------------------
    @classmethod
    def for_backbone(
        cls,
        backbone: str,
        *,
        teachers: tuple[TeacherTarget, ...] | list[TeacherTarget] = (),
        tasks: tuple[TaskSpec, ...] | list[TaskSpec] = (),
        img_size: int | tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> StudentConfig:
        """A config with the official levels for ``backbone``'s depth and its native input size.

        ``img_size`` defaults to the size in the name (``vit_base_patch16_384`` -> 384x384).
        """
        if "levels" not in kwargs:
            kwargs["levels"] = default_levels(backbone)
        return cls(
            backbone=backbone,
            img_size=parse_img_size(img_size) if img_size is not None else native_img_size(backbone),
            teachers=tuple(teachers),
            tasks=tuple(tasks),
            **kwargs,
        )


def backbone_depth(backbone: str) -> int:
    """Block count of a timm ViT from its name; builds it on the meta device if the name does not say."""
    size = re.search(r"_(tiny|small|medium|base|large|huge|giant)_", backbone + "_")
    if size:
        return _DEPTH_BY_SIZE[size.group(1)]
    import timm
    import torch

    with torch.device("meta"):
        model = timm.create_model(backbone, pretrained=False, num_classes=0)
    return len(cast(torch.nn.Sequential, model.blocks))  # a timm ViT's blocks; nn.Module types them loosely


def default_levels(backbone: str) -> tuple[int, ...]:
    """The official feature levels for ``backbone`` (four evenly spaced blocks ending at the last)."""
    depth = backbone_depth(backbone)
    if depth in LEVELS_BY_DEPTH:
        return LEVELS_BY_DEPTH[depth]
    step = depth // 4
    return tuple(step * (i + 1) - 1 for i in range(3)) + (depth - 1,)


def native_img_size(backbone: str) -> tuple[int, int]:
    """Input size in a timm name (``..._384`` -> (384, 384)); 224 when the name has none."""
    m = re.search(r"_(\d{3,4})(?:\.|$)", backbone)
    side = int(m.group(1)) if m else 224
    return (side, side)
