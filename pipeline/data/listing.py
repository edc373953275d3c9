"""What a cache's dataset indexes hold, for ``sak-cache datasets`` and the summary after ``sak-cache index``.

One :class:`DatasetInfo` per ``<cache>/datasets/<name>.parquet``: its layout, root (and whether that
folder still exists), ok/failed image counts, ok images per split and labelled ok images per task.
An index that cannot be read is listed with its error instead of stopping the listing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ...manifests.errors import SakError
from ...manifests.schemas import STATUS_OK, label_column, label_tasks
from ..storage import read_parquet_with_metadata
from .datasets import FORMAT_KEY, ROOT_KEY, dataset_index_path, list_datasets, manifest_schema

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class DatasetInfo:
    """One indexed dataset as ``sak-cache datasets`` shows it (``to_dict`` is its ``--json`` record)."""

    name: str
    index: str
    format: str | None = None
    root: str | None = None
    root_exists: bool = False
    images_ok: int = 0
    images_failed: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetInfo:
        return cls(**data)


def table_counts(table: pa.Table) -> tuple[int, int, dict[str, int], dict[str, int]]:
    """(ok rows, failed rows, ok rows per split (sorted), labelled ok rows per task (registry order, > 0 only))."""
    ok = table.filter(pc.equal(table.column("status"), STATUS_OK))
    splits = {str(v["values"]): int(v["counts"]) for v in pc.value_counts(ok.column("split")).to_pylist()}
    labels = {t: ok.num_rows - ok.column(label_column(t)).null_count for t in label_tasks(table.schema)}
    return (ok.num_rows, table.num_rows - ok.num_rows, dict(sorted(splits.items())),
            {t: n for t, n in labels.items() if n})


def describe_dataset(cache_root: str | os.PathLike[str], name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of dataset ``name`` (``error`` set when its index cannot be read)."""
    path = dataset_index_path(cache_root, name)
    try:
        table, meta = read_parquet_with_metadata(path, manifest_schema())
    except SakError as exc:
        log.debug("dataset index %s unreadable: %s", path, exc)
        return DatasetInfo(name=name, index=str(path), error=str(exc))
    root = meta[ROOT_KEY].decode() if ROOT_KEY in meta else None
    ok, failed, splits, labels = table_counts(table)
    return DatasetInfo(
        name=name, index=str(path), format=meta.get(FORMAT_KEY, b"folder").decode(), root=root,
        root_exists=root is not None and os.path.isdir(root), images_ok=ok, images_failed=failed,
        splits=splits, labels=labels,
    )


def describe_datasets(cache_root: str | os.PathLike[str]) -> list[DatasetInfo]:
    """Every dataset indexed in the cache, by name."""
    return [describe_dataset(cache_root, name) for name in list_datasets(cache_root)]
