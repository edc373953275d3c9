"""Vectorized dedup and stats merge give exactly what the per-row code before issue 13 gave.

The old code lives in benchmarks/legacy_open.py (the baseline of benchmarks/scaling.py "open").
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from sak.manifests.schemas import COMMIT_SCHEMA
from sak.pipeline.store.commits import dedup_commits, dropped_ok_rows, merge_stacked
from sak.pipeline.store.feature_store import FeatureStore
from sak.pipeline.store.stats import LayerStats, merge_all

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # benchmarks/ lives at the repo root

from benchmarks import legacy_open

ROW = hst.tuples(hst.sampled_from("abcd"), hst.integers(0, 2), hst.sampled_from(["s1", "s2", "s3"]), hst.booleans())


def _table(rows: list[tuple[str, int, str, bool]]) -> pa.Table:
    """Commit rows (sha letter, view, segment, ok) with per-segment row numbers (null when failed)."""
    counters: dict[str, int] = {}
    out = []
    for sha, view, seg, ok in rows:
        row = counters.get(seg, 0) if ok else None
        if ok:
            counters[seg] = row + 1
        out.append({"image_sha256": sha * 64, "sample_id": sha, "source": "src", "view": view, "view_params": f"v{seg}",
                    "segment_id": seg, "row": row, "checksum": "0" * 64 if ok else None,
                    "status": "ok" if ok else "failed", "error": None if ok else f"err {seg}"})
    return pa.Table.from_pylist(out, schema=COMMIT_SCHEMA)


@settings(max_examples=150, deadline=None)
@given(hst.lists(ROW, max_size=30))
def test_dedup_equals_the_per_row_code(rows) -> None:
    raw = _table(rows)
    assert dedup_commits(raw).equals(legacy_open.dedup_commits(raw))
    got, want = dropped_ok_rows(raw), legacy_open.dropped_ok_rows(raw)
    assert sorted(zip(got.column("segment_id").to_pylist(), got.column("row").to_pylist(), strict=True)) == sorted(
        zip(want.column("segment_id").to_pylist(), want.column("row").to_pylist(), strict=True))


def test_stacked_merge_equals_pairwise_merge() -> None:
    rng = np.random.default_rng(0)
    items = [LayerStats.from_values(rng.standard_normal((int(n), 5)) * 3 + 10) for n in rng.integers(1, 50, 40)]
    items.insert(3, LayerStats.empty(5))
    got, want = merge_stacked(items, 5), merge_all(items, 5)
    assert got.count == want.count
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-13)
    np.testing.assert_allclose(got.m2, want.m2, rtol=1e-12)
    assert merge_stacked([], 5).count == 0 and merge_stacked(items[:1], 5) is items[0]


def test_store_commits_and_stats_equal_before_with_duplicates(st, tmp_path: Path) -> None:
    store = FeatureStore.create(tmp_path, st.make_spec())
    st.write_segment(store, ["a" * 64, "b" * 64, "e" * 64], failed={"c" * 64: "first", "d" * 64: "old"}, seed=1)
    st.write_segment(store, ["b" * 64, "c" * 64], failed={"d" * 64: "new"}, seed=2)
    st.write_segment(store, ["e" * 64, "f" * 64], seed=3)
    fresh = FeatureStore.open(store.path)
    old = legacy_open.LegacyStore(FeatureStore.open(store.path))
    for status in ("ok", "failed", None):
        assert fresh.commits(status).equals(old.commits(status))
    got, want = fresh.stats(), old.stats()
    assert got.keys() == want.keys()
    for layer in got:
        assert got[layer].count == want[layer].count
        np.testing.assert_allclose(got[layer].mean, want[layer].mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got[layer].m2, want[layer].m2, rtol=1e-10, atol=1e-9)
    assert fresh.stats() is not got and fresh.stats()[store.spec.layers[0]] is got[store.spec.layers[0]]  # cached


def test_caches_follow_new_commits(st, tmp_path: Path) -> None:
    store = FeatureStore.create(tmp_path, st.make_spec())
    st.write_segment(store, ["a" * 64], seed=1)
    assert store.commits().num_rows == 1 and store.stats()[store.spec.layers[0]].count > 0
    before = store.stats()[store.spec.layers[0]].count
    st.write_segment(store, ["b" * 64], seed=2)
    assert store.commits().num_rows == 2 and store.raw_commits().num_rows == 2
    assert store.stats()[store.spec.layers[0]].count == 2 * before


@pytest.mark.parametrize("missing", [False, True])
def test_missing_stats_file_is_still_an_error(st, tmp_path: Path, missing: bool) -> None:
    from sak.manifests.errors import StoreCorrupt

    store = FeatureStore.create(tmp_path, st.make_spec())
    rep, _, _ = st.write_segment(store, ["a" * 64], seed=1)
    if missing:
        (store.path / "stats" / f"{rep.segment_id}.json").unlink()
        with pytest.raises(StoreCorrupt, match="sak-cache verify"):
            FeatureStore.open(store.path).stats()
    else:
        assert FeatureStore.open(store.path).stats()
