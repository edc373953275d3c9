"""Errors that say what went wrong and how to fix it.

Every error the library raises on purpose is a :class:`SakError`. The CLI catches
``SakError`` and prints its message (no traceback); anything else is a bug.
"""

from __future__ import annotations


class SakError(Exception):
    """Base class: the message must tell the user what to do next."""


class SchemaMismatch(SakError):
    """A Parquet file does not have the columns or types this version expects."""


class NewerFormat(SchemaMismatch):
    """A file carries columns or fields this version does not know: most likely a newer sak wrote it. Never
    "repair" such a file: upgrade sak to read it."""


class SpecMismatch(SakError):
    """A feature store was written with another spec than the one asked for."""


class StoreCorrupt(SakError):
    """A store on disk does not match its own commit records."""


class BadImage(SakError):
    """An image file cannot be decoded into an RGB array."""


class PathEscape(SakError):
    """A manifest path points outside its dataset root."""


class TeacherUnavailable(SakError):
    """A teacher model cannot be built or its weights cannot be loaded."""


class DatasetError(SakError):
    """A dataset folder is not in any layout we know, or is inconsistent."""


class ConfigError(SakError, ValueError):
    """A configuration value is invalid."""
