"""Checked reads: what every read of a committed sample compares its bytes with, and the error it raises.

A commit part records per ok row the sha256 of the sample's stored bytes (``checksum``) and, since
issue 14, one crc32c per stored array (``crc32c``, :func:`.arrays.sample_arrays` order, the chunk
before compression). :class:`SegmentChecks` holds those of one segment, indexed by row, and every
reader (:class:`.shards.ShardReader`, :class:`.gather.StoreGather`, ``FeatureStore.read_rows`` and
friends) checks each sample it reads against them:

* the crc32c of every array read, after the read (and after decoding, for lz4/zstd): google_crc32c
  runs at 13.5 GB/s on one core here, sha256 at 1.7 GB/s. Even so a second pass over bytes that a warm
  read copies at 4-10 GB/s costs 19-58% of a warm loader's CPU on this machine
  (``benchmarks/loader.py`` "checked_every_read_vs_unchecked"). So by default each (sample, array) is
  checked the FIRST time this process reads it (:data:`READ_CHECKS` ``"first"``): every byte a run
  trains on has been checked once in that run (the resident modes read each sample once anyway), later
  epochs re-read committed files that never change and cost nothing more; ``SAK_READ_CHECKS=every``
  checks every read again (a file changed under a running job is then caught at its next read);
* a row a part names whose shard file, chunk or bytes are missing, or that lies beyond the arrays, is
  an error: never zeros;
* parts written before issue 14 have no crc32c: a read that covers every array of a sample checks the
  sha256 instead (slower), other reads are unchecked; either way one warning per store says that
  ``sak-cache compact`` rewrites the store with crcs.

Every failure is :class:`~...manifests.errors.StoreCorrupt` naming the store, segment, row, sample id
and image sha256, and the two fixes: re-extract the damaged samples (``--repair``) or drop them
(``verify --fix``). zstd frame checksums are not used: a frame checksum cannot tell a chunk or shard
written in the wrong place (two swapped shards decode cleanly), and it costs about as much as the crc.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...manifests.errors import ConfigError, StoreCorrupt
from ...manifests.schemas import STATUS_OK
from .arrays import crc32c, sample_checksum
from .spec import FeatureSpec, extract_command

log = logging.getLogger(__name__)

READ_CHECK_POLICIES = ("first", "every")


def read_check_policy(value: str | None = None) -> str:
    """``first`` (default: each sample's arrays checked at their first read in this process) or ``every`` read."""
    value = (value if value is not None else os.environ.get("SAK_READ_CHECKS", "first")).strip().lower() or "first"
    if value not in READ_CHECK_POLICIES:
        raise ConfigError(f"SAK_READ_CHECKS={value!r}: use 'first' (check each sample at its first read in a process, "
                          "the default) or 'every' (check every read)")
    return value


#: The policy of this process, read from ``SAK_READ_CHECKS`` at import (see the module doc).
READ_CHECKS = read_check_policy()

_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_legacy_once(store_path: str, what: str) -> None:
    """Log once per store that its parts predate checked reads (``what``: how its reads are checked now)."""
    with _warned_lock:
        if store_path in _warned:
            return
        _warned.add(store_path)
    log.warning("store %s predates checked reads (its commit parts have no crc32c): %s. `sak-cache compact %s` "
                "rewrites it with a crc32c per sample", store_path, what, store_path)


class SampleCorrupt(StoreCorrupt):
    """One named sample is damaged (the message names it): readers pass it on as it is."""


class SegmentChecks:
    """The integrity record of one committed segment (from its commit part), by row.

    ``names``: the segment's stored arrays in checksum order (:func:`.arrays.sample_arrays`).
    """

    def __init__(self, store_path: str, segment_id: str, names: Sequence[str], part: pa.Table, *,
                 cache_root: str = "<cache>", spec: FeatureSpec | None = None) -> None:
        self.store_path, self.segment_id, self.names = store_path, segment_id, list(names)
        self.cache_root, self.spec = cache_root, spec
        self.index = {n: i for i, n in enumerate(self.names)}
        ok = part.filter(pc.and_(pc.equal(part.column("status"), STATUS_OK), pc.is_valid(part.column("row"))))
        rows = ok.column("row").to_numpy().astype(np.int64)
        size = int(rows.max()) + 1 if len(rows) else 0
        self.position = np.full(size, -1, dtype=np.int64)  # row -> its position in the part's ok rows (-1: not named)
        self.position[rows] = np.arange(len(rows))
        self.sample_ids = ok.column("sample_id").to_pylist()
        self.shas = ok.column("image_sha256").to_pylist()
        self.sources = ok.column("source").to_pylist()
        self.checksums = ok.column("checksum").to_pylist()
        crc = ok.column("crc32c").combine_chunks() if "crc32c" in ok.column_names else pa.nulls(len(rows), pa.list_(pa.uint32()))
        self.has_crc = crc.is_valid().to_numpy(zero_copy_only=False)
        self.crc = np.zeros((len(rows), len(self.names)), dtype=np.uint32)
        if self.has_crc.any():
            lengths = pc.list_value_length(crc).to_numpy(zero_copy_only=False)[self.has_crc]
            if (lengths != len(self.names)).any():
                raise StoreCorrupt(
                    f"store {store_path}: the commit part of segment {segment_id} records crc32c lists of "
                    f"{sorted(set(lengths.tolist()))} values, the store has {len(self.names)} arrays per sample; the "
                    f"part is damaged. {self.fix()}")
            self.crc[self.has_crc] = pc.list_flatten(crc).to_numpy().reshape(-1, len(self.names))
        self.legacy = not bool(self.has_crc.all())
        self.every = READ_CHECKS == "every"
        self._ok_rows = rows[self.has_crc]
        # (row, array) still to check in this process, indexed by ROW so that a read's lookup is one fancy index
        self.pending = np.zeros((size, len(self.names)), dtype=bool)
        self.pending[self._ok_rows] = True
        self.verified = np.zeros((len(rows), len(self.names)), dtype=bool)  # legacy rows: (ok row, array) checked by sha256

    def forget(self) -> None:
        """Mark every sample unchecked again (measurements: the cost of a first epoch)."""
        self.pending[self._ok_rows] = True
        self.verified[:] = False

    def mark_checked(self) -> None:
        """Mark every crc32c row checked (measurements: the state after a first epoch that read them all)."""
        self.pending[self._ok_rows] = False

    def checked(self, rows: Sequence[int], name: str) -> np.ndarray:
        """Per row: whether this process has checked array ``name`` of it (crc32c rows; legacy rows by sha256)."""
        pos = self.positions(rows)
        out = np.zeros(len(pos), dtype=bool)
        known = pos >= 0
        col = self.index[name]
        r = np.asarray(rows, dtype=np.int64)[known]
        out[known] = np.where(self.has_crc[pos[known]], ~self.pending[r, col], self.verified[pos[known], col])
        return out

    def fix(self, source: str | None = None) -> str:
        """The two ways out, with the extract command that writes into this very store (every spec option)."""
        again = (extract_command(self.spec, self.cache_root, [source or "<dataset>"]) if self.spec is not None
                 else f"sak-cache extract --cache {self.cache_root} ... --repair")
        return f"Re-extract the damaged samples: `{again}` (or `sak-cache verify {self.store_path} --fix` to drop them)"

    def _pos(self, row: int) -> int:
        return int(self.position[row]) if 0 <= row < len(self.position) else -1

    def positions(self, rows: Sequence[int]) -> np.ndarray:
        """Each row's position in the part's ok rows (-1: not named)."""
        r = np.asarray(rows, dtype=np.int64)
        inside = (r >= 0) & (r < len(self.position))
        return np.where(inside, self.position[np.where(inside, r, 0)] if len(self.position) else -1, -1)

    def named(self, row: int) -> bool:
        """Whether the part names ``row`` as an ok sample (its bytes must be there)."""
        return self._pos(int(row)) >= 0

    def any_pending(self, rows: Sequence[int], name: str) -> bool:
        """Whether any of ``rows`` still needs its array ``name`` checked (True when unsure: the full path decides)."""
        r = np.asarray(rows, dtype=np.int64)
        if not len(r) or r.min() < 0 or r.max() >= len(self.pending):
            return True
        return bool(self.pending[r, self.index[name]].any())

    def expected(self, rows: Sequence[int], name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(crc32c of array ``name`` per row, mask of the rows to check, ``rows`` as an int64 array).

        A row is checked when its part records a crc32c for it and, under the ``first`` policy, this
        process has not checked that array of it yet.
        """
        column = self.index[name]
        r = np.asarray(rows, dtype=np.int64)
        if not self.any_pending(rows, name):  # the common case after a first epoch: one lookup, nothing to do
            return np.zeros(len(r), dtype=np.uint32), np.zeros(len(r), dtype=bool), r
        pos = self.positions(rows)
        known = pos >= 0
        have = np.zeros(len(pos), dtype=bool)
        have[known] = self.pending[r[known], column]
        crcs = np.zeros(len(pos), dtype=np.uint32)
        crcs[have] = self.crc[pos[have], column]
        return crcs, have, r

    def corrupt(self, row: int, problem: str) -> SampleCorrupt:
        """The error for damaged ``row``: store, segment, row, sample id and sha256, the problem and the fix."""
        p = self._pos(int(row))
        who = f" (sample_id {self.sample_ids[p]}, image sha256 {self.shas[p]})" if p >= 0 else ""
        return SampleCorrupt(f"store {self.store_path}: segment {self.segment_id} row {int(row)}{who} is damaged: "
                             f"{problem}. {self.fix(self.sources[p] if p >= 0 else None)}")

    def check_rows(self, name: str, rows: Sequence[int], flat: np.ndarray, slots: Sequence[int]) -> None:
        """Compare ``crc32c(flat[slots[j]])`` with the recorded crc of array ``name`` for row ``rows[j]``."""
        want, have, r = self.expected(rows, name)
        for j in np.flatnonzero(have).tolist():
            got = crc32c(flat[slots[j]])
            if got != int(want[j]):
                raise self.mismatch(rows[j], name, got, int(want[j]))
        if not self.every:
            self.pending[r[have], self.index[name]] = False

    def mismatch(self, row: int, name: str, got: int, want: int) -> SampleCorrupt:
        """The error for a row whose array ``name`` does not match its recorded crc32c."""
        return self.corrupt(row, f"array {name} reads with crc32c {got:08x}, the commit recorded {want:08x} (a "
                                 "changed byte, or a shard written in another place)")

    def check_legacy(self, rows: Sequence[int], parts: Mapping[str, np.ndarray], slots: Sequence[int]) -> None:
        """Rows without a crc32c: the sha256 over every array when ``parts`` holds them all, else warn once."""
        pos = [self._pos(int(r)) for r in rows]
        legacy = [j for j, p in enumerate(pos) if p >= 0 and not self.has_crc[p] and self.checksums[p]
                  and (self.every or not self.verified[p].all())]
        if not legacy:
            return
        if set(self.names) - set(parts):
            warn_legacy_once(self.store_path, "reads of some of a sample's arrays are not checked")
            return
        warn_legacy_once(self.store_path, "reads are checked with the recorded sha256 when they cover a whole sample")
        for j in legacy:
            got = sample_checksum([parts[n][slots[j]] for n in self.names])
            if got != self.checksums[pos[j]]:
                raise self.corrupt(rows[j], f"its stored bytes have sha256 {got}, the commit recorded {self.checksums[pos[j]]}")
            self.verified[pos[j]] = True


class RunCheck:
    """Compares each chunk of a run, once read into ``flat[slot]``, with its row's recorded crc32c (``ShardReader``).

    ``rows``: output slot -> row of the chunks the reader will read.
    """

    def __init__(self, checks: SegmentChecks, name: str, flat: np.ndarray, rows: dict[int, int]) -> None:
        self.checks, self.name, self.flat = checks, name, flat
        slots = list(rows)
        want, have, _ = checks.expected([rows[j] for j in slots], name)
        self.want = ({j: (rows[j], int(w)) for j, w, h in zip(slots, want.tolist(), have.tolist(), strict=True) if h}
                     if have.any() else {})
        self.column = checks.index[name]

    def __bool__(self) -> bool:
        """Whether any chunk is left to check (under the ``first`` policy, often none)."""
        return bool(self.want)

    def __call__(self, run: Sequence[tuple[int, int, int]]) -> None:
        for _, _, j in run:
            hit = self.want.get(j)
            if hit is None:
                continue
            got = crc32c(self.flat[j])
            if got != hit[1]:
                raise self.checks.mismatch(hit[0], self.name, got, hit[1])
            if not self.checks.every:
                self.checks.pending[hit[0], self.column] = False


class ChunkCorrupt(StoreCorrupt):
    """A chunk that does not decode; ``slot``: the output row it was read for."""

    def __init__(self, slot: int, message: str) -> None:
        super().__init__(message)
        self.slot = slot


def blame(checks: SegmentChecks | None, rows: Sequence[int], problem: str) -> StoreCorrupt:
    """``problem`` as the error of the first of ``rows`` the commit part names (with the fix), else as it is."""
    named = [r for r in rows if checks is not None and checks.named(r)]
    if checks is not None and named:
        return checks.corrupt(named[0], problem.split("; run `sak-cache verify`")[0])
    return StoreCorrupt(f"{problem}; run `sak-cache verify` on the store")
