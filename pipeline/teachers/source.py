"""What a teacher source provides: ``<prefix>:<model>`` names -> a built teacher, or its metadata.

A source (``timm``, ``open_clip``, ``test``, or a plugin's) is two functions: ``build`` makes
the frozen teacher for a :class:`TeacherRequest`; ``describe`` returns its
:class:`~.info.TeacherInfo` without weights (on the ``meta`` device, or from a table), so
parameter accounting and ``sak-cache teachers`` never download anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...manifests.config import Config
from ...manifests.errors import ConfigError
from .base import Teacher
from .info import TeacherInfo


@dataclass(frozen=True, kw_only=True)
class TeacherRequest(Config):
    """What the user asked for; resolved to a concrete :class:`Teacher` by its source factory."""

    name: str  # full name "<source>:<model>", aliases already resolved
    weights: str | None = None  # path to a .safetensors (or torch weights_only) file
    random_init: bool = False
    seed: int = 0
    resolution: int | None = None  # native protocol: override of the teacher's native input size (square)
    img_size: tuple[int, int] | None = None  # student protocol (official): the student's (H, W) input; None: native

    def __post_init__(self) -> None:
        if self.img_size is not None and self.resolution is not None:
            raise ConfigError("--native-size is the native protocol's teacher size; with --img-size (student protocol) leave it out")


TeacherFactory = Callable[[str, TeacherRequest], Teacher]
TeacherDescriber = Callable[[str], TeacherInfo]


@dataclass(frozen=True, kw_only=True)
class TeacherSource:
    """One family of teachers: ``build(model, request)`` and ``describe(model)``, ``model`` being the part after ``prefix:``."""

    prefix: str
    build: TeacherFactory
    describe: TeacherDescriber

    def __post_init__(self) -> None:
        if not self.prefix or ":" in self.prefix:
            raise ConfigError(f"a teacher source prefix is a plain word like 'timm', got {self.prefix!r}")
