"""The registry-built dataset manifest schema is the version-1 schema, column for column and byte for byte."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from sak.manifests.schemas import table_from_rows, write_table_atomic
from sak.pipeline.data.datasets import index_dataset, manifest_schema

#: The dataset-manifest schema as manifests/schemas.py declared it before the task registry (version 1).
LEGACY_V1 = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=True),
        pa.field("width", pa.int32(), nullable=True),
        pa.field("height", pa.int32(), nullable=True),
        pa.field("split", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        *[pa.field(f"label_{t}", pa.string(), nullable=True)
          for t in ("semseg", "depth", "normals", "edge", "parts", "saliency")],
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string(), nullable=True),
    ],
    metadata={b"sak.kind": b"dataset-manifest", b"sak.version": b"1"},
)


def test_schema_equals_version_1_with_metadata():
    assert manifest_schema().equals(LEGACY_V1, check_metadata=True)


def test_indexed_manifest_bytes_equal_a_version_1_write(tmp_path, demo_nyud):
    table = index_dataset(demo_nyud, workers=1)
    meta = {k: v for k, v in table.schema.metadata.items() if k not in LEGACY_V1.metadata}
    ours = write_table_atomic(table, tmp_path / "ours.parquet", manifest_schema(), meta)
    legacy_table = table_from_rows(table.to_pylist(), LEGACY_V1)
    legacy = write_table_atomic(legacy_table, tmp_path / "legacy.parquet", LEGACY_V1, meta)
    assert ours.read_bytes() == legacy.read_bytes()
    back = pq.read_table(ours)
    assert back.column_names == LEGACY_V1.names and back.column("label_semseg").null_count == 0
    assert back.column("label_parts").null_count == back.num_rows  # NYUD has no parts labels
