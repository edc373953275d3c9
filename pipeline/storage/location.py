"""Where a cache lives: a local directory (fast path, plain ``pathlib``) or an fsspec URL.

Every store and cache root may be a local path, ``file://...``, or a URL of any fsspec
filesystem (``s3://``, ``gs://``, ``memory://``, ...). :func:`as_location` returns a
:class:`pathlib.Path` for local ones, so the local code path stays exactly the plain one,
and a :class:`RemotePath` for the others: a small pathlib-like view of one path in an
fsspec filesystem with just the operations the store needs.

Atomic visibility, the rule commit records rely on (a reader never sees half a file):

* local: write a temporary file, fsync, ``os.replace`` (:func:`write_bytes_atomic`);
* object stores: ONE ``pipe_file`` (a single PUT of the whole object); S3, GCS and Azure
  make an object visible only once its upload completed.

S3 credentials and endpoints come from the usual places (``AWS_*`` variables, profiles),
or from fsspec's configuration, e.g. ``FSSPEC_S3_ENDPOINT_URL=http://127.0.0.1:9000``.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

from ...manifests.atomic import atomic_write
from typing import Iterator

__all__ = [
    "RemotePath", "Location", "as_location", "is_remote", "list_names", "tree_bytes", "write_bytes_atomic",
    "read_bytes", "remove_tree", "zarr_store", "read_parquet", "write_parquet_atomic",
]


def is_remote(path_or_url: object) -> bool:
    """True for a URL other than ``file://`` (those go through fsspec)."""
    if isinstance(path_or_url, RemotePath):
        return True
    text = os.fspath(path_or_url) if not isinstance(path_or_url, str) else path_or_url
    return "://" in text and not text.startswith("file://")


class _Stat:
    def __init__(self, size: int, mtime: float) -> None:
        self.st_size = size
        self.st_mtime = mtime


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


class RemotePath:
    """A path in an fsspec filesystem with the pathlib subset the store uses.

    ``str()`` is the full URL, so it round-trips through :func:`as_location` (and through
    pickling to dask workers). It has no ``__fspath__``: handing it to ``open()`` by mistake fails.
    """

    def __init__(self, fs, path: str) -> None:
        self.fs = fs
        self.path = path.rstrip("/") or "/"

    # -- naming -----------------------------------------------------------------
    def __truediv__(self, other: str) -> "RemotePath":
        return RemotePath(self.fs, f"{self.path.rstrip('/')}/{other}")

    def joinpath(self, *parts: str) -> "RemotePath":
        out = self
        for p in parts:
            out = out / p
        return out

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> "RemotePath":
        return RemotePath(self.fs, self.path.rsplit("/", 1)[0] or "/")

    def with_name(self, name: str) -> "RemotePath":
        return self.parent / name

    @property
    def url(self) -> str:
        return self.fs.unstrip_protocol(self.path)

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemotePath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __reduce__(self):
        return (as_location, (self.url,))

    # -- queries ----------------------------------------------------------------
    def exists(self) -> bool:
        return bool(self.fs.exists(self.path))

    def is_dir(self) -> bool:
        return bool(self.fs.isdir(self.path))

    def is_file(self) -> bool:
        return bool(self.fs.isfile(self.path))

    def stat(self) -> _Stat:
        info = self.fs.info(self.path)
        return _Stat(int(info.get("size") or 0), _mtime(info))

    def listdir(self) -> list[str]:
        """Entry names (fresh: the listing cache is dropped first, other writers may have added files)."""
        self.fs.invalidate_cache(self.path)
        try:
            entries = self.fs.ls(self.path, detail=False)
        except FileNotFoundError:
            return []
        return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries} - {""})

    def files(self) -> Iterator[tuple["RemotePath", int, float]]:
        """(path, size, mtime) of every file below this one."""
        self.fs.invalidate_cache(self.path)
        try:
            found = self.fs.find(self.path, detail=True)
        except FileNotFoundError:
            return
        for p, info in found.items():
            if info.get("type", "file") == "file":
                yield RemotePath(self.fs, p), int(info.get("size") or 0), _mtime(info)

    def rglob(self, pattern: str = "*") -> Iterator["RemotePath"]:
        for p, _, _ in self.files():
            yield p

    # -- data -------------------------------------------------------------------
    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self.path)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def read_range(self, start: int, end: int) -> bytes:
        return self.fs.cat_file(self.path, start=start, end=end)

    def write_bytes(self, data: bytes) -> None:
        """One PUT of the whole object (object stores publish it only once complete)."""
        self.fs.pipe_file(self.path, bytes(data))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        try:
            self.fs.makedirs(self.path, exist_ok=True)
        except (FileExistsError, NotImplementedError):
            pass

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmtree(self) -> None:
        try:
            self.fs.rm(self.path, recursive=True)
        except FileNotFoundError:
            pass


Location = "Path | RemotePath"


def as_location(path_or_url) -> "Path | RemotePath":
    """A local :class:`Path` (plain paths and ``file://``) or a :class:`RemotePath` (any other URL)."""
    if isinstance(path_or_url, (Path, RemotePath)):
        return path_or_url
    text = os.fspath(path_or_url)
    if text.startswith("file://"):
        return Path(text[len("file://") :])
    if "://" not in text:
        return Path(text)
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(text)
    return RemotePath(fs, path)


def list_names(path, prefix: str = "", suffix: str = "") -> list[str]:
    """Sorted entry names of a directory with the given prefix/suffix ([] if it does not exist)."""
    if isinstance(path, RemotePath):
        names = path.listdir()
    elif path.is_dir():
        names = os.listdir(path)
    else:
        return []
    return sorted(n for n in names if n.startswith(prefix) and n.endswith(suffix))


def tree_bytes(path) -> int:
    if isinstance(path, RemotePath):
        return sum(size for _, size, _ in path.files())
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def read_bytes(path) -> bytes:
    return path.read_bytes()


def write_bytes_atomic(path, data: bytes) -> None:
    """Readers see all of ``data`` or no file: temp + fsync + ``os.replace`` locally, one PUT remotely."""
    if isinstance(path, RemotePath):
        path.write_bytes(data)
        return
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def remove_tree(path) -> None:
    if isinstance(path, RemotePath):
        path.rmtree() if path.is_dir() else path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def zarr_store(path, *, read_only: bool):
    """What to hand zarr for ``path``: the local path string, or an ``FsspecStore`` on the same filesystem."""
    if not isinstance(path, RemotePath):
        return str(path)
    from zarr.storage import FsspecStore

    fs = path.fs
    if not fs.async_impl:
        from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

        fs = AsyncFileSystemWrapper(fs, asynchronous=True)
    elif not getattr(fs, "asynchronous", False):
        fs = type(fs)(**{**fs.storage_options, "asynchronous": True})
    return FsspecStore(fs, read_only=read_only, path=path.path)


def read_parquet(path, schema, reader=None):
    """Read and validate one Parquet file (local: the manifests helpers; remote: one GET)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ...manifests.errors import SchemaMismatch
    from ...manifests.schemas import validate_table

    if not isinstance(path, RemotePath):
        from ...manifests.schemas import read_table

        return read_table(path, schema)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise SchemaMismatch(f"{path}: file does not exist") from exc
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise SchemaMismatch(f"{path}: not a readable Parquet file ({exc}). Delete it and rebuild it.") from exc
    return validate_table(table, schema, str(path))


def write_parquet_atomic(table, path, schema, metadata=None):
    """Validate and write a Parquet file atomically (local: temp + rename; remote: one PUT)."""
    import pyarrow.parquet as pq

    from ...manifests.schemas import validate_table, write_table_atomic

    if not isinstance(path, RemotePath):
        return write_table_atomic(table, path, schema, metadata)
    table = validate_table(table, schema, str(path))
    if metadata:
        table = table.replace_schema_metadata({**(schema.metadata or {}), **metadata})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    path.write_bytes(buf.getvalue())
    return path
