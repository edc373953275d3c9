"""Teacher registry with metadata, and adapters (timm, open_clip, the tiny test teacher).

Importing the package registers the built-ins (:mod:`.builtin`); plugins add teachers through
the ``sak.teachers`` (a :class:`TeacherInfo` per name) and ``sak.teacher_sources`` (a
:class:`TeacherSource` per prefix) entry-point groups.
"""

from . import builtin  # noqa: F401  (registers the built-in sources and teachers)
from .base import Teacher
from .info import TeacherInfo, default_layers
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from .registry import (
    SOURCES,
    TEACHERS,
    aliases,
    create_teacher,
    list_sources,
    list_teachers,
    register_source,
    register_teacher,
    resolve_name,
    source_origin,
    teacher_info,
    teacher_origin,
)
from .source import TeacherRequest, TeacherSource

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Preprocess",
    "SOURCES",
    "TEACHERS",
    "Teacher",
    "TeacherInfo",
    "TeacherRequest",
    "TeacherSource",
    "aliases",
    "create_teacher",
    "default_layers",
    "list_sources",
    "list_teachers",
    "register_source",
    "register_teacher",
    "resolve_name",
    "source_origin",
    "teacher_info",
    "teacher_origin",
]
