"""FeatureStore: one teacher feature spec as plain Zarr v3 segments + Parquet commit records.

Layout (see DESIGN.md "Feature store")::

    <cache>/features/<teacher>-<spec_id>/
      spec.json                              canonical FeatureSpec, written atomically, read first
      segments/<segment_id>/layer_<i>        (n, h, w, c), one chunk per sample, sharded, spec.codec
      segments/<segment_id>/scale_*_<i>      int8 stores: float32 scales (and offset_channel_<i>), see quant.py
      segments/<segment_id>/prefix_<i>       (n, p, c) when the spec keeps prefix tokens (float16 in int8 stores)
      manifest/part-<segment_id>.parquet     commit record (COMMIT_SCHEMA), written last
      stats/<segment_id>.json                per-layer count/mean/M2 (float64), int8: measured fidelity

Only rows of committed parts exist. Concurrent writers never share files; if two of
them extract the same image and view, **read-time dedup** decides deterministically:
for each ``(image_sha256, view)`` the ``ok`` row from the lexicographically smallest
``segment_id`` wins (segment ids start with their UTC creation time, so the earliest
writer wins); a key with no ok row is represented by its failed row from the largest
(latest) segment id. ``stats()`` removes the statistics of the rows dedup drops, so it
equals the statistics over exactly the rows ``commits()`` returns.

A store may live on local disk or behind any fsspec URL (``s3://``, ``gs://``, ``memory://``):
``path`` is a :class:`..storage.Location` either way (a ``pathlib.Path`` locally), and this
module never asks which. A store opened ``read_only`` never writes, on either.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...manifests.config import canonical_json
from ...manifests.errors import ConfigError, SakError, SpecMismatch, StoreCorrupt
from ...manifests.schemas import COMMIT_SCHEMA, STATUS_OK
from ..storage import Location, as_location, read_parquet
from .arrays import decode_stored, prefix_array_name, prefix_dtype, sample_arrays
from .commits import dedup_commits
from .gather import read_arrays
from .ids import check_part_rows, check_segment_id
from .integrity import SegmentChecks
from .maintenance import VerifyReport, gc_store, verify_store
from .quant import block_from_parts, dequantize_block, stored_parts
from .shards import ShardReader, fast_shards_supported
from .spec import ABSENT_CODEC, FORMAT_VERSION, FeatureSpec, mismatch_message, spec_differences
from .stats import LayerStats, fidelity_summary, merge_fidelity
from .store_stats import merged_stats, segment_fidelity
from .writer import SegmentWriter, write_text_atomic

if TYPE_CHECKING:
    import zarr

log = logging.getLogger(__name__)

SPEC_FILE = "spec.json"
CREATED_FILE = "created.json"  # who/when, kept out of spec.json (the spec is the store's hash identity)
FEATURES_DIR = "features"
PART_PREFIX, PART_SUFFIX = "part-", ".parquet"
PART_READERS = 4  # threads reading commit parts on open (remote stores: overlapped GETs)

def write_created_record(path: Location) -> None:
    """Write ``<store>/created.json`` (``created_by`` user@host, ``created_at`` UTC) unless it exists."""
    if (path / CREATED_FILE).exists():
        return
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    record = {"created_by": f"{user}@{socket.gethostname()}", "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_text_atomic(path / CREATED_FILE, json.dumps(record, sort_keys=True) + "\n")


class FeatureStore:
    """A feature store of one spec. Use :meth:`create` (writers) or :meth:`open` (readers)."""

    def __init__(self, path, spec: FeatureSpec, *, read_only: bool = True) -> None:
        self._location = as_location(path)  # as given; ``path`` is it, or its read-only view
        self.spec = spec
        self.read_only = read_only
        self._arrays: dict[tuple[str, str, bool], zarr.Array | ShardReader] = {}
        self._parts: dict[str, pa.Table] = {}
        self._segment_stats: dict[str, dict[int, LayerStats]] = {}  # parsed stats JSONs (immutable once committed)
        self._views: dict[str, tuple[tuple[str, ...], Any]] = {}  # raw / dedup / stats, per committed-segment set
        self._checks: dict[str, SegmentChecks] = {}  # per segment: crc32c/sha256 of its rows, from its part
        self._lock = threading.Lock()

    @property
    def read_only(self) -> bool:
        return self._read_only

    @read_only.setter
    def read_only(self, value: bool) -> None:
        """A read-only store reads through a read-only view of its folder: any write is refused there too."""
        self._read_only = bool(value)
        self.path = self._location.as_read_only() if self._read_only else self._location

    # -- opening ------------------------------------------------------------------
    @staticmethod
    def path_for(cache_root: str | os.PathLike[str], spec: FeatureSpec) -> Location:
        return as_location(cache_root) / FEATURES_DIR / spec.store_name

    @classmethod
    def create(cls, cache_root: str | os.PathLike[str], spec: FeatureSpec) -> FeatureStore:
        """Create the store of ``spec`` in a cache (idempotent for an equal spec; refuses a different one)."""
        path = cls.path_for(cache_root, spec)
        if (path / SPEC_FILE).exists():
            store = cls.open(path, read_only=False)
            diffs = spec_differences(store.spec, spec)
            if diffs:
                raise SpecMismatch(mismatch_message(str(path), diffs))
            if store.spec.codec != spec.codec:  # not hashed: the store's own codec wins
                log.info("store %s writes codec %r (its spec.json); keeping it instead of %r", path, store.spec.codec, spec.codec)
            return store
        for sub in ("segments", "manifest", "stats"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        write_text_atomic(path / SPEC_FILE, canonical_json(spec) + "\n")
        write_created_record(path)
        log.info("created feature store %s", path)
        return cls(path, spec, read_only=False)

    @classmethod
    def open(cls, path_or_url: str | os.PathLike[str] | Location, *, read_only: bool = True) -> FeatureStore:
        """Open an existing store by its directory; reads and checks ``spec.json`` first."""
        path = as_location(path_or_url)
        spec_path = path / SPEC_FILE
        if not spec_path.exists():
            raise StoreCorrupt(
                f"{path} is not a feature store (no {SPEC_FILE}). List stores with `sak-cache ls --cache <cache>`."
            )
        fix = f"restore spec.json from a copy of the store, or delete {path} and extract again"
        try:
            data = json.loads(spec_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise StoreCorrupt(f"{spec_path}: not valid JSON ({exc}); the store's spec is damaged: {fix}.") from exc
        if not isinstance(data, dict):
            raise StoreCorrupt(f"{spec_path}: not a JSON object; the store's spec is damaged: {fix}.")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise SpecMismatch(
                f"{spec_path}: store format version {version!r} is not supported by this sak (supports {FORMAT_VERSION}); "
                "upgrade sak to read it, or extract again into a new cache."
            )
        data.setdefault("codec", ABSENT_CODEC)
        unknown = sorted(set(data) - {f.name for f in fields(FeatureSpec)})
        if unknown:  # a newer sak's field: not damage
            raise SpecMismatch(f"{spec_path}: fields {unknown} are unknown to this sak; upgrade sak to read the store.")
        try:
            spec = FeatureSpec.from_dict(data)
        except (ConfigError, TypeError) as exc:
            raise StoreCorrupt(f"{spec_path}: not a valid store spec ({exc}); the file is damaged or was edited: {fix}.") from exc
        if path.name != spec.store_name:
            log.warning("store directory %s does not match its spec name %s (renamed?)", path, spec.store_name)
        return cls(path, spec, read_only=read_only)

    @property
    def name(self) -> str:
        return self.path.name

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, teacher={self.spec.teacher!r}, read_only={self.read_only})"

    def __getstate__(self) -> dict:  # picklable for dask: drop open arrays and caches
        return {"path": self._location, "spec": self.spec, "read_only": self.read_only}

    def __setstate__(self, state: dict) -> None:
        type(self).__init__(self, state["path"], state["spec"], read_only=state["read_only"])

    def require(self, **expected) -> None:
        """Raise :class:`SpecMismatch` naming the fields whose stored value differs, e.g. ``require(layers=(11,))``."""
        diffs = spec_differences(self.spec, expected)
        if diffs:
            raise SpecMismatch(mismatch_message(str(self.path), diffs))

    # -- commits ----------------------------------------------------------------
    def part_names(self) -> list[str]:
        """Segment ids as the part files name them, unchecked (for ``verify``, which reports bad ones)."""
        names = (self.path / "manifest").list_names(PART_PREFIX, PART_SUFFIX)
        return [n[len(PART_PREFIX) : -len(PART_SUFFIX)] for n in names]

    def committed_segments(self) -> list[str]:
        """Ids of the committed segments (one per part file); a part whose name is not a plain id is StoreCorrupt."""
        return [check_segment_id(seg, f"{self.path / 'manifest'}/{PART_PREFIX}{seg}{PART_SUFFIX}", self.path)
                for seg in self.part_names()]

    def refresh(self) -> None:
        """Forget cached parts, stats, views and arrays (after this process rewrote them: compact, repair)."""
        with self._lock:
            self._parts.clear()
            self._segment_stats.clear()
            self._views.clear()
            self._arrays.clear()
            self._checks.clear()  # a rewritten part (repair) must be what later reads are checked against

    def _cached(self, what: str, segments: tuple[str, ...], make: Callable[[], Any]) -> Any:
        """``make()`` once per set of committed segments (parts, stats and segments never change once committed)."""
        hit = self._views.get(what)
        if hit is not None and hit[0] == segments:
            return hit[1]
        value = make()
        self._views[what] = (segments, value)
        return value

    def raw_commits(self) -> pa.Table:
        """Every row of every committed part (duplicates included), in segment order."""
        return self._snapshot()[1]

    def _snapshot(self) -> tuple[tuple[str, ...], pa.Table]:
        """(committed segment ids, their raw rows): the key of every cached view, and the rows."""
        segments = tuple(sorted(self.committed_segments()))
        with self._lock:
            return segments, self._cached("raw", segments, lambda: self._concat_parts(segments))

    def _concat_parts(self, segments: tuple[str, ...]) -> pa.Table:
        new = [seg for seg in segments if seg not in self._parts]  # parts are immutable: read each once
        if len(new) > 1:  # many small files: overlap their reads (pyarrow decodes without the GIL)
            with ThreadPoolExecutor(max_workers=min(PART_READERS, len(new)), thread_name_prefix="sak-parts") as pool:
                self._parts.update(zip(new, pool.map(self.read_part, new), strict=True))
        elif new:
            self._parts[new[0]] = self.read_part(new[0])
        tables = [self._parts[s] for s in segments]
        return pa.concat_tables(tables).combine_chunks() if tables else COMMIT_SCHEMA.empty_table()

    def part_path(self, segment_id: str) -> Location:
        return self.path / "manifest" / f"{PART_PREFIX}{segment_id}{PART_SUFFIX}"

    def read_part(self, segment_id: str) -> pa.Table:
        """The commit part of one segment (validated against COMMIT_SCHEMA; every row must name ``segment_id``)."""
        path = self.part_path(check_segment_id(segment_id, f"{self.path / 'manifest'}/{PART_PREFIX}{segment_id}{PART_SUFFIX}", self.path))
        return check_part_rows(read_parquet(path, COMMIT_SCHEMA), segment_id, str(path), self.path)

    def created(self) -> dict:
        """``created.json``: who created the store (``user@host``) and when (UTC ISO); {} for older stores."""
        path = self.path / CREATED_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError, OSError):
            return {}
        return data if isinstance(data, dict) else {}

    def commits(self, status: str | None = STATUS_OK, *, dedup: bool = True) -> pa.Table:
        """Committed rows, one per ``(image_sha256, view)`` after read-time dedup (see module doc).

        ``status="ok"`` (default) or ``"failed"`` filters; ``None`` returns both kinds.
        """
        segments, raw = self._snapshot()
        if dedup:
            with self._lock:
                table = self._cached("dedup", segments, lambda: dedup_commits(raw))
        else:
            table = raw
        if status is not None:
            table = table.filter(pc.equal(table.column("status"), status))
        return table

    # -- reading ------------------------------------------------------------------
    def array(self, segment_id: str, name: str, *, fast: bool = False):
        """The zarr array (mode "r"), or with ``fast`` a :class:`ShardReader` when the layout allows it."""
        key = (segment_id, name, fast)
        arr = self._arrays.get(key)
        if arr is None:
            import zarr

            path = self.path / "segments" / segment_id / name
            if not path.exists():
                raise StoreCorrupt(
                    f"{path} is missing although segment {segment_id} is committed; run `sak-cache verify {self.path}`."
                )
            try:
                arr = zarr.open_array(path.zarr_store(read_only=True), mode="r")
            except Exception as exc:  # no zarr.json, not JSON, an unknown codec or data type: zarr raises many kinds
                raise StoreCorrupt(
                    f"{path}/zarr.json of committed segment {segment_id} cannot be opened ({type(exc).__name__}: {exc}). "
                    f"Uncommit the segment's damaged samples with `sak-cache verify {self.path} --fix`, then extract them "
                    "again with the `sak-cache extract ... --repair` command it prints."
                ) from exc
            if fast and fast_shards_supported(arr):
                arr = ShardReader(path, arr)
            self._arrays[key] = arr
        return arr

    def _layers(self, layers: Sequence[int] | None) -> tuple[int, ...]:
        if layers is None:
            return self.spec.layers
        missing = [i for i in layers if i not in self.spec.layers]
        if missing:
            raise SpecMismatch(
                f"store {self.path} was written with layers {list(self.spec.layers)}; you asked for {list(layers)}: "
                f"pass --layers {','.join(map(str, self.spec.layers))} (or a subset) or extract again."
            )
        return tuple(layers)

    def sample_checks(self, segment_id: str) -> SegmentChecks:
        """What reads of ``segment_id`` are checked against (its commit part's rows; see :mod:`.integrity`)."""
        checks = self._checks.get(segment_id)
        if checks is None:
            part = self._parts.get(segment_id)
            if part is None:
                part = self.read_part(segment_id)
            root = self.path.parent.parent if self.path.parent.name == FEATURES_DIR else "<cache>"
            made = SegmentChecks(str(self.path), segment_id, [n for n, _, _ in sample_arrays(self.spec)], part,
                                 cache_root=str(root), spec=self.spec)
            checks = self._checks.setdefault(segment_id, made)  # one record per segment, whichever thread made it first
        return checks

    def read_rows(self, segment_id: str, rows: Sequence[int], layers: Sequence[int] | None = None, *,
                  checked: bool = True) -> dict[int, np.ndarray]:
        """{layer: (n, h, w, c)} for ``rows`` of one segment, in the given order; every sample checked.

        float16 stores return float16; bfloat16, float32 and int8 (dequantized) stores return float32.
        A damaged, missing or misplaced sample raises :class:`StoreCorrupt` (``checked=False`` skips the
        checksum comparisons: for measurements only).
        """
        wanted = self._layers(layers)
        names = [n for i in wanted for n, _, _ in stored_parts(self.spec, i)]
        got = read_arrays(self, segment_id, [int(r) for r in rows], names, checked)
        out = {}
        for i in wanted:
            parts = [got[n] for n, _, _ in stored_parts(self.spec, i)]
            out[i] = (dequantize_block(block_from_parts(self.spec.quant or "", parts)) if self.spec.dtype == "int8"
                      else decode_stored(parts[0], self.spec.dtype))
        return out

    def read_parts(self, segment_id: str, rows: Sequence[int], layer: int, *, checked: bool = True) -> tuple[np.ndarray, ...]:
        """The on-disk arrays of ``layer`` for ``rows`` as stored, in :func:`.quant.stored_parts` order, checked.

        int8: (codes int8, then float32 scales/offset); float16/float32: (values,); bfloat16: (uint16 bits,).
        """
        (layer,) = self._layers([layer])
        names = [n for n, _, _ in stored_parts(self.spec, layer)]
        got = read_arrays(self, segment_id, [int(r) for r in rows], names, checked)
        return tuple(got[n] for n in names)

    def read_prefix(self, segment_id: str, rows: Sequence[int], layers: Sequence[int] | None = None, *,
                    checked: bool = True) -> dict[int, np.ndarray]:
        """{layer: (n, p, c)} prefix (CLS/register) tokens, checked; only for stores whose spec keeps them."""
        if not self.spec.keep_prefix:
            raise SpecMismatch(f"store {self.path} was extracted without prefix tokens; extract again with --keep-prefix.")
        as_read = prefix_dtype(self.spec.dtype)  # float16 in int8 stores: returned as float32 like their layers
        wanted = self._layers(layers)
        got = read_arrays(self, segment_id, [int(r) for r in rows], [prefix_array_name(i) for i in wanted], checked)
        out = {i: decode_stored(got[prefix_array_name(i)], as_read) for i in wanted}
        return {i: v.astype(np.float32) for i, v in out.items()} if self.spec.dtype == "int8" else out

    def read_sample(self, image_sha256: str, view: int = 0, layers: Sequence[int] | None = None) -> dict[int, np.ndarray]:
        """{layer: (h, w, c)} of one committed sample by content hash (convenience; slow for many samples)."""
        t = self.commits()
        mask = pc.and_(pc.equal(t.column("image_sha256"), image_sha256), pc.equal(t.column("view"), view))
        hit = t.filter(mask)
        if hit.num_rows == 0:
            raise KeyError(f"no committed sample {image_sha256[:12]} view {view} in {self.path}")
        seg, row = hit.column("segment_id")[0].as_py(), hit.column("row")[0].as_py()
        return {k: v[0] for k, v in self.read_rows(seg, [row], layers).items()}

    # -- statistics ---------------------------------------------------------------
    def stats(self) -> dict[int, LayerStats]:
        """Per-layer channel statistics over exactly the rows of ``commits()`` (committed, deduplicated, ok).

        Each segment's JSON is parsed once per store object; the merge is one numpy pass per layer.
        """
        segments, raw = self._snapshot()
        with self._lock:
            totals = self._cached("stats", segments, lambda: merged_stats(self, raw, self._segment_stats))
        return dict(totals)

    def fidelity(self) -> dict[int, dict[str, dict[str, float]]]:
        """Fidelity measured at extraction, merged over committed segments: {layer: {"raw"|"std": {"mean", "min", "count"}}}.

        Cosines per token between stored and teacher values (see :func:`.quant.token_cosines`); {} when no
        segment recorded any (float stores, stores written before issue 13).
        """
        return fidelity_summary(merge_fidelity(self.segment_fidelity(seg) for seg in self.committed_segments()))

    def segment_fidelity(self, segment_id: str):
        """The fidelity record of one segment's statistics file ({} when it has none or no file)."""
        return segment_fidelity(self.path, segment_id)

    # -- writing ------------------------------------------------------------------
    def writer(self, capacity: int, *, segment_id: str | None = None, durable: bool = True,
               encode_threads: int | None = None) -> SegmentWriter:
        if self.read_only:
            raise SakError(f"store {self.path} is open read-only; open it with read_only=False to write")
        return SegmentWriter(spec=self.spec, store_path=self.path, capacity=capacity, segment_id=segment_id, durable=durable,
                             encode_threads=encode_threads)

    # -- maintenance --------------------------------------------------------------
    def size_bytes(self) -> int:
        return self.path.tree_bytes()

    def verify(self, progress: Callable[..., None] | None = None) -> VerifyReport:
        """Check spec.json against the arrays, every part, every committed ok sample's checksum and every segment's stats.

        Never raises for what it finds: see :class:`.maintenance.VerifyReport` (``corrupt`` and ``problems``).
        """
        return verify_store(self, progress)

    def gc(self, *, dry_run: bool = True, grace_seconds: float = 3600.0) -> list[Location]:
        """Uncommitted segments (and their stats) and stale temp files; deleted unless ``dry_run``.

        A segment with a commit part is never touched. A segment without one is garbage when its
        writer is known dead (same host, pid gone) or it has not changed for ``grace_seconds``.
        """
        return gc_store(self, dry_run=dry_run, grace_seconds=grace_seconds)



def gc(store: FeatureStore, dry_run: bool = True, grace_seconds: float = 3600.0) -> list[Location]:
    """Module-level alias of :meth:`FeatureStore.gc`."""
    return store.gc(dry_run=dry_run, grace_seconds=grace_seconds)
