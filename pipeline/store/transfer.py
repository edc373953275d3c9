"""Moving committed rows between segments and stores: ``compact`` (many small segments -> few large
ones, in place) and ``export`` (a store, or a subset of its samples, into another cache).

Both copy the **stored bytes** (float16, bf16 bits, float32, or int8 codes with their float32
scales, exactly as written: never re-quantized), through the ordinary
:class:`.writer.SegmentWriter`, and check that every copied sample's checksum equals its
original before anything old is removed. A new segment records the merged fidelity of the
segments its rows came from (all of them for ``compact``; for a subset ``export`` that is
the fidelity measured over those whole source segments).

Compaction order, so readers never see a gap:

1. the new segments are written and committed (new parts); from now on every row is held
   twice, and read-time dedup serves one copy (both copies are the same bytes);
2. only then are the old parts removed (rows now come from the new segments), then the old
   stats files and arrays.

New segment ids carry the creation stamp of the oldest segment they replace, so for rows
that another writer also committed, dedup keeps picking the same (oldest) writer's row.
Compaction is safe beside running extractions (they only add segments); a training run
that opened the store before the compaction should be restarted after it, since the old
segments it planned to read are gone.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from ...manifests.errors import SakError, StoreCorrupt
from ...manifests.schemas import STATUS_FAILED, STATUS_OK
from .arrays import prefix_array_name
from .commits import dropped_ok_rows
from .feature_store import FeatureStore
from .gather import read_arrays
from .ids import check_inside, check_segment_id
from .quant import block_from_parts
from .stats import merge_fidelity
from .writer import SampleKey, this_host

log = logging.getLogger(__name__)

Progress = Callable[..., None]
READ_BLOCK = 64  # rows per read while copying


@dataclass
class TransferReport:
    source: str
    target: str
    copied: int = 0  # ok rows written
    failed_copied: int = 0  # failed rows carried over
    reused: int = 0  # rows the target already held (export)
    new_segments: list[str] = field(default_factory=list)
    removed_segments: list[str] = field(default_factory=list)


def _compact_id(oldest: str) -> str:
    return f"{oldest.split('-', 1)[0]}-{this_host()}-{os.getpid()}-{secrets.token_hex(4)}"


def _keys(table: pa.Table) -> list[SampleKey]:
    cols = [table.column(c).to_pylist() for c in ("image_sha256", "sample_id", "source", "view", "view_params")]
    return [SampleKey(*vals) for vals in zip(*cols, strict=True)]


def _blocks(table: pa.Table) -> Iterable[tuple[str, pa.Table]]:
    """(segment, rows) pieces of at most READ_BLOCK rows, in table order (callers sort by segment and row)."""
    segs = table.column("segment_id").to_pylist()
    start = 0
    for i in range(1, len(segs) + 1):
        if i == len(segs) or segs[i] != segs[start] or i - start == READ_BLOCK:
            yield segs[start], table.slice(start, i - start)
            start = i


def copy_rows(src, table: pa.Table, dest, *, segment_rows: int, make_id: Callable[[], str] | None = None,
              progress: Progress | None = None) -> tuple[list[str], int, int]:
    """Copy committed rows of ``src`` (ok and failed rows of ``table``) into new committed segments of ``dest``.

    Returns (new segment ids, ok rows copied, failed rows copied). Raises :class:`StoreCorrupt`
    if a copied sample's checksum differs from its original (nothing is committed for that segment).
    """
    if dest.spec != src.spec:
        raise SakError(f"cannot copy rows of {src.path} into {dest.path}: the stores have different specs")
    ok = table.filter(pc.equal(table.column("status"), STATUS_OK)).sort_by([("segment_id", "ascending"), ("row", "ascending")])
    for seg in pc.unique(ok.column("segment_id")).to_pylist():  # they become paths of src's arrays
        check_segment_id(seg, f"{src.path}/manifest (rows to copy)", src.path)
    failed = table.filter(pc.equal(table.column("status"), STATUS_FAILED))
    spec = src.spec
    prefix_names = [prefix_array_name(i) for i in spec.layers] if spec.keep_prefix else []
    new_ids: list[str] = []
    carried: set[str] = set()
    groups = [ok.slice(s, segment_rows) for s in range(0, ok.num_rows, segment_rows)] or [ok]
    for g, group in enumerate(groups):
        if group.num_rows == 0 and (g or failed.num_rows == 0):
            continue
        writer = dest.writer(max(1, group.num_rows), segment_id=make_id() if make_id else None)
        with writer:
            sources = sorted(set(group.column("segment_id").to_pylist()) - carried)  # each source's fidelity once
            carried.update(sources)
            for layer, kinds in merge_fidelity(src.segment_fidelity(seg) for seg in sources).items():
                for kind, f in kinds.items():
                    writer.add_fidelity(layer, kind, f.count, f.total, f.minimum)
            for seg, piece in _blocks(group):
                rows = piece.column("row").to_pylist()
                parts = [src.read_parts(seg, rows, i) for i in spec.layers]
                layers = [block_from_parts(spec.quant, p) if spec.dtype == "int8" else p[0] for p in parts]
                got = read_arrays(src, seg, rows, prefix_names) if prefix_names else {}  # checked like the layers
                prefix = [got[n] for n in prefix_names] or None
                writer.append(_keys(piece), layers, prefix)
                if progress is not None:
                    progress(piece.num_rows, segment=seg)
            if g == 0:
                for key, error in zip(_keys(failed), failed.column("error").to_pylist(), strict=True):
                    writer.add_failed(key, error or "failed")
            report = writer.commit()
        want = group.column("checksum").to_pylist()
        got = report.table.filter(pc.equal(report.table.column("status"), STATUS_OK)).column("checksum").to_pylist()
        if got != want:  # source bytes differ from what was recorded: take the copy back out
            check_inside(dest.path, dest.part_path(report.segment_id)).unlink()
            bad = sum(a != b for a, b in zip(got, want, strict=True))
            raise StoreCorrupt(
                f"{bad} sample(s) read from {src.path} do not match their recorded checksums; "
                f"run `sak-cache verify {src.path}` and repair the store before copying it"
            )
        new_ids.append(report.segment_id)
    return new_ids, ok.num_rows, failed.num_rows


def compact_store(store, *, target_rows: int = 4096, progress: Progress | None = None) -> TransferReport:
    """Merge committed segments smaller than ``target_rows`` into segments of up to ``target_rows`` rows.

    Segments holding rows that dedup hides (a sample committed twice: two writers, or a compaction
    killed after its new parts were committed but before the old ones were removed) are rewritten too,
    whatever their size, keeping only the rows readers use: the copies stop costing space.
    """
    if store.read_only:
        raise SakError(f"store {store.path} is open read-only; open it with read_only=False to compact it")
    if target_rows < 1:
        raise SakError(f"target_rows must be >= 1, got {target_rows}")
    report = TransferReport(source=str(store.path), target=str(store.path))
    raw = store.raw_commits()
    counts: dict[str, int] = {}
    for seg, st in zip(raw.column("segment_id").to_pylist(), raw.column("status").to_pylist(), strict=True):
        counts[seg] = counts.get(seg, 0) + (st == STATUS_OK)
    small = sorted(check_segment_id(s, f"{store.path}/manifest", store.path) for s, n in counts.items() if n < target_rows)
    doubled = set(dropped_ok_rows(raw).column("segment_id").to_pylist())
    if len(small) < 2 and not doubled:
        log.info("nothing to compact in %s (%d small segment(s))", store.path, len(small))
        return report
    if doubled:
        log.info("%s: %d segment(s) hold rows committed twice; rewriting them without the copies", store.path, len(doubled))
    small = sorted(set(small) | {check_segment_id(s, f"{store.path}/manifest", store.path) for s in doubled})
    doomed = [(store.part_path(seg), store.path / "stats" / f"{seg}.json", store.path / "segments" / seg) for seg in small]
    for paths in doomed:  # ids come from files: every target must resolve inside the store, checked before anything is written
        for path in paths:
            check_inside(store.path, path)
    kept = store.commits(status=None)  # dedup winners only: duplicates are not carried over
    kept = kept.filter(pa.array([s in set(small) for s in kept.column("segment_id").to_pylist()], type=pa.bool_()))
    report.new_segments, report.copied, report.failed_copied = copy_rows(
        store, kept, store, segment_rows=target_rows, make_id=lambda: _compact_id(small[0]), progress=progress
    )
    for part, _, _ in doomed:  # the new parts are committed: now the old ones may go, part first
        part.unlink()
    for _, stats, arrays in doomed:
        stats.remove_tree()
        arrays.remove_tree()
    store.refresh()
    report.removed_segments = small
    log.info("compacted %d segments of %s into %d", len(small), store.path, len(report.new_segments))
    return report


def export_store(store, dest_cache, *, samples: Sequence[str] | None = None, segment_rows: int = 4096,
                 progress: Progress | None = None) -> TransferReport:
    """Copy the ok rows of ``store`` (all, or those whose sha256 or sample_id is in ``samples``) into
    the store of the same spec in ``dest_cache`` (created if needed). Rows the target already holds
    (same sha256 and view) are reused, not copied again."""
    dest = FeatureStore.create(dest_cache, store.spec)
    report = TransferReport(source=str(store.path), target=str(dest.path))
    table = store.commits(STATUS_OK)
    if samples is not None:
        wanted = set(samples)
        mask = [h in wanted or s in wanted for h, s in zip(table.column("image_sha256").to_pylist(), table.column("sample_id").to_pylist(), strict=True)]
        table = table.filter(pa.array(mask, type=pa.bool_()))
        found = set(table.column("image_sha256").to_pylist()) | set(table.column("sample_id").to_pylist())
        missing = sorted(wanted - found)
        if missing:
            raise SakError(
                f"{len(missing)} requested sample(s) are not committed in {store.path}, e.g. {missing[:3]}; "
                "list sha256 or sample_id values of committed rows (sak-cache info STORE)"
            )
    have = dest.commits(STATUS_OK)
    have_keys = set(zip(have.column("image_sha256").to_pylist(), have.column("view").to_pylist(), strict=True))
    new = [(h, v) not in have_keys for h, v in zip(table.column("image_sha256").to_pylist(), table.column("view").to_pylist(), strict=True)]
    report.reused = len(new) - sum(new)
    table = table.filter(pa.array(new, type=pa.bool_()))
    if table.num_rows:
        report.new_segments, report.copied, _ = copy_rows(store, table, dest, segment_rows=segment_rows, progress=progress)
    return report
