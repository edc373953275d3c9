"""Dataset manifests: index a dataset folder into a Parquet table, store it in a cache, open it again.

``index_dataset`` lists the samples of a folder (layouts in :mod:`sak.pipeline.data.formats`),
then hashes each image (streamed sha256) and reads its size from the header in a thread pool.
A sample that cannot be used is kept as a ``failed`` row with the reason in ``error``: an
image that is missing, unreadable or not an image, a split list naming a missing file, or a
path (a symlink) that resolves outside the dataset root. Nothing is dropped silently.

Each image file is read once (regular files only: a FIFO fails its row at once, never blocks):
its sha256 and its header (size, EXIF orientation) come from the same bytes. ``width``/``height``
are the displayed size (EXIF orientation applied, as extraction decodes; indexes written before
that recorded the stored pixel size). An image whose EXIF orientation changes its pixels (tag
2-8) while it has label files of another size than its displayed size is a failed row: label
PNGs are stored in pixel order without EXIF, and serving them with the rotated image would
misalign every label.

``write_dataset_index`` stores the table as ``<cache>/datasets/<name>.parquet`` with the
absolute dataset root in the Parquet metadata (key ``sak.root``) and the layout (``sak.format``);
it refuses to replace an existing index of that name from another root, or with images removed
or changed, unless ``replace`` (:mod:`.reindex`). ``open_dataset`` reads it back as a :class:`Dataset`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from ...manifests.errors import BadImage, DatasetError, PathEscape, SchemaMismatch
from ...manifests.hashing import NotRegularFile, open_regular, read_regular, sha256_bytes
from ...manifests.paths import relative_path, resolve_inside
from ...manifests.schemas import (
    STATUS_FAILED,
    STATUS_OK,
    dataset_schema,
    label_column,
    table_from_rows,
)
from ..storage import Location, as_location, read_parquet_with_metadata, write_parquet_atomic
from ..tasks import get_task, list_tasks
from .formats import FORMATS, Candidate, detect_format, discover
from .images import bytes_header, displayed_size
from .labels import load_label
from .reindex import check_replace

log = logging.getLogger(__name__)

ROOT_KEY = b"sak.root"
FORMAT_KEY = b"sak.format"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

Progress = Callable[..., Any]


def manifest_schema() -> pa.Schema:
    """The dataset-manifest schema: one ``label_<task>`` column per registered task, in registry order."""
    return dataset_schema(list_tasks())


def check_name(name: str) -> str:
    """A dataset name is a file name: letters, digits, '_', '.', '-', starting with a letter or digit."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.endswith(".parquet"):
        raise DatasetError(
            f"dataset name {name!r} is not allowed: use letters, digits, '_', '.' and '-', "
            "starting with a letter or digit (e.g. nyud, pascal-context, my_photos)"
        )
    return name


class _RootGuard:
    """Cheap path-escape check for many files: one realpath per folder, one lstat per file.

    A plain file in a folder whose real path is inside the root is inside the root; for a
    symlink (or a folder outside the root) it falls back to :func:`relative_path`, which
    resolves the link and raises :class:`PathEscape` with the standard message.
    """

    def __init__(self, root: Path):
        self.root = str(root)
        self.real = os.path.realpath(root)
        self._dir_inside: dict[str, bool] = {}

    def check(self, rel: str) -> None:
        full = os.path.join(self.root, rel)
        folder = os.path.dirname(full)
        inside = self._dir_inside.get(folder)
        if inside is None:
            real = os.path.realpath(folder)
            inside = real == self.real or real.startswith(self.real.rstrip(os.sep) + os.sep)
            self._dir_inside[folder] = inside  # benign race: every thread computes the same value
        if not inside or os.path.islink(full):
            relative_path(self.root, rel)


def _index_one(root: Path, guard: _RootGuard, cand: Candidate, source: str) -> dict[str, Any]:
    """Check paths, hash and size one candidate; never raises for a bad file (returns a failed row)."""
    row: dict[str, Any] = {
        "sample_id": cand.sample_id, "path": cand.path, "split": cand.split, "source": source,
        "status": STATUS_OK, "error": None,
    }

    def fail(msg: str) -> dict[str, Any]:
        row["status"], row["error"] = STATUS_FAILED, msg
        return row

    if cand.error:
        return fail(cand.error)
    try:
        guard.check(cand.path)
        for task, rel in cand.labels.items():
            guard.check(rel)
            row[label_column(task)] = rel
    except PathEscape as exc:
        return fail(str(exc))
    full = root / cand.path
    try:
        data = read_regular(full)  # once: the hash and the header describe the same bytes
    except NotRegularFile as exc:  # a FIFO swapped in after discovery: fails here, never blocks
        return fail(str(exc))
    except OSError as exc:
        return fail(f"{full}: cannot read ({exc.strerror or exc}). Check the file's permissions or remove it.")
    row["sha256"] = sha256_bytes(data)
    try:
        w, h, tag = bytes_header(data, name=full)
    except BadImage as exc:
        return fail(str(exc))
    row["width"], row["height"] = displayed_size(w, h, tag)
    if tag != 1:
        for task, rel in cand.labels.items():
            size = _label_size(root / rel)
            if size is not None and size != (row["width"], row["height"]):
                return fail(f"{full}: its EXIF orientation {tag} displays it as {row['width']}x{row['height']} but its "
                            f"{task} label {rel} is {size[0]}x{size[1]} (labels are read in pixel order): rotate the "
                            "image's pixels to match its labels and drop the EXIF orientation tag, then re-index")
    return row


def _label_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of a png/npy label from its header; None for other files (.mat) or unreadable ones."""
    try:
        with open_regular(path) as fh:
            if path.suffix == ".npy":
                major, _ = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape = read(fh)[0]  # the header only
                return (int(shape[1]), int(shape[0])) if len(shape) >= 2 else None
            if path.suffix == ".png":
                with Image.open(fh) as img:
                    return img.size
    except Exception:  # unreadable labels fail where they are loaded, with their own message
        return None
    return None


def _chunked_map(fn: Callable[[Candidate], dict], items: list[Candidate], workers: int,
                 chunk: int = 64) -> Iterator[tuple[int, list[dict]]]:
    """Yield (start index, [fn(item) ...]) per chunk as chunks complete; at most 4 chunks per worker in flight."""
    workers = max(1, workers)

    def run(start: int) -> tuple[int, list[dict]]:
        return start, [fn(c) for c in items[start:start + chunk]]

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sak-index") as pool:
        pending: set[Any] = set()
        for start in range(0, len(items), chunk):
            pending.add(pool.submit(run, start))
            if len(pending) >= 4 * workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield fut.result()


def index_dataset(
    root: str | os.PathLike[str],
    *,
    name: str | None = None,
    fmt: str = "auto",
    workers: int = 8,
    progress: Progress | None = None,
) -> pa.Table:
    """Index the dataset at ``root`` into a :func:`manifest_schema` table (one row per image, failed rows kept).

    ``name`` becomes the ``source`` column (default: ``nyud``/``pascal`` for those layouts, the
    folder name otherwise). ``fmt``: auto, folder, nyud or pascal. ``progress(0, total=N)`` is
    called once, then ``progress(1)`` per indexed file. The table's schema metadata carries the
    layout (``sak.format``) and the resolved root (``sak.root``).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a directory; pass the folder that holds the images")
    if fmt not in FORMATS:
        raise DatasetError(f"unknown dataset format '{fmt}'; choose one of {', '.join(FORMATS)}")
    fmt = detect_format(root) if fmt == "auto" else fmt
    source = check_name(name if name is not None else (fmt if fmt != "folder" else root.resolve().name))
    candidates = discover(root, fmt)
    if not candidates:
        raise DatasetError(
            f"no images found under {root} (format {fmt}); supported extensions are "
            ".jpg .jpeg .png .bmp .gif .tif .tiff .webp .ppm .pgm .pbm"
        )
    log.info("indexing %d images of %s (format %s, %d workers)", len(candidates), root, fmt, workers)
    if progress is not None:
        progress(0, total=len(candidates))
    rows: list[dict[str, Any] | None] = [None] * len(candidates)
    guard = _RootGuard(root)
    for start, done in _chunked_map(lambda c: _index_one(root, guard, c, source), candidates, workers):
        rows[start:start + len(done)] = done
        if progress is not None:
            for _ in done:
                progress(1)
    schema = manifest_schema()
    table = table_from_rows(rows, schema)  # type: ignore[arg-type]
    failed = sum(r["status"] != STATUS_OK for r in rows)  # type: ignore[index]
    if failed:
        log.warning("%d of %d images of %s failed to index; see the error column", failed, len(rows), root)
    meta = {**(schema.metadata or {}), FORMAT_KEY: fmt.encode(), ROOT_KEY: str(root.resolve()).encode()}
    return table.replace_schema_metadata(meta)


def dataset_index_path(cache_root: str | os.PathLike[str], name: str) -> Location:
    """``<cache>/datasets/<name>.parquet`` (a local path or an fsspec URL)."""
    return as_location(cache_root) / "datasets" / f"{check_name(name)}.parquet"


def write_dataset_index(cache_root: str | os.PathLike[str], name: str, table: pa.Table,
                        root: str | os.PathLike[str], *, replace: bool = False) -> Location:
    """Write ``table`` atomically to ``<cache>/datasets/<name>.parquet``, recording the absolute ``root``.

    An existing index of that name from another root or layout, or whose ok images are removed, changed,
    moved to another split or lost labels in ``table``, is refused with :class:`DatasetError` unless ``replace`` (:func:`.reindex.check_replace`).
    """
    path = dataset_index_path(cache_root, name)
    if path.exists():
        try:
            old, old_meta = read_parquet_with_metadata(path, manifest_schema())
        except SchemaMismatch:
            if not replace:
                raise
            log.warning("replacing unreadable dataset index %s", path)
        else:
            old_root = old_meta[ROOT_KEY].decode() if ROOT_KEY in old_meta else None
            old_fmt = old_meta[FORMAT_KEY].decode() if FORMAT_KEY in old_meta else None
            new_fmt = (table.schema.metadata or {}).get(FORMAT_KEY)
            check_replace(name, path, old, old_root, table, Path(root).resolve(), replace=replace,
                          old_format=old_fmt, new_format=None if new_fmt is None else new_fmt.decode())
    fmt = (table.schema.metadata or {}).get(FORMAT_KEY, b"folder")
    meta = {ROOT_KEY: str(Path(root).resolve()).encode(), FORMAT_KEY: fmt}
    write_parquet_atomic(table, path, manifest_schema(), meta)  # local: temp + rename; URL: one PUT
    log.info("wrote dataset index %s (%d rows)", path, table.num_rows)
    return path


def list_datasets(cache_root: str | os.PathLike[str]) -> list[str]:
    """Names of the datasets indexed in a cache, sorted."""
    folder = as_location(cache_root) / "datasets"
    return [n[: -len(".parquet")] for n in folder.list_names(suffix=".parquet") if not n.startswith(".")]


def open_dataset(cache_root: str | os.PathLike[str], name: str, *,
                 root_override: str | os.PathLike[str] | None = None) -> Dataset:
    """Open the dataset ``name`` of a cache; ``root_override`` points at the images when they moved."""
    path = dataset_index_path(cache_root, name)
    if not path.exists():
        known = list_datasets(cache_root)
        raise DatasetError(
            f"no dataset named '{name}' in {path.parent} (indexed: {known or 'none'}). "
            f"Index it first: sak-cache index <folder> --cache {cache_root} --name {name}"
        )
    table, meta = read_parquet_with_metadata(path, manifest_schema())  # one read, local or behind a URL
    if len(set(table.column("sample_id").to_pylist())) != table.num_rows:
        raise SchemaMismatch(f"{path}: sample_id values are not unique; rebuild it with sak-cache index")
    if root_override is not None:
        root = Path(root_override)
    elif ROOT_KEY in meta:
        root = Path(meta[ROOT_KEY].decode())
    else:
        raise DatasetError(f"{path} does not record its dataset root ({ROOT_KEY.decode()}); open it with root_override=<folder> (Python), or index the folder again with sak-cache index")
    if not root.is_dir():
        log.warning("dataset root %s of %s does not exist; if the images moved, index the new folder again with sak-cache index "
                    "(or point at it: sak-train eval/export --data-root <folder>, root_override=<folder> in Python)", root, path)
    return Dataset(name=name, root=root, table=table, format=meta.get(FORMAT_KEY, b"folder").decode())


@dataclass(frozen=True, kw_only=True)
class Dataset:
    """An indexed dataset: its manifest table and the folder its relative paths point into."""

    name: str
    root: Path
    table: pa.Table = field(repr=False)
    format: str = "folder"

    def __len__(self) -> int:
        return self.table.num_rows

    @cached_property
    def _row_of(self) -> dict[str, int]:
        return {sid: i for i, sid in enumerate(self.table.column("sample_id").to_pylist())}

    def row(self, sample_id: str) -> dict[str, Any]:
        """The manifest row of ``sample_id`` as a dict."""
        try:
            i = self._row_of[sample_id]
        except KeyError:
            raise DatasetError(f"dataset '{self.name}' has no sample '{sample_id}'") from None
        return self.table.slice(i, 1).to_pylist()[0]

    def _as_row(self, sample: str | Mapping[str, Any]) -> Mapping[str, Any]:
        return sample if isinstance(sample, Mapping) else self.row(sample)

    def image_path(self, sample: str | Mapping[str, Any]) -> Path:
        """Absolute path of a sample's image (by sample_id or row dict); PathEscape if it leaves the root."""
        return resolve_inside(self.root, self._as_row(sample)["path"])

    def label_path(self, sample: str | Mapping[str, Any], task: str) -> Path | None:
        """Absolute path of a sample's ``task`` label, or None when the sample has none."""
        get_task(task)  # an unknown name is an UnknownTask (a DatasetError) listing the known ones
        rel = self._as_row(sample).get(label_column(task))
        return None if rel is None else resolve_inside(self.root, rel)

    def load_label(self, sample: str | Mapping[str, Any], task: str) -> np.ndarray | None:
        """The decoded ``task`` label (see :func:`sak.pipeline.data.labels.load_label`), None when absent."""
        path = self.label_path(sample, task)
        return None if path is None else load_label(task, path, dataset=self.format)

    def task_channels(self, task: str) -> int:
        """Output channels for ``task`` on this dataset (semseg class count from its layout)."""
        return get_task(task).channels_for(self.format)

    @cached_property
    def tasks(self) -> tuple[str, ...]:
        """Tasks with at least one label among the ok rows, in registry (manifest column) order."""
        ok = self.table.filter(pc.equal(self.table.column("status"), STATUS_OK))
        return tuple(t for t in list_tasks() if ok.column(label_column(t)).null_count < ok.num_rows)

    def ok_rows(self) -> Iterable[dict[str, Any]]:
        """Row dicts of the samples whose status is ok, in manifest order."""
        for batch in self.table.to_batches(max_chunksize=4096):
            for row in batch.to_pylist():
                if row["status"] == STATUS_OK:
                    yield row

    def splits(self) -> dict[str, int]:
        """Number of ok rows per split."""
        counts: dict[str, int] = {}
        for row in self.ok_rows():
            counts[row["split"]] = counts.get(row["split"], 0) + 1
        return counts
