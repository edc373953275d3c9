"""One segment writer: stream samples into a fresh Zarr v3 group, then commit it with a Parquet part.

A writer owns ``segments/<segment_id>/`` alone (``segment_id`` = UTC time, host, pid,
random), so writers never share a shard and any number of them may write one store.
Arrays are preallocated to the segment capacity with one chunk per sample, grouped in
shards of ``shard_samples`` samples; the writer buffers samples until a whole shard is
ready and hands it to a small pool of threads (:mod:`.encode_pool`, ``encode_threads``)
that compute its checksums and statistics, encode it and write its files (one job for the
checksums and one per layer, so threads share even one shard), so the caller's compute does
not wait on I/O. At most ``queue_size`` shards (default: one per thread) wait beside those
being encoded, and results are merged in row order at commit, so the segment's bytes and
statistics do not depend on the number of threads.

int8 stores: ``append`` takes each layer either as float values (quantized here, on the host,
with :func:`.quant.quantize`) or as a :class:`.quant.QuantizedBlock` already quantized on the
teacher's device; codes use the spec's codec, scale and offset arrays none (float32 scales do
not compress); prefix tokens are stored as float16. Statistics are those of the dequantized
values unless the caller passes the batch's own (``stats=``), and :meth:`SegmentWriter.add_fidelity`
records the fidelity the caller measured (written to the segment's statistics file).

Commit order, which makes a kill at any point safe:
1. the last partial shard is written, the arrays are shrunk to the rows written,
   the files are fsynced;
2. ``stats/<segment_id>.json`` is written atomically;
3. ``manifest/part-<segment_id>.parquet`` is written atomically, LAST.
Until step 3 the segment does not exist for readers (``gc`` may remove it).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch

from ...manifests.errors import SakError
from ...manifests.schemas import COMMIT_SCHEMA, STATUS_FAILED, STATUS_OK, table_from_rows
from ..storage import Location, as_location, write_parquet_atomic
from .arrays import (
    BF16_ATTR,
    PREFIX_AXES,
    SAMPLE_AXES,
    prefix_dtype,
    sample_arrays,
    storage_numpy_dtype,
    to_storage,
)
from .encode_pool import DEFAULT_ENCODE_THREADS, EncodePool, PoolFailed, ShardEncoder
from .quant import QuantizedBlock, quantize, stored_parts
from .shards import compressors_for, fast_shards_supported
from .spec import FeatureSpec
from .stats import FIDELITY_KINDS, Fidelity, FidelitySum, LayerStats, stats_to_json

if TYPE_CHECKING:
    import zarr
    from zarr.core.common import JSON

log = logging.getLogger(__name__)

#: Upper bound of samples per shard, and of uncompressed bytes per shard of one array.
MAX_SHARD_SAMPLES = 64
MAX_SHARD_BYTES = 64 << 20

#: Segment ids of this process's writers that are still open (gc must not touch them).
ACTIVE_SEGMENTS: set[str] = set()


def this_host() -> str:
    """This machine's name as it appears in segment ids."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:40] or "host"


def new_segment_id() -> str:
    """``<UTC yyyymmddThhmmssffffffZ>-<host>-<pid>-<random hex>``: sorts by creation time."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{this_host()}-{os.getpid()}-{secrets.token_hex(4)}"


def parse_segment_id(segment_id: str) -> tuple[str, int] | None:
    """(host, pid) of a segment id written by :func:`new_segment_id`, or None if it has another form."""
    m = re.fullmatch(r"\d{8}T\d{12}Z-(.+)-(\d+)-[0-9a-f]+", segment_id)
    return (m.group(1), int(m.group(2))) if m else None


def write_text_atomic(path: Location | str | os.PathLike[str], text: str) -> Location:
    """Write ``text`` so readers see all or nothing: temp + fsync + ``os.replace`` locally, one PUT remotely."""
    location = as_location(path)
    location.write_text_atomic(text)
    return location


def shard_samples_for(spec: FeatureSpec, capacity: int) -> int:
    """Samples per shard: a power of two <= 64 whose shard of one layer stays under 64 MiB uncompressed."""
    h, w = spec.grid
    sample_bytes = h * w * spec.width * storage_numpy_dtype(spec.dtype).itemsize
    s = 1
    while s * 2 <= MAX_SHARD_SAMPLES and s * 2 * sample_bytes <= MAX_SHARD_BYTES:
        s *= 2
    while s > 1 and s // 2 >= capacity:
        s //= 2
    return s


@dataclass(frozen=True)
class SampleKey:
    """What a stored sample is: content hash, provenance, augmentation view and its replayable parameters."""

    image_sha256: str
    sample_id: str
    source: str
    view: int = 0
    view_params: str = "{}"


@dataclass
class WriteReport:
    segment_id: str
    n_ok: int = 0
    n_failed: int = 0
    bytes_written: int = 0
    write_seconds: float = 0.0  # time the encode threads spent checksumming, reducing and writing (summed over threads)
    encode_seconds: float = 0.0  # of which encoding shards (compression; summed over threads)
    raw_bytes: int = 0  # stored bytes handed to the encoder (before compression)
    encoded_bytes: int = 0  # bytes of the shard files it wrote
    encode_threads: int = 1
    table: pa.Table = field(default_factory=COMMIT_SCHEMA.empty_table)


StatsArg = Sequence[LayerStats] | Mapping[int, LayerStats] | None


class SegmentWriter:
    """Streams samples of one store into one new segment; :meth:`commit` makes them exist."""

    def __init__(
        self,
        *,
        spec: FeatureSpec,
        store_path: Location | str | os.PathLike[str],
        capacity: int,
        segment_id: str | None = None,
        queue_size: int | None = None,
        durable: bool = True,
        encode_threads: int | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"segment capacity must be >= 1, got {capacity}")
        self.spec = spec
        self.segment_id = segment_id or new_segment_id()
        self.store_path = as_location(store_path)
        self.segment_path = self.store_path / "segments" / self.segment_id
        self.part_path = self.store_path / "manifest" / f"part-{self.segment_id}.parquet"
        self.stats_path = self.store_path / "stats" / f"{self.segment_id}.json"
        self.capacity = capacity
        self.shard_samples = shard_samples_for(spec, capacity)
        self.durable = durable
        self.encode_threads = encode_threads or DEFAULT_ENCODE_THREADS
        self.queue_size = queue_size if queue_size is not None else self.encode_threads
        self._layout = sample_arrays(spec)  # (name, per-sample shape, dtype) in checksum order
        self._names = [n for n, _, _ in self._layout]
        self._arrays: dict[str, zarr.Array] | None = None
        self._rows: list[dict] = []
        self._failed: list[dict] = []
        self._buf: dict[str, list[np.ndarray]] = {n: [] for n in self._names}
        self._need_stats: list[np.ndarray] = []  # per buffered batch: rows whose stats the caller did not give
        self._buffered = 0
        self._flushed = 0  # rows handed to the encode pool
        self._given_stats = {i: LayerStats.empty(spec.width) for i in spec.layers}
        self._fidelity: Fidelity = {}
        self._encoder: ShardEncoder | None = None
        self._pool: EncodePool | None = None
        self._busy = 0.0
        self._closed = False

    # -- public -----------------------------------------------------------------
    @property
    def n_ok(self) -> int:
        return len(self._rows)

    @property
    def n_failed(self) -> int:
        return len(self._failed)

    @property
    def free(self) -> int:
        return self.capacity - self.n_ok

    def append(self, keys: Sequence[SampleKey], layers: Sequence, prefix: Sequence[np.ndarray] | None = None, *,
               stats: StatsArg = None) -> None:
        """Add a batch: ``layers[j]`` is (B, h, w, C) for ``spec.layers[j]``; ``prefix[j]`` (B, p, C) when kept.

        Float stores: values may be float32 (converted here) or already in the store's on-disk dtype.
        int8 stores: each ``layers[j]`` is float values (quantized here) or a :class:`.quant.QuantizedBlock`
        (numpy or torch) already quantized; its parts are stored as given. ``stats``: the batch's own
        per-layer statistics (a sequence in ``spec.layers`` order, or {layer: stats}), e.g. computed on
        the device; without it they are computed from the stored (for int8: dequantized) values.
        Arrays already in the on-disk dtype are kept by reference until their shard is written: do not
        reuse their memory (e.g. a pinned staging buffer) before :meth:`commit`.
        """
        self._check_open()
        b = len(keys)
        if b == 0:
            return
        if self.n_ok + b > self.capacity:
            raise ValueError(f"segment {self.segment_id} holds {self.capacity} samples; {self.n_ok} + {b} do not fit")
        if len(layers) != len(self.spec.layers):
            raise ValueError(f"expected {len(self.spec.layers)} layer arrays (layers {self.spec.layers}), got {len(layers)}")
        blocks = [part for layer, arr in zip(self.spec.layers, layers, strict=True) for part in self._layer_blocks(layer, arr, b)]
        if self.spec.keep_prefix:
            if prefix is None:
                raise ValueError("the spec keeps prefix tokens; pass prefix arrays")
            blocks += self._validate(prefix, (b, self.spec.num_prefix_tokens, self.spec.width), "prefix")
        given = self._given(stats) if stats is not None else None
        if self._arrays is None:
            self._create_arrays()
        for k in keys:
            self._rows.append({**k.__dict__, "row": len(self._rows)})
        for name, block in zip(self._names, blocks, strict=True):
            self._buf[name].append(block)
        if given is not None:
            for layer, st in given.items():
                self._given_stats[layer] = self._given_stats[layer].merge(st)
        self._need_stats.append(np.full(b, given is None))
        self._buffered += b
        while self._buffered >= self.shard_samples:
            self._flush(self.shard_samples)

    def add_failed(self, key: SampleKey, error: str) -> None:
        self._check_open()
        self._failed.append({**key.__dict__, "row": None, "checksum": None, "crc32c": None, "status": STATUS_FAILED, "error": error})

    def add_fidelity(self, layer: int, kind: str, count: int, total: float, minimum: float) -> None:
        """Record measured fidelity of ``count`` tokens of ``layer``: ``total`` = sum of their cosines, ``minimum`` the lowest.

        ``kind``: ``raw`` or ``std`` (channels standardized, see :func:`.quant.token_cosines`). Accumulated over
        the segment and written to ``stats/<segment_id>.json``; ``FeatureStore.fidelity()`` merges segments.
        """
        self._check_open()
        if layer not in self.spec.layers or kind not in FIDELITY_KINDS:
            raise ValueError(f"fidelity of layer {layer} kind {kind!r}: layer must be one of {self.spec.layers}, "
                             f"kind one of {FIDELITY_KINDS}")
        item = FidelitySum(int(count), float(total), float(minimum))
        kinds = self._fidelity.setdefault(layer, {})
        kinds[kind] = kinds[kind].merge(item) if kind in kinds else item

    def commit(self) -> WriteReport:
        """Write what is left, then stats, then the commit record (last). Returns what was committed."""
        self._check_open()
        try:
            if self._buffered:
                self._flush(self._buffered)
            self._drain()
            report = WriteReport(self.segment_id, n_ok=self.n_ok, n_failed=self.n_failed, encode_threads=self.encode_threads)
            if not self._rows and not self._failed:
                return report
            if self._rows:
                self._finish_arrays()
                assert self._encoder is not None
                stats = self._encoder.merged_stats(self._given_stats)
                write_text_atomic(self.stats_path, stats_to_json(self.segment_id, stats, self._fidelity))
            sums = self._encoder.checksums if self._encoder is not None else {}
            crcs = self._encoder.crcs if self._encoder is not None else {}
            rows = [
                {**r, "segment_id": self.segment_id, "checksum": sums[r["row"]], "crc32c": crcs[r["row"]],
                 "status": STATUS_OK, "error": None}
                for r in self._rows
            ] + [{**r, "segment_id": self.segment_id} for r in self._failed]
            table = table_from_rows(rows, COMMIT_SCHEMA)
            write_parquet_atomic(table, self.part_path, COMMIT_SCHEMA)  # last: makes the segment exist
            report.table = table
            report.write_seconds = self._busy
            if self._encoder is not None:  # None: only failed rows
                report.encode_seconds, report.raw_bytes, report.encoded_bytes = self._encoder.totals()
            report.bytes_written = self.segment_path.tree_bytes() + self.part_path.stat().st_size + (
                self.stats_path.stat().st_size if self._rows else 0
            )
            log.debug("committed segment %s: %d ok, %d failed", self.segment_id, self.n_ok, self.n_failed)
            return report
        finally:
            if self._pool is not None:  # a failed commit: stop the threads
                self._pool.abort()
                self._pool = None
            self._closed = True
            ACTIVE_SEGMENTS.discard(self.segment_id)

    def abort(self) -> None:
        """Stop without committing: the segment stays garbage for ``gc``."""
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            self._pool.abort()
            self._pool = None
        ACTIVE_SEGMENTS.discard(self.segment_id)

    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    # -- internals --------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise SakError(f"segment writer {self.segment_id} is already committed or aborted; start a new one")
        error = self._pool.error if self._pool is not None else None
        if error is not None:
            raise SakError(f"writing segment {self.segment_id} failed: {error}") from error

    def _validate(self, arrays: Sequence[np.ndarray], shape: tuple[int, ...], what: str) -> list[np.ndarray]:
        if len(arrays) != len(self.spec.layers):
            raise ValueError(f"expected {len(self.spec.layers)} {what} arrays (layers {self.spec.layers}), got {len(arrays)}")
        out = []
        dtype = prefix_dtype(self.spec.dtype) if what == "prefix" else self.spec.dtype
        for layer, arr in zip(self.spec.layers, arrays, strict=True):
            if tuple(arr.shape) != shape:
                raise ValueError(f"{what} {layer}: expected shape {shape}, got {tuple(arr.shape)}")
            out.append(to_storage(arr, dtype))
        return out

    def _layer_blocks(self, layer: int, arr, b: int) -> list[np.ndarray]:
        """One layer of a batch -> its on-disk arrays (stored_parts order), shapes checked."""
        parts = stored_parts(self.spec, layer)
        if self.spec.dtype != "int8":
            return self._validate_one(layer, [to_storage(np.asarray(arr), self.spec.dtype)], parts, b)
        if isinstance(arr, QuantizedBlock):
            block = arr.cpu_numpy()
        else:
            values = arr.detach().cpu() if isinstance(arr, torch.Tensor) else torch.from_numpy(np.asarray(arr, dtype=np.float32))
            block = quantize(values, self.spec.quant or "").cpu_numpy()
        if len(block.parts) != len(parts):
            raise ValueError(f"layer {layer}: a block of {len(block.parts)} parts for quant {self.spec.quant!r}, which stores "
                             f"{[n for n, _, _ in parts]}; quantize with the store's mode")
        return self._validate_one(layer, [np.ascontiguousarray(p) for p in block.parts], parts, b)

    @staticmethod
    def _validate_one(layer: int, got: list[np.ndarray], parts, b: int) -> list[np.ndarray]:
        for arr, (name, shape, dtype) in zip(got, parts, strict=True):
            if tuple(arr.shape) != (b, *shape) or arr.dtype != dtype:
                raise ValueError(f"layer {layer}: {name}: expected shape {(b, *shape)} of {dtype}, "
                                 f"got {tuple(arr.shape)} of {arr.dtype}")
        return got

    def _given(self, stats) -> dict[int, LayerStats]:
        given = dict(stats) if isinstance(stats, Mapping) else dict(zip(self.spec.layers, stats, strict=True))
        if sorted(given) != sorted(self.spec.layers) or any(st.channels != self.spec.width for st in given.values()):
            raise ValueError(f"stats must hold one LayerStats of {self.spec.width} channels per layer {self.spec.layers}")
        return given

    def _create_arrays(self) -> None:
        import zarr

        group = zarr.open_group(
            self.segment_path.zarr_store(read_only=False),
            mode="w-",
            attributes={"sak_segment_id": self.segment_id, "sak_spec_id": self.spec.spec_id, "sak_capacity": self.capacity},
        )
        s = self.shard_samples
        arrays = {}
        codecs = {}
        for name, shape, dtype in self._layout:
            is_layer = name.startswith("layer_")
            scale = not is_layer and not name.startswith("prefix_")  # int8 scales and offsets: float32, never compressed
            attrs: dict[str, JSON] = {BF16_ATTR: self.spec.dtype if is_layer else ("float32" if scale else prefix_dtype(self.spec.dtype))}
            if is_layer and self.spec.quant is not None:
                attrs["sak_quant"] = self.spec.quant
            codecs[name] = "none" if scale else self.spec.codec
            arrays[name] = group.create_array(
                name,
                shape=(self.capacity, *shape),
                chunks=(1, *shape),
                shards=(s, *shape),
                dtype=dtype,
                compressors=compressors_for(codecs[name], dtype.itemsize),
                fill_value=0,
                dimension_names=PREFIX_AXES if name.startswith("prefix_") else SAMPLE_AXES,
                attributes=attrs,
            )
        self._arrays = arrays
        fast = all(fast_shards_supported(a) for a in arrays.values())
        ACTIVE_SEGMENTS.add(self.segment_id)
        self._encoder = ShardEncoder(self.spec, self.segment_path, self.shard_samples, self._names, codecs, arrays, fast=fast,
                                     durable=self.durable)
        waiting = self.queue_size * self._encoder.jobs_per_shard  # queue_size counts shards, the pool counts jobs
        self._pool = EncodePool(self._encoder, threads=self.encode_threads, queue_size=waiting,
                                name=f"sak-writer-{self.segment_id[-8:]}")

    def _flush(self, n: int) -> None:
        start = self._flushed
        block: dict[str, list[np.ndarray]] = {}
        for name in self._names:  # the first n rows as pieces (views of the appended batches, no joined copy)
            taken: list[np.ndarray] = []
            rest = self._buf[name]
            left = n
            while left:
                piece = rest.pop(0)
                taken.append(piece[:left])
                if piece.shape[0] > left:
                    rest.insert(0, piece[left:])
                left -= taken[-1].shape[0]
            block[name] = taken
        need = np.concatenate(self._need_stats) if len(self._need_stats) > 1 else self._need_stats[0]
        self._need_stats = [need[n:]] if need.shape[0] > n else []
        self._buffered -= n
        self._flushed += n
        assert self._pool is not None  # _create_arrays started it
        assert self._encoder is not None
        try:
            for job in self._encoder.jobs(start, block, need[:n]):
                self._pool.submit(job)
        except PoolFailed:
            self._check_open()
            raise

    def _drain(self) -> None:
        if self._pool is not None:
            busy = self._pool.busy_seconds
            try:
                self._pool.close()
            except PoolFailed as exc:
                raise SakError(f"writing segment {self.segment_id} failed: {exc}") from exc.__cause__
            finally:
                self._busy = max(busy, self._pool.busy_seconds)
                self._pool = None

    def _finish_arrays(self) -> None:
        assert self._arrays is not None
        for arr in self._arrays.values():
            if arr.shape[0] != self.n_ok:
                arr.resize((self.n_ok, *arr.shape[1:]))
        if self.durable:
            self.segment_path.fsync_tree()
