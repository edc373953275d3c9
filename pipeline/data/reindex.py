"""Re-indexing a dataset name: what changed, and refusing a silent replacement.

A dataset index (``<cache>/datasets/<name>.parquet``) is what ``fit`` trains on by name, so writing a
new index under an existing name must not quietly swap the images. :func:`check_replace` compares the
index already in the cache with the new table and refuses (:class:`DatasetError`, exit 2) when

* the new index comes from another dataset root than the one recorded (``sak.root``), or
* the new index uses another layout (``sak.format``: other sample ids and label conventions), or
* images indexed ``ok`` before are gone (``-removed``) or have other bytes or another path, or no
  longer index (``~changed``), or sit in another split (``>moved``: the val set would change), or
  lost a label file (``!lost labels``),

unless ``replace`` is true. Images or labels only added under the same root (``+added``), and rows
that failed before (a fixed file), are allowed and logged. An index without a recorded root or
format (older files) is compared by content only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from ...manifests.errors import DatasetError
from ...manifests.schemas import STATUS_OK, label_column, label_tasks

log = logging.getLogger(__name__)

#: Names listed per kind of change in a refusal.
SHOWN = 5


@dataclass(frozen=True, kw_only=True)
class IndexChanges:
    """sample_ids added, removed and changed from one index table to the next (each sorted).

    ``moved`` and ``unlabelled`` hold ``"<id>: <detail>"`` entries (``b: train -> val``, ``a: edge``)
    for ok rows that kept their image but changed split or lost label files.
    """

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    moved: tuple[str, ...] = ()
    unlabelled: tuple[str, ...] = ()

    @property
    def destructive(self) -> bool:
        return bool(self.removed or self.changed or self.moved or self.unlabelled)

    def describe(self) -> str:
        parts = []
        for sign, label, names in (("+", "added", self.added), ("-", "removed", self.removed),
                                   ("~", "changed", self.changed), (">", "moved to another split", self.moved),
                                   ("!", "lost labels", self.unlabelled)):
            if names:
                more = f", ... {len(names) - SHOWN} more" if len(names) > SHOWN else ""
                parts.append(f"{sign}{len(names)} {label} ({', '.join(names[:SHOWN])}{more})")
        return "; ".join(parts) or "no image changed"


def index_changes(old: pa.Table, new: pa.Table) -> IndexChanges:
    """Compare two index tables by sample_id: ok rows of ``old`` must keep their path and sha256 in ``new``."""
    def keyed(t: pa.Table, ok_only: bool) -> dict[str, tuple]:
        cols = [t.column(c).to_pylist() for c in ("sample_id", "path", "sha256", "status")]
        return {sid: (path, sha) for sid, path, sha, st in zip(*cols, strict=True) if not ok_only or st == STATUS_OK}

    before, after = keyed(old, ok_only=True), keyed(new, ok_only=False)
    new_ok = {sid for sid, st in zip(new.column("sample_id").to_pylist(), new.column("status").to_pylist(), strict=True)
              if st == STATUS_OK}
    known = set(old.column("sample_id").to_pylist())
    changed = {sid for sid in set(before) & set(after) if after[sid] != before[sid] or sid not in new_ok}
    kept = sorted(set(before) & set(after) - changed)
    old_rows, new_rows = _details(old, kept), _details(new, kept)
    moved, unlabelled = [], []
    for sid in kept:
        (split0, labels0), (split1, labels1) = old_rows[sid], new_rows[sid]
        if split0 != split1:
            moved.append(f"{sid}: {split0} -> {split1}")
        lost = [task for task, rel in labels0.items() if rel is not None and labels1.get(task) != rel]
        if lost:
            unlabelled.append(f"{sid}: {', '.join(lost)}")
    return IndexChanges(
        added=tuple(sorted(set(after) - known)),
        removed=tuple(sorted(set(before) - set(after))),
        changed=tuple(sorted(changed)),
        moved=tuple(moved),
        unlabelled=tuple(unlabelled),
    )


def _details(table: pa.Table, ids: list[str]) -> dict[str, tuple[str, dict[str, str | None]]]:
    """sample_id -> (split, task -> label path) for the rows of ``ids``."""
    wanted = set(ids)
    tasks = label_tasks(table.schema)
    cols = [table.column(c).to_pylist() for c in ("sample_id", "split", *(label_column(t) for t in tasks))]
    return {row[0]: (row[1], dict(zip(tasks, row[2:], strict=True))) for row in zip(*cols, strict=True)
            if row[0] in wanted}


def check_replace(name: str, index_path: object, old: pa.Table, old_root: str | None, new: pa.Table, new_root: Path,
                  *, replace: bool, old_format: str | None = None, new_format: str | None = None) -> IndexChanges:
    """Refuse replacing the index ``name`` (read from ``index_path``) by ``new`` unless ``replace`` (module docstring).

    ``old_format`` / ``new_format``: the layouts of both indexes (None: not recorded, not compared).
    """
    changes = index_changes(old, new)
    root_moved = old_root is not None and old_root != str(new_root)
    format_changed = old_format is not None and new_format is not None and old_format != new_format
    if replace:
        if root_moved or format_changed or changes.destructive:
            log.warning("replacing dataset index '%s' (%s): root %s -> %s, format %s -> %s; %s", name, index_path,
                        old_root, new_root, old_format, new_format, changes.describe())
        return changes
    if format_changed and not root_moved:
        raise DatasetError(
            f"dataset '{name}' ({index_path}) was indexed with --format {old_format}; this index is --format "
            f"{new_format} ({changes.describe()}), with other sample ids and label conventions. Index it as before "
            f"(sak-cache index {new_root} --format {old_format} --name {name}), or pass --replace to switch formats"
        )
    if root_moved:
        raise DatasetError(
            f"dataset '{name}' ({index_path}) is indexed from {old_root}; {new_root} is another folder "
            f"({changes.describe()}). Pass --replace to replace the index (training by that name then uses the new "
            f"images), or index the new folder under another name (sak-cache index {new_root} --name OTHER)"
        )
    if changes.destructive:
        raise DatasetError(
            f"dataset '{name}' ({index_path}): images under {new_root} were removed or changed since it was indexed "
            f"({changes.describe()}); features stored for the old bytes no longer match. Pass --replace to index the "
            "folder as it is now, or restore the files"
        )
    if changes.added:
        log.info("dataset '%s': +%d new images (%s)", name, len(changes.added), changes.describe())
    return changes
