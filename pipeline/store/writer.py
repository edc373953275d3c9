"""One segment writer: stream samples into a fresh Zarr v3 group, then commit it with a Parquet part.

A writer owns ``segments/<segment_id>/`` alone (``segment_id`` = UTC time, host, pid,
random), so writers never share a shard and any number of them may write one store.
Arrays are preallocated to the segment capacity with one chunk per sample, grouped in
shards of ``shard_samples`` samples; the writer buffers samples until a whole shard is
ready and hands it to a background thread that computes checksums and statistics and
writes it (compression happens there), so the caller's compute does not wait on I/O.
The queue is bounded, so memory stays at a couple of shards.

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
import queue
import re
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from ...manifests.errors import SakError
from ...manifests.schemas import COMMIT_SCHEMA, STATUS_FAILED, STATUS_OK, table_from_rows
from ..storage import Location, as_location, write_parquet_atomic
from .arrays import (
    BF16_ATTR,
    PREFIX_AXES,
    SAMPLE_AXES,
    decode_stored,
    layer_array_name,
    prefix_array_name,
    sample_checksum,
    storage_numpy_dtype,
    to_storage,
)
from .shards import compressors_for, encode_shard, fast_shards_supported
from .spec import FeatureSpec
from .stats import LayerStats, stats_to_json

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
    write_seconds: float = 0.0  # time the background thread spent checksumming, reducing and writing
    table: pa.Table = field(default_factory=COMMIT_SCHEMA.empty_table)


class SegmentWriter:
    """Streams samples of one store into one new segment; :meth:`commit` makes them exist."""

    def __init__(
        self,
        *,
        spec: FeatureSpec,
        store_path: Location | str | os.PathLike[str],
        capacity: int,
        segment_id: str | None = None,
        queue_size: int = 2,
        durable: bool = True,
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
        self._names = [layer_array_name(i) for i in spec.layers]
        if spec.keep_prefix:
            self._names += [prefix_array_name(i) for i in spec.layers]
        self._arrays: dict[str, zarr.Array] | None = None
        self._fast_shards = False
        self._rows: list[dict] = []
        self._failed: list[dict] = []
        self._buf: dict[str, list[np.ndarray]] = {n: [] for n in self._names}
        self._buffered = 0
        self._flushed = 0  # rows handed to the background thread
        self._checksums: dict[int, str] = {}
        self._stats = {i: LayerStats.empty(spec.width) for i in spec.layers}
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._error: BaseException | None = None
        self._busy = 0.0
        self._thread: threading.Thread | None = None
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

    def append(self, keys: Sequence[SampleKey], layers: Sequence[np.ndarray], prefix: Sequence[np.ndarray] | None = None) -> None:
        """Add a batch: ``layers[j]`` is (B, h, w, C) for ``spec.layers[j]``; ``prefix[j]`` (B, p, C) when kept.

        Values may be float32 (converted here) or already in the store's on-disk dtype.
        """
        self._check_open()
        b = len(keys)
        if b == 0:
            return
        if self.n_ok + b > self.capacity:
            raise ValueError(f"segment {self.segment_id} holds {self.capacity} samples; {self.n_ok} + {b} do not fit")
        h, w = self.spec.grid
        blocks = self._validate(layers, (b, h, w, self.spec.width), "layer")
        if self.spec.keep_prefix:
            if prefix is None:
                raise ValueError("the spec keeps prefix tokens; pass prefix arrays")
            blocks += self._validate(prefix, (b, self.spec.num_prefix_tokens, self.spec.width), "prefix")
        if self._arrays is None:
            self._create_arrays()
        for k in keys:
            self._rows.append({**k.__dict__, "row": len(self._rows)})
        for name, block in zip(self._names, blocks, strict=True):
            self._buf[name].append(block)
        self._buffered += b
        while self._buffered >= self.shard_samples:
            self._flush(self.shard_samples)

    def add_failed(self, key: SampleKey, error: str) -> None:
        self._check_open()
        self._failed.append({**key.__dict__, "row": None, "checksum": None, "status": STATUS_FAILED, "error": error})

    def commit(self) -> WriteReport:
        """Write what is left, then stats, then the commit record (last). Returns what was committed."""
        self._check_open()
        try:
            if self._buffered:
                self._flush(self._buffered)
            self._drain()
            report = WriteReport(self.segment_id, n_ok=self.n_ok, n_failed=self.n_failed)
            if not self._rows and not self._failed:
                return report
            if self._rows:
                self._finish_arrays()
                write_text_atomic(self.stats_path, stats_to_json(self.segment_id, self._stats))
            rows = [
                {**r, "segment_id": self.segment_id, "checksum": self._checksums[r["row"]], "status": STATUS_OK, "error": None}
                for r in self._rows
            ] + [{**r, "segment_id": self.segment_id} for r in self._failed]
            table = table_from_rows(rows, COMMIT_SCHEMA)
            write_parquet_atomic(table, self.part_path, COMMIT_SCHEMA)  # last: makes the segment exist
            report.table = table
            report.write_seconds = self._busy
            report.bytes_written = self.segment_path.tree_bytes() + self.part_path.stat().st_size + (
                self.stats_path.stat().st_size if self._rows else 0
            )
            log.debug("committed segment %s: %d ok, %d failed", self.segment_id, self.n_ok, self.n_failed)
            return report
        finally:
            self._closed = True
            ACTIVE_SEGMENTS.discard(self.segment_id)

    def abort(self) -> None:
        """Stop without committing: the segment stays garbage for ``gc``."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
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
        if self._error is not None:
            raise SakError(f"writing segment {self.segment_id} failed: {self._error}") from self._error

    def _validate(self, arrays: Sequence[np.ndarray], shape: tuple[int, ...], what: str) -> list[np.ndarray]:
        if len(arrays) != len(self.spec.layers):
            raise ValueError(f"expected {len(self.spec.layers)} {what} arrays (layers {self.spec.layers}), got {len(arrays)}")
        out = []
        for layer, arr in zip(self.spec.layers, arrays, strict=True):
            if tuple(arr.shape) != shape:
                raise ValueError(f"{what} {layer}: expected shape {shape}, got {tuple(arr.shape)}")
            out.append(to_storage(arr, self.spec.dtype))
        return out

    def _create_arrays(self) -> None:
        import zarr

        group = zarr.open_group(
            self.segment_path.zarr_store(read_only=False),
            mode="w-",
            attributes={"sak_segment_id": self.segment_id, "sak_spec_id": self.spec.spec_id, "sak_capacity": self.capacity},
        )
        dtype = storage_numpy_dtype(self.spec.dtype)
        attrs: dict[str, JSON] = {BF16_ATTR: self.spec.dtype}
        h, w = self.spec.grid
        c, p, s = self.spec.width, self.spec.num_prefix_tokens, self.shard_samples
        arrays = {}
        for name in self._names:
            inner = (1, h, w, c) if name.startswith("layer_") else (1, p, c)
            arrays[name] = group.create_array(
                name,
                shape=(self.capacity, *inner[1:]),
                chunks=inner,
                shards=(s, *inner[1:]),
                dtype=dtype,
                compressors=compressors_for(self.spec.codec, dtype.itemsize),
                fill_value=0,
                dimension_names=SAMPLE_AXES if name.startswith("layer_") else PREFIX_AXES,
                attributes=attrs,
            )
        self._arrays = arrays
        self._fast_shards = all(fast_shards_supported(a) for a in arrays.values())
        ACTIVE_SEGMENTS.add(self.segment_id)
        self._thread = threading.Thread(target=self._worker, name=f"sak-writer-{self.segment_id[-8:]}", daemon=True)
        self._thread.start()

    def _flush(self, n: int) -> None:
        start = self._flushed
        block = {}
        for name in self._names:
            joined = np.concatenate(self._buf[name], axis=0) if len(self._buf[name]) > 1 else self._buf[name][0]
            block[name] = joined[:n]
            self._buf[name] = [joined[n:]] if joined.shape[0] > n else []
        self._buffered -= n
        self._flushed += n
        while True:  # bounded: wait for the writer, but wake up to notice its failure
            if self._error is not None:
                self._check_open()
            try:
                self._queue.put((start, block), timeout=0.5)
                break
            except queue.Full:
                continue

    def _drain(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise SakError(f"writing segment {self.segment_id} failed: {self._error}") from self._error

    def _worker(self) -> None:
        arrays = self._arrays
        assert arrays is not None  # _create_arrays sets them before it starts this thread
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue
            t0 = time.perf_counter()
            try:
                start, block = item
                ordered = [block[n] for n in self._names]
                for i in range(ordered[0].shape[0]):
                    self._checksums[start + i] = sample_checksum([a[i] for a in ordered])
                for layer in self.spec.layers:
                    values = decode_stored(block[layer_array_name(layer)], self.spec.dtype)
                    self._stats[layer] = self._stats[layer].merge(LayerStats.from_blocks(values))
                for name, arr in block.items():
                    if self._fast_shards:
                        self._write_shard(name, start, arr)
                    else:
                        arrays[name][start : start + arr.shape[0]] = arr
            except BaseException as exc:  # surfaced to the caller on its next call
                self._error = exc
            finally:
                self._busy += time.perf_counter() - t0

    def _write_shard(self, name: str, start: int, block: np.ndarray) -> None:
        """Write one whole shard file (blocks always start on a shard boundary)."""
        s = self.shard_samples
        if start % s or block.shape[0] > s:
            raise AssertionError(f"block at row {start} of {block.shape[0]} rows is not one shard of {s}")
        key = "/".join(["c", str(start // s)] + ["0"] * (block.ndim - 1))
        path = self.segment_path / name / key
        path.put_bytes(encode_shard(block, s, self.spec.codec))  # local: a plain write; object stores: one PUT

    def _finish_arrays(self) -> None:
        assert self._arrays is not None
        for arr in self._arrays.values():
            if arr.shape[0] != self.n_ok:
                arr.resize((self.n_ok, *arr.shape[1:]))
        if self.durable:
            self.segment_path.fsync_tree()
