"""Teacher registry and adapters (timm, open_clip, the tiny test teacher)."""

from .base import Preprocess, Teacher
from .registry import ALIASES, TeacherRequest, create_teacher, list_teachers, register_source, resolve_name

__all__ = ["ALIASES", "Preprocess", "Teacher", "TeacherRequest", "create_teacher", "list_teachers", "register_source", "resolve_name"]
