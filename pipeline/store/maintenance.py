"""Store maintenance: ``verify`` (everything a store holds, read through zarr) and ``gc`` (uncommitted segments, stale temp files).

``verify`` trusts nothing on disk: each part is read on its own (an unreadable part, a wrong schema or rows
that name another segment is a ``part`` problem, not an exception), spec.json is compared with every
segment's zarr metadata (``spec``), every committed ok sample's checksum is recomputed from the stored
bytes, and the same decoded values give each segment's statistics, compared with ``stats/<segment>.json``
(``stats``). Store-level findings go to ``VerifyReport.problems``, per-sample ones to ``corrupt``;
:mod:`.repair` fixes both.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...manifests.errors import NewerFormat, SakError
from ...manifests.schemas import COMMIT_SCHEMA, STATUS_OK
from ..storage import Location
from .arrays import decode_stored, sample_arrays, sample_checksum
from .claims import BlockClaims
from .commits import rows_by_segment
from .ids import check_inside
from .quant import block_from_parts, dequantize_block, stored_parts
from .stats import LayerStats, stats_from_json
from .writer import ACTIVE_SEGMENTS, parse_segment_id, this_host

log = logging.getLogger(__name__)


#: What fixes each kind of store-level problem (``VerifyReport.problems``), for messages and the CLI.
FIXES = {
    "spec": "restore spec.json from a copy of the store (its segments name the spec_id they were written for), "
            "or delete the store folder and extract again",
    "part": "`sak-cache verify {store} --fix` moves the part aside to manifest/damaged/; then re-extract its rows with "
            "`sak-cache extract ... --repair`",
    "stats": "`sak-cache verify {store} --fix` recomputes the statistics from the segment's committed rows",
    "newer": "upgrade sak (pip install -U sak): a newer version wrote these files, and this one leaves them untouched "
             "(verify --fix refuses to repair the store)",
    "sample": "`sak-cache verify {store} --fix` uncommits the damaged samples; then re-extract them with "
              "`sak-cache extract ... --repair`",
}
#: Statistics recomputed by verify must equal the stored ones within this tolerance, relative to each channel's
#: RMS (for the mean) and sum of squares (for M2). Both sides sum the same stored values (int8: the dequantized
#: codes, which is what the writer's statistics describe too), in float64 in another order or, at extraction, in
#: float32 around a per-channel shift on the teacher's device: measured up to 1.2e-6 on test stores of every
#: dtype (7.6e-7 float16, 1.2e-6 int8), 1.6e-14 on the legacy store. 1e-4 leaves room for float32 sums over
#: large batches and still catches any edit that would move training (0.01% of a channel's RMS).
STATS_RTOL = 1e-4


@dataclass
class VerifyReport:
    checked: int = 0
    corrupt: list[tuple[str, int, str, str]] = field(default_factory=list)  # (segment, row, sha256, reason)
    missing_segments: list[str] = field(default_factory=list)  # committed (a part names them) but absent
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (kind: spec|part|newer|stats, where, detail)
    bad_parts: list[str] = field(default_factory=list)  # part file names that cannot be used (unreadable, bad ids)
    newer_parts: list[str] = field(default_factory=list)  # part file names a newer sak wrote (unknown columns): kept as they are
    bad_stats: list[str] = field(default_factory=list)  # committed segments whose stats file is missing, unreadable or wrong
    rows: pa.Table | None = None  # the rows of the usable parts (raw, duplicates included)

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.problems

    def add(self, kind: str, where: object, detail: str) -> None:
        self.problems.append((kind, str(where), detail))


def read_parts_checked(store, report: VerifyReport) -> pa.Table:
    """The rows of every usable part; each unusable part (unreadable, bad schema, bad ids) becomes a problem."""
    tables = []
    for seg in store.part_names():
        path = store.path / "manifest" / f"part-{seg}.parquet"
        try:
            tables.append(store.read_part(seg))
        except NewerFormat as exc:  # not damage: never move it aside (its segment would then be garbage to gc)
            report.add("newer", path, str(exc))
            report.newer_parts.append(path.name)
        except SakError as exc:
            report.add("part", path, str(exc))
            report.bad_parts.append(path.name)
    return pa.concat_tables(tables).combine_chunks() if tables else COMMIT_SCHEMA.empty_table()


def check_spec_against_arrays(store, segments: list[str], report: VerifyReport) -> None:
    """spec.json against each segment's zarr metadata: spec_id it was written for, layer list, shapes, dtypes."""
    spec = store.spec
    expected = {name: (shape, dtype) for name, shape, dtype in sample_arrays(spec)}
    written_for: dict[str, list[str]] = {}
    for seg in segments:
        seg_path = store.path / "segments" / seg
        try:
            attrs = json.loads((seg_path / "zarr.json").read_text(encoding="utf-8")).get("attributes") or {}
        except (OSError, ValueError, AttributeError):
            continue  # missing or unreadable segments are reported per sample
        if attrs.get("sak_spec_id") not in (None, spec.spec_id):
            written_for.setdefault(str(attrs["sak_spec_id"]), []).append(seg)
        layers = sorted(n for n in seg_path.list_names(prefix="layer_") if n not in expected)
        if layers:
            report.add("spec", store.path / "spec.json", f"segment {seg} holds {', '.join(layers)}, which spec.json's layers "
                       f"{list(spec.layers)} do not name")
        for name, (shape, dtype) in expected.items():
            try:
                arr = store.array(seg, name)
            except Exception:  # reported per sample below
                continue
            if tuple(arr.shape[1:]) != tuple(shape) or np.dtype(arr.dtype) != np.dtype(dtype):
                report.add("spec", seg_path / name / "zarr.json", f"{name} holds samples of {tuple(arr.shape[1:])} {arr.dtype}; "
                           f"spec.json says {tuple(shape)} {np.dtype(dtype)} (grid {list(spec.grid)}, width {spec.width}, "
                           f"dtype {spec.dtype})")
    for other, segs in written_for.items():
        report.add("spec", store.path / "spec.json", f"spec.json hashes to spec_id {spec.spec_id}, but {len(segs)} segment(s) "
                   f"(e.g. {segs[0]}) were written for spec_id {other}: spec.json was edited")


def _layer_values(spec, parts: list[np.ndarray]) -> dict[int, np.ndarray]:
    """{layer: float values readers get} of one sample's stored parts (sample_arrays order, batch axis kept)."""
    out, i = {}, 0
    for layer in spec.layers:
        n = len(stored_parts(spec, layer))
        chunk = parts[i : i + n]
        i += n
        out[layer] = dequantize_block(block_from_parts(spec.quant or "", chunk)) if spec.dtype == "int8" else \
            decode_stored(chunk[0], spec.dtype)
    return out


def _value_stats(values: np.ndarray) -> LayerStats:
    """:meth:`LayerStats.from_values` of one sample, 1.8x faster: float32 deviations, float64 sums (error ~1e-8 of the RMS)."""
    x = values.reshape(-1, values.shape[-1]).astype(np.float32, copy=False)
    mean = x.mean(axis=0, dtype=np.float64)
    m2 = np.square(x - mean.astype(np.float32)).sum(axis=0, dtype=np.float64)
    return LayerStats(int(x.shape[0]), mean, m2)


def _stats_differ(have: LayerStats, want: LayerStats) -> str | None:
    if have.count != want.count or have.mean.shape != want.mean.shape:
        return f"count {have.count} (recomputed {want.count})"
    if want.count == 0:
        return None
    rms = np.sqrt(want.m2 / want.count + np.square(want.mean)) + 1e-30
    mean_err = float(np.max(np.abs(have.mean - want.mean) / rms))
    m2_err = float(np.max(np.abs(have.m2 - want.m2) / (want.count * np.square(rms))))
    if max(mean_err, m2_err) > STATS_RTOL:
        return f"mean/M2 differ from the recomputed ones by {max(mean_err, m2_err):.3g} of the channel RMS (tolerance {STATS_RTOL:g})"
    return None


def _stats_problem(store, seg: str, recomputed: dict[int, LayerStats]) -> tuple[Location, str | None]:
    path = store.path / "stats" / f"{seg}.json"
    try:
        stored = stats_from_json(path.read_text(encoding="utf-8"), str(path))
    except FileNotFoundError:
        return path, f"missing for committed segment {seg}"
    except (SakError, OSError) as exc:
        return path, str(exc)
    if sorted(stored) != sorted(recomputed):
        return path, f"layers {sorted(stored)}; the store's are {sorted(recomputed)}"
    for layer in sorted(recomputed):
        diff = _stats_differ(stored[layer], recomputed[layer])
        if diff:
            return path, f"layer {layer}: {diff}"
    return path, None


def check_segment_stats(store, seg: str, recomputed: dict[int, LayerStats], report: VerifyReport) -> None:
    """``stats/<seg>.json`` present, parseable and equal to ``recomputed`` (within :data:`STATS_RTOL`)."""
    path, why = _stats_problem(store, seg, recomputed)
    if why is not None:
        report.add("stats", path, why)
        report.bad_stats.append(seg)


def verify_store(store, progress: Callable[..., None] | None = None) -> VerifyReport:
    """Check everything a store holds: spec.json against the arrays, every part (schema, ids), every committed ok
    sample's checksum, and every segment's statistics against those recomputed from its committed ok rows."""
    report = VerifyReport()
    raw = report.rows = read_parts_checked(store, report)
    ok = raw.filter(pc.equal(raw.column("status"), STATUS_OK))
    check_spec_against_arrays(store, sorted(set(raw.column("segment_id").to_pylist())), report)
    names = [name for name, _, _ in sample_arrays(store.spec)]  # checksum order: every part of every layer, then prefix
    n_layer_parts = sum(len(stored_parts(store.spec, i)) for i in store.spec.layers)
    for seg, rows in rows_by_segment(ok, with_meta=True).items():
        n_bad = len(report.corrupt)
        if not (store.path / "segments" / seg).exists():
            report.corrupt += [(seg, r, sha, f"segment unreadable: {seg} is missing on disk (its commit part names it)") for r, sha, _ in rows]
            report.missing_segments.append(seg)
            report.checked += len(rows)
            if progress is not None:
                progress(len(rows), segment=seg)
            continue
        try:
            arrays = [store.array(seg, n) for n in names]
            n_rows = min(a.shape[0] for a in arrays)
        except Exception as exc:  # missing or unreadable array metadata
            report.corrupt += [(seg, r, sha, f"segment unreadable: {exc}") for r, sha, _ in rows]
            report.checked += len(rows)
            continue
        stats = {i: LayerStats.empty(store.spec.width) for i in store.spec.layers}
        for row, sha, checksum in rows:
            report.checked += 1
            if row is None or not 0 <= row < n_rows:
                report.corrupt.append((seg, row, sha, f"row {row} missing (arrays hold {n_rows})"))
                continue
            try:
                parts = [np.asarray(a[row : row + 1]) for a in arrays]
                got = sample_checksum([p[0] for p in parts])
            except Exception as exc:  # a damaged shard fails to decode
                report.corrupt.append((seg, row, sha, f"unreadable: {type(exc).__name__}: {exc}"))
                continue
            if got != checksum:
                report.corrupt.append((seg, row, sha, "checksum mismatch"))
                continue
            for layer, values in _layer_values(store.spec, parts[:n_layer_parts]).items():
                stats[layer] = stats[layer].merge(_value_stats(values))
        if len(report.corrupt) == n_bad:  # stats of a segment with damaged samples are rewritten by --fix anyway
            check_segment_stats(store, seg, stats, report)
        if progress is not None:
            progress(len(rows), segment=seg)
    return report


def gc_store(store, *, dry_run: bool = True, grace_seconds: float = 3600.0) -> list[Location]:
    """Uncommitted segments (and their stats), stale temp files and block claims; deleted unless ``dry_run``.

    A segment with a commit part is never touched. A segment without one is garbage when its
    writer is known dead (same host, pid gone) or it has not changed for ``grace_seconds``.
    """
    committed = set(store.committed_segments())
    garbage: list[Location] = []
    now = time.time()
    for seg in (store.path / "segments").list_names():
        if seg in committed:
            continue
        seg_path = store.path / "segments" / seg
        if _writer_alive(seg) or (not _writer_dead(seg) and now - seg_path.newest_mtime() < grace_seconds):
            continue
        garbage.append(seg_path)
    for seg_stats in (store.path / "stats").list_names(suffix=".json"):
        seg = seg_stats[: -len(".json")]
        if seg not in committed and (store.path / "segments" / seg) in garbage:
            garbage.append(store.path / "stats" / seg_stats)
    for folder in (store.path, store.path / "manifest", store.path / "stats"):
        for name in folder.list_names(prefix=".", suffix=".tmp"):
            tmp = folder / name
            if now - tmp.stat().st_mtime >= grace_seconds:
                garbage.append(tmp)
    garbage += BlockClaims(store.path, run="gc").stale_files(grace_seconds)  # claims of dead or expired writers
    if not dry_run:
        if store.read_only:
            raise SakError(f"store {store.path} is open read-only; open it with read_only=False to delete garbage")
        for p in garbage:  # every target first: a link or odd name aborts before anything is deleted
            check_inside(store.path, p)
        for p in garbage:
            p.remove_tree()
            log.info("gc removed %s", p)
    return garbage


def _writer_alive(segment_id: str) -> bool:
    parsed = parse_segment_id(segment_id)
    if parsed is None or parsed[0] != this_host():
        return False
    if parsed[1] == os.getpid():
        return segment_id in ACTIVE_SEGMENTS
    try:
        os.kill(parsed[1], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _writer_dead(segment_id: str) -> bool:
    parsed = parse_segment_id(segment_id)
    return parsed is not None and parsed[0] == this_host() and not _writer_alive(segment_id)

