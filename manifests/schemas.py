"""Parquet schemas of the two contracts: dataset manifests and cache commit records.

Readers validate every file against these schemas and name the file and the
column when one does not match, so a stale or foreign file never turns into a
``KeyError`` deep inside training.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_write
from .errors import ConfigError, NewerFormat, SchemaMismatch

LABEL_PREFIX = "label_"
#: Field metadata key of a column that files written by older versions may lack (read as nulls).
OPTIONAL = b"sak.optional"


def label_column(task: str) -> str:
    """The manifest column of ``task``'s label paths."""
    return f"{LABEL_PREFIX}{task}"


@functools.lru_cache(maxsize=16)
def _dataset_schema(tasks: tuple[str, ...]) -> pa.Schema:
    return pa.schema(
        [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("path", pa.string(), nullable=False),
            pa.field("sha256", pa.string(), nullable=True),  # null when the file could not be read
            pa.field("width", pa.int32(), nullable=True),  # null when the image could not be decoded
            pa.field("height", pa.int32(), nullable=True),
            pa.field("split", pa.string(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            *[pa.field(label_column(t), pa.string(), nullable=True) for t in tasks],
            pa.field("status", pa.string(), nullable=False),  # "ok" or "failed"
            pa.field("error", pa.string(), nullable=True),
        ],
        metadata={b"sak.kind": b"dataset-manifest", b"sak.version": b"1"},
    )


def dataset_schema(tasks: Sequence[str]) -> pa.Schema:
    """The dataset-manifest schema with one ``label_<task>`` column per task, in the given order.

    The task names come from the caller (the task registry lives above this layer, in
    ``sak.pipeline.tasks``): label columns hold relative paths, null where a sample lacks the task.
    """
    tasks = tuple(tasks)
    if len(set(tasks)) != len(tasks) or not all(isinstance(t, str) and t for t in tasks):
        raise ConfigError(f"dataset manifest label tasks must be distinct non-empty names, got {list(tasks)}")
    return _dataset_schema(tasks)


def label_tasks(schema: pa.Schema) -> tuple[str, ...]:
    """The task names of a dataset schema's ``label_<task>`` columns, in column order."""
    return tuple(n[len(LABEL_PREFIX):] for n in schema.names if n.startswith(LABEL_PREFIX))


COMMIT_SCHEMA = pa.schema(
    [
        pa.field("image_sha256", pa.string(), nullable=False),
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("view", pa.int32(), nullable=False),  # augmentation view index (0 when --views 1)
        pa.field("view_params", pa.string(), nullable=False),  # canonical JSON of the replayable view
        pa.field("segment_id", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=True),  # row in the segment's arrays; null when failed
        pa.field("checksum", pa.string(), nullable=True),  # sha256 over the sample's stored bytes
        # crc32c per stored array of the sample (arrays.sample_arrays order), checked on every read; absent in
        # parts written before issue 14 (read as null)
        pa.field("crc32c", pa.list_(pa.uint32()), nullable=True, metadata={OPTIONAL: b"1"}),
        pa.field("status", pa.string(), nullable=False),  # "ok" or "failed"
        pa.field("error", pa.string(), nullable=True),
    ],
    metadata={b"sak.kind": b"commit-record", b"sak.version": b"1"},
)

STATUS_OK = "ok"
STATUS_FAILED = "failed"


def validate_table(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    """Check ``table`` against ``schema``; return it with the schema's column order and metadata.

    Extra columns are an error (a file from another tool or version); missing or
    mistyped columns are an error, except columns declared optional (field metadata
    :data:`OPTIONAL`: added after files were written), which are filled with nulls;
    nulls in non-nullable columns are an error.
    """
    names = set(table.column_names)
    for fld in schema:
        if fld.name not in names and fld.nullable and (fld.metadata or {}).get(OPTIONAL):
            table = table.append_column(fld.name, pa.nulls(table.num_rows, fld.type))
            names.add(fld.name)
            continue
        if fld.name not in names:
            raise SchemaMismatch(
                f"{where}: column '{fld.name}' is missing (expected {fld.type}). "
                "The file was not written by this version of sak: rebuild it "
                "(sak-cache index for dataset manifests, sak-cache extract for stores)."
            )
        col = table.column(fld.name)
        if not col.type.equals(fld.type):
            if col.null_count == len(col) and pa.types.is_null(col.type):
                continue
            raise SchemaMismatch(
                f"{where}: column '{fld.name}' has type {col.type}, expected {fld.type}. "
                "Rebuild the file with this version of sak."
            )
        if not fld.nullable and col.null_count:
            raise SchemaMismatch(f"{where}: column '{fld.name}' has {col.null_count} null value(s); it may not be null.")
    extra = sorted(names - set(schema.names))
    if extra:
        raise NewerFormat(
            f"{where}: unexpected column(s) {extra}: a newer sak wrote it, or this is not a sak "
            f"{schema.metadata[b'sak.kind'].decode()} file. Upgrade sak (pip install -U sak) to read it; "
            "do not delete or repair it with this version."
        )
    return table.select(schema.names).cast(schema)


def table_from_rows(rows: Sequence[Mapping[str, object]], schema: pa.Schema) -> pa.Table:
    """Build a validated table from dict rows (missing nullable keys become null)."""
    columns = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return pa.Table.from_pydict(columns, schema=schema)


def write_table_atomic(
    table: pa.Table,
    path: str | os.PathLike[str],
    schema: pa.Schema,
    metadata: Mapping[bytes, bytes] | None = None,
) -> Path:
    """Validate and write ``table`` to ``path`` via a temporary file and ``os.replace``.

    A reader either sees the whole file or no file, even if the writer is killed.
    ``metadata`` adds keys to the schema's Parquet metadata (e.g. b"sak.root").
    """
    path = Path(path)
    table = validate_table(table, schema, str(path))
    if metadata:
        table = table.replace_schema_metadata({**(schema.metadata or {}), **metadata})
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def read_table(path: str | os.PathLike[str], schema: pa.Schema) -> pa.Table:
    """Read one Parquet file and validate it against ``schema``."""
    path = Path(path)
    if not path.exists():
        raise SchemaMismatch(f"{path}: file does not exist")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SchemaMismatch(f"{path}: not a readable Parquet file ({exc}). Delete it and rebuild it.") from exc
    return validate_table(table, schema, str(path))


def read_tables(paths: Iterable[str | os.PathLike[str]], schema: pa.Schema) -> pa.Table:
    """Read and concatenate several Parquet files of one schema (empty table when none)."""
    tables = [read_table(p, schema) for p in paths]
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables)


def write_dataset_manifest(
    table: pa.Table,
    path: str | os.PathLike[str],
    tasks: Sequence[str],
    *,
    metadata: Mapping[bytes, bytes] | None = None,
) -> Path:
    return write_table_atomic(table, path, dataset_schema(tasks), metadata)


def read_dataset_manifest(path: str | os.PathLike[str], tasks: Sequence[str]) -> pa.Table:
    table = read_table(path, dataset_schema(tasks))
    ids = table.column("sample_id")
    if len(ids) != len(set(ids.to_pylist())):
        raise SchemaMismatch(f"{path}: sample_id values are not unique; rebuild it with sak-cache index")
    return table


def write_commit_part(table: pa.Table, path: str | os.PathLike[str]) -> Path:
    return write_table_atomic(table, path, COMMIT_SCHEMA)


def read_commit_parts(paths: Iterable[str | os.PathLike[str]]) -> pa.Table:
    return read_tables(paths, COMMIT_SCHEMA)
