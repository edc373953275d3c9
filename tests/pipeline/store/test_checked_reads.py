"""Checked reads (issue 14): every read verifies each sample's crc32c; a missing or damaged shard is StoreCorrupt.

Stores written before issue 14 (parts without ``crc32c``) still read: through the sha256 ``checksum`` when a read
covers every array of a sample, else unchecked with one warning per store.
"""

from __future__ import annotations

import logging
from pathlib import Path

import google_crc32c
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from sak.manifests.errors import ConfigError, StoreCorrupt
from sak.manifests.schemas import COMMIT_SCHEMA, validate_table
from sak.pipeline.store import integrity
from sak.pipeline.store.arrays import sample_arrays
from sak.pipeline.store.feature_store import FeatureStore
from sak.pipeline.store.gather import FILES, StoreGather, read_checked
from sak.pipeline.store.transfer import compact_store

SHAS = [f"{i:064x}" for i in range(6)]


def _store(st, tmp_path: Path, **spec) -> tuple[FeatureStore, str]:
    store = FeatureStore.create(tmp_path / "cache", st.make_spec(**spec))
    report, _, _ = st.write_segment(store, SHAS, capacity=8)
    return FeatureStore.open(store.path), report.segment_id


def chunk_span(store: FeatureStore, seg: str, name: str, row: int) -> tuple[Path, int, int]:
    """(shard file, offset, nbytes) of ``row``'s chunk of array ``name`` (one shard per segment here)."""
    arr = store.array(seg, name, fast=True)
    k = row // arr.shard_samples
    off, nbytes = arr.shard_index(k)[row - k * arr.shard_samples]
    return Path(str(arr.shard_file(k))), int(off), int(nbytes)


def flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.fixture(autouse=True)
def _no_open_shards():
    """Each test damages files this process read: drop the shared open descriptors (a new process has none)."""
    FILES.close_all()
    yield
    FILES.close_all()


def drop_crc_column(store: FeatureStore, seg: str) -> None:
    """Rewrite a part as a store from before issue 14 wrote it (no crc32c column)."""
    path = Path(str(store.part_path(seg)))
    pq.write_table(pq.read_table(path).drop_columns(["crc32c"]), path)


def test_commit_part_records_the_crc32c_of_every_stored_array_of_a_sample(st, tmp_path: Path) -> None:
    store, seg = _store(st, tmp_path, dtype="int8", quant="token-channel", keep_prefix=True)
    names = [n for n, _, _ in sample_arrays(store.spec)]
    group = zarr.open_group(str(store.path / "segments" / seg), mode="r")
    rows = store.commits().to_pylist()
    assert len(rows) == 6
    for r in rows:
        want = [google_crc32c.value(np.ascontiguousarray(group[n][r["row"]]).tobytes()) for n in names]
        assert r["crc32c"] == want and len(want) == len(names) > 4


@pytest.mark.parametrize("codec", ["none", "lz4", "zstd"])
def test_a_flipped_byte_makes_read_rows_and_gather_raise_naming_segment_and_sample(st, tmp_path: Path, codec: str) -> None:
    store, seg = _store(st, tmp_path, codec=codec)
    path, off, nbytes = chunk_span(store, seg, "layer_3", 4)
    flip(path, off + nbytes // 2)
    store = FeatureStore.open(store.path)
    with pytest.raises(StoreCorrupt) as err:
        store.read_rows(seg, [1, 4])
    msg = str(err.value)
    for part in (str(store.path), seg, "row 4", f"id-{SHAS[4]}", SHAS[4], "--repair", "sak-cache verify", "--fix"):
        assert part in msg, (part, msg)
    with pytest.raises(StoreCorrupt, match=f"id-{SHAS[4]}"):
        StoreGather(store).gather(seg, [4], StoreGather(store).empty(1))
    with pytest.raises(StoreCorrupt, match=f"id-{SHAS[4]}"):
        store.read_parts(seg, [4], 3)
    assert set(store.read_rows(seg, [0, 1, 2, 3, 5])) == {1, 3}  # the other samples still read
    store.read_rows(seg, [4], layers=[1])  # layer 1 of sample 4 is intact
    assert store.read_rows(seg, [4], checked=False)[3].shape == (1, 8, 8, 32)


def test_a_flipped_prefix_byte_makes_read_prefix_raise(st, tmp_path: Path) -> None:
    store, seg = _store(st, tmp_path, keep_prefix=True)
    path, off, _ = chunk_span(store, seg, "prefix_1", 2)
    flip(path, off + 3)
    with pytest.raises(StoreCorrupt, match=f"id-{SHAS[2]}"):
        FeatureStore.open(store.path).read_prefix(seg, [2])


def test_a_deleted_shard_is_an_error_not_zeros(st, tmp_path: Path) -> None:
    store, seg = _store(st, tmp_path)
    path, _, _ = chunk_span(store, seg, "layer_1", 0)
    path.unlink()
    FILES.close_all()
    store = FeatureStore.open(store.path)
    with pytest.raises(StoreCorrupt, match="missing") as err:
        store.read_rows(seg, [0])
    assert seg in str(err.value) and "--repair" in str(err.value)
    with pytest.raises(StoreCorrupt, match="missing"):
        StoreGather(store).gather(seg, [3], StoreGather(store).empty(1))


@pytest.mark.parametrize("size", [0, 100])
def test_an_empty_or_truncated_shard_is_store_corrupt_with_the_fix(st, tmp_path: Path, size: int) -> None:
    store, seg = _store(st, tmp_path)
    path, _, _ = chunk_span(store, seg, "layer_3", 0)
    path.write_bytes(path.read_bytes()[:size])
    with pytest.raises(StoreCorrupt, match="--repair") as err:
        FeatureStore.open(store.path).read_rows(seg, [2])
    assert seg in str(err.value) and f"id-{SHAS[2]}" in str(err.value)


def test_a_part_row_beyond_the_arrays_is_store_corrupt(st, tmp_path: Path) -> None:
    store, seg = _store(st, tmp_path)
    path = Path(str(store.part_path(seg)))
    table = pq.read_table(path)
    rows = table.column("row").to_pylist()
    rows[5] = 99
    pq.write_table(table.set_column(table.schema.get_field_index("row"), "row", pa.array(rows, pa.int64())), path)
    store = FeatureStore.open(store.path)
    with pytest.raises(StoreCorrupt, match="row 99") as err:
        store.read_rows(seg, [99])
    assert "beyond" in str(err.value) and "--repair" in str(err.value)


def test_swapped_shards_of_two_layers_are_detected(st, tmp_path: Path) -> None:
    store, seg = _store(st, tmp_path)
    a, _, _ = chunk_span(store, seg, "layer_1", 0)
    b, _, _ = chunk_span(store, seg, "layer_3", 0)
    da, db = a.read_bytes(), b.read_bytes()
    assert len(da) == len(db)
    a.write_bytes(db)
    b.write_bytes(da)
    with pytest.raises(StoreCorrupt, match="crc32c"):
        FeatureStore.open(store.path).read_rows(seg, [0])


def test_parts_without_crc_validate_with_nulls_and_read_through_the_sha256(st, tmp_path: Path, caplog) -> None:
    store, seg = _store(st, tmp_path)
    want = store.read_rows(seg, [0, 3])
    drop_crc_column(store, seg)
    store = FeatureStore.open(store.path)
    assert store.commits().column("crc32c").null_count == 6
    got = store.read_rows(seg, [0, 3])
    assert all(np.array_equal(got[i], want[i]) for i in (1, 3))
    path, off, _ = chunk_span(store, seg, "layer_3", 3)
    flip(path, off + 7)
    store = FeatureStore.open(store.path)
    with pytest.raises(StoreCorrupt, match="sha256") as err:  # every array read: the recorded sha256 checks it
        store.read_rows(seg, [3])
    assert f"id-{SHAS[3]}" in str(err.value)
    with caplog.at_level(logging.WARNING, logger="sak"):
        store.read_parts(seg, [3], 3)  # one layer: cannot be checked, warned once per store
        store.read_parts(seg, [3], 3)
    warned = [r.getMessage() for r in caplog.records if "predates checked reads" in r.getMessage()]
    assert len(warned) == 1 and "sak-cache compact" in warned[0] and str(store.path) in warned[0]
    newer, _, _ = st.write_segment(FeatureStore.create(tmp_path / "cache", store.spec), ["e" * 64], seed=5)
    both = FeatureStore.open(store.path).commits()  # a part with crcs beside one without
    assert both.num_rows == 7 and both.column("crc32c").null_count == 6
    assert FeatureStore.open(store.path).read_rows(newer.segment_id, [0])[1].shape == (1, 8, 8, 32)


def test_validate_table_fills_an_absent_optional_column_with_nulls() -> None:
    table = pa.table({f.name: pa.array([], f.type) for f in COMMIT_SCHEMA if f.name != "crc32c"})
    out = validate_table(table, COMMIT_SCHEMA, "part-x.parquet")
    assert out.schema.names == COMMIT_SCHEMA.names and out.column("crc32c").type == pa.list_(pa.uint32())


def test_compact_rewrites_a_store_without_crcs_with_them(st, tmp_path: Path) -> None:
    store = FeatureStore.create(tmp_path / "cache", st.make_spec())
    for k in range(2):
        rep, _, _ = st.write_segment(store, SHAS[3 * k : 3 * k + 3], seed=k)
        drop_crc_column(store, rep.segment_id)
    store = FeatureStore.open(store.path, read_only=False)
    assert store.commits().column("crc32c").null_count == 6
    compact_store(store)
    store = FeatureStore.open(store.path)
    assert store.commits().column("crc32c").null_count == 0 and store.commits().num_rows == 6


def test_layouts_only_zarr_reads_are_checked_too(st, tmp_path: Path) -> None:
    store, seg = _store(st, tmp_path, codec="zstd")
    checks = store.sample_checks(seg)
    out = np.empty((2, 8, 8, 32), np.float16)
    read_checked(store.array(seg, "layer_3"), "layer_3", [5, 1], out, [0, 1], checks)  # zarr.Array: intact
    assert np.array_equal(out, store.read_parts(seg, [5, 1], 3)[0])
    path, off, nbytes = chunk_span(store, seg, "layer_3", 1)
    flip(path, off + nbytes - 2)
    reopened = FeatureStore.open(store.path)  # as a new process would: row 1 was checked by the read above
    zarr_array = reopened.array(seg, "layer_3")
    with pytest.raises(StoreCorrupt, match=f"id-{SHAS[1]}"):
        read_checked(zarr_array, "layer_3", [1], out[:1], [0], reopened.sample_checks(seg))


@pytest.mark.parametrize("policy", ["first", "every"])
def test_a_sample_is_checked_at_its_first_read_in_a_process_or_at_every_read(st, tmp_path: Path, monkeypatch,
                                                                             policy: str) -> None:
    """Default ``first``: a byte changed after a sample's first checked read is caught by the next process (and
    verify), not by this one; ``SAK_READ_CHECKS=every`` catches it at the next read."""
    monkeypatch.setattr(integrity, "READ_CHECKS", policy)
    store, seg = _store(st, tmp_path)
    store.read_parts(seg, [1, 2], 3)  # checked, and remembered
    checks = store.sample_checks(seg)
    assert checks.checked([1, 2, 0], "layer_3").tolist() == [policy == "first", policy == "first", False]
    path, off, nbytes = chunk_span(store, seg, "layer_3", 1)
    flip(path, off + nbytes // 2)
    FILES.close_all()
    if policy == "every":
        with pytest.raises(StoreCorrupt, match=f"id-{SHAS[1]}"):
            store.read_parts(seg, [1], 3)
    else:
        store.read_parts(seg, [1], 3)  # not checked again in this process
        with pytest.raises(StoreCorrupt, match=f"id-{SHAS[1]}"):
            FeatureStore.open(store.path).read_parts(seg, [1], 3)
    checks.forget()
    with pytest.raises(StoreCorrupt, match=f"id-{SHAS[1]}"):
        store.read_parts(seg, [1], 3)


def test_the_read_check_policy_comes_from_sak_read_checks_and_refuses_typos(monkeypatch) -> None:
    assert integrity.read_check_policy("") == "first" and integrity.read_check_policy(" Every ") == "every"
    monkeypatch.setenv("SAK_READ_CHECKS", "every")
    assert integrity.read_check_policy() == "every"
    with pytest.raises(ConfigError, match="SAK_READ_CHECKS='always'.*'first'.*'every'"):
        integrity.read_check_policy("always")


def test_a_crc_mismatch_names_the_damaged_row_even_when_it_is_not_the_first_of_its_shard(st, tmp_path: Path) -> None:
    """The per-chunk error passes through the shard reader as it is: it used to be re-wrapped as the error of the
    shard's first committed row (naming the wrong sample, the fix text twice)."""
    store, seg = _store(st, tmp_path)
    path, off, nbytes = chunk_span(store, seg, "layer_3", 1)
    flip(path, off + nbytes // 2)
    with pytest.raises(StoreCorrupt) as err:
        FeatureStore.open(store.path).read_rows(seg, [0, 1, 2, 3])
    msg = str(err.value)
    assert msg.startswith(f"store {store.path}: segment {seg} row 1 (sample_id id-{SHAS[1]}"), msg
    assert msg.count("Re-extract the damaged samples") == 1 and "array layer_3 reads with crc32c" in msg


def test_compact_checks_prefix_tokens_as_it_reads_them(st, tmp_path: Path) -> None:
    """Prefix arrays are read checked like the layers: a damaged prefix chunk stops compact at the read, naming the
    sample, before anything is written (it used to be copied and caught only by the sha256 after the commit)."""
    store = FeatureStore.create(tmp_path / "cache", st.make_spec(keep_prefix=True))
    segs = [st.write_segment(store, SHAS[k : k + 3], seed=k)[0].segment_id for k in (0, 3)]
    store = FeatureStore.open(store.path, read_only=False)
    path, off, nbytes = chunk_span(store, segs[1], "prefix_3", 1)
    flip(path, off + nbytes // 2)
    parts = sorted(p.name for p in Path(str(store.path), "manifest").iterdir())
    with pytest.raises(StoreCorrupt) as err:
        compact_store(store, target_rows=8)
    assert str(err.value).startswith(f"store {store.path}: segment {segs[1]} row 1 (sample_id id-{SHAS[4]}"), str(err.value)
    assert "array prefix_3 reads with crc32c" in str(err.value)
    assert sorted(p.name for p in Path(str(store.path), "manifest").iterdir()) == parts
