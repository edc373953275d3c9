"""Parquet manifests: round trips, atomic writes, and rejections that name the file and the column."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sak.manifests.errors import ConfigError, SchemaMismatch
from sak.manifests.schemas import (
    COMMIT_SCHEMA,
    dataset_schema,
    label_tasks,
    read_commit_parts,
    read_dataset_manifest,
    table_from_rows,
    write_commit_part,
    write_dataset_manifest,
)

#: Label tasks come from the caller (the registry is in sak.pipeline.tasks); these are the version-1 built-ins.
LABEL_TASKS = ("semseg", "depth", "normals", "edge", "parts", "saliency")
DATASET_SCHEMA = dataset_schema(LABEL_TASKS)

opt_text = st.none() | st.text(max_size=12)
dataset_rows = st.lists(
    st.fixed_dictionaries(
        {
            "path": st.text(min_size=1, max_size=20),
            "sha256": st.none() | st.text("0123456789abcdef", min_size=64, max_size=64),
            "width": st.none() | st.integers(1, 2**31 - 1),
            "height": st.none() | st.integers(1, 2**31 - 1),
            "split": st.sampled_from(["train", "val", "test"]),
            "source": st.text(min_size=1, max_size=8),
            **{f"label_{t}": opt_text for t in LABEL_TASKS},
            "status": st.sampled_from(["ok", "failed"]),
            "error": opt_text,
        }
    ),
    max_size=6,
)


def _dataset_row(i: int = 0, **kw) -> dict:
    row = {"sample_id": f"s{i}", "path": f"images/s{i}.png", "sha256": "ab" * 32, "width": 8, "height": 6,
           "split": "train", "source": "nyud", "status": "ok", "error": None}
    row.update(kw)
    return row


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dataset_rows)
def test_dataset_manifest_round_trip(tmp_path, rows):
    rows = [{"sample_id": f"id{i}", **r} for i, r in enumerate(rows)]
    table = table_from_rows(rows, DATASET_SCHEMA)
    path = write_dataset_manifest(table, tmp_path / "m.parquet", LABEL_TASKS)
    back = read_dataset_manifest(path, LABEL_TASKS)
    assert back.schema.equals(DATASET_SCHEMA)
    assert back.to_pylist() == [{f.name: r.get(f.name) for f in DATASET_SCHEMA} for r in rows]


def test_commit_part_round_trip(tmp_path):
    rows = [
        {"image_sha256": "a" * 64, "sample_id": "s0", "source": "nyud", "view": 0, "view_params": "{}",
         "segment_id": "seg0", "row": 0, "checksum": "c" * 64, "crc32c": [1, 2**32 - 1], "status": "ok", "error": None},
        {"image_sha256": "b" * 64, "sample_id": "s1", "source": "nyud", "view": 1, "view_params": '{"flip":true}',
         "segment_id": "seg0", "row": None, "checksum": None, "crc32c": None, "status": "failed", "error": "boom"},
    ]
    write_commit_part(table_from_rows(rows, COMMIT_SCHEMA), tmp_path / "part-seg0.parquet")
    write_commit_part(table_from_rows(rows[:1], COMMIT_SCHEMA), tmp_path / "part-seg1.parquet")
    back = read_commit_parts([tmp_path / "part-seg0.parquet", tmp_path / "part-seg1.parquet"])
    assert back.to_pylist() == rows + rows[:1]
    assert read_commit_parts([]).num_rows == 0


def test_column_order_is_normalised_and_metadata_kept(tmp_path):
    table = table_from_rows([_dataset_row()], DATASET_SCHEMA)
    shuffled = table.select(list(reversed(table.column_names)))
    path = write_dataset_manifest(shuffled, tmp_path / "m.parquet", LABEL_TASKS, metadata={b"sak.root": b"/data/nyud"})
    assert read_dataset_manifest(path, LABEL_TASKS).column_names == DATASET_SCHEMA.names
    meta = pq.read_schema(path).metadata
    assert meta[b"sak.root"] == b"/data/nyud" and meta[b"sak.kind"] == b"dataset-manifest"


def _write_raw(tmp_path: Path, table: pa.Table) -> Path:
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path)
    return path


def _base() -> pa.Table:
    return table_from_rows([_dataset_row(0), _dataset_row(1)], DATASET_SCHEMA)


def test_missing_column_is_named(tmp_path):
    path = _write_raw(tmp_path, _base().drop_columns(["split"]))
    with pytest.raises(SchemaMismatch) as info:
        read_dataset_manifest(path, LABEL_TASKS)
    assert str(path) in str(info.value) and "column 'split' is missing" in str(info.value)


def test_wrong_type_is_named(tmp_path):
    t = _base()
    t = t.set_column(t.schema.get_field_index("width"), "width", pa.array(["8", "8"]))
    path = _write_raw(tmp_path, t)
    with pytest.raises(SchemaMismatch) as info:
        read_dataset_manifest(path, LABEL_TASKS)
    assert str(path) in str(info.value) and "column 'width' has type string, expected int32" in str(info.value)


def test_extra_column_is_named(tmp_path):
    path = _write_raw(tmp_path, _base().append_column("colour", pa.array(["red", "blue"])))
    with pytest.raises(SchemaMismatch) as info:
        read_dataset_manifest(path, LABEL_TASKS)
    assert str(path) in str(info.value) and "['colour']" in str(info.value)


def test_null_in_non_null_column_is_named(tmp_path):
    t = _base()
    t = t.set_column(t.schema.get_field_index("source"), pa.field("source", pa.string()), pa.array(["nyud", None]))
    path = _write_raw(tmp_path, t)
    with pytest.raises(SchemaMismatch) as info:
        read_dataset_manifest(path, LABEL_TASKS)
    assert str(path) in str(info.value) and "column 'source' has 1 null value(s)" in str(info.value)


def test_duplicate_sample_ids_are_refused(tmp_path):
    path = write_dataset_manifest(table_from_rows([_dataset_row(0), _dataset_row(0)], DATASET_SCHEMA),
                                  tmp_path / "m.parquet", LABEL_TASKS)
    with pytest.raises(SchemaMismatch, match="sample_id values are not unique"):
        read_dataset_manifest(path, LABEL_TASKS)


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "junk.parquet").write_text("junk")
    with pytest.raises(SchemaMismatch, match="junk.parquet: not a readable Parquet file"):
        read_dataset_manifest(tmp_path / "junk.parquet", LABEL_TASKS)
    with pytest.raises(SchemaMismatch, match="nope.parquet: file does not exist"):
        read_dataset_manifest(tmp_path / "nope.parquet", LABEL_TASKS)


def test_atomic_write_leaves_no_temp_file(tmp_path):
    out = tmp_path / "out"
    write_dataset_manifest(_base(), out / "m.parquet", LABEL_TASKS)
    write_dataset_manifest(_base().slice(0, 1), out / "m.parquet", LABEL_TASKS)  # overwrite in place
    assert [p.name for p in out.iterdir()] == ["m.parquet"]
    assert read_dataset_manifest(out / "m.parquet", LABEL_TASKS).num_rows == 1


def test_invalid_table_writes_nothing(tmp_path):
    with pytest.raises(SchemaMismatch, match="column 'split' is missing"):
        write_dataset_manifest(_base().drop_columns(["split"]), tmp_path / "m.parquet", LABEL_TASKS)
    assert list(tmp_path.iterdir()) == []


def test_failed_parquet_write_removes_temp_file(tmp_path, monkeypatch):
    def boom(table, where, **kw):
        Path(where).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        write_dataset_manifest(_base(), tmp_path / "m.parquet", LABEL_TASKS)
    assert list(tmp_path.iterdir()) == []


def test_label_columns_come_from_the_caller_in_order(tmp_path):
    schema = dataset_schema(["b", "a"])
    assert schema.names == ["sample_id", "path", "sha256", "width", "height", "split", "source", "label_b", "label_a",
                            "status", "error"]
    assert label_tasks(schema) == ("b", "a") and label_tasks(DATASET_SCHEMA) == LABEL_TASKS
    assert dataset_schema(("b", "a")) is schema  # built once per task tuple
    # a manifest written for other tasks is refused by name, not silently reshaped
    path = write_dataset_manifest(table_from_rows([_dataset_row()], schema), tmp_path / "m.parquet", ["b", "a"])
    with pytest.raises(SchemaMismatch, match="column 'label_semseg' is missing"):
        read_dataset_manifest(path, LABEL_TASKS)
    with pytest.raises(ConfigError, match="distinct non-empty names"):
        dataset_schema(["a", "a"])
