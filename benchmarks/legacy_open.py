"""The store x manifest join, commit dedup and stats merge as they were before issue 13 (the baseline).

Kept verbatim (per-row Python loops, ``any()`` calls, object-array string keys, commits built once
per caller, every stats JSON parsed on every call) so that ``benchmarks/scaling.py`` measures the
old and new open side by side in one run, and tests check the vectorized code gives exactly the
same items, coverage and statistics. Not used by the library.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sak.manifests.errors import SpecMismatch, StoreCorrupt
from sak.manifests.schemas import COMMIT_SCHEMA, STATUS_FAILED, STATUS_OK, validate_table
from sak.pipeline.store.catalog import list_stores
from sak.pipeline.store.stats import LayerStats, merge_all, stats_from_json
from sak.student.data.stores import Coverage, CoverageError, Item, extract_hint, split_rows


# -- pipeline/store/commits.py before ----------------------------------------------------------
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


# -- FeatureStore.raw_commits / commits / stats before ----------------------------------------
class LegacyStore:
    """A FeatureStore seen through the old ``raw_commits``/``commits``/``stats`` (parts cached, nothing else)."""

    def __init__(self, store: Any) -> None:
        self.store, self.spec, self.name, self.path = store, store.spec, store.name, store.path
        self._parts: dict[str, pa.Table] = {}

    def raw_commits(self) -> pa.Table:
        for seg in self.store.committed_segments():
            if seg not in self._parts:  # read as before: pq.read_table per part
                data = self.store.part_path(seg).read_bytes()
                self._parts[seg] = validate_table(pq.read_table(pa.BufferReader(data)), COMMIT_SCHEMA, seg)
        tables = [self._parts[s] for s in sorted(self._parts)]
        return pa.concat_tables(tables) if tables else COMMIT_SCHEMA.empty_table()

    def commits(self, status: str | None = STATUS_OK, *, dedup: bool = True) -> pa.Table:
        raw = self.raw_commits()
        table = dedup_commits(raw) if dedup else raw
        if status is not None:
            table = table.filter(pc.equal(table.column("status"), status))
        return table

    def stats(self) -> dict[int, LayerStats]:
        per_layer: dict[int, list[LayerStats]] = {i: [] for i in self.spec.layers}
        raw = self.raw_commits()
        ok_segments = set(raw.filter(pc.equal(raw.column("status"), STATUS_OK)).column("segment_id").to_pylist())
        for seg in sorted(ok_segments):
            path = self.path / "stats" / f"{seg}.json"
            if not path.exists():
                raise StoreCorrupt(f"{path} is missing for committed segment {seg}")
            for layer, st in stats_from_json(path.read_text(encoding="utf-8"), str(path)).items():
                if layer in per_layer:
                    per_layer[layer].append(st)
        totals = {i: merge_all(v, self.spec.width) for i, v in per_layer.items()}
        dropped = dropped_ok_rows(raw)
        if dropped.num_rows:
            by_seg: dict[str, list] = {}
            for s, r in zip(dropped.column("segment_id").to_pylist(), dropped.column("row").to_pylist(), strict=True):
                by_seg.setdefault(s, []).append(r)
            for seg, rows in by_seg.items():
                for layer, values in self.store.read_rows(seg, rows).items():
                    for v in values:
                        totals[layer] = totals[layer].subtract(LayerStats.from_values(v))
        return totals


def legacy_stores(cache: str) -> list[LegacyStore]:
    return [LegacyStore(s) for s in list_stores(cache)]


def select_covering(cache: str, dataset: Any, split: str = "train") -> list[LegacyStore]:
    """The old ``select_stores(cache, dataset)`` without refs: every store holding a sample of the split."""
    t = dataset.table
    shas = t.filter(pc.and_(pc.equal(t.column("status"), STATUS_OK), pc.equal(t.column("split"), split))).column("sha256")
    shas = shas.combine_chunks()
    return [s for s in legacy_stores(cache) if pc.any(pc.is_in(s.commits().column("image_sha256"), value_set=shas)).as_py()]


def ls_rows(cache: str) -> list[tuple]:
    """What the old ``sak-cache ls`` computed per store (commits deduplicated twice, the size walked)."""
    out = []
    for s in legacy_stores(cache):
        out.append((s.name, s.commits("ok").num_rows, s.commits("failed").num_rows, s.store.size_bytes(), s.store.created()))
    return out


# -- student/data/stores.py StoreJoin before ---------------------------------------------------
class LegacyStoreJoin:
    """The per-row join: a dict index per store, ``any()`` over views per row and store."""

    def __init__(self, dataset: Any, stores: Sequence[Any], split: str, *, allow_missing: bool = False,
                 cache_hint: str = "./cache") -> None:
        self.stores = list(stores)
        rows = split_rows(dataset, split)
        if not self.stores:
            self.items = [Item(row=r, view=0, view_params=None, locations=()) for r in rows]
            self.coverage = Coverage(dataset.name, split, len(rows), len(rows), len(rows))
            return
        index = [self._index(s) for s in self.stores]
        views = self.stores[0].spec.views
        replay = self.stores[0].spec.aug != "none"
        self.items, missing = [], {s.name: 0 for s in self.stores}
        covered = 0
        for row in rows:
            sha = row["sha256"]
            for name, idx in zip(missing, index, strict=True):
                if not any((sha, v) in idx for v in range(views)):
                    missing[name] += 1
            got = 0
            for v in range(views):
                found = [idx.get((sha, v)) for idx in index]
                hits = [h for h in found if h is not None]
                if len(hits) < len(found):
                    continue
                params = hits[0][2]
                if any(h[2] != params for h in hits[1:]):
                    raise SpecMismatch(
                        f"stores {', '.join(s.name for s in self.stores)} recorded different augmentations for sample "
                        f"{row['sample_id']} view {v}; their targets do not match one image. Extract them with the same "
                        "--views/--aug/--seed"
                    )
                self.items.append(Item(row=row, view=v, view_params=params if replay else None,
                                       locations=tuple((h[0], h[1]) for h in hits)))
                got += 1
            covered += got > 0
        self.coverage = Coverage(dataset.name, split, len(rows), covered, len(self.items), missing)
        if covered == 0:
            raise CoverageError(
                f"no sample of {dataset.name}/{split} is in every store ({self.coverage.summary()}); "
                + "; ".join(f"fill {s.name}: {extract_hint(s.spec, dataset.name, cache_hint)}" for s in self.stores)
            )
        if covered < len(rows) and not allow_missing:
            fixes = "; ".join(f"fill {s.name}: {extract_hint(s.spec, dataset.name, cache_hint)}"
                              for s in self.stores if missing[s.name])
            raise CoverageError(
                f"{self.coverage.summary()}. {fixes} (extraction resumes where it stopped), "
                "or pass --allow-missing to train on the covered samples only"
            )

    @staticmethod
    def _index(store: Any) -> Mapping[tuple[str, int], tuple[str, int, str | None]]:
        t = store.commits()
        cols = [t.column(c).to_pylist() for c in ("image_sha256", "view", "segment_id", "row", "view_params")]
        return {(sha, int(v)): (seg, int(row), params) for sha, v, seg, row, params in zip(*cols, strict=True)}
