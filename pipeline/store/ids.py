"""Ids read from a store's own files are checked before they touch a path.

A commit part's ``segment_id`` column, a part's file name and a stats file's name all become
path components (``segments/<id>/``, ``manifest/part-<id>.parquet``, ``stats/<id>.json``).
A shared cache is written by many people for years, so none of them is trusted: an id is a
plain name (what :func:`.writer.new_segment_id` and compaction produce: letters, digits,
``.``, ``_``, ``-``, starting with a letter or digit, so never ``.``/``..``, never a hidden
temp name, no separator, no NUL, at most :data:`MAX_ID_LENGTH` characters), and every row of
``part-<id>.parquet`` names ``<id>``. Maintenance that deletes (compact, gc, repair) also checks
the resolved target lies inside the store root before any unlink or tree removal.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ...manifests.errors import StoreCorrupt
from ..storage import Location

MAX_ID_LENGTH = 200
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

#: What fixes a store whose files carry a bad id (moves the part aside, then re-extracts its rows).
FIX_BAD_PART = ("run `sak-cache verify {store} --fix` (moves the part aside to manifest/damaged/), then re-extract its rows with "
                "`sak-cache extract ... --repair`")


def is_plain_id(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_ID_LENGTH and _PLAIN.fullmatch(value) is not None


def check_segment_id(value: object, where: str, store: object = "STORE") -> str:
    """``value`` if it is a plain segment id (module doc); else :class:`StoreCorrupt` naming ``where`` and the fix."""
    if not is_plain_id(value):
        shown = repr(value)[:80]
        raise StoreCorrupt(
            f"{where}: segment id {shown} is not a plain name (letters, digits, '.', '_', '-', at most {MAX_ID_LENGTH} "
            f"characters, no path separator): the file was edited or damaged and is not used. To fix: "
            f"{FIX_BAD_PART.format(store=store)}."
        )
    return str(value)


def check_part_rows(table: pa.Table, segment_id: str, where: str, store: object = "STORE") -> pa.Table:
    """``table`` (the rows of ``part-<segment_id>.parquet``) if every row names ``segment_id``; else :class:`StoreCorrupt`."""
    check_segment_id(segment_id, where, store)
    if table.num_rows == 0:
        return table
    named = pc.unique(table.column("segment_id")).to_pylist()
    others = [s for s in named if s != segment_id]
    if others:
        shown = ", ".join(repr(s)[:80] for s in others[:3])
        raise StoreCorrupt(
            f"{where}: rows name segment {shown}, but the part belongs to segment {segment_id!r} (a part's rows all name "
            f"the segment it is named after): the file was edited or damaged and is not used. To fix: "
            f"{FIX_BAD_PART.format(store=store)}."
        )
    return table


def _resolved(location: Location) -> str:
    if isinstance(location, Path):
        return str(location.resolve())
    return posixpath.normpath(str(location))


def check_inside(root: Location, target: Location) -> Location:
    """``target`` if its resolved path lies strictly inside ``root`` (symlinks followed locally); else :class:`StoreCorrupt`.

    Called before every delete of store maintenance, so no id or link read from a file can make it
    remove anything outside the store.
    """
    base, path = _resolved(root), _resolved(target)
    if path == base or not path.startswith(base.rstrip("/") + "/"):
        raise StoreCorrupt(
            f"refusing to delete {target}: it resolves to {path}, outside the store {root} (an edited id or a symbolic "
            f"link). Nothing was deleted. To fix: {FIX_BAD_PART.format(store=root)}."
        )
    return target
