"""Choosing feature stores for a training run and joining them with a dataset split.

The join is an inner join on ``(sha256, view)``: a (sample, view) is served only if
every chosen store holds it. Everything that would make the targets wrong is refused
here, before any training step: no store for the dataset, stores with different view
policies, an ambiguous or unknown teacher name, or (unless ``allow_missing``) samples
that some store does not hold yet; the refusal says which extract fills the gap.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...manifests.errors import DatasetError, SakError, SpecMismatch
from ...manifests.schemas import STATUS_OK
from ...pipeline.store.catalog import list_stores, resolve_stores, short_key
from ...pipeline.store.commits import commit_keys

log = logging.getLogger(__name__)

#: stores whose random-init features this process warned about: a run joins each store several times (train and
#: val of every dataset) and says it once
_RANDOM_INIT_WARNED: set[str] = set()


@dataclass(frozen=True, slots=True)
class Item:
    """One (sample, view) the loader can serve: its manifest row and where each store keeps it."""

    row: Mapping[str, Any]  # a ManifestRow (read-only mapping of the manifest's columns)
    view: int
    view_params: str | None  # canonical JSON of the view; None: identity
    locations: tuple[tuple[str, int], ...]  # (segment_id, row) per store, in store order


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a join builds its ~100k small objects (rows, items, locations).

    Each allocation burst otherwise triggers collections that walk the whole growing heap: measured
    on 90k items, 0.35-0.45 s with the collector vs 0.05-0.1 s without (the objects hold no cycles).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Columns:
    """A manifest table whose columns become Python lists on first use (shared by all its rows)."""

    __slots__ = ("table", "names", "_lists")

    def __init__(self, table: pa.Table) -> None:
        self.table, self.names = table, tuple(table.column_names)
        self._lists: dict[str, list] = {}

    def column(self, name: str) -> list:
        values = self._lists.get(name)
        if values is None:
            if name not in self.names:
                raise KeyError(name)
            values = self._lists[name] = self.table.column(name).to_pylist()
        return values


class ManifestRow(Mapping[str, Any]):
    """One manifest row as a read-only mapping; its values come from columns converted once, when first read.

    Converting 100k manifest rows to dicts up front took longer than the whole join; most columns
    are never read by training (it reads a sample's path and label columns when it loads it).
    Pickles as a plain dict.
    """

    __slots__ = ("_cols", "_i")

    def __init__(self, cols: _Columns, i: int) -> None:
        self._cols, self._i = cols, i

    @classmethod
    def all_of(cls, table: pa.Table) -> list[ManifestRow]:
        cols = _Columns(table)
        return list(map(cls, [cols] * table.num_rows, range(table.num_rows)))

    def __getitem__(self, key: str) -> Any:
        return self._cols.column(key)[self._i]

    def __iter__(self) -> Iterator[str]:
        return iter(self._cols.names)

    def __len__(self) -> int:
        return len(self._cols.names)

    def __repr__(self) -> str:
        return repr(dict(self))

    def __reduce__(self):
        return (dict, (dict(self),))


class CoverageError(SakError):
    """Some samples of the split are missing from a feature store."""


@dataclass(frozen=True)
class Coverage:
    """How much of a split the chosen stores cover."""

    dataset: str
    split: str
    samples: int  # ok samples in the split
    covered: int  # samples every store holds (at least one view)
    items: int  # (sample, view) pairs served
    missing: dict[str, int] = field(default_factory=dict)  # store name -> samples it lacks

    def summary(self) -> str:
        text = f"covered {self.covered}/{self.samples} samples of {self.dataset}/{self.split}"
        if self.items != self.covered:
            text += f" ({self.items} views)"
        gaps = [f"{n} missing from store {name}" for name, n in self.missing.items() if n]
        return text + ("; " + "; ".join(gaps) if gaps else "")


def base_key(spec: Any) -> str:
    """A short, module-name-safe teacher name: the registry alias when there is one (``dinov2``)."""
    return short_key(spec.teacher)


def teacher_key(store: Any, stores: Sequence[Any]) -> str:
    """The name a store's targets go by in the student; stores of one teacher get their spec id appended."""
    key = base_key(store.spec)
    if sum(base_key(s.spec) == key for s in stores) > 1:
        key = f"{key}_{store.spec.spec_id[:6]}"
    return key


def protocol_options(spec: Any, img_size: tuple[int, int] | None = None) -> str:
    """The extract flags of a spec's teacher-input protocol (``img_size``: for that student input instead)."""
    if spec.input_protocol == "student" or img_size is not None:
        h, w = img_size or spec.img_size
        return f"--img-size {h}x{w} --input-protocol student"
    return f"--input-protocol native --native-size {spec.resolution[0]}"


def extract_hint(spec: Any, dataset: str, cache: str, img_size: tuple[int, int] | None = None) -> str:
    """The command that extracts (more of) a store of this spec, or of this spec at student input ``img_size``."""
    opts = [f"--teacher {spec.teacher}", f"--dataset {dataset}", f"--cache {cache}",
            f"--layers {','.join(map(str, spec.layers))}", protocol_options(spec, img_size)]
    if spec.random_init:
        opts.append(f"--random-init --seed {spec.weights.split(':', 1)[1]}")
    elif spec.aug_seed:
        opts.append(f"--seed {spec.aug_seed}")
    if spec.views > 1 or spec.aug != "none":
        opts.append(f"--views {spec.views} --aug {spec.aug}")
        if spec.input_protocol == "native" and spec.aug_crop is not None:
            opts.append(f"--aug-crop {spec.aug_crop[0]}x{spec.aug_crop[1]}")
    if spec.dtype != "float16":
        opts.append(f"--dtype {spec.dtype}" + (f" --quant {spec.quant}" if spec.quant else ""))
    if spec.keep_prefix:
        opts.append("--keep-prefix")
    return "sak-cache extract " + " ".join(opts)


def describe(store: Any) -> str:
    s = store.spec
    fed = (f"student input {s.img_size[0]}x{s.img_size[1]}" if s.input_protocol == "student"
           else "native input")
    return (f"{store.name} (teacher {s.teacher}, {fed}, resolution {s.resolution[0]}x{s.resolution[1]}, grid "
            f"{s.grid[0]}x{s.grid[1]}, layers {list(s.layers)}, views {s.views} aug {s.aug})")


def check_input_size(stores: Sequence[Any], img_size: tuple[int, int], dataset: str, cache: str) -> None:
    """Refuse a store whose teachers saw another student input than this run's ``img_size``.

    Under the student protocol a store's targets are the teachers' features of the student's own
    tensor at ``spec.img_size``; training at another size pairs images with targets of other pixels.
    Native stores do not depend on the student's size (each image went to the teacher's own square).
    """
    h, w = int(img_size[0]), int(img_size[1])
    for store in stores:
        spec = store.spec
        if spec.input_protocol == "student" and tuple(spec.img_size) != (h, w):
            raise SpecMismatch(
                f"store {describe(store)} was extracted for a student input of {spec.img_size[0]}x{spec.img_size[1]}, "
                f"but this run trains at {h}x{w}. Train with --img-size {spec.img_size[0]}x{spec.img_size[1]}, or "
                f"extract for this size: {extract_hint(spec, dataset, cache, (h, w))}"
            )


def _split_table(dataset: Any, split: str) -> pa.Table:
    """The dataset's ok rows of ``split``, filtered in Arrow (no per-row Python on 100k-row manifests)."""
    t = dataset.table
    return t.filter(pc.and_(pc.equal(t.column("status"), STATUS_OK), pc.equal(t.column("split"), split)))


def split_rows(dataset: Any, split: str) -> list[dict]:
    rows = _split_table(dataset, split).to_pylist()
    if not rows:
        raise DatasetError(
            f"dataset '{dataset.name}' has no ok samples in split '{split}' (splits: {dataset.splits()}); "
            "pick another split (TrainConfig train_split / val_split; sak-train eval --split) or index the dataset with split lists"
        )
    return rows


def select_stores(cache: str, dataset: Any, refs: Sequence[str] = (), split: str = "train", *,
                  img_size: tuple[int, int] | None = None) -> list[Any]:
    """The stores to train from: those named in ``refs`` or, when empty, every store covering the split.

    Each ref is resolved by :func:`~sak.pipeline.store.catalog.resolve_store`, as every ``sak-cache``
    command resolves a STORE: exact store name > teacher name or alias (as ``extract -t`` resolved
    it) > unique store name prefix, ``NAME@RES`` to pick an input size (``dinov2@448x576``).
    ``img_size`` (the run's student input, when known) completes the extract command a missing
    teacher's error suggests.
    """
    stores = list_stores(cache)
    if not stores and not refs:  # named teachers get their own extract command from the resolver
        raise SakError(
            f"no feature stores in {cache}/features: extract one first, e.g. "
            f"sak-cache extract --teacher dinov2 --dataset {dataset.name} --cache {cache}"
        )
    if not refs:
        shas = _split_table(dataset, split).column("sha256").combine_chunks()
        if not len(shas):
            split_rows(dataset, split)  # raises the "no ok samples in split" error
        chosen = [s for s in stores if pc.any(pc.is_in(s.commits().column("image_sha256"), value_set=shas)).as_py()]
        if not chosen:
            raise SakError(
                f"no feature store in {cache}/features covers dataset '{dataset.name}' (split {split}); stores: "
                f"{', '.join(s.name for s in stores)}. Extract one: sak-cache extract --teacher dinov2 "
                f"--dataset {dataset.name} --cache {cache}"
            )
        return chosen
    return resolve_stores(refs, cache, stores=stores, option="-t ", datasets=(dataset.name,), img_size=img_size)


class StoreJoin:
    """Inner join of a split's ok rows with stores on ``(sha256, view)``; ``.items`` and ``.coverage``.

    Vectorized: each store's deduplicated commits are looked up for every (row, view) candidate at
    once (Arrow ``index_in`` on a ``sha256|view`` key column), coverage and missing counts are numpy
    reductions, and manifest rows are :class:`ManifestRow` views converted column by column on
    first use. 100k committed rows join in well under a second (benchmarks/scaling.py "open").
    """

    def __init__(self, dataset: Any, stores: Sequence[Any], split: str, *, aug: str = "auto",
                 allow_missing: bool = False, cache_hint: str = "./cache") -> None:
        self.stores = list(stores)
        table = _split_table(dataset, split)
        if not table.num_rows:
            split_rows(dataset, split)  # raises the "no ok samples in split" error
        with gc_paused():
            self._join(dataset, table, split, aug, allow_missing, cache_hint)

    def _join(self, dataset: Any, table: pa.Table, split: str, aug: str, allow_missing: bool, cache_hint: str) -> None:
        rows = ManifestRow.all_of(table)
        if not self.stores:
            self.items = [Item(row=r, view=0, view_params=None, locations=()) for r in rows]
            self.coverage = Coverage(dataset.name, split, len(rows), len(rows), len(rows))
            return
        self._check_specs(aug)
        for s in self.stores:
            if s.spec.random_init and str(s.path) not in _RANDOM_INIT_WARNED:
                _RANDOM_INIT_WARNED.add(str(s.path))
                log.warning("store %s holds RANDOM-INIT %s features (%s): fine for tests and demos, "
                            "not a foundation model's knowledge", s.name, s.spec.teacher, s.spec.weights)
        views = self.stores[0].spec.views
        n = len(rows)
        cand_row = np.repeat(np.arange(n, dtype=np.int64), views)
        cand_view = np.tile(np.arange(views, dtype=np.int32), n)
        shas = table.column("sha256").combine_chunks()
        keys = commit_keys(pa.table({"image_sha256": shas.take(pa.array(cand_row)) if views > 1 else shas,
                                     "view": pa.array(cand_view, pa.int32())}))
        found, hits = [], []
        for store in self.stores:
            commits = store.commits()
            pos = pc.index_in(keys, value_set=commit_keys(commits))
            found.append(pos.is_valid().to_numpy(zero_copy_only=False))
            hits.append((commits, pos))
        every = np.logical_and.reduce(found)
        missing = {s.name: int(n - f.reshape(n, views).any(axis=1).sum()) for s, f in zip(self.stores, found, strict=True)}
        covered = int(every.reshape(n, views).any(axis=1).sum())
        chosen = np.flatnonzero(every)
        mask = pa.array(every)
        located = [tuple(commits.column(c).take(pos.filter(mask)) for c in ("segment_id", "row", "view_params"))
                   for commits, pos in hits]
        self._check_same_views(located, table, cand_row[chosen], cand_view[chosen])
        replay = self.stores[0].spec.aug != "none"
        params = located[0][2].to_pylist() if replay else [None] * len(chosen)
        places = [list(zip(seg.to_pylist(), row.to_pylist(), strict=True)) for seg, row, _ in located]
        self.items = list(map(Item, map(rows.__getitem__, cand_row[chosen].tolist()), cand_view[chosen].tolist(), params,
                              zip(*places, strict=True)))
        self.coverage = Coverage(dataset.name, split, n, covered, len(self.items), missing)
        log.debug("%s", self.coverage.summary())
        if covered == 0:
            raise CoverageError(
                f"no sample of {dataset.name}/{split} is in every store ({self.coverage.summary()}); "
                + "; ".join(f"fill {s.name}: {extract_hint(s.spec, dataset.name, cache_hint)}" for s in self.stores)
            )
        if covered < n and not allow_missing:
            fixes = "; ".join(f"fill {s.name}: {extract_hint(s.spec, dataset.name, cache_hint)}"
                              for s in self.stores if missing[s.name])
            raise CoverageError(
                f"{self.coverage.summary()}. {fixes} (extraction resumes where it stopped), "
                "or pass --allow-missing to train on the covered samples only"
            )

    def _check_same_views(self, located: list, table: pa.Table, rows: np.ndarray, views: np.ndarray) -> None:
        """Every store must have recorded the same view parameters for a served (sample, view)."""
        first = located[0][2]
        for _, _, params in located[1:]:
            differ = np.flatnonzero(~pc.equal(first, params).to_numpy(zero_copy_only=False))
            if len(differ):
                j = int(differ[0])
                sample_id = table.column("sample_id")[int(rows[j])].as_py()
                raise SpecMismatch(
                    f"stores {', '.join(s.name for s in self.stores)} recorded different augmentations for sample "
                    f"{sample_id} view {int(views[j])}; their targets do not match one image. Extract them with the same "
                    "--views/--aug/--seed"
                )

    def _check_specs(self, aug: str) -> None:
        first = self.stores[0].spec
        for s in self.stores[1:]:
            if (s.spec.views, s.spec.aug, s.spec.aug_seed) != (first.views, first.aug, first.aug_seed):
                raise SpecMismatch(
                    f"stores hold different augmentation views: {describe(self.stores[0])} vs {describe(s)}; "
                    "a sample's targets must come from one augmented image. Extract every teacher with the same "
                    "--views/--aug/--seed, or train from stores with one policy"
                )
        if aug == "none" and first.aug != "none":
            raise SpecMismatch(
                f"--aug none, but {describe(self.stores[0])} holds augmented views: un-augmented images would be "
                "paired with targets of augmented ones. Drop --aug none (the stored views are replayed exactly) "
                "or train from stores extracted with --aug none"
            )
