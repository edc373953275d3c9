"""Store maintenance: ``verify`` (checksums through zarr) and ``gc`` (uncommitted segments, stale temp files)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow.compute as pc

from ...manifests.errors import SakError
from ...manifests.schemas import STATUS_OK
from ..storage import Location
from .arrays import sample_arrays, sample_checksum
from .claims import BlockClaims
from .commits import rows_by_segment
from .writer import ACTIVE_SEGMENTS, parse_segment_id, this_host

log = logging.getLogger(__name__)


@dataclass
class VerifyReport:
    checked: int = 0
    corrupt: list[tuple[str, int, str, str]] = field(default_factory=list)  # (segment, row, sha256, reason)
    missing_segments: list[str] = field(default_factory=list)  # committed (a part names them) but absent

    @property
    def ok(self) -> bool:
        return not self.corrupt


def verify_store(store, progress: Callable[..., None] | None = None) -> VerifyReport:
    """Recompute every committed ok sample's checksum from the stored bytes (see store_reader)."""
    report = VerifyReport()
    raw = store.raw_commits()
    ok = raw.filter(pc.equal(raw.column("status"), STATUS_OK))
    names = [name for name, _, _ in sample_arrays(store.spec)]  # checksum order: every part of every layer, then prefix
    for seg, rows in rows_by_segment(ok, with_meta=True).items():
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
        for row, sha, checksum in rows:
            report.checked += 1
            if row >= n_rows:
                report.corrupt.append((seg, row, sha, f"row {row} missing (arrays hold {n_rows})"))
                continue
            try:
                got = sample_checksum([np.asarray(a[row : row + 1])[0] for a in arrays])
            except Exception as exc:  # a damaged shard fails to decode
                report.corrupt.append((seg, row, sha, f"unreadable: {type(exc).__name__}: {exc}"))
                continue
            if got != checksum:
                report.corrupt.append((seg, row, sha, "checksum mismatch"))
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

