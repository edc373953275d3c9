"""Local storage: :class:`LocalLocation` is a :class:`pathlib.Path` with the rest of :class:`.base.Location`.

Being a ``Path`` keeps the hot reads plain (``open`` + ``seek`` + ``read``, measured equal to the
old plain-``Path`` code in benchmarks/loader.py) and lets code outside the store (tests, CLI,
benchmarks) keep using ``rglob``, ``relative_to`` or ``open()`` on a store's folders. Children
(``/``, ``parent``, ``rglob``) keep the class, so a read-only view stays read-only all the way down.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ...manifests.atomic import atomic_write
from .base import Location, refuse_write

__all__ = ["LocalLocation", "ReadOnlyLocalLocation"]

if TYPE_CHECKING:
    _PathBase = Path  # what the checker sees: the concrete class below is one of Path's own subclasses
else:
    _PathBase = type(Path())  # PosixPath here (pathlib refuses to instantiate Path subclasses directly before 3.12)


class _LocalRanges:
    """Byte-range reads of one open local file (seek + read)."""

    def __init__(self, path) -> None:
        self._fh = open(path, "rb")

    def tail(self, n: int) -> bytes:
        self._fh.seek(-n, os.SEEK_END)
        return self._fh.read(n)

    def span(self, start: int, end: int) -> bytes:
        self._fh.seek(start)
        return self._fh.read(end - start)

    def __enter__(self) -> _LocalRanges:
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close()


class LocalLocation(_PathBase, Location):
    """A local file or folder. Everything pathlib offers, plus the storage operations."""

    __slots__ = ()

    # -- queries ----------------------------------------------------------------
    def list_names(self, prefix: str = "", suffix: str = "") -> list[str]:
        try:
            names = os.listdir(self)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(n for n in names if n.startswith(prefix) and n.endswith(suffix))

    def files(self) -> Iterator[tuple[LocalLocation, int, float]]:
        for folder, _, names in os.walk(self):
            base = type(self)(folder)
            for n in names:
                p = base / n
                try:
                    st = os.stat(p)
                except FileNotFoundError:  # removed while we walked
                    continue
                yield p, st.st_size, st.st_mtime

    def newest_mtime(self) -> float:
        """Folders count too: adding an entry to a folder updates its mtime."""
        times = [os.stat(self).st_mtime]
        for folder, dirs, names in os.walk(self):
            for n in (*dirs, *names):
                try:
                    times.append(os.stat(os.path.join(folder, n)).st_mtime)
                except FileNotFoundError:
                    continue
        return max(times)

    # -- reads --------------------------------------------------------------------
    def read_range(self, start: int, end: int) -> bytes:
        with _LocalRanges(self) as fh:
            return fh.span(start, end)

    def read_tail(self, n: int) -> bytes:
        with _LocalRanges(self) as fh:
            return fh.tail(n)

    def open_ranges(self) -> _LocalRanges:
        return _LocalRanges(self)

    # -- writes -------------------------------------------------------------------
    @property
    def read_only(self) -> bool:
        return False

    def as_read_only(self) -> ReadOnlyLocalLocation:
        return ReadOnlyLocalLocation(self)

    def put_bytes(self, data: bytes) -> None:
        self.parent.mkdir(parents=True, exist_ok=True)
        with open(self, "wb") as fh:
            fh.write(data)

    def write_atomic(self, data: bytes) -> None:
        atomic_write(self, lambda tmp: tmp.write_bytes(data))

    def remove_tree(self) -> None:
        if self.is_dir():
            shutil.rmtree(self)
        elif self.exists():
            self.unlink()

    def fsync_tree(self) -> None:
        for path, _, _ in self.files():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def zarr_store(self, *, read_only: bool):
        return str(self)


def _refusing(what: str):
    def method(self, *args, **kwargs):
        raise refuse_write(self, f"{what}()")

    method.__name__ = what
    method.__doc__ = f"Refused: this location is read-only ({what} would change the storage)."
    return method


class ReadOnlyLocalLocation(LocalLocation):
    """Refuses every write made through its methods (pathlib's own included) before touching the disk.

    (A plain ``open(view, "wb")`` or ``shutil.rmtree(view)`` goes around it: the store never does that.)
    """

    __slots__ = ()

    @property
    def read_only(self) -> bool:
        return True

    def as_read_only(self) -> ReadOnlyLocalLocation:
        return self

    def open(self, mode: str = "r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            raise refuse_write(self, f"open(mode={mode!r})")
        return super().open(mode, *args, **kwargs)

    def zarr_store(self, *, read_only: bool):
        if not read_only:
            raise refuse_write(self, "zarr_store(read_only=False)")
        return str(self)


#: Every method that changes the disk: the interface's writes and pathlib's own.
_WRITES = ("put_bytes", "write_atomic", "write_text_atomic", "mkdir", "unlink", "remove_tree", "fsync_tree",
           "write_bytes", "write_text", "touch", "rmdir", "rename", "replace", "chmod", "lchmod", "symlink_to",
           "hardlink_to")
for _name in _WRITES:
    setattr(ReadOnlyLocalLocation, _name, _refusing(_name))
