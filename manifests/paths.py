"""Path safety: manifest paths are relative to their dataset root and never leave it."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from .errors import PathEscape


def relative_path(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> str:
    """The POSIX path of ``path`` relative to ``root``; :class:`PathEscape` if it resolves outside.

    Symlinks are resolved, so a link that points out of the root is rejected too.
    """
    root_r = Path(root).resolve()
    full = Path(path) if Path(path).is_absolute() else Path(root) / path
    target = full.resolve()
    try:
        rel = target.relative_to(root_r)
    except ValueError:
        raise PathEscape(
            f"{full} resolves to {target}, outside the dataset root {root_r}. "
            "Copy the file into the dataset folder or remove the link."
        ) from None
    # Keep the path as written inside the root (not the resolved one) when it stays inside.
    try:
        written = full.absolute().relative_to(Path(root).absolute())
        return PurePosixPath(*written.parts).as_posix()
    except ValueError:
        return PurePosixPath(*rel.parts).as_posix()


def resolve_inside(root: str | os.PathLike[str], rel: str) -> Path:
    """Join a manifest path to its root, refusing absolute paths, ``..`` and symlinks out of the root."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or (os.name == "nt" and ":" in rel):
        raise PathEscape(f"manifest path '{rel}' is absolute; manifest paths must be relative to the dataset root {root}")
    if ".." in pure.parts:
        raise PathEscape(f"manifest path '{rel}' contains '..'; manifest paths must stay inside the dataset root {root}")
    full = Path(root) / Path(*pure.parts)
    root_r = Path(root).resolve()
    target = full.resolve()
    if target != root_r and root_r not in target.parents:
        raise PathEscape(f"manifest path '{rel}' resolves to {target}, outside the dataset root {root_r} (a symlink?)")
    return full
