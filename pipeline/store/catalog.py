"""Finding stores in a cache: every store whose spec opens (:func:`list_stores`), one by path or name (:func:`resolve_store`)."""

from __future__ import annotations

import logging
import os

from ...manifests.errors import SakError
from ..storage import as_location
from .feature_store import FEATURES_DIR, SPEC_FILE, FeatureStore

log = logging.getLogger(__name__)


def list_stores(cache_root: str | os.PathLike[str]) -> list[FeatureStore]:
    """Every store of a cache (``<cache>/features/*/spec.json``) whose spec opens, sorted by name.

    A store whose spec.json is damaged is left out with a warning (it must not hide the others);
    :func:`..cache.scan_stores` reports those, and ``sak-cache ls`` marks them.
    """
    root = as_location(cache_root) / FEATURES_DIR
    stores = []
    for n in root.list_names():
        if (root / n / SPEC_FILE).exists():
            try:
                stores.append(FeatureStore.open(root / n))
            except SakError as exc:
                log.warning("skipping damaged store %s: %s", root / n, exc)
    return stores


def resolve_store(ref: str | os.PathLike[str], cache_root: str | os.PathLike[str] | None = None) -> FeatureStore:
    """A store by path, or by name (or unique name prefix / teacher name) inside ``cache_root``."""
    path = as_location(ref)
    if (path / SPEC_FILE).exists():
        return FeatureStore.open(path)
    if cache_root is not None:
        stores = list_stores(cache_root)
        hits = [s for s in stores if s.name == str(ref)] or [
            s for s in stores if s.name.startswith(str(ref)) or s.spec.teacher == str(ref)
        ]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise SakError(f"{ref!r} matches several stores: {', '.join(s.name for s in hits)}; pass the full name")
        names = ", ".join(s.name for s in stores) or "none"
        raise SakError(f"no store {ref!r} in {as_location(cache_root) / FEATURES_DIR} (stores: {names})")
    raise SakError(f"{ref} is not a feature store directory; pass a store path or --cache with a store name")
