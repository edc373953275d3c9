"""Gather reads: rows of a store's on-disk layer parts straight into slots of caller-provided buffers.

The read path at memory speed (issue 13): a batch's targets are read into preallocated batch
buffers (reused by the loader, pinned on CUDA), not into fresh arrays that are then copied.

* :class:`StoreGather` reads, for one segment, the rows of every on-disk part of the store's
  layers (:func:`.quant.stored_parts`: one float array, or int8 codes then float32 scales) into
  ``outs[p][slots[j]]``. Layouts :class:`.shards.ShardReader` reads go through its
  :meth:`~.shards.ShardReader.read_into` (codec ``none``: one ``os.preadv`` per run of back-to-back
  chunks into the slots; lz4/zstd: decode into the slot); anything else is read through zarr and
  copied (correct, slower).
* Every sample read is checked against its segment's commit record (:mod:`.integrity`): the
  crc32c of each part after the read, a missing shard or chunk of a committed row is an error.
* Local shard files stay open in a bounded, reference-counted cache shared by every reader
  (:func:`preadv_full`, :func:`local_tail`), so a batch costs no ``open``/``close`` calls;
  committed shards never change, so their indexes are cached by the readers themselves.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ...manifests.errors import StoreCorrupt
from .arrays import read_rows_contiguous
from .integrity import SegmentChecks
from .quant import stored_parts

#: Local shard files kept open at once (LRU; a file in use is never closed).
MAX_OPEN_FILES = 256


class _FileCache:
    """Open read-only descriptors of local files, LRU-bounded and reference-counted (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._fds: collections.OrderedDict[str, list[int]] = collections.OrderedDict()  # path -> [fd, users]
        self._lock = threading.Lock()

    @contextmanager
    def open(self, path: str) -> Iterator[int]:
        with self._lock:
            entry = self._fds.get(path)
            if entry is None:
                entry = [os.open(path, os.O_RDONLY), 0]  # FileNotFoundError goes to the caller
                self._fds[path] = entry
            self._fds.move_to_end(path)
            entry[1] += 1
            self._trim()
        try:
            yield entry[0]
        finally:
            with self._lock:
                entry[1] -= 1
                self._trim()

    def _trim(self) -> None:
        while len(self._fds) > self.limit:
            idle = next((p for p, (_, users) in self._fds.items() if users == 0), None)
            if idle is None:
                return
            os.close(self._fds.pop(idle)[0])

    def close_all(self) -> None:
        """Close every idle descriptor (tests; files in use stay open until released)."""
        with self._lock:
            for path in [p for p, (_, users) in self._fds.items() if users == 0]:
                os.close(self._fds.pop(path)[0])


FILES = _FileCache(MAX_OPEN_FILES)
_scratch = threading.local()


def scratch(n: int) -> memoryview:
    """A per-thread reusable byte buffer of at least ``n`` bytes (the encoded span of lz4/zstd reads)."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or len(buf) < n:
        buf = bytearray(max(n, 1 << 20))
        _scratch.buf = buf
    return memoryview(buf)[:n]


def preadv_full(path: Any, views: Sequence[memoryview], offset: int) -> None:
    """Fill ``views`` (writable byte buffers, in order) from the local file ``path`` at ``offset``."""
    with FILES.open(os.fspath(path)) as fd:
        preadv_fd(fd, path, views, offset)


def preadv_fd(fd: int, path: Any, views: Sequence[memoryview], offset: int) -> None:
    """:func:`preadv_full` on a descriptor already open (``path`` names it in errors)."""
    want = sum(v.nbytes for v in views)
    pending = [v.cast("B") if v.format != "B" or v.ndim != 1 else v for v in views]
    done = 0
    while pending:
        got = os.preadv(fd, pending[:1024], offset + done)
        if got <= 0:
            raise StoreCorrupt(f"{path}: short read ({done} of {want} bytes at offset {offset}; the shard is "
                               "truncated); run `sak-cache verify` on the store")
        done += got
        while pending and got >= pending[0].nbytes:  # drop the filled buffers, cut a partly filled one
            got -= pending[0].nbytes
            pending.pop(0)
        if got:
            pending[0] = pending[0][got:]


def advise_willneed(path: Any, offset: int, length: int) -> None:
    """``POSIX_FADV_WILLNEED`` on a byte range of a local file: start reading it into the page cache now."""
    if not hasattr(os, "posix_fadvise") or length <= 0:
        return
    try:
        with FILES.open(os.fspath(path)) as fd:
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
    except OSError:  # a hint only: the read that follows reports real errors
        pass


def probe_cached(path: Any, offset: int) -> bool:
    """Whether the byte at ``offset`` of a local file is in the page cache: a 1-byte ``preadv`` with ``RWF_NOWAIT``."""
    try:
        with FILES.open(os.fspath(path)) as fd:
            os.preadv(fd, [bytearray(1)], offset, os.RWF_NOWAIT)
        return True
    except BlockingIOError:
        return False
    except OSError:  # RWF_NOWAIT unsupported by this filesystem: no hints
        return True


def local_tail(path: Any, n: int) -> bytes:
    """The last ``n`` bytes of a local file (fewer when the file is shorter)."""
    with FILES.open(os.fspath(path)) as fd:
        size = os.fstat(fd).st_size
        return os.pread(fd, min(n, size), max(0, size - n))


class StoreGather:
    """Gather reads of a :class:`.feature_store.FeatureStore`'s layers; see the module docstring.

    ``parts`` lists (array name, per-sample shape, on-disk dtype) of every on-disk array of the
    store's layers, layer by layer in spec order (:func:`.quant.stored_parts`); a caller allocates
    one buffer per part, e.g. with :meth:`empty`.

    ``checked=False`` skips the crc32c / sha256 comparisons (for measuring their cost only); rows the
    commit names must still be there. Stores without commit records (``sample_checks``) read unchecked.
    """

    def __init__(self, store: Any, *, checked: bool = True) -> None:
        self.store = store
        self.checked = checked
        self.layer_parts = [stored_parts(store.spec, layer) for layer in store.spec.layers]
        self.parts = [p for layer in self.layer_parts for p in layer]

    def empty(self, n: int) -> list[np.ndarray]:
        """Uninitialised (n, *shape) numpy buffers, one per part."""
        return [np.empty((n, *shape), dtype=dtype) for _, shape, dtype in self.parts]

    def sample_bytes(self) -> int:
        """On-disk bytes of one sample's parts (all layers)."""
        return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for _, shape, dtype in self.parts)

    def in_page_cache(self, segment_id: str, row: int) -> bool:
        """Whether ``row``'s first part looks resident in the page cache (see ``ShardReader.in_page_cache``)."""
        arr = self.store.array(segment_id, self.parts[0][0], fast=True)
        return arr.in_page_cache(row) if hasattr(arr, "in_page_cache") else True

    def advise(self, segment_id: str, rows: Sequence[int]) -> None:
        """Hint that ``rows`` of ``segment_id`` (every part) will be gathered soon (see ``ShardReader.advise``)."""
        for name, _, _ in self.parts:
            arr = self.store.array(segment_id, name, fast=True)
            if hasattr(arr, "advise"):
                arr.advise(rows)

    def checks(self, segment_id: str) -> SegmentChecks | None:
        """The integrity record of a segment (None for a store object without one)."""
        lookup = getattr(self.store, "sample_checks", None)
        return lookup(segment_id) if lookup is not None else None

    def gather(self, segment_id: str, rows: Sequence[int], outs: Sequence[np.ndarray],
               slots: Sequence[int] | None = None) -> None:
        """Rows ``rows[j]`` of ``segment_id`` into ``outs[p][slots[j]]`` for every part ``p``, checked."""
        if len(outs) != len(self.parts):
            raise ValueError(f"expected {len(self.parts)} buffers (one per stored part), got {len(outs)}")
        slot_list = list(range(len(rows))) if slots is None else list(slots)
        checks = self.checks(segment_id)
        for (name, _, _), out in zip(self.parts, outs, strict=True):
            read_checked(self.store.array(segment_id, name, fast=True), name, rows, out, slot_list, checks, self.checked)
        if checks is not None and checks.legacy and self.checked:
            checks.check_legacy(rows, {name: out for (name, _, _), out in zip(self.parts, outs, strict=True)}, slot_list)


def read_arrays(store: Any, segment_id: str, rows: Sequence[int], names: Sequence[str],
                checked: bool = True) -> dict[str, np.ndarray]:
    """{name: (n, ...) as stored} of a store's arrays ``names`` for ``rows`` of one segment, each sample checked."""
    checks = store.sample_checks(segment_id)
    slots = list(range(len(rows)))
    out = {}
    for name in names:
        arr = store.array(segment_id, name, fast=True)
        out[name] = np.empty((len(rows), *arr.shape[1:]), dtype=arr.dtype)
        read_checked(arr, name, rows, out[name], slots, checks, checked)
    if checks.legacy and checked:
        checks.check_legacy(rows, out, slots)
    return out


def read_checked(arr: Any, name: str, rows: Sequence[int], out: np.ndarray, slots: Sequence[int],
                 checks: SegmentChecks | None, verify: bool = True) -> None:
    """Rows of array ``name`` into ``out[slots]``: through ``read_into`` when it has one, else zarr, checked by ``checks``."""
    if hasattr(arr, "read_into"):
        arr.read_into(rows, out, slots, checks=checks, verify=verify)
        return
    if not len(rows):
        return
    if checks is not None:
        n = arr.shape[0]
        for r in rows:
            if not 0 <= int(r) < n and checks.named(int(r)):
                raise checks.corrupt(int(r), f"its commit part names row {int(r)}, beyond the {n} rows of array {name}")
    try:
        out[list(slots)] = read_rows_contiguous(arr, rows)  # a layout only zarr reads
    except (OSError, ValueError, RuntimeError) as exc:
        if checks is None or not any(checks.named(int(r)) for r in rows):
            raise
        raise checks.corrupt(int(rows[0]), f"array {name} does not read ({type(exc).__name__}: {exc})") from exc
    if checks is not None and verify:
        checks.check_rows(name, rows, out.reshape(out.shape[0], -1), slots)
