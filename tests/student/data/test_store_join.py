"""The vectorized StoreJoin serves exactly the items and coverage of the per-row join before issue 13.

Synthetic caches (a manifest and commit parts, no arrays): two stores with views, duplicates
across segments, failed rows, samples missing from one store, rows of other splits and failed
manifest rows. The old join lives in benchmarks/legacy_open.py (benchmarks/scaling.py's baseline).
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from sak.manifests.errors import SpecMismatch
from sak.manifests.schemas import COMMIT_SCHEMA, write_commit_part
from sak.pipeline.data.datasets import manifest_schema, open_dataset, write_dataset_index
from sak.pipeline.store.feature_store import FeatureStore
from sak.pipeline.store.spec import FeatureSpec
from sak.student.data.stores import CoverageError, Item, ManifestRow, StoreJoin

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # benchmarks/ lives at the repo root

from benchmarks.legacy_open import LegacyStore, LegacyStoreJoin

N = 12


def _sha(i: int) -> str:
    return f"{i:02d}" * 32


def _manifest(cache: Path) -> None:
    ids = [f"s{i:02d}" for i in range(N)]
    cols = {
        "sample_id": ids, "path": [f"images/{s}.jpg" for s in ids], "sha256": [_sha(i) for i in range(N)],
        "width": pa.array([64] * N, pa.int32()), "height": pa.array([48] * N, pa.int32()),
        "split": ["train"] * (N - 2) + ["val"] * 2, "source": ["syn"] * N,
        "status": ["ok"] * 9 + ["failed"] + ["ok"] * 2, "error": [None] * 9 + ["bad"] + [None] * 2,
    }
    schema = manifest_schema()
    table = pa.table({f.name: pa.array(cols.get(f.name, [None] * N), f.type) for f in schema}, schema=schema)
    (cache / "root").mkdir(parents=True)
    write_dataset_index(cache, "syn", table, cache / "root")


def _store(cache: Path, teacher: str, views: int, parts: list[list[tuple[int, int, bool, str]]]) -> FeatureStore:
    """parts: per segment, rows (sample index, view, ok, view params)."""
    spec = FeatureSpec(teacher=teacher, weights="file:x", layers=(1,), resolution=(32, 32), resize="squash",
                       mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), patch_size=8, width=4, grid=(4, 4), views=views,
                       aug="sak" if views > 1 else "none", aug_version=2 if views > 1 else 1)
    store = FeatureStore.create(cache, spec)
    for p, rows in enumerate(parts):
        seg = f"20260101T0000000000{p:02d}Z-h-1-{p:08x}"
        out, n_ok = [], 0
        for i, view, ok, params in rows:
            out.append({"image_sha256": _sha(i), "sample_id": f"s{i:02d}", "source": "syn", "view": view, "view_params": params,
                        "segment_id": seg, "row": n_ok if ok else None, "checksum": "0" * 64 if ok else None,
                        "status": "ok" if ok else "failed", "error": None if ok else "boom"})
            n_ok += ok
        write_commit_part(pa.Table.from_pylist(out, schema=COMMIT_SCHEMA), store.path / "manifest" / f"part-{seg}.parquet")
    return store


def _p(i: int, v: int) -> str:
    return f'{{"i": {i}, "v": {v}}}'


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    _manifest(cache)
    # store A: both views of 0-7 over two segments (0-3 twice: duplicates), 8 failed; 10 (val) too
    a_parts = [[(i, v, True, _p(i, v)) for i in range(4) for v in (0, 1)] + [(8, 0, False, "{}")],
               [(i, v, True, _p(i, v)) for i in range(8) for v in (0, 1)] + [(10, 0, True, _p(10, 0))]]
    _store(cache, "t:a", 2, a_parts)
    # store B: 0-6 view 0, 0-3 view 1 (later segment re-commits 2), 5 failed in view 1
    b_parts = [[(i, 0, True, _p(i, 0)) for i in range(7)] + [(i, 1, True, _p(i, 1)) for i in range(4)] + [(5, 1, False, "{}")],
               [(2, 0, True, _p(2, 0)), (2, 1, True, _p(2, 1))]]
    _store(cache, "t:b", 2, b_parts)
    return cache


def _both(cache: Path, **kw):
    ds = open_dataset(cache, "syn")
    stores = sorted((FeatureStore.open(p) for p in (cache / "features").iterdir()), key=lambda s: s.name)
    return StoreJoin(ds, stores, "train", **kw), LegacyStoreJoin(ds, [LegacyStore(s) for s in stores], "train", **kw)


def _flat(items: list[Item]) -> list[tuple]:
    return [(dict(it.row), it.view, it.view_params, it.locations) for it in items]


def test_items_and_coverage_equal_the_per_row_join(cache: Path) -> None:
    new, old = _both(cache, allow_missing=True)
    assert _flat(new.items) == _flat(old.items)
    assert new.coverage == old.coverage
    assert new.coverage.missing and new.coverage.covered < new.coverage.samples
    assert {it.view for it in new.items} == {0, 1} and all(len(it.locations) == 2 for it in new.items)


def test_refusals_say_the_same(cache: Path) -> None:
    with pytest.raises(CoverageError) as new_err:
        _both(cache)[0]
    ds = open_dataset(cache, "syn")
    stores = sorted((FeatureStore.open(p) for p in (cache / "features").iterdir()), key=lambda s: s.name)
    with pytest.raises(CoverageError) as old_err:
        LegacyStoreJoin(ds, [LegacyStore(s) for s in stores], "train")
    assert str(new_err.value) == str(old_err.value)


def test_different_view_params_are_refused_like_before(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _manifest(cache)
    _store(cache, "t:a", 2, [[(i, v, True, _p(i, v)) for i in range(9) for v in (0, 1)]])
    _store(cache, "t:b", 2, [[(i, v, True, _p(i, v) if (i, v) != (4, 1) else "{}") for i in range(9) for v in (0, 1)]])
    ds = open_dataset(cache, "syn")
    stores = sorted((FeatureStore.open(p) for p in (cache / "features").iterdir()), key=lambda s: s.name)
    with pytest.raises(SpecMismatch) as new_err:
        StoreJoin(ds, stores, "train")
    with pytest.raises(SpecMismatch) as old_err:
        LegacyStoreJoin(ds, [LegacyStore(s) for s in stores], "train")
    assert str(new_err.value) == str(old_err.value) and "sample s04 view 1" in str(new_err.value)


def test_one_store_one_view_and_no_store(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _manifest(cache)
    _store(cache, "t:c", 1, [[(i, 0, True, "{}") for i in (0, 1, 2)], [(i, 0, True, "{}") for i in (2, 3, 5, 8)]])
    new, old = _both(cache, allow_missing=True)
    assert _flat(new.items) == _flat(old.items) and new.coverage == old.coverage
    assert all(it.view_params is None for it in new.items)
    ds = open_dataset(cache, "syn")
    bare, bare_old = StoreJoin(ds, [], "val"), LegacyStoreJoin(ds, [], "val")
    assert _flat(bare.items) == _flat(bare_old.items) and bare.coverage == bare_old.coverage


def test_rows_are_read_only_mappings_that_pickle_as_dicts(cache: Path) -> None:
    new, _ = _both(cache, allow_missing=True)
    item = new.items[3]
    assert isinstance(item.row, ManifestRow) and item.row["sample_id"] == item.row.get("sample_id")
    assert item.row.get("no_such_column") is None and len(item.row) == len(dict(item.row))
    again = pickle.loads(pickle.dumps(item))
    assert type(again.row) is dict and again.row == dict(item.row) and again.locations == item.locations
