"""The one storage interface: :class:`Location`, a path in some storage with every operation the store needs.

Two implementations: :class:`.local.LocalLocation` (a :class:`pathlib.Path`, so the local hot
path stays the plain one and any code that wants a ``Path`` still gets one) and
:class:`.remote.FsspecLocation` (any fsspec filesystem: ``s3://``, ``gs://``, ``memory://``).
Each has a read-only view (:meth:`Location.as_read_only`) that refuses every write with
:class:`ReadOnlyStorage` before touching anything. Callers never ask which kind they hold.

Why not zarr's own ``Store``: it is async-only (every call goes through an event loop, the
~0.3 ms per chunk that :mod:`..store.shards` exists to avoid), keyed by flat strings without
stat/mtime (``gc`` needs ages), and says nothing about Parquet files, temp + fsync + rename or
fsync of a finished tree. A :class:`Location` hands zarr its store (:meth:`Location.zarr_store`).

Atomic visibility, the rule commit records rely on (a reader never sees half a file):
local: temporary file, fsync, ``os.replace``; object stores: ONE PUT (S3, GCS and Azure make an
object visible only once its upload completed).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from ...manifests.errors import SakError

__all__ = ["ByteRanges", "Location", "ReadOnlyStorage", "Stat", "StatLike"]


class ReadOnlyStorage(SakError):
    """A write was attempted through a read-only location."""


def refuse_write(location: object, what: str) -> ReadOnlyStorage:
    """The error every read-only view raises (it names the location and the way out)."""
    return ReadOnlyStorage(
        f"{location} is opened read-only; {what} refused (it would change the storage). "
        "Open it with read_only=False to write, or write into another cache."
    )


@dataclass(frozen=True)
class Stat:
    """Size and modification time, under the names ``os.stat_result`` uses."""

    st_size: int
    st_mtime: float


class StatLike(Protocol):
    """What :meth:`Location.stat` returns: a :class:`Stat` or an ``os.stat_result`` (local locations)."""

    @property
    def st_size(self) -> int: ...

    @property
    def st_mtime(self) -> float: ...


class ByteRanges(Protocol):
    """An open object for several byte-range reads (local: one file handle; remote: ranged GETs)."""

    def tail(self, n: int) -> bytes: ...

    def span(self, start: int, end: int) -> bytes: ...

    def __enter__(self) -> ByteRanges: ...

    def __exit__(self, *exc) -> None: ...


class Location(abc.ABC):
    """A file or folder in some storage. ``str()`` round-trips through :func:`.location.as_location`.

    Naming (pathlib's): ``/``, :meth:`joinpath`, :attr:`name`, :attr:`parent`, :meth:`with_name`.
    Missing files: reads raise :class:`FileNotFoundError`; listings of a missing folder are empty.
    """

    # -- naming -----------------------------------------------------------------
    @abc.abstractmethod
    def __truediv__(self, name: str) -> Location: ...

    @abc.abstractmethod
    def joinpath(self, *names: str) -> Location: ...

    @property
    @abc.abstractmethod
    def name(self) -> str: ...

    @property
    @abc.abstractmethod
    def parent(self) -> Location: ...

    @abc.abstractmethod
    def with_name(self, name: str) -> Location: ...

    # -- queries (never cached: other writers add files at any time) -------------
    @abc.abstractmethod
    def exists(self) -> bool: ...

    @abc.abstractmethod
    def is_dir(self) -> bool: ...

    @abc.abstractmethod
    def is_file(self) -> bool: ...

    @abc.abstractmethod
    def stat(self) -> StatLike: ...

    @abc.abstractmethod
    def list_names(self, prefix: str = "", suffix: str = "") -> list[str]:
        """Sorted entry names with the given prefix/suffix ([] when the folder does not exist)."""

    @abc.abstractmethod
    def files(self) -> Iterator[tuple[Location, int, float]]:
        """(location, size, mtime) of every file below this folder (nothing when it does not exist)."""

    def tree_bytes(self) -> int:
        """Bytes of every file below this folder."""
        return sum(size for _, size, _ in self.files())

    @abc.abstractmethod
    def newest_mtime(self) -> float:
        """The latest modification time in this tree (``gc`` keeps trees younger than its grace)."""

    # -- reads --------------------------------------------------------------------
    @abc.abstractmethod
    def read_bytes(self) -> bytes: ...

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    @abc.abstractmethod
    def read_range(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the file."""

    @abc.abstractmethod
    def read_tail(self, n: int) -> bytes:
        """The last ``n`` bytes of the file."""

    @abc.abstractmethod
    def open_ranges(self) -> ByteRanges:
        """The file opened for several range reads (raises FileNotFoundError when absent)."""

    # -- writes (a read-only view raises ReadOnlyStorage and changes nothing) -----
    @property
    @abc.abstractmethod
    def read_only(self) -> bool: ...

    @abc.abstractmethod
    def as_read_only(self) -> Location:
        """The same location, refusing every write."""

    @abc.abstractmethod
    def put_bytes(self, data: bytes) -> None:
        """Write a whole file, creating its folders. Local: not atomic (for files a later commit
        record publishes, e.g. shards); object stores: one PUT."""

    @abc.abstractmethod
    def write_atomic(self, data: bytes) -> None:
        """Readers see all of ``data`` or the old state: temp + fsync + ``os.replace`` locally, one PUT remotely."""

    def write_text_atomic(self, text: str) -> None:
        self.write_atomic(text.encode("utf-8"))

    @abc.abstractmethod
    def mkdir(self, *, parents: bool = False, exist_ok: bool = False) -> None:
        """Keyword-only: pathlib's own ``mkdir`` takes ``mode`` first, so a positional call means two things."""

    @abc.abstractmethod
    def unlink(self, missing_ok: bool = False) -> None: ...

    @abc.abstractmethod
    def remove_tree(self) -> None:
        """Remove this folder and everything below it, or this file; nothing when absent."""

    @abc.abstractmethod
    def fsync_tree(self) -> None:
        """Make every file below this folder durable (local fsync; object stores already are)."""

    # -- handles for other libraries ----------------------------------------------
    @abc.abstractmethod
    def zarr_store(self, *, read_only: bool):
        """What to hand ``zarr.open_*`` for this folder."""
