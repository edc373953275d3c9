"""Content hashing: sha256 of file bytes, streamed, and of in-memory buffers; regular files only.

Every file this package hashes or reads whole is opened with :func:`open_regular`: ``O_NONBLOCK``
(so opening a FIFO that no one writes to returns at once instead of blocking forever), then
``fstat`` on the open descriptor, refusing anything that is not a regular file (FIFO, socket,
device, directory) with :class:`NotRegularFile`. Checking the descriptor, not the name, also
catches a file swapped for a FIFO after it was listed. ``O_NONBLOCK`` has no effect on reads of
a regular file.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import BinaryIO

from .errors import SakError

CHUNK_BYTES = 1 << 20

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"))


class NotRegularFile(SakError, OSError):
    """A path that should hold file bytes is a FIFO, socket, device or directory."""


def file_kind(mode: int) -> str:
    """'a regular file', 'a FIFO (named pipe)', 'a socket', ... for an ``st_mode``."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open ``path`` for reading without ever blocking; :class:`NotRegularFile` unless it is a regular file.

    ``FileNotFoundError``/``PermissionError`` pass through as they are.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except IsADirectoryError:
        raise NotRegularFile(f"{path} is a directory, not a file; remove it or rename it without an image extension") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"{path} is {file_kind(mode)}, not a regular file; only regular files are read: "
                                 "replace it with the file itself or remove it")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike[str]) -> bytes:
    """All bytes of a regular file (:func:`open_regular`)."""
    with open_regular(path) as fh:
        return fh.read()


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = CHUNK_BYTES) -> str:
    """Hex sha256 of a regular file's bytes, read in ``chunk_bytes`` pieces (constant memory)."""
    digest = hashlib.sha256()
    with open_regular(Path(path)) as fh:
        while True:
            block = fh.read(chunk_bytes)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    """Hex sha256 of a buffer."""
    return hashlib.sha256(data).hexdigest()
