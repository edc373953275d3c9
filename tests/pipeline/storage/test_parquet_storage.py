"""Parquet through a Location writes the very bytes the manifests helpers wrote (the format stays the same)."""

from __future__ import annotations

import pyarrow as pa

from sak.manifests.schemas import COMMIT_SCHEMA, read_table, table_from_rows, write_table_atomic
from sak.pipeline.storage import as_location, read_parquet, write_parquet_atomic


def commit_rows() -> pa.Table:
    rows = [{"image_sha256": f"{i:064x}", "sample_id": f"s{i}", "source": "src", "view": 0, "view_params": "{}",
             "segment_id": "seg", "row": i, "checksum": "c" * 64, "status": "ok", "error": None} for i in range(5)]
    return table_from_rows(rows, COMMIT_SCHEMA)


def test_parquet_bytes_equal_the_manifest_helpers(tmp_path) -> None:
    table = commit_rows()
    ours = write_parquet_atomic(table, as_location(tmp_path / "ours.parquet"), COMMIT_SCHEMA, {b"k": b"v"})
    theirs = write_table_atomic(table, tmp_path / "theirs.parquet", COMMIT_SCHEMA, {b"k": b"v"})
    assert ours.read_bytes() == theirs.read_bytes()
    assert read_parquet(ours, COMMIT_SCHEMA).equals(read_table(theirs, COMMIT_SCHEMA))
