"""repair_store uncommits damaged samples, recomputes statistics and moves unusable parts aside."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sak.manifests.errors import SakError, StoreCorrupt
from sak.pipeline.store.feature_store import FeatureStore
from sak.pipeline.store.repair import recompute_stats, repair_store
from sak.pipeline.store.spec import extract_command

SHAS = [f"{i:064x}" for i in range(10)]


@pytest.fixture()
def store(st, tmp_path: Path) -> FeatureStore:
    """3 segments: 4 rows (+1 failed), 4 rows, 2 rows; shards of 4 samples."""
    s = FeatureStore.create(tmp_path / "cache", st.make_spec(keep_prefix=True))
    st.write_segment(s, SHAS[:4], failed={"e" * 64: "BadImage"})
    st.write_segment(s, SHAS[4:8], seed=1)
    st.write_segment(s, SHAS[8:], seed=2)
    return FeatureStore.open(s.path, read_only=False)


def _flip(path: Path, at: float = 0.3) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i : i + 8] = bytes(b ^ 0xA5 for b in data[i : i + 8])
    path.write_bytes(bytes(data))


def _shard(store: FeatureStore, seg: str, array: str = "layer_3") -> Path:
    return next(p for p in Path(store.path, "segments", seg, array, "c").rglob("*") if p.is_file())


def test_a_flipped_shard_is_uncommitted_and_the_stats_follow(store) -> None:
    a, b, c = store.committed_segments()
    _flip(_shard(store, b))
    report = store.verify()
    bad = sorted({(seg, row) for seg, row, _, _ in report.corrupt})
    assert bad == [(b, 1)], bad  # 30% into a shard of 4 samples: the second one
    fixed = repair_store(store, report)
    assert sorted((seg, row) for seg, row, _, _ in fixed.dropped) == bad
    assert fixed.sources == ["src"] and fixed.rewritten_parts == [b] and fixed.moved_parts == []
    after = FeatureStore.open(store.path)
    assert after.verify().ok
    assert after.commits().num_rows == 10 - len(bad) and after.commits("failed").num_rows == 1
    want = recompute_stats(after, b, [0, 2, 3])  # the segment's statistics are those of its remaining rows
    stored = json.loads(Path(store.path, "stats", f"{b}.json").read_text())["layers"]
    for layer in (1, 3):
        assert stored[str(layer)]["count"] == want[layer].count == 3 * 64
        np.testing.assert_allclose(stored[str(layer)]["mean"], want[layer].mean, rtol=1e-12)
    assert after.stats()[3].count == 9 * 64
    assert repair_store(FeatureStore.open(store.path, read_only=False)).changed is False  # idempotent


def test_a_missing_segment_is_uncommitted_and_its_failed_rows_kept(store) -> None:
    a, _, _ = store.committed_segments()
    shutil.rmtree(Path(store.path, "segments", a))
    fixed = repair_store(store)
    assert sorted(row for _, row, _, _ in fixed.dropped) == [0, 1, 2, 3] and fixed.rewritten_stats == []
    after = FeatureStore.open(store.path)
    assert after.verify().ok and after.commits().num_rows == 6
    assert after.commits("failed").column("image_sha256").to_pylist() == ["e" * 64]


def test_missing_or_edited_stats_are_recomputed_exactly(store) -> None:
    a, b, _ = store.committed_segments()
    before = {k: (v.count, v.mean.copy(), v.m2.copy()) for k, v in store.stats().items()}
    Path(store.path, "stats", f"{a}.json").unlink()
    path_b = Path(store.path, "stats", f"{b}.json")
    data = json.loads(path_b.read_text())
    data["layers"]["1"]["m2"][0] *= 2
    path_b.write_text(json.dumps(data))
    fixed = repair_store(store)
    assert fixed.dropped == [] and fixed.rewritten_stats == [a, b] and fixed.command == ""
    after = FeatureStore.open(store.path)
    assert after.verify().ok
    for layer, st_ in after.stats().items():
        assert st_.count == before[layer][0]
        np.testing.assert_allclose(st_.mean, before[layer][1], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(st_.m2, before[layer][2], rtol=1e-9)


def test_an_unusable_part_is_moved_aside_and_named_for_re_extraction(store) -> None:
    a, b, c = store.committed_segments()
    Path(store.part_path(c)).write_bytes(b"not parquet")
    fixed = repair_store(store)
    assert fixed.moved_parts == [f"part-{c}.parquet"] and fixed.dropped == []  # unreadable: rows unknown
    assert Path(store.path, "manifest", "damaged", f"part-{c}.parquet").read_bytes() == b"not parquet"
    after = FeatureStore.open(store.path)
    assert after.verify().ok and after.committed_segments() == [a, b] and after.commits().num_rows == 8


def test_a_spec_that_does_not_describe_the_arrays_is_refused_and_nothing_changes(store) -> None:
    spec = Path(store.path, "spec.json")
    data = json.loads(spec.read_text())
    data["width"] = 16
    spec.write_text(json.dumps(data))
    shutil.rmtree(Path(store.path, "segments", store.committed_segments()[0]))
    parts = sorted(p.name for p in Path(store.path, "manifest").iterdir())
    with pytest.raises(StoreCorrupt, match="A repair cannot fix the spec; nothing was changed. To fix: restore spec.json"):
        repair_store(FeatureStore.open(store.path, read_only=False))
    assert sorted(p.name for p in Path(store.path, "manifest").iterdir()) == parts


def test_extract_command_names_the_flags_that_reach_the_same_store(st) -> None:
    spec = st.make_spec(dtype="int8", quant="token-channel", keep_prefix=True)
    assert extract_command(spec, "/c c", ["nyud", "pascal"]) == (
        "sak-cache extract --cache '/c c' --teacher test:tiny --layers 1,3 --dataset nyud --dataset pascal --dtype int8 "
        "--quant token-channel --input-protocol native --native-size 64 --orientation raw --keep-prefix --random-init --repair"
    )


def test_a_part_from_a_newer_sak_is_reported_and_never_moved_or_collected(store) -> None:
    """A part with a column this version does not know (a newer sak wrote it) is not damage: verify says to upgrade,
    `--fix` refuses and changes nothing, gc keeps its segment. It used to be moved aside and its segment collected."""
    seg = store.committed_segments()[0]
    path = Path(str(store.part_path(seg)))
    table = pq.read_table(path)
    pq.write_table(table.append_column("from_the_future", pa.array([1] * table.num_rows, pa.int64())), path)
    files = sorted(str(p.relative_to(store.path)) for p in Path(store.path).rglob("*") if p.is_file())
    fresh = FeatureStore.open(store.path, read_only=False)
    report = fresh.verify()
    assert [(k, Path(w).name) for k, w, _ in report.problems] == [("newer", path.name)]
    assert report.newer_parts == [path.name] and report.bad_parts == []
    assert "Upgrade sak" in report.problems[0][2]
    with pytest.raises(SakError, match="written by a newer sak.*nothing was changed"):
        repair_store(fresh)
    assert fresh.gc(dry_run=False, grace_seconds=0.0) == []
    assert sorted(str(p.relative_to(store.path)) for p in Path(store.path).rglob("*") if p.is_file()) == files
