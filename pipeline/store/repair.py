"""Repair: verify a store, then "uncommit" what is damaged so an ordinary extraction redoes it.

A committed sample exists only through its row in a commit part, so removing the row is all it
takes for ``extract`` to plan that sample again (``sak-cache extract ... --repair``, or
``sak-cache verify STORE --fix`` followed by the printed extract command). Per finding of
:func:`.maintenance.verify_store`:

* damaged samples (checksum mismatch, unreadable shard, missing segment or array): their rows
  are dropped from their part, rewritten atomically; a part left with no row is removed (its
  segment becomes garbage for ``gc``); the segment's statistics are recomputed from the rows that
  remain, so ``stats()`` stays the statistics of exactly the committed rows;
* a missing, unreadable or wrong ``stats/<segment>.json``: recomputed from the segment's rows;
* an unusable part (unreadable, wrong schema, ids that are not its own): moved aside to
  ``manifest/damaged/`` (kept for inspection, never read); its rows are extracted again;
* a spec.json that does not describe the arrays cannot be repaired here: :class:`StoreCorrupt`
  names the fix, and nothing is changed.

Every write is atomic and every removal is checked to lie inside the store, so a repair killed at
any point leaves a store that verifies as well as before or better, and running it again finishes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ...manifests.errors import SakError, StoreCorrupt
from ...manifests.schemas import COMMIT_SCHEMA, STATUS_OK
from ..storage import Location, write_parquet_atomic
from .feature_store import FeatureStore
from .ids import check_inside
from .maintenance import FIXES, VerifyReport, verify_store
from .spec import extract_command
from .stats import LayerStats, fidelity_from_json, stats_to_json
from .writer import write_text_atomic

log = logging.getLogger(__name__)

DAMAGED_DIR = "damaged"  # manifest/damaged/: parts moved aside by a repair
READ_BLOCK = 64  # rows per read while recomputing statistics


@dataclass
class RepairReport:
    store: str
    verify: VerifyReport
    dropped: list[tuple[str, int | None, str, str]] = field(default_factory=list)  # (segment, row, sha256, source)
    moved_parts: list[str] = field(default_factory=list)  # part file names now under manifest/damaged/
    rewritten_parts: list[str] = field(default_factory=list)  # segments whose part lost rows (or was removed)
    rewritten_stats: list[str] = field(default_factory=list)  # segments whose statistics were recomputed
    sources: list[str] = field(default_factory=list)  # datasets (rows' ``source``) to extract again
    command: str = ""  # the extract command that re-extracts what was dropped ("" when nothing was)

    @property
    def changed(self) -> bool:
        return bool(self.dropped or self.moved_parts or self.rewritten_stats)


def _part_sources(path: Location) -> list[tuple[str, str]]:
    """(sha256, source) of an unusable part's rows, as far as they can be read (for the re-extract command)."""
    try:
        table = pq.read_table(pa.BufferReader(path.read_bytes()), columns=["image_sha256", "source"])
    except Exception:  # unreadable bytes: nothing to name (its rows are re-extracted by a plain --repair run)
        return []
    return list(zip(table.column("image_sha256").to_pylist(), table.column("source").to_pylist(), strict=True))


def _move_aside(store: FeatureStore, name: str) -> Location:
    src = check_inside(store.path, store.path / "manifest" / name)
    folder = store.path / "manifest" / DAMAGED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    dest, n = folder / name, 1
    while dest.exists():
        n += 1
        dest = folder / f"{name}.{n}"
    dest.write_atomic(src.read_bytes())
    src.unlink()
    return dest


def recompute_stats(store: FeatureStore, segment_id: str, rows: Sequence[int]) -> dict[int, LayerStats]:
    """Per-layer statistics of ``rows`` of one segment, from the values readers get (int8: dequantized)."""
    total = {i: LayerStats.empty(store.spec.width) for i in store.spec.layers}
    ordered = sorted(rows)
    for start in range(0, len(ordered), READ_BLOCK):
        for layer, values in store.read_rows(segment_id, ordered[start : start + READ_BLOCK]).items():
            total[layer] = total[layer].merge(LayerStats.from_values(values))
    return total


def _write_stats(store: FeatureStore, segment_id: str, rows: Sequence[int]) -> None:
    path = check_inside(store.path, store.path / "stats" / f"{segment_id}.json")
    try:
        fidelity = fidelity_from_json(path.read_text(encoding="utf-8"), str(path))  # measured at extraction: kept
    except (OSError, SakError):
        fidelity = None
    write_text_atomic(path, stats_to_json(segment_id, recompute_stats(store, segment_id, rows), fidelity))


def repair_store(store: FeatureStore, report: VerifyReport | None = None, *,
                 progress: Callable[..., None] | None = None) -> RepairReport:
    """Verify ``store`` (unless ``report`` is given) and uncommit what is damaged (module doc). Returns what changed."""
    if store.read_only:
        raise SakError(f"store {store.path} is open read-only; open it with read_only=False to repair it")
    report = report if report is not None else verify_store(store, progress)
    if report.newer_parts:
        raise SakError(f"{store.path}: {len(report.newer_parts)} commit part(s) were written by a newer sak (e.g. "
                       f"{report.newer_parts[0]}); a repair by this version could drop their rows, so nothing was changed. "
                       f"To fix: {FIXES['newer']}.")
    spec_problems = [p for p in report.problems if p[0] == "spec"]
    if spec_problems:
        kind, where, detail = spec_problems[0]
        raise StoreCorrupt(f"{where}: {detail}. A repair cannot fix the spec; nothing was changed. To fix: {FIXES['spec']}.")
    out = RepairReport(store=str(store.path), verify=report)
    raw = report.rows if report.rows is not None else COMMIT_SCHEMA.empty_table()
    sources: set[str] = set()
    for name in report.bad_parts:
        for sha, source in _part_sources(store.path / "manifest" / name):
            out.dropped.append((name[len("part-") : -len(".parquet")], None, sha, source))
            sources.add(source)
        dest = _move_aside(store, name)
        out.moved_parts.append(name)
        log.warning("moved unusable commit part %s aside to %s; its rows will be extracted again", name, dest)
    damaged: dict[str, set[int]] = {}
    for seg, row, _, _ in report.corrupt:
        damaged.setdefault(seg, set()).add(row)
    by_segment = {seg: raw.filter(pc.equal(raw.column("segment_id"), seg)) for seg in sorted(set(damaged) | set(report.bad_stats))}
    for seg in sorted(damaged):
        if not store.part_path(seg).exists():  # a compact (or another repair) removed it since the verify: not ours now
            log.warning("segment %s of %s was removed since it was verified (a compact running?); skipped", seg, store.path)
            by_segment.pop(seg, None)
            continue
        part = by_segment[seg]
        is_ok = pc.equal(part.column("status"), STATUS_OK).to_numpy(zero_copy_only=False)
        drop = [bool(ok) and r in damaged[seg] for ok, r in zip(is_ok, part.column("row").to_pylist(), strict=True)]
        for r in part.filter(pa.array(drop, pa.bool_())).to_pylist():
            out.dropped.append((seg, r["row"], r["image_sha256"], r["source"]))
            sources.add(r["source"])
        kept = by_segment[seg] = part.filter(pa.array([not d for d in drop], pa.bool_()))
        path = check_inside(store.path, store.part_path(seg))
        if kept.num_rows:
            write_parquet_atomic(kept, path, COMMIT_SCHEMA)
        else:
            path.unlink(missing_ok=True)  # no row left: the segment is uncommitted (gc collects it)
        out.rewritten_parts.append(seg)
        log.warning("uncommitted %d damaged sample(s) of segment %s in %s", sum(drop), seg, store.path)
    for seg, part in by_segment.items():
        ok_rows = part.filter(pc.equal(part.column("status"), STATUS_OK)).column("row").to_pylist()
        if ok_rows:  # segments left without ok rows need no statistics (stats() reads only those with ok rows)
            _write_stats(store, seg, ok_rows)
            out.rewritten_stats.append(seg)
    store.refresh()
    out.sources = sorted(sources)
    if out.dropped:
        out.command = extract_command(store.spec, store.path.parent.parent, out.sources or ["<dataset>"])
    return out


def repair_before_extract(store: FeatureStore) -> RepairReport:
    """``extract --repair``: :func:`repair_store`, logged; the extraction's planning then redoes what was uncommitted."""
    log.info("--repair: verifying %s", store.path)
    fixed = repair_store(store)
    if not fixed.changed:
        log.info("--repair: %s verifies clean (%d samples checked)", store.path, fixed.verify.checked)
    else:
        log.warning("--repair: %s: uncommitted %d damaged sample(s) (datasets: %s), moved %d part(s) aside, recomputed %d "
                    "statistics file(s); this run extracts them again when their dataset is part of it", store.path,
                    len(fixed.dropped), ", ".join(fixed.sources) or "unknown", len(fixed.moved_parts), len(fixed.rewritten_stats))
    return fixed
