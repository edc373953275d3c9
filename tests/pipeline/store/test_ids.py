"""Ids read from a store's files are validated before they touch a path (issue 14 item 1)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from sak.cli import cache_share, common
from sak.manifests.errors import StoreCorrupt
from sak.pipeline.store.feature_store import FeatureStore
from sak.pipeline.store.ids import check_inside, check_part_rows, check_segment_id
from sak.pipeline.store.transfer import compact_store
from sak.pipeline.store.writer import new_segment_id

SHAS = [f"{i:064x}" for i in range(24)]


def _store(tmp_path: Path, st) -> FeatureStore:
    """4 segments of 6 rows (24 rows) in <tmp>/lab/cache; <tmp>/lab/victim is a folder outside the cache."""
    store = FeatureStore.create(tmp_path / "lab" / "cache", st.make_spec())
    for i in range(4):
        st.write_segment(store, SHAS[6 * i : 6 * i + 6], seed=i)
    return store


def _retarget(part: Path, segment_id: str) -> None:
    table = pq.read_table(part)
    i = table.column_names.index("segment_id")
    table = table.set_column(i, table.schema.field(i), pa.array([segment_id] * table.num_rows, pa.string()))
    pq.write_table(table, part)


def _part_rows(store: FeatureStore) -> int:
    return sum(pq.read_metadata(p).num_rows for p in Path(store.path, "manifest").glob("part-*.parquet"))


@pytest.mark.parametrize("good", [new_segment_id(), "20240101T000000000000Z-host.lab-12-ab12cd34", "seg_1"])
def test_plain_segment_ids_pass(good: str) -> None:
    assert check_segment_id(good, "part") == good


@pytest.mark.parametrize("bad", ["../../../../victim", "..", ".", "", "a/b", "a\\b", "a\x00b", ".part-x.tmp", "x" * 201, 7, None])
def test_ids_with_separators_dots_nul_or_no_name_are_refused(bad) -> None:
    with pytest.raises(StoreCorrupt, match=r"manifest/part-x\.parquet: segment id .* is not a plain name.*--fix"):
        check_segment_id(bad, "manifest/part-x.parquet")


def test_compact_refuses_a_part_whose_rows_climb_out_of_the_store(tmp_path: Path, st, monkeypatch) -> None:
    store = _store(tmp_path, st)
    seg = store.committed_segments()[0]
    victim = tmp_path / "lab" / "victim"  # holds readable arrays, so main's compact copied from it, then deleted it
    shutil.copytree(Path(store.path, "segments", seg), victim)
    (victim / "thesis.tex").write_text("years of work")
    _retarget(store.part_path(seg), "../../../../victim")  # segments/../../../../victim == <tmp>/lab/victim

    monkeypatch.setattr(common.console, "width", 250)
    app = typer.Typer()
    cache_share.register(app)
    res = CliRunner().invoke(app, ["compact", str(store.path), "--target-rows", "100"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and f"part-{seg}.parquet" in res.output.replace("\n", "")
    assert (victim / "thesis.tex").read_text() == "years of work"
    assert _part_rows(store) == 24 and len(list(Path(store.path, "segments").iterdir())) == 4
    with pytest.raises(StoreCorrupt, match=r"rows name segment '\.\./\.\./\.\./\.\./victim'.*sak-cache verify .* --fix"):
        compact_store(FeatureStore.open(store.path, read_only=False), target_rows=100)
    assert (victim / "thesis.tex").exists() and _part_rows(store) == 24


def test_a_part_whose_rows_name_another_segment_is_corrupt(tmp_path: Path, st) -> None:
    store = _store(tmp_path, st)
    a, b = store.committed_segments()[:2]
    _retarget(store.part_path(a), b)  # plain name, but not this part's
    fresh = FeatureStore.open(store.path)
    with pytest.raises(StoreCorrupt, match=rf"part-{a}\.parquet: rows name segment '{b}', but the part belongs to segment '{a}'"):
        fresh.raw_commits()
    with pytest.raises(StoreCorrupt, match="belongs to segment"):
        check_part_rows(pq.read_table(store.part_path(a)), a, "p")


def test_check_inside_refuses_targets_outside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "segments").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "segments" / "link").symlink_to(tmp_path / "outside")
    assert check_inside(root, root / "segments" / "a") == root / "segments" / "a"
    for bad in (root / "segments" / ".." / ".." / "outside", root / "segments" / "link", root, root / ".."):
        with pytest.raises(StoreCorrupt, match="Nothing was deleted"):
            check_inside(root, bad)


def test_compact_refuses_a_segment_linked_out_of_the_store_before_writing_anything(tmp_path: Path, st) -> None:
    store = _store(tmp_path, st)
    seg = store.committed_segments()[1]
    outside = tmp_path / "lab" / "elsewhere"
    shutil.move(str(Path(store.path, "segments", seg)), outside)
    Path(store.path, "segments", seg).symlink_to(outside)
    parts = sorted(p.name for p in Path(store.path, "manifest").iterdir())
    with pytest.raises(StoreCorrupt, match=rf"refusing to delete .*{seg}: it resolves to .*elsewhere, outside the store"):
        compact_store(FeatureStore.open(store.path, read_only=False), target_rows=100)
    assert sorted(p.name for p in Path(store.path, "manifest").iterdir()) == parts  # nothing written, nothing removed
    assert (outside / "layer_1").is_dir() and _part_rows(store) == 24
