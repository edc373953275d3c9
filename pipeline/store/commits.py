"""Read-time dedup of commit rows (see :mod:`.store` for the rule) and small table helpers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...manifests.schemas import STATUS_FAILED, STATUS_OK


def commit_keys(table: pa.Table) -> np.ndarray:
    sha = table.column("image_sha256").to_numpy(zero_copy_only=False).astype(object)
    view = table.column("view").to_numpy(zero_copy_only=False).astype(str).astype(object)
    return sha + "|" + view


def first_per_key(table: pa.Table, order: str) -> pa.Table:
    if table.num_rows == 0:
        return table
    table = table.sort_by([("image_sha256", "ascending"), ("view", "ascending"), ("segment_id", order), ("row", "ascending")])
    keys = commit_keys(table)
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    return table.filter(pa.array(first))


def dedup_commits(raw: pa.Table) -> pa.Table:
    ok = first_per_key(raw.filter(pc.equal(raw.column("status"), STATUS_OK)), "ascending")
    failed = raw.filter(pc.equal(raw.column("status"), STATUS_FAILED))
    if failed.num_rows and ok.num_rows:
        failed = failed.filter(pa.array(~np.isin(commit_keys(failed), commit_keys(ok))))
    failed = first_per_key(failed, "descending")
    return pa.concat_tables([ok, failed]).sort_by([("segment_id", "ascending"), ("row", "ascending")])


def dropped_ok_rows(raw: pa.Table) -> pa.Table:
    ok = raw.filter(pc.equal(raw.column("status"), STATUS_OK))
    kept = first_per_key(ok, "ascending")
    if kept.num_rows == ok.num_rows:
        return ok.slice(0, 0)
    kept_ids = set(zip(kept.column("segment_id").to_pylist(), kept.column("row").to_pylist(), strict=True))
    mask = [(s, r) not in kept_ids for s, r in zip(ok.column("segment_id").to_pylist(), ok.column("row").to_pylist(), strict=True)]
    return ok.filter(pa.array(mask))


def rows_by_segment(table: pa.Table, with_meta: bool = False) -> dict[str, list]:
    out: dict[str, list] = {}
    segs = table.column("segment_id").to_pylist()
    rows = table.column("row").to_pylist()
    if with_meta:
        shas, sums = table.column("image_sha256").to_pylist(), table.column("checksum").to_pylist()
        for s, r, h, c in zip(segs, rows, shas, sums, strict=True):
            out.setdefault(s, []).append((r, h, c))
    else:
        for s, r in zip(segs, rows, strict=True):
            out.setdefault(s, []).append(r)
    return out
