"""A cache root as one object: its indexed datasets and its feature stores.

``open_cache("./cache")`` (a path or an fsspec URL) is the entry point for Python users; the
CLI commands are thin layers over the same functions. Nothing is read until asked for, and a
cache is opened read-only: writing happens through :func:`sak.pipeline.extract` and
``sak-cache index``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..manifests.errors import SakError
from .data.datasets import Dataset, list_datasets, open_dataset
from .storage import Location, as_location
from .store.catalog import list_stores, resolve_store
from .store.feature_store import FEATURES_DIR, SPEC_FILE, FeatureStore


@dataclass(frozen=True)
class StoreScan:
    """The stores of a cache that open and whose commit parts all read, and the others with the reason."""

    stores: list[FeatureStore] = field(default_factory=list)
    damaged: list[tuple[Location, str]] = field(default_factory=list)


def store_damage(path: str | os.PathLike[str] | Location) -> tuple[FeatureStore | None, str | None]:
    """(the opened store, None), or (None, why it cannot be used): spec.json missing or bad, a part unreadable or with bad ids.

    Reads spec.json and every commit part (as ``ls`` does anyway); the arrays are ``verify``'s job.
    """
    location = as_location(path)
    if not (location / SPEC_FILE).exists():
        return None, (f"{SPEC_FILE} is missing: restore it from a copy of the store, or delete {location} and extract "
                      "again (a store folder without it is never read)")
    try:
        store = FeatureStore.open(location)
        store.commits(status=None)  # reads and checks every part
    except (SakError, OSError) as exc:
        return None, str(exc)
    return store, None


def scan_stores(cache_root: str | os.PathLike[str]) -> StoreScan:
    """Every folder of ``<cache>/features/``: healthy stores, and (path, reason) for the damaged ones. Never raises for one store."""
    root = as_location(cache_root) / FEATURES_DIR
    scan = StoreScan()
    for name in root.list_names():
        if name.startswith(".") or not (root / name).is_dir():
            continue
        store, why = store_damage(root / name)
        if store is not None:
            scan.stores.append(store)
        else:
            scan.damaged.append((root / name, why or "unreadable"))
    return scan


@dataclass(frozen=True)
class Cache:
    """One cache root (``<cache>/datasets/*.parquet`` + ``<cache>/features/<store>/``)."""

    root: str

    def datasets(self) -> list[str]:
        """Names of the indexed datasets, sorted."""
        return list_datasets(self.root)

    def dataset(self, name: str, *, root_override: str | os.PathLike[str] | None = None) -> Dataset:
        """An indexed dataset; ``root_override`` points at its images when they moved."""
        return open_dataset(self.root, name, root_override=root_override)

    def stores(self) -> list[FeatureStore]:
        """Every feature store of the cache, sorted by name."""
        return list_stores(self.root)

    def scan(self) -> StoreScan:
        """Healthy stores and the damaged ones with the reason (what ``sak-cache ls`` shows)."""
        return scan_stores(self.root)

    def store(self, ref: str) -> FeatureStore:
        """A store (read-only) named as every sak command names one: exact store name > teacher name or alias
        (``dinov2``, or whatever ``sak-cache extract -t`` accepted) > unique name prefix; ``NAME@RES`` picks an
        input size (see :func:`~sak.pipeline.store.catalog.resolve_store`)."""
        return resolve_store(ref, self.root)

    def __str__(self) -> str:
        return self.root


def open_cache(root: str | os.PathLike[str]) -> Cache:
    """Open a cache root (a local folder or an fsspec URL such as ``s3://bucket/cache``).

    Raises :class:`SakError` when the folder exists but holds neither datasets nor stores
    (probably a mistyped path); an absent folder is refused the same way.
    """
    cache = Cache(os.fspath(root))
    if not cache.datasets() and not cache.stores():
        raise SakError(
            f"{cache.root} holds no indexed dataset (datasets/*.parquet) and no feature store ({FEATURES_DIR}/*/spec.json). "
            "Check the path, or make one: sak-cache index <images> --cache "
            f"{cache.root}, then sak-cache extract -t <teacher> --cache {cache.root}"
        )
    return cache
