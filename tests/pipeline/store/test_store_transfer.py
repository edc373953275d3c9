"""compact (in place, no gap for readers), export (whole store or a subset, reusing what the target holds),
verify's missing-segment report, on local disk and behind a URL."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

import sak.pipeline.store.transfer as transfer
from sak.manifests.errors import SakError
from sak.pipeline.store.feature_store import FeatureStore
from sak.pipeline.store.transfer import compact_store, export_store

SHAS = [f"{i:064x}" for i in range(16)]


@pytest.fixture(params=["local", "memory"])
def root(request, tmp_path) -> str:
    return str(tmp_path / "cache") if request.param == "local" else f"memory://xfer-{uuid.uuid4().hex[:8]}/cache"


def features(store: FeatureStore) -> dict[tuple[str, int], tuple[dict[int, np.ndarray], dict[int, np.ndarray]]]:
    out = {}
    t = store.commits()
    for sha, view, seg, row in zip(*(t.column(c).to_pylist() for c in ("image_sha256", "view", "segment_id", "row")), strict=True):
        out[(sha, view)] = (store.read_rows(seg, [row]), store.read_prefix(seg, [row]))
    return out


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        for x, y in zip(a[key], b[key], strict=True):
            for layer in x:
                np.testing.assert_array_equal(x[layer], y[layer])


@pytest.fixture()
def fragmented(root, st) -> FeatureStore:
    """5 segments of 3 rows, one failed row, and a later duplicate of SHAS[0] with different values."""
    store = FeatureStore.create(root, st.make_spec(keep_prefix=True, dtype="bfloat16"))
    for i in range(5):
        st.write_segment(store, SHAS[3 * i : 3 * i + 3], seed=i, failed={"e" * 64: "BadImage"} if i == 2 else None)
    st.write_segment(store, [SHAS[0]], seed=99)  # a second writer's copy: dedup keeps the first
    return store


def test_compact_merges_small_segments_without_a_gap(fragmented, monkeypatch) -> None:
    store = fragmented
    before, stats_before = features(store), store.stats()
    failed_before = store.commits("failed").to_pylist()
    old = store.committed_segments()
    during = {}
    real_copy = transfer.copy_rows

    def copy_then_look(*args, **kwargs):  # new parts committed, old ones not yet removed
        result = real_copy(*args, **kwargs)
        reader = FeatureStore.open(str(store.path))
        during["segments"] = len(reader.committed_segments())
        during["features"] = features(reader)
        return result

    monkeypatch.setattr(transfer, "copy_rows", copy_then_look)
    report = compact_store(store, target_rows=100)
    assert (report.copied, report.failed_copied, len(report.new_segments)) == (15, 1, 1)
    assert report.removed_segments == old and during["segments"] == 7
    assert_same(during["features"], before)

    after = FeatureStore.open(str(store.path))
    assert after.committed_segments() == report.new_segments
    assert (after.path / "segments").list_names() == report.new_segments
    assert (after.path / "stats").list_names() == [f"{report.new_segments[0]}.json"]
    assert after.raw_commits().num_rows == 16  # the duplicate is gone, the failed row kept
    assert_same(features(after), before)
    assert [(r["image_sha256"], r["error"]) for r in after.commits("failed").to_pylist()] == [
        (r["image_sha256"], r["error"]) for r in failed_before
    ]
    for layer, st_ in after.stats().items():
        assert st_.count == stats_before[layer].count == 15 * 64
        np.testing.assert_allclose(st_.mean, stats_before[layer].mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(st_.var, stats_before[layer].var, rtol=1e-9, atol=1e-12)
    assert after.verify().ok and after.verify().checked == 15
    assert report.new_segments[0][:22] == old[0][:22]  # keeps the oldest creation stamp (dedup order)


def test_compact_splits_into_target_sized_segments_and_is_idempotent(fragmented) -> None:
    before = features(fragmented)
    report = compact_store(fragmented, target_rows=4)
    assert len(report.new_segments) == 4 and report.copied == 15  # 4 + 4 + 4 + 3
    again = compact_store(FeatureStore.open(str(fragmented.path), read_only=False), target_rows=4)
    assert again.removed_segments == [] and again.new_segments == []  # one segment under 4 rows: nothing to merge
    assert_same(features(FeatureStore.open(str(fragmented.path))), before)


def test_compact_refuses_a_read_only_store(fragmented) -> None:
    with pytest.raises(SakError, match="read-only"):
        compact_store(FeatureStore.open(str(fragmented.path)))


def test_export_whole_store_then_a_subset_reuses_what_is_there(fragmented, tmp_path) -> None:
    target = f"memory://export-{uuid.uuid4().hex[:8]}/lab" if isinstance(fragmented.path, type(tmp_path)) else str(tmp_path / "copy")
    subset = export_store(fragmented, target, samples=[SHAS[1], "id-" + SHAS[4]])
    assert (subset.copied, subset.reused) == (2, 0)
    dest = FeatureStore.open(subset.target)
    assert dest.spec == fragmented.spec and sorted(dest.commits().column("image_sha256").to_pylist()) == [SHAS[1], SHAS[4]]
    full = export_store(fragmented, target)
    assert (full.copied, full.reused) == (13, 2)
    assert_same(features(FeatureStore.open(full.target)), features(fragmented))
    assert FeatureStore.open(full.target).verify().ok
    with pytest.raises(SakError, match="not committed"):
        export_store(fragmented, target, samples=["no-such-sample"])


def test_verify_reports_a_committed_segment_missing_on_disk(fragmented) -> None:
    seg = fragmented.committed_segments()[1]
    (fragmented.path / "segments" / seg).remove_tree()
    report = FeatureStore.open(str(fragmented.path)).verify()
    assert report.missing_segments == [seg] and len(report.corrupt) == 3 and not report.ok


def test_compact_rewrites_full_segments_that_hold_rows_committed_twice(root, st) -> None:
    """Two writers committed the same 4 samples in full-size segments: nothing is small, but the copy readers
    never use is dropped (it stayed forever before), and the data readers see are unchanged."""
    store = FeatureStore.create(root, st.make_spec(keep_prefix=True))
    st.write_segment(store, SHAS[:4], seed=1)
    second, _, _ = st.write_segment(store, SHAS[:4], seed=2)  # a second writer's copies: dedup keeps the first writer's rows
    before = features(store)
    assert store.raw_commits().num_rows == 8
    report = compact_store(FeatureStore.open(str(store.path), read_only=False), target_rows=4)
    after = FeatureStore.open(str(store.path))
    # only the segment whose rows are all hidden copies goes; nothing of it is worth copying
    assert after.raw_commits().num_rows == 4 and report.copied == 0 and report.removed_segments == [second.segment_id]
    assert_same(features(after), before)
    assert after.verify().ok
