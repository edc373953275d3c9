"""Re-indexing a dataset name: what changed, and refusing a silent replacement.

A dataset index (``<cache>/datasets/<name>.parquet``) is what ``fit`` trains on by name, so writing a
new index under an existing name must not quietly swap the images. :func:`check_replace` compares the
index already in the cache with the new table and refuses (:class:`DatasetError`, exit 2) when

* the new index comes from another dataset root than the one recorded (``sak.root``), or
* images indexed ``ok`` before are gone (``-removed``) or have other bytes or another path, or no
  longer index (``~changed``),

unless ``replace`` is true. Images only added under the same root (``+added``), and rows that failed
before (a fixed file), are allowed and logged. An index without a recorded root (older files) is
compared by content only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from ...manifests.errors import DatasetError
from ...manifests.schemas import STATUS_OK

log = logging.getLogger(__name__)

#: Names listed per kind of change in a refusal.
SHOWN = 5


@dataclass(frozen=True, kw_only=True)
class IndexChanges:
    """sample_ids added, removed and changed from one index table to the next (each sorted)."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]

    @property
    def destructive(self) -> bool:
        return bool(self.removed or self.changed)

    def describe(self) -> str:
        parts = []
        for sign, label, names in (("+", "added", self.added), ("-", "removed", self.removed), ("~", "changed", self.changed)):
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
    return IndexChanges(
        added=tuple(sorted(set(after) - known)),
        removed=tuple(sorted(set(before) - set(after))),
        changed=tuple(sorted(sid for sid in set(before) & set(after) if after[sid] != before[sid] or sid not in new_ok)),
    )


def check_replace(name: str, index_path: object, old: pa.Table, old_root: str | None, new: pa.Table, new_root: Path,
                  *, replace: bool) -> IndexChanges:
    """Refuse replacing the index ``name`` (read from ``index_path``) by ``new`` unless ``replace`` (module docstring)."""
    changes = index_changes(old, new)
    root_moved = old_root is not None and old_root != str(new_root)
    if replace:
        if root_moved or changes.destructive:
            log.warning("replacing dataset index '%s' (%s): root %s -> %s; %s", name, index_path, old_root, new_root,
                        changes.describe())
        return changes
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
