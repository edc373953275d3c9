"""Per-layer statistics: Chan merge and its inverse, JSON round trip, store stats over committed rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sak.pipeline.store.feature_store import FeatureStore
from sak.pipeline.store.stats import LayerStats, stats_from_json, stats_to_json


def test_golden_values() -> None:
    s = LayerStats.from_values(np.array([[1.0, 10.0], [3.0, 10.0]]))
    assert s.count == 2
    np.testing.assert_array_equal(s.mean, [2.0, 10.0])
    np.testing.assert_array_equal(s.var, [1.0, 0.0])
    merged = s.merge(LayerStats.from_values(np.array([[5.0, 13.0]])))
    np.testing.assert_allclose(merged.mean, [3.0, 11.0])
    np.testing.assert_allclose(merged.var, [8.0 / 3.0, 2.0])


def test_merge_and_subtract_match_numpy() -> None:
    rng = np.random.default_rng(0)
    chunks = [rng.standard_normal((n, 5)) * 3 + 7 for n in (1, 17, 40, 3)]
    total = LayerStats.empty(5)
    for c in chunks:
        total = total.merge(LayerStats.from_values(c))
    allv = np.concatenate(chunks)
    np.testing.assert_allclose(total.mean, allv.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(total.var, allv.var(0), rtol=1e-12)
    less = total.subtract(LayerStats.from_values(chunks[1]))
    rest = np.concatenate([chunks[0], chunks[2], chunks[3]])
    np.testing.assert_allclose(less.mean, rest.mean(0), atol=1e-12)
    np.testing.assert_allclose(less.var, rest.var(0), rtol=1e-10)
    assert total.subtract(total).count == 0


def test_json_round_trip_is_exact() -> None:
    s = LayerStats.from_values(np.random.default_rng(1).standard_normal((9, 4)))
    back = stats_from_json(stats_to_json("seg", {2: s}), "x")[2]
    assert back.count == s.count
    np.testing.assert_array_equal(back.mean, s.mean)
    np.testing.assert_array_equal(back.m2, s.m2)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_store_stats_equal_numpy_over_committed_rows(st, tmp_path: Path, dtype: str) -> None:
    store = FeatureStore.create(tmp_path, st.make_spec(dtype=dtype))
    shas = [f"{i:064x}" for i in range(20)]
    st.write_segment(store, shas[:9], seed=1, failed={"e" * 64: "bad"})
    st.write_segment(store, shas[9:], seed=2, batch=4)
    st.write_segment(store, shas[5:12], seed=3)  # a concurrent writer's duplicates: dedup keeps the first ones
    garbage = store.writer(4)  # uncommitted: must not count
    from sak.pipeline.store.writer import SampleKey

    layers, _ = st.random_features(store.spec, 2, seed=9)
    garbage.append([SampleKey("9" * 64, "g", "s"), SampleKey("8" * 64, "h", "s")], layers)
    garbage.abort()

    rows = store.commits()
    assert rows.num_rows == 20
    stats = store.stats()
    for layer in store.spec.layers:
        values = np.concatenate(
            [store.read_rows(r["segment_id"], [r["row"]])[layer].astype(np.float64) for r in rows.to_pylist()]
        ).reshape(-1, 32)
        assert stats[layer].count == values.shape[0] == 20 * 64
        np.testing.assert_allclose(stats[layer].mean, values.mean(0), rtol=0, atol=1e-6)
        np.testing.assert_allclose(stats[layer].var, values.var(0), rtol=0, atol=1e-6)
