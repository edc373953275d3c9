"""The on-disk shard layouts this package writes, encoded and read directly (zarr reads them too).

Segment arrays use Zarr v3 ``sharding_indexed`` with one-sample inner chunks, inner codecs
``bytes(little)`` then, by the spec's ``codec``, nothing (``none``), ``blosc(lz4, shuffle)``
(``lz4``) or ``zstd(level 3)`` (``zstd``, every store before issue 13), index codecs ``bytes(little) + crc32c`` and the index at
the end of the shard. Writing and reading such shards through zarr-python costs about 0.3 ms
per inner chunk in its async codec pipeline, which dominates for small feature maps
(measured here: 4-9 MB/s for 8x8x32 maps). :func:`encode_shard` and :class:`ShardReader`
implement exactly this layout with numcodecs' zstd (the codec zarr itself uses);
:func:`fast_shards_supported` checks an array's metadata first, and anything else goes
through zarr. ``sak-cache verify`` always reads through zarr, an independent decoder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import google_crc32c
import numpy as np
from numcodecs import Blosc, Zstd

from ...manifests.errors import StoreCorrupt
from ..storage import LocalLocation, Location
from .gather import FILES, advise_willneed, preadv_fd, preadv_full, probe_cached, scratch
from .gather import local_tail as _local_tail
from .integrity import ChunkCorrupt, RunCheck, SampleCorrupt, SegmentChecks, blame

_IOV_MAX = 1024  # POSIX minimum of IOV_MAX on Linux: buffers per preadv

ZSTD_LEVEL = 3
LZ4_LEVEL = 5
_ABSENT = np.uint64(2**64 - 1)


def compressors_for(codec: str, itemsize: int) -> list:
    """The zarr v3 ``compressors`` argument of a feature array written with ``codec``."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if codec == "none":
        return []
    if codec == "lz4":
        return [BloscCodec(cname="lz4", clevel=LZ4_LEVEL, shuffle="shuffle", typesize=itemsize, blocksize=0)]
    if codec == "zstd":
        return [ZstdCodec(level=ZSTD_LEVEL)]
    raise ValueError(f"unknown codec {codec!r}; one of none, lz4, zstd")


def _inner_codec_json(codec: str, itemsize: int) -> list[dict]:
    # zarr writes no endianness for 1-byte dtypes (int8 codes)
    inner: list[dict] = [{"name": "bytes", "configuration": {"endian": "little"}}] if itemsize > 1 else [{"name": "bytes"}]
    if codec == "lz4":
        inner.append({"name": "blosc", "configuration": {"typesize": itemsize, "cname": "lz4", "clevel": LZ4_LEVEL,
                                                        "shuffle": "shuffle", "blocksize": 0}})
    elif codec == "zstd":
        inner.append({"name": "zstd", "configuration": {"level": ZSTD_LEVEL, "checksum": False}})
    return inner


def _expected_codecs(codec: str, itemsize: int) -> list[dict]:
    return [{
        "name": "sharding_indexed",
        "configuration": {
            "codecs": _inner_codec_json(codec, itemsize),
            "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
            "index_location": "end",
        },
    }]


def shard_codec(array) -> str | None:
    """The codec (``none``/``lz4``/``zstd``) of an array in a layout :func:`encode_shard` writes, else None (zarr reads it)."""
    meta = json.loads(json.dumps(array.metadata.to_dict()))  # tuples -> lists
    codecs = meta.get("codecs") or []
    if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
        return None
    conf = dict(codecs[0].get("configuration", {}))
    inner = conf.pop("chunk_shape", None)
    key = meta.get("chunk_key_encoding", {})
    if inner != [1, *array.shape[1:]] or key != {"name": "default", "configuration": {"separator": "/"}}:
        return None
    itemsize = np.dtype(array.dtype).itemsize
    for codec in ("none", "lz4", "zstd"):
        if [{"name": "sharding_indexed", "configuration": conf}] == _expected_codecs(codec, itemsize):
            return codec
    return None


def fast_shards_supported(array) -> bool:
    """True when ``array``'s metadata is exactly a layout :func:`encode_shard` writes (else zarr writes/reads)."""
    return shard_codec(array) is not None


def chunk_codec(codec: str):
    """The numcodecs object that encodes/decodes one inner chunk of ``codec`` (None: raw bytes)."""
    if codec == "none":
        return None
    if codec == "lz4":
        return Blosc(cname="lz4", clevel=LZ4_LEVEL, shuffle=Blosc.SHUFFLE, blocksize=0)
    if codec == "zstd":
        return Zstd(level=ZSTD_LEVEL)
    raise ValueError(f"unknown codec {codec!r}; one of none, lz4, zstd")


def encode_shard(block: np.ndarray | Sequence[np.ndarray], shard_samples: int, codec: str = "zstd") -> bytes:
    """A Zarr v3 ``sharding_indexed`` shard of one-sample inner chunks, as zarr would write it.

    Layout (Zarr v3 sharding spec): the zstd-compressed inner chunks back to back, then the
    index, (offset, nbytes) as little-endian uint64 per inner chunk in C order (2**64-1 for
    an absent chunk), then the crc32c of the index. This skips zarr's per-chunk async
    overhead (about 0.3 ms per chunk), which dominates for small feature maps; zarr reads it.
    The bytes of ``b"".join(encode_shard_parts(...))``.
    """
    return b"".join(encode_shard_parts(block, shard_samples, codec))


def encode_shard_parts(block: np.ndarray | Sequence[np.ndarray], shard_samples: int, codec: str = "zstd") -> list[memoryview | bytes]:
    """The buffers of :func:`encode_shard`'s shard in file order, for one ``writev`` (no joined copy).

    ``block``: the shard's rows as one array, or as a sequence of arrays of consecutive rows.

    Codec ``none``: each inner chunk is a memoryview of ``block``'s own memory (no copy when the
    block is C-contiguous and little-endian), so the block must not change until they are written.
    """
    coder = chunk_codec(codec)
    pieces = [block] if isinstance(block, np.ndarray) else list(block)
    index = np.full((shard_samples, 2), np.iinfo(np.uint64).max, dtype="<u8")
    parts: list[memoryview | bytes] = []
    offset = 0
    chunks = (row for piece in pieces for row in piece.astype(piece.dtype.newbyteorder("<"), copy=False))
    for i, row in enumerate(chunks):
        chunk = np.ascontiguousarray(row)
        enc = chunk.data.cast("B") if coder is None else memoryview(coder.encode(chunk)).cast("B")
        index[i] = (offset, enc.nbytes)
        offset += enc.nbytes
        parts.append(enc)
    raw_index = index.tobytes()
    parts.append(raw_index)
    parts.append(np.uint32(google_crc32c.value(raw_index)).astype("<u4").tobytes())
    return parts


def write_parts(location: Location, parts: Sequence[memoryview | bytes], *, fsync: bool = False) -> int:
    """Write ``parts`` back to back as the whole file ``location`` (creating its folders); returns the bytes.

    Local files: ``os.writev`` of the buffers as they are (no joined copy), then ``fsync`` when asked, so the
    page cache is flushed while the caller computes rather than all at commit. Object stores: one PUT.
    """
    total = sum(memoryview(p).nbytes for p in parts)
    if not isinstance(location, LocalLocation):
        location.put_bytes(b"".join(parts))
        return total
    location.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(location, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        views = [memoryview(p).cast("B") for p in parts]
        while views:
            done = os.writev(fd, views[:_IOV_MAX])
            while views and done >= views[0].nbytes:
                done -= views[0].nbytes
                views.pop(0)
            if done:
                views[0] = views[0][done:]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return total


class ShardReader:
    """Row reads of a segment array written by :func:`encode_shard`, without zarr's per-chunk overhead.

    Reads the shard index once per shard file (checked with its crc32c, then cached: committed
    shards never change) and only the byte spans of the wanted chunks. :meth:`read_into` puts
    rows straight into slots of a caller's buffer: codec ``none`` reads each run of chunks that
    lie back to back in the file with ONE ``os.preadv`` into the slots (a single copy, like
    ``cat``), lz4/zstd read the run once and decode each chunk into its slot (numcodecs ``out=``).
    Local files stay open in a small shared cache (:mod:`.gather`); fsspec locations use ranged
    reads. Given the segment's :class:`.integrity.SegmentChecks`, a row its commit part names must
    be there (a missing shard or chunk, a damaged index or short file, a row beyond the array are
    :class:`StoreCorrupt`) and its bytes must match the recorded crc32c; other absent chunks or
    shards read as the fill value 0, as in zarr. Use it only for arrays whose metadata
    :func:`fast_shards_supported` accepts.
    """

    def __init__(self, path: Location, array) -> None:
        self.path = str(path)
        self.name = path.name  # the array's name in its segment (checks are recorded per array name)
        self._dir = path
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self.shard_samples = int(array.shards[0])
        codec = shard_codec(array)
        if codec is None:
            raise ValueError(f"{path}: not a layout ShardReader reads (check fast_shards_supported first)")
        self.codec = codec
        self._coder = chunk_codec(codec)
        self._local = isinstance(path, LocalLocation)
        self._index: dict[int, np.ndarray | None] = {}  # shard -> (s, 2) (offset, nbytes); None: no shard file
        self._paths: dict[int, str] = {}  # shard -> its local file path (built once: pathlib costs per read)
        self._chunk_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop, step = key.indices(self.shape[0])
        if step != 1:
            raise IndexError("ShardReader supports contiguous slices only")
        return self.read(start, max(start, stop))

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as a new array (see :meth:`read_into` for reads into your own buffer)."""
        out = np.empty((max(0, stop - start), *self.shape[1:]), dtype=self.dtype)
        self.read_into(range(start, stop), out)
        return out

    def shard_file(self, k: int) -> Location:
        return self._dir.joinpath("c", str(k), *(["0"] * (len(self.shape) - 1)))

    def _shard_path(self, k: int) -> str:
        path = self._paths.get(k)
        if path is None:
            path = self._paths[k] = str(self.shard_file(k))  # a LocalLocation: a pathlib path
        return path

    def shard_index(self, k: int) -> np.ndarray | None:
        """(offset, nbytes) per chunk of shard ``k`` (uint64, 2**64-1 = absent), or None when the shard is absent."""
        if k in self._index:
            return self._index[k]
        index_bytes = 16 * self.shard_samples
        path = self.shard_file(k)
        try:
            if self._local:
                tail = _local_tail(path, index_bytes + 4)
            else:
                with path.open_ranges() as fh:
                    tail = fh.tail(index_bytes + 4)
        except FileNotFoundError:
            self._index[k] = None
            return None
        if len(tail) != index_bytes + 4 or np.frombuffer(tail[-4:], "<u4")[0] != google_crc32c.value(tail[:-4]):
            raise StoreCorrupt(
                f"{path}: shard index checksum mismatch (the file is damaged); run `sak-cache verify` on the store"
            )
        index = np.frombuffer(tail[:-4], "<u8").reshape(self.shard_samples, 2).copy()
        self._index[k] = index
        return index

    def in_page_cache(self, row: int) -> bool:
        """Whether the first byte of ``row``'s chunk is in the OS page cache (a ``RWF_NOWAIT`` probe; local files).

        True when it cannot tell (remote, absent, no RWF_NOWAIT): callers then skip read hints.
        """
        if not self._local or not hasattr(os, "RWF_NOWAIT"):
            return True
        k = int(row) // self.shard_samples
        index = self.shard_index(k)
        if index is None or index[int(row) - k * self.shard_samples][0] == _ABSENT:
            return True
        return probe_cached(self.shard_file(k), int(index[int(row) - k * self.shard_samples][0]))

    def advise(self, rows: Sequence[int]) -> None:
        """Tell the kernel these rows' chunks will be read soon (``POSIX_FADV_WILLNEED``; local files only).

        A loader calls it for every part of a batch before reading any: the reads of a cold batch are
        then in flight together instead of one chunk at a time per thread.
        """
        if not self._local:
            return
        s = self.shard_samples
        spans: dict[int, list[int]] = {}
        for r in rows:
            k = int(r) // s
            index = self.shard_index(k)
            if index is None:
                continue
            off, nbytes = index[int(r) - k * s]
            if off != _ABSENT:
                span = spans.setdefault(k, [int(off), int(off) + int(nbytes)])
                span[0], span[1] = min(span[0], int(off)), max(span[1], int(off) + int(nbytes))
        for k, (begin, end) in spans.items():
            advise_willneed(self.shard_file(k), begin, end - begin)

    def read_into(self, rows: Sequence[int], out: np.ndarray, slots: Sequence[int] | None = None, *,
                  checks: SegmentChecks | None = None, verify: bool = True) -> None:
        """Row ``rows[j]`` into ``out[slots[j]]`` (``slots`` default: ``0..len(rows)-1``), no other copy.

        ``out`` is a C-contiguous array of this array's dtype and per-row shape; rows may repeat
        and come in any order. ``checks``: the segment's integrity record (see the class doc);
        ``verify=False`` skips the crc32c comparison only (measurements), never the presence checks.
        """
        if out.dtype != self.dtype or tuple(out.shape[1:]) != self.shape[1:] or not out.flags.c_contiguous:
            raise ValueError(f"{self.path}: out must be a C-contiguous {self.dtype} array of rows {self.shape[1:]}, "
                             f"got {out.dtype} {out.shape}")
        slot_list = list(range(len(rows))) if slots is None else [int(j) for j in slots]
        n, s = self.shape[0], self.shard_samples
        by_shard: dict[int, list[tuple[int, int]]] = {}
        for r, j in zip(rows, slot_list, strict=True):
            r = int(r)
            if not 0 <= r < n:
                if checks is not None and checks.named(r):
                    raise checks.corrupt(r, f"its commit part names row {r}, beyond the {n} rows of {self.path}")
                raise IndexError(f"row {r} is outside 0..{n - 1} of {self.path}")
            by_shard.setdefault(r // s, []).append((r - (r // s) * s, j))
        flat = out.reshape(out.shape[0], -1).view(np.uint8) if out.size else out.reshape(out.shape[0], 0)
        if checks is not None and verify and not checks.any_pending(rows, self.name):
            verify = False  # every row's chunk was checked at an earlier read (integrity.READ_CHECKS "first")
        for k, members in by_shard.items():
            try:
                index = self.shard_index(k)
            except StoreCorrupt as exc:
                raise blame(checks, [k * s + local for local, _ in members], str(exc)) from exc
            if index is None:
                named = [k * s + local for local, _ in members if checks is not None and checks.named(k * s + local)]
                if named and checks is not None:
                    raise checks.corrupt(named[0], f"its shard file {self.shard_file(k)} is missing")
                for _, j in members:
                    out[j] = 0
                continue
            chunks = []
            for local, j in members:
                off, nbytes = index[local]
                if off == _ABSENT:
                    if checks is not None and checks.named(k * s + local):
                        raise checks.corrupt(k * s + local, f"its chunk {local} is absent from {self.shard_file(k)}")
                    out[j] = 0
                elif self._coder is None and int(nbytes) != self._chunk_bytes:
                    raise blame(checks, [k * s + local], f"{self.shard_file(k)}: chunk {local} holds {int(nbytes)} "
                                 f"bytes, expected {self._chunk_bytes}")
                else:
                    chunks.append((int(off), int(nbytes), j))
            check = (RunCheck(checks, self.name, flat, {j: k * s + local for local, j in members})
                     if checks is not None and verify and chunks else None)
            check = check or None  # nothing left to check (every chunk checked at an earlier read: integrity.READ_CHECKS)
            chunks.sort()
            try:
                self._read_chunks(k, chunks, flat, check)
            except ChunkCorrupt as exc:  # one chunk: blame its row
                raise blame(checks, [k * s + local for local, j in members if j == exc.slot], str(exc)) from exc
            except SampleCorrupt:  # already names its sample (a crc mismatch)
                raise
            except StoreCorrupt as exc:
                raise blame(checks, [k * s + local for local, _ in members], str(exc)) from exc

    def _read_chunks(self, k: int, chunks: list[tuple[int, int, int]], flat: np.ndarray,
                     check: RunCheck | None = None) -> None:
        """Chunks (offset, nbytes, slot) of shard ``k``, sorted by offset, into rows of ``flat`` (uint8 view).

        ``check`` runs on each run of chunks as soon as it is read: the bytes are still in the CPU cache
        (crc32c measured here at 17.8 GB/s on a 393 KB chunk in cache, 3.5-9 GB/s from memory).
        """
        runs: list[list[tuple[int, int, int]]] = []
        for c in chunks:  # back-to-back chunks form one read
            if runs and runs[-1][-1][0] + runs[-1][-1][1] == c[0] and len(runs[-1]) < _IOV_MAX:
                runs[-1].append(c)
            else:
                runs.append([c])
        if self._coder is None and self._local:  # the hot path: one descriptor for every run of the shard
            local = self._shard_path(k)
            with FILES.open(local) as fd:
                for run in runs:
                    preadv_fd(fd, local, [memoryview(flat[j]) for _, _, j in run], run[0][0])
                    if check is not None:
                        check(run)
            return
        path = self.shard_file(k)
        for run in runs:
            begin, end = run[0][0], run[-1][0] + run[-1][1]
            if self._coder is None:
                views = [memoryview(flat[j]) for _, _, j in run]
                if self._local:
                    preadv_full(path, views, begin)
                else:
                    data = path.read_range(begin, end)
                    _check_length(path, data, end - begin)
                    for (off, nbytes, _), view in zip(run, views, strict=True):
                        view[:] = data[off - begin : off - begin + nbytes]
                if check is not None:
                    check(run)
                continue
            if self._local:
                buf = scratch(end - begin)
                preadv_full(path, [buf], begin)
            else:
                buf = memoryview(path.read_range(begin, end))
                _check_length(path, buf, end - begin)
            for off, nbytes, j in run:
                try:
                    self._coder.decode(buf[off - begin : off - begin + nbytes], out=flat[j])
                except Exception as exc:  # a damaged frame: numcodecs raises RuntimeError/ValueError by codec
                    raise ChunkCorrupt(j, f"{path}: the chunk at byte {off} does not decode as {self.codec} "
                                           f"({type(exc).__name__}: {exc})") from exc
            if check is not None:
                check(run)


def _check_length(path: Location, data, want: int) -> None:
    if len(data) != want:
        raise StoreCorrupt(f"{path}: short read ({len(data)} of {want} bytes; the shard is truncated); "
                           "run `sak-cache verify` on the store")
