"""Teacher registry: names and aliases -> :class:`~.info.TeacherInfo`, source prefixes -> builders.

``create_teacher("dinov2")`` -> ``timm:vit_base_patch14_dinov2.lvd142m``;
``create_teacher("open_clip:ViT-B-16@openai")``; ``create_teacher("test:tiny")``.

This module is the mechanism only; :mod:`.builtin` registers the built-in sources and
teachers (imported by the package, so they exist whenever this module is usable). Two
:class:`~sak.manifests.registry.Registry` objects, both open to plugins through entry points:

- :data:`TEACHERS` (group ``sak.teachers``): a :class:`TeacherInfo` per registered name. A
  key equal to ``info.name`` is the teacher itself; any other key is an alias of it (its
  record carries the paper ``role``). A plugin entry point ``mylab-vit =
  "mylab.sak:INFO"`` adds the teacher (or alias) ``mylab-vit``.
- :data:`SOURCES` (group ``sak.teacher_sources``): a :class:`TeacherSource` per prefix, so
  any ``<prefix>:<model>`` name builds and describes, registered or not.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace

from ...manifests.errors import ConfigError, TeacherUnavailable
from ...manifests.registry import Registry
from .base import Teacher
from .info import TeacherInfo
from .source import TeacherRequest, TeacherSource

log = logging.getLogger(__name__)

TEACHERS: Registry[TeacherInfo] = Registry("teacher", entry_point_group="sak.teachers")
SOURCES: Registry[TeacherSource] = Registry("teacher source", entry_point_group="sak.teacher_sources")


def register_source(source: TeacherSource) -> TeacherSource:
    """Make ``<source.prefix>:<model>`` names buildable and describable."""
    return SOURCES.register(source.prefix, source)


def register_teacher(info: TeacherInfo, aliases: Mapping[str, str] | None = None) -> TeacherInfo:
    """Register ``info`` under its full name and under each alias (alias -> its paper role)."""
    aliases = dict(aliases or {})
    for alias in aliases:
        if ":" in alias:
            raise ConfigError(f"alias {alias!r} of {info.name} must not contain ':' (that marks a full <source>:<model> name)")
    TEACHERS.register(info.name, replace(info, role="") if info.role else info)  # the same object again is fine
    for alias, role in aliases.items():
        TEACHERS.register(alias, replace(info, role=role))
    return info


def _registered(name: str) -> TeacherInfo | None:
    if name not in TEACHERS:
        return None
    info = TEACHERS.get(name)
    if not isinstance(info, TeacherInfo):
        raise ConfigError(
            f"teacher {name!r} is registered as a {type(info).__name__}, not a TeacherInfo; "
            "fix the plugin's 'sak.teachers' entry point to name a TeacherInfo"
        )
    return info


def aliases() -> dict[str, str]:
    """Alias -> full name, in registration order (built-ins first)."""
    return {key: info.name for key, info in TEACHERS.items() if key != info.name}


def list_teachers() -> dict[str, TeacherInfo]:
    """Every registered name (full names and aliases) with its metadata, for --help and `sak-cache teachers`."""
    return dict(TEACHERS.items())


def teacher_origin(name: str) -> str:
    """``built-in`` or ``plugin <distribution> (<module:object>)`` for a registered teacher name or alias."""
    return TEACHERS.origin(name)


def source_origin(prefix: str) -> str:
    """``built-in`` or ``plugin <distribution> (<module:object>)`` for a registered source prefix."""
    return SOURCES.origin(prefix)


def list_sources() -> tuple[str, ...]:
    """Registered source prefixes: any ``<prefix>:<model>`` name may be asked for."""
    return SOURCES.names()


def resolve_name(name: str) -> str:
    """Alias -> full ``source:model`` name; full names pass through."""
    info = _registered(name)
    if info is not None:
        return info.name
    if ":" not in name:
        raise TeacherUnavailable(
            f"unknown teacher {name!r}. Use an alias ({', '.join(sorted(aliases()))}), "
            "or a full name like timm:vit_base_patch14_dinov2.lvd142m, open_clip:ViT-B-16@openai or test:tiny."
        )
    return name


def _source(full: str, asked: str) -> tuple[TeacherSource, str]:
    prefix, model = full.split(":", 1)
    if prefix not in SOURCES:
        raise TeacherUnavailable(f"unknown teacher source {prefix!r} in {asked!r}; known sources: {sorted(SOURCES.names())}")
    return SOURCES.get(prefix), model


def teacher_info(name: str) -> TeacherInfo:
    """Metadata of teacher ``name`` without weights: the registered record, else its source's ``describe``."""
    info = _registered(name)
    if info is not None:
        return info
    source, model = _source(resolve_name(name), name)
    return source.describe(model)


def _check_against(info: TeacherInfo, teacher: Teacher, resolution: int | None, student: bool) -> None:
    """Warn when a built teacher contradicts its registered metadata (a wrong record misleads describe and lookups)."""
    want = replace(info, role="")
    got = teacher.info
    if student:  # the student protocol replaces the native preprocessing by design
        want = replace(want, preprocess=got.preprocess)
    elif resolution is not None:
        want = replace(want, preprocess=replace(want.preprocess, resolution=(resolution, resolution)))
    if got != want:
        diffs = [f"{k}: registered {v!r}, built {got.to_dict()[k]!r}" for k, v in want.to_dict().items() if got.to_dict()[k] != v]
        log.warning("teacher %s does not match its registered metadata (%s); fix its TeacherInfo", info.name, "; ".join(diffs))


def create_teacher(
    name: str,
    *,
    weights: str | None = None,
    random_init: bool = False,
    seed: int = 0,
    resolution: int | None = None,
    img_size: tuple[int, int] | None = None,
) -> Teacher:
    """Build a frozen teacher in eval mode on CPU, or fail at once with what to do.

    ``img_size`` (H, W) selects the official "student" protocol: the teacher is built at the student's
    input size and takes the student's own tensor (:func:`~.preprocess.student_preprocess`); without
    it the teacher keeps its native input (``resolution`` overrides that square's side).
    """
    if weights is not None and random_init:
        raise ConfigError("pass either --weights FILE or --random-init, not both")
    if resolution is not None and resolution <= 0:
        raise ConfigError(f"resolution must be a positive number of pixels, got {resolution}")
    if img_size is not None:
        img_size = (int(img_size[0]), int(img_size[1]))
        if min(img_size) <= 0:
            raise ConfigError(f"--img-size must be positive HxW, got {img_size}")
    info = _registered(name)
    full = resolve_name(name)
    source, model = _source(full, name)
    request = TeacherRequest(name=full, weights=weights, random_init=random_init, seed=seed, resolution=resolution,
                             img_size=img_size)
    teacher = source.build(model, request)
    teacher.eval().requires_grad_(False)
    if img_size is not None and teacher.preprocess.frame != img_size:
        raise TeacherUnavailable(
            f"teacher source {source.prefix!r} built {full} with the {teacher.preprocess.protocol} protocol, not for the "
            f"student input {img_size[0]}x{img_size[1]}: extract it with --input-protocol native"
        )
    if info is not None:
        _check_against(info, teacher, resolution, img_size is not None)
    if teacher.weights_id.startswith("random-init"):
        log.warning(
            "teacher %s uses RANDOM-INIT weights (%s): its features are not a foundation model's; "
            "use them for tests and demos only.", teacher.name, teacher.weights_id,
        )
    return teacher
