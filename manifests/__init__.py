"""The contract layer: Parquet schemas, config hashing, content hashing, errors, path safety."""

from .config import Config, canonical_json, config_hash
from .errors import (
    BadImage,
    ConfigError,
    DatasetError,
    PathEscape,
    SakError,
    SchemaMismatch,
    SpecMismatch,
    StoreCorrupt,
    TeacherUnavailable,
)
from .hashing import sha256_bytes, sha256_file
from .paths import relative_path, resolve_inside
from .schemas import (
    COMMIT_SCHEMA,
    STATUS_FAILED,
    STATUS_OK,
    dataset_schema,
    label_column,
    label_tasks,
    read_commit_parts,
    read_dataset_manifest,
    read_table,
    table_from_rows,
    validate_table,
    write_commit_part,
    write_dataset_manifest,
    write_table_atomic,
)

__all__ = [
    "BadImage", "COMMIT_SCHEMA", "Config", "ConfigError", "DatasetError",
    "PathEscape", "STATUS_FAILED", "STATUS_OK", "SakError", "SchemaMismatch", "SpecMismatch", "StoreCorrupt",
    "TeacherUnavailable", "canonical_json", "config_hash", "dataset_schema", "label_column", "label_tasks",
    "read_commit_parts",
    "read_dataset_manifest", "read_table", "relative_path", "resolve_inside", "sha256_bytes", "sha256_file",
    "table_from_rows", "validate_table", "write_commit_part", "write_dataset_manifest", "write_table_atomic",
]
