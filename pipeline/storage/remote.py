"""fsspec storage: :class:`FsspecLocation`, one path in any fsspec filesystem (``s3://``, ``gs://``, ``memory://``).

``str()`` is the full URL, so a location round-trips through :func:`.location.as_location` and
through pickling to dask workers (:meth:`FsspecLocation.__reduce__` reopens the URL there; the
filesystem object itself is not shipped). It has no ``__fspath__``: handing it to ``open()`` by
mistake fails. Listings drop fsspec's listing cache first, since other writers add objects.

S3 credentials and endpoints come from the usual places (``AWS_*`` variables, profiles), or from
fsspec's configuration, e.g. ``FSSPEC_S3_ENDPOINT_URL=http://127.0.0.1:9000``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from .base import Location, Stat, refuse_write

__all__ = ["FsspecLocation", "open_url"]


def open_url(url: str, read_only: bool = False) -> FsspecLocation:
    """The location of an fsspec URL (imports the filesystem's backend, e.g. s3fs, on first use)."""
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(url)
    return FsspecLocation(fs, path, read_only=read_only)


def _mtime(info: dict) -> float:
    for key in ("LastModified", "mtime", "created", "updated", "last_modified"):
        value = info.get(key)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return time.time()  # unknown: treat as fresh (gc then keeps it)


class _RemoteRanges:
    """Byte-range reads of one object (``cat_file`` with start/end: HTTP range GETs)."""

    def __init__(self, location: FsspecLocation) -> None:
        self._location = location
        self._size = int(location.fs.size(location.path))  # raises FileNotFoundError when absent, like open()

    def tail(self, n: int) -> bytes:
        return self._location.read_range(self._size - n, self._size)

    def span(self, start: int, end: int) -> bytes:
        return self._location.read_range(start, end)

    def __enter__(self) -> _RemoteRanges:
        return self

    def __exit__(self, *exc) -> None:
        return None


class FsspecLocation(Location):
    """A file or folder in an fsspec filesystem; ``read_only`` views refuse every write."""

    def __init__(self, fs, path: str, *, read_only: bool = False) -> None:
        self.fs = fs
        self.path = path.rstrip("/") or "/"
        self._read_only = read_only

    def _child(self, path: str) -> FsspecLocation:
        return FsspecLocation(self.fs, path, read_only=self._read_only)

    def _check_writable(self, what: str) -> None:
        if self._read_only:
            raise refuse_write(self, what)

    # -- naming -----------------------------------------------------------------
    def __truediv__(self, name: str) -> FsspecLocation:
        return self._child(f"{self.path.rstrip('/')}/{name}")

    def joinpath(self, *names: str) -> FsspecLocation:
        return self._child("/".join([self.path.rstrip("/"), *names]))

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> FsspecLocation:
        return self._child(self.path.rsplit("/", 1)[0] or "/")

    def with_name(self, name: str) -> FsspecLocation:
        return self.parent / name

    @property
    def url(self) -> str:
        return self.fs.unstrip_protocol(self.path)

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"FsspecLocation({self.url!r}{', read_only=True' if self._read_only else ''})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FsspecLocation) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __reduce__(self):
        return (open_url, (self.url, self._read_only))

    # -- queries ----------------------------------------------------------------
    def exists(self) -> bool:
        return bool(self.fs.exists(self.path))

    def is_dir(self) -> bool:
        return bool(self.fs.isdir(self.path))

    def is_file(self) -> bool:
        return bool(self.fs.isfile(self.path))

    def stat(self) -> Stat:
        info = self.fs.info(self.path)
        return Stat(int(info.get("size") or 0), _mtime(info))

    def list_names(self, prefix: str = "", suffix: str = "") -> list[str]:
        self.fs.invalidate_cache(self.path)
        try:
            entries = self.fs.ls(self.path, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        if all(e.rstrip("/") == self.path for e in entries):  # ls of a file lists the file itself
            return []
        names = {e.rstrip("/").rsplit("/", 1)[-1] for e in entries} - {""}
        return sorted(n for n in names if n.startswith(prefix) and n.endswith(suffix))

    def files(self) -> Iterator[tuple[FsspecLocation, int, float]]:
        self.fs.invalidate_cache(self.path)
        try:
            found = self.fs.find(self.path, detail=True)
        except FileNotFoundError:
            return
        for p, info in sorted(found.items()):
            if info.get("type", "file") == "file" and p.rstrip("/") != self.path:
                yield self._child(p), int(info.get("size") or 0), _mtime(info)

    def newest_mtime(self) -> float:
        """Object stores have no folder times: the newest object's, or now when there is none."""
        return max((m for _, _, m in self.files()), default=time.time())

    # -- reads --------------------------------------------------------------------
    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self.path)

    def read_range(self, start: int, end: int) -> bytes:
        return self.fs.cat_file(self.path, start=start, end=end)

    def read_tail(self, n: int) -> bytes:
        with self.open_ranges() as fh:
            return fh.tail(n)

    def open_ranges(self) -> _RemoteRanges:
        return _RemoteRanges(self)

    # -- writes -------------------------------------------------------------------
    @property
    def read_only(self) -> bool:
        return self._read_only

    def as_read_only(self) -> FsspecLocation:
        return self if self._read_only else FsspecLocation(self.fs, self.path, read_only=True)

    def put_bytes(self, data: bytes) -> None:
        self._check_writable("put_bytes()")
        self.fs.pipe_file(self.path, bytes(data))

    def write_atomic(self, data: bytes) -> None:
        """One PUT of the whole object (object stores publish it only once complete)."""
        self._check_writable("write_atomic()")
        self.fs.pipe_file(self.path, bytes(data))

    def mkdir(self, *, parents: bool = False, exist_ok: bool = False) -> None:
        self._check_writable("mkdir()")
        try:
            self.fs.makedirs(self.path, exist_ok=True)
        except (FileExistsError, NotImplementedError):
            pass

    def unlink(self, missing_ok: bool = False) -> None:
        self._check_writable("unlink()")
        if not missing_ok and not self.is_file():  # S3 deletes a missing key without complaint
            raise FileNotFoundError(f"{self}: no such file")
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def remove_tree(self) -> None:
        self._check_writable("remove_tree()")
        if not self.is_dir():
            self.unlink(missing_ok=True)
            return
        try:
            self.fs.rm(self.path, recursive=True)
        except FileNotFoundError:
            pass

    def fsync_tree(self) -> None:
        self._check_writable("fsync_tree()")  # an object is durable once its PUT returned

    def zarr_store(self, *, read_only: bool):
        """An ``FsspecStore`` on the same filesystem (wrapped to be async when it is not)."""
        if not read_only:
            self._check_writable("zarr_store(read_only=False)")
        from zarr.storage import FsspecStore

        fs = self.fs
        if not fs.async_impl:
            from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

            fs = AsyncFileSystemWrapper(fs, asynchronous=True)
        elif not getattr(fs, "asynchronous", False):
            fs = type(fs)(**{**fs.storage_options, "asynchronous": True})
        return FsspecStore(fs, read_only=read_only, path=self.path)
