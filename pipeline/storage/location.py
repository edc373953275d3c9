""":func:`as_location`: the one way from a user's path or URL to a :class:`.base.Location`.

Plain paths and ``file://`` URLs become :class:`.local.LocalLocation` (a ``pathlib.Path``);
any other URL (``s3://``, ``gs://``, ``memory://``) an :class:`.remote.FsspecLocation`.
"""

from __future__ import annotations

import os

from .base import Location
from .local import LocalLocation
from .remote import open_url

__all__ = ["as_location"]


def as_location(path_or_url: str | os.PathLike[str] | Location, *, read_only: bool = False) -> Location:
    """The location of a path or URL; with ``read_only`` a view that refuses every write."""
    if isinstance(path_or_url, Location):
        return path_or_url.as_read_only() if read_only and not path_or_url.read_only else path_or_url
    text = os.fspath(path_or_url)
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif "://" in text:
        return open_url(text, read_only=read_only)
    location = LocalLocation(text)
    return location.as_read_only() if read_only else location
