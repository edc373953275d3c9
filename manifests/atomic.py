"""All-or-nothing local file writes: write a temporary sibling, fsync it, ``os.replace`` it into place."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file next to ``path``, then move it into place.

    A reader sees the old file (or none) or the whole new one, even if the writer is killed;
    the temporary file never outlives the call.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        # a full disk or quota often fails on write/close, where the OS names no file: name the one being written
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
