"""Teacher registry: source prefixes map to factories, aliases map to full names.

``create_teacher("dinov2")`` -> ``timm:vit_base_patch14_dinov2.lvd142m``;
``create_teacher("open_clip:ViT-B-16@openai")``; ``create_teacher("test:tiny")``.
Sources register themselves with :func:`register_source`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from ...manifests.config import Config
from ...manifests.errors import ConfigError, TeacherUnavailable

from .base import Teacher

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TeacherRequest(Config):
    """What the user asked for; resolved to a concrete :class:`Teacher` by its source factory."""

    name: str  # full name "<source>:<model>", aliases already resolved
    weights: str | None = None  # path to a .safetensors (or torch weights_only) file
    random_init: bool = False
    seed: int = 0
    resolution: int | None = None  # override of the teacher's native input size (square)


TeacherFactory = Callable[[str, TeacherRequest], Teacher]

_SOURCES: dict[str, TeacherFactory] = {}

#: The SAK paper's teachers and the layer indices it distills from.
ALIASES: dict[str, str] = {
    "dinov2": "timm:vit_base_patch14_dinov2.lvd142m",
    "dinov2-l": "timm:vit_large_patch14_dinov2.lvd142m",
    "sam": "timm:samvit_base_patch16.sa1b",
    "sam-l": "timm:samvit_large_patch16.sa1b",
    # OpenAI CLIP was trained with QuickGELU: timm's *_clip_quickgelu_* variants load the same
    # weights with the right activation (the plain *_clip_* ones use GELU). There is no
    # vit_base_patch16_clip_384.openai tag in timm; pass --resolution for a larger input.
    "clip": "timm:vit_base_patch16_clip_quickgelu_224.openai",
    "clip-l": "timm:vit_large_patch14_clip_quickgelu_336.openai",
}


def register_source(prefix: str) -> Callable[[TeacherFactory], TeacherFactory]:
    """Decorator: ``@register_source("timm")`` makes ``timm:<arch>`` names resolvable."""

    def deco(fn: TeacherFactory) -> TeacherFactory:
        _SOURCES[prefix] = fn
        return fn

    return deco


def resolve_name(name: str) -> str:
    """Alias -> full ``source:model`` name; full names pass through."""
    full = ALIASES.get(name, name)
    if ":" not in full:
        raise TeacherUnavailable(
            f"unknown teacher {name!r}. Use an alias ({', '.join(sorted(ALIASES))}), "
            "or a full name like timm:vit_base_patch14_dinov2.lvd142m, open_clip:ViT-B-16@openai or test:tiny."
        )
    return full


def list_teachers() -> dict[str, str]:
    """Aliases and registered sources, for --help and `sak-cache teachers`."""
    _ensure_sources()
    return {**ALIASES, **{f"{p}:<model>": "source" for p in sorted(_SOURCES)}}


def _ensure_sources() -> None:
    # Importing the modules registers their sources; kept lazy so `import sak.pipeline` stays light.
    from . import open_clip_teacher  # noqa: F401
    from . import test_teacher
    from . import timm_teacher


def create_teacher(
    name: str,
    *,
    weights: str | None = None,
    random_init: bool = False,
    seed: int = 0,
    resolution: int | None = None,
) -> Teacher:
    """Build a frozen teacher in eval mode on CPU, or fail at once with what to do."""
    if weights is not None and random_init:
        raise ConfigError("pass either --weights FILE or --random-init, not both")
    if resolution is not None and resolution <= 0:
        raise ConfigError(f"resolution must be a positive number of pixels, got {resolution}")
    _ensure_sources()
    full = resolve_name(name)
    source, model = full.split(":", 1)
    if source not in _SOURCES:
        raise TeacherUnavailable(f"unknown teacher source {source!r} in {name!r}; known sources: {sorted(_SOURCES)}")
    request = TeacherRequest(name=full, weights=weights, random_init=random_init, seed=seed, resolution=resolution)
    teacher = _SOURCES[source](model, request)
    teacher.eval().requires_grad_(False)
    if teacher.weights_id.startswith("random-init"):
        log.warning(
            "teacher %s uses RANDOM-INIT weights (%s): its features are not a foundation model's; "
            "use them for tests and demos only.", teacher.name, teacher.weights_id,
        )
    return teacher
