"""A small pool of daemon threads that run a segment writer's shard jobs (:class:`ShardEncoder`: checksum, stats, encode, write).

At paper size one shard of one layer is tens of MB (SAM 64x64x768 is 6.3 MB per sample in
float16) and a GPU produces them at ~1 GB/s, so one encoding thread per writer bounds extraction.
Jobs are independent (each writes its own shard files and returns its own results), so any
number of threads may run them; memory stays bounded because :meth:`EncodePool.submit` waits
while ``queue_size`` jobs are already waiting (plus one running per thread).

The first exception a job raises is kept in :attr:`EncodePool.error`; later jobs are skipped
and :meth:`submit` / :meth:`close` raise it, so a failing write surfaces on the caller's next call.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..storage import Location
from .arrays import decode_stored, sample_checksum, sample_crcs
from .quant import block_from_parts, dequantize_block, stored_parts
from .shards import encode_shard_parts, write_parts
from .stats import LayerStats

#: Threads per writer unless told otherwise: enough to keep up with a GPU's output, few enough for a shared box.
DEFAULT_ENCODE_THREADS = max(1, min(4, os.cpu_count() or 1))


class PoolFailed(Exception):
    """Raised by :meth:`EncodePool.submit` / :meth:`EncodePool.close` after a job failed; ``__cause__`` is the job's error."""


class EncodePool:
    """Run ``job(item)`` on ``threads`` daemon threads; at most ``queue_size`` items wait (submit blocks)."""

    def __init__(self, job: Callable[[Any], None], *, threads: int, queue_size: int, name: str) -> None:
        if threads < 1:
            raise ValueError(f"encode_threads must be >= 1, got {threads}")
        self._job = job
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self.error: BaseException | None = None
        self._stopped = False
        self._lock = threading.Lock()
        self.busy_seconds = 0.0  # summed over threads: time spent running jobs
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{k}", daemon=True) for k in range(threads)]
        for t in self._threads:
            t.start()

    def _raise(self) -> None:
        if self.error is not None:
            raise PoolFailed(str(self.error)) from self.error

    def submit(self, item: Any) -> None:
        """Queue one job; waits while the queue is full, waking up to notice a failed job (then raises)."""
        while True:
            self._raise()
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Wait for every queued job, stop the threads; raises if any job failed."""
        self._shutdown()
        self._raise()

    def abort(self) -> None:
        """Skip the jobs still queued, stop the threads (errors are dropped: the segment is abandoned)."""
        self._stopped = True
        self._shutdown()

    def _shutdown(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()
        self._threads = []

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self.error is not None or self._stopped:
                continue
            t0 = time.perf_counter()
            try:
                self._job(item)
            except BaseException as exc:  # surfaced to the caller on its next call
                with self._lock:
                    if self.error is None:
                        self.error = exc
            finally:
                with self._lock:
                    self.busy_seconds += time.perf_counter() - t0


def rows(pieces: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
    """The rows of a block given as pieces (consecutive row ranges), in order."""
    for piece in pieces:
        yield from piece


def row_range(pieces: Sequence[np.ndarray], lo: int, hi: int) -> np.ndarray:
    """Rows lo:hi of a block given as pieces (a copy only when they span several pieces)."""
    out, at = [], 0
    for piece in pieces:
        a, b = max(lo - at, 0), min(hi - at, piece.shape[0])
        if a < b:
            out.append(piece[a:b])
        at += piece.shape[0]
    return joined(out) if out else pieces[0][:0]


def joined(pieces: Sequence[np.ndarray]) -> np.ndarray:
    """A block given as pieces, as one array (a copy only when there are several pieces)."""
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=0)


class ShardEncoder:
    """The jobs of one segment's shards, given ``(start row, {array name: block pieces}, rows needing stats)``.

    A block is a list of arrays holding consecutive rows (the batches as appended: never joined into
    one copy for writing; chunks are written straight from them).

    :meth:`jobs` splits one shard into independent jobs, so the pool's threads share even a single
    shard: the samples' checksums (sha256 and a crc32c per array, every array, in ``names`` order), then per layer its statistics
    (of the rows whose stats the caller did not give; of what readers get: dequantized int8, widened
    bf16) and the encoding and writing of its arrays, then the prefix arrays. Layouts the encoder does
    not write itself go through zarr. Results are kept per shard and merged in row order.
    """

    def __init__(self, spec, segment_path: Location, shard_samples: int, names: list[str], codecs: Mapping[str, str],
                 arrays: Mapping, *, fast: bool, durable: bool = False) -> None:
        self.spec, self.segment_path, self.shard_samples, self.durable = spec, segment_path, shard_samples, durable
        self.names, self.codecs, self.arrays, self.fast = list(names), dict(codecs), arrays, fast
        self.layer_parts = {i: [n for n, _, _ in stored_parts(spec, i)] for i in spec.layers}
        owned = {n for parts in self.layer_parts.values() for n in parts}
        self.other_arrays = [n for n in self.names if n not in owned]  # prefix tokens
        self.checksums: dict[int, str] = {}
        self.crcs: dict[int, list[int]] = {}  # row -> crc32c per array in ``names`` order (checked on every read)
        self.shard_stats: dict[tuple[int, int], LayerStats] = {}  # (shard start, layer) -> stats
        self._totals = [0.0, 0, 0]  # encode seconds, raw bytes, encoded bytes
        self._lock = threading.Lock()

    @property
    def jobs_per_shard(self) -> int:
        return 1 + len(self.layer_parts) + (1 if self.other_arrays else 0)

    def jobs(self, start: int, block: Mapping[str, Sequence[np.ndarray]], need: np.ndarray) -> list[tuple]:
        """The pool items of one shard (each one call of this encoder)."""
        out: list[tuple] = [("checksums", start, block, None, None)]
        out += [("layer", start, block, need, layer) for layer in self.layer_parts]
        if self.other_arrays:
            out.append(("other", start, block, None, None))
        return out

    def totals(self) -> tuple[float, int, int]:
        """(encode seconds summed over threads, stored bytes before encoding, bytes of the encoded shards)."""
        return float(self._totals[0]), int(self._totals[1]), int(self._totals[2])

    def values(self, block: Mapping[str, Sequence[np.ndarray]], layer: int, lo: int, hi: int) -> np.ndarray:
        """What readers get for rows lo:hi of a block."""
        parts = [row_range(block[n], lo, hi) for n in self.layer_parts[layer]]
        if self.spec.dtype == "int8":
            return dequantize_block(block_from_parts(self.spec.quant or "", parts))
        return decode_stored(parts[0], self.spec.dtype)

    def stats(self, block: Mapping[str, Sequence[np.ndarray]], need: np.ndarray, layer: int) -> LayerStats:
        rows = np.flatnonzero(need)
        h, w = self.spec.grid
        step = max(1, (1 << 22) // (h * w * self.spec.width))  # float64 pieces of at most 4M values
        st = LayerStats.empty(self.spec.width)
        for k in range(0, len(rows), step):
            sel = rows[k : k + step]
            lo, hi = int(sel[0]), int(sel[-1]) + 1
            st = st.merge(LayerStats.from_values(self.values(block, layer, lo, hi)[sel - lo]))
        return st

    def __call__(self, item) -> None:
        kind, start, block, need, layer = item
        if kind == "checksums":
            ordered = [list(rows(block[n])) for n in self.names]
            samples = list(zip(*ordered, strict=True))
            sums = {start + i: sample_checksum(sample) for i, sample in enumerate(samples)}
            crcs = {start + i: sample_crcs(sample) for i, sample in enumerate(samples)}
            with self._lock:
                self.checksums.update(sums)
                self.crcs.update(crcs)
            return
        if kind == "layer":
            st = self.stats(block, need, layer)
            with self._lock:
                self.shard_stats[(start, layer)] = st
        self.write(start, block, self.layer_parts[layer] if kind == "layer" else self.other_arrays)

    def write(self, start: int, block: Mapping[str, Sequence[np.ndarray]], names: list[str]) -> None:
        """Encode and write the shard of each named array (one whole file each; object stores: one PUT each)."""
        encode_s, raw, encoded = 0.0, 0, 0
        s = self.shard_samples
        for name in names:
            pieces = block[name]
            n = sum(p.shape[0] for p in pieces)
            raw += sum(p.nbytes for p in pieces)
            t0 = time.perf_counter()
            if not self.fast:
                self.arrays[name][start : start + n] = joined(pieces)
                encode_s += time.perf_counter() - t0
                continue
            if start % s or n > s:
                raise AssertionError(f"block at row {start} of {n} rows is not one shard of {s}")
            parts = encode_shard_parts(pieces, s, self.codecs[name])
            encode_s += time.perf_counter() - t0
            path = self.segment_path / name / "/".join(["c", str(start // s)] + ["0"] * (pieces[0].ndim - 1))
            encoded += write_parts(path, parts, fsync=self.durable)  # writev, no joined copy; fsync overlaps compute
        with self._lock:
            self._totals[0] += encode_s
            self._totals[1] += raw
            self._totals[2] += encoded

    def merged_stats(self, given: Mapping[int, LayerStats]) -> dict[int, LayerStats]:
        """Shard statistics merged in row order, then ``given`` (the caller's): the same for any thread count."""
        total = {i: LayerStats.empty(self.spec.width) for i in self.spec.layers}
        for start, layer in sorted(self.shard_stats):
            total[layer] = total[layer].merge(self.shard_stats[(start, layer)])
        return {i: total[i].merge(given[i]) for i in self.spec.layers}
