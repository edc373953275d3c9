"""A cache root as one object: its indexed datasets and its feature stores.

``open_cache("./cache")`` (a path or an fsspec URL) is the entry point for Python users; the
CLI commands are thin layers over the same functions. Nothing is read until asked for, and a
cache is opened read-only: writing happens through :func:`sak.pipeline.extract` and
``sak-cache index``; :func:`copy_store` (a store and the dataset indexes of its samples into
another cache) and :func:`remove_store` (refused while a writer holds a live claim) are the
two functions here that write.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from ..manifests.errors import SakError
from .data.datasets import FORMAT_KEY, Dataset, list_datasets, open_dataset, write_dataset_index
from .storage import Location, as_location
from .store.catalog import list_stores, resolve_store
from .store.claims import CLAIMS_DIR, BlockClaims, ClaimRecord
from .store.feature_store import FEATURES_DIR, SPEC_FILE, FeatureStore
from .store.transfer import TransferReport, export_store

log = logging.getLogger(__name__)


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


class StoreBusy(SakError):
    """A store cannot be removed while a writer holds a live claim on one of its blocks."""


@dataclass(frozen=True)
class RemoveReport:
    """What :func:`remove_store` deleted."""

    name: str
    path: str
    files: int
    bytes: int


def live_claims(store_path: Location) -> list[ClaimRecord]:
    """Claims of a store's blocks held by a running writer (not expired, writer not known dead)."""
    folder = store_path / CLAIMS_DIR
    if not folder.is_dir():
        return []
    claims = BlockClaims(store_path, run=f"inspect-{secrets.token_hex(4)}")  # a run of its own: no claim is "ours"
    live = []
    for name in folder.list_names(suffix=".json"):
        if name.startswith("."):
            continue
        try:
            record = claims.read(name[: -len(".json")])
        except ValueError:  # not a block name sak writes: not a claim
            continue
        if record is not None and not claims.stale(record):
            live.append(record)
    return live


def store_folder(ref: str | os.PathLike[str], cache_root: str | os.PathLike[str]) -> tuple[str, Location]:
    """(name, folder) of a store to remove: resolved as ``info`` does; a damaged store by its exact folder name or path."""
    try:
        store = resolve_store(os.fspath(ref), cache_root)
        store.read_only = False  # its folder, writable
        return store.name, store.path
    except SakError:  # damaged stores are not resolved by name: take the exact folder
        for folder in (as_location(cache_root) / FEATURES_DIR / os.fspath(ref), as_location(ref)):
            if folder.is_dir() and ((folder / "manifest").exists() or (folder / "segments").exists() or (folder / SPEC_FILE).exists()):
                return folder.name, folder
        raise


def remove_store(ref: str | os.PathLike[str], cache_root: str | os.PathLike[str]) -> RemoveReport:
    """Delete a feature store (by name, unique prefix, teacher name or path, as ``info`` resolves it).

    Refused (:class:`StoreBusy`) while a writer holds a live claim on one of its blocks: stop that
    extraction first (a killed writer's claim expires, or is freed at once when its pid is gone).
    """
    name, folder = store_folder(ref, cache_root)
    live = live_claims(folder)
    if live:
        c = live[0]
        raise StoreBusy(
            f"store {folder} is being written: {len(live)} block(s) claimed by a running extraction (e.g. {c.holder}, block "
            f"{c.block}, lease until {time.strftime('%H:%M:%S', time.localtime(c.expires))}); let it finish or stop it, then "
            f"run sak-cache rm {name} --cache {cache_root} again"
        )
    files = list(folder.files())
    report = RemoveReport(name=name, path=str(folder), files=len(files), bytes=sum(size for _, size, _ in files))
    folder.remove_tree()
    log.info("removed store %s (%d files, %d bytes)", folder, report.files, report.bytes)
    return report


@dataclass(frozen=True)
class CopyReport:
    """What :func:`copy_store` did: the rows (``transfer``) and the dataset indexes written (name, rows)."""

    transfer: TransferReport
    datasets: list[tuple[str, int]]


def copy_dataset_indexes(cache_root: str | os.PathLike[str], dest_cache: str | os.PathLike[str], sha256: set[str]) -> list[tuple[str, int]]:
    """Copy every dataset index of ``cache_root`` that holds one of the images ``sha256`` into ``dest_cache``,
    filtered to those images (their root is kept: the copy reads the same image folder). An index the target
    already has from the same folder gains the missing rows; one from another folder is refused (DatasetError)."""
    written = []
    for name in list_datasets(cache_root):
        ds = open_dataset(cache_root, name)
        keep = ds.table.filter(pc.is_in(ds.table.column("sha256"), pa.array(sorted(sha256), type=pa.string())))
        if not keep.num_rows:
            continue
        if name in list_datasets(dest_cache):
            have = open_dataset(dest_cache, name)
            if os.path.realpath(have.root) == os.path.realpath(ds.root):
                new = keep.filter(pc.invert(pc.is_in(keep.column("sample_id"), have.table.column("sample_id"))))
                keep = pa.concat_tables([have.table.select(keep.column_names).cast(keep.schema), new])
        keep = keep.replace_schema_metadata({**(keep.schema.metadata or {}), FORMAT_KEY: ds.format.encode()})
        write_dataset_index(dest_cache, name, keep, ds.root)
        written.append((name, keep.num_rows))
    return written


def copy_store(ref: str, cache_root: str | os.PathLike[str], dest_cache: str | os.PathLike[str], *,
               samples: Sequence[str] | None = None, segment_rows: int = 4096,
               progress: Callable[..., None] | None = None) -> CopyReport:
    """Copy a store (or the samples whose sha256 or sample_id is in ``samples``) into ``dest_cache``, with the
    dataset indexes of the copied samples, so ``sak-train fit --cache DEST`` trains from the copy."""
    store = resolve_store(ref, cache_root)
    transfer = export_store(store, dest_cache, samples=samples, segment_rows=segment_rows, progress=progress)
    dest = FeatureStore.open(transfer.target)
    copied = set(dest.commits("ok").column("image_sha256").to_pylist())
    if samples is not None:
        wanted = set(samples)
        rows = store.commits("ok")
        copied &= {h for h, sid in zip(rows.column("image_sha256").to_pylist(), rows.column("sample_id").to_pylist(), strict=True)
                   if h in wanted or sid in wanted}
    return CopyReport(transfer=transfer, datasets=copy_dataset_indexes(cache_root, dest_cache, copied))


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
