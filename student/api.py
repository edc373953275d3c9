"""One call from a cache to a torch dataset: :func:`training_set` (the samples ``sak-train fit`` trains on).

It takes the same steps as ``fit`` (``student/train/setup.py``): open the cache and the dataset,
resolve the teachers as every command does (:func:`~sak.pipeline.store.catalog.resolve_store`),
choose the student input size, join the split with the stores. What comes back is a
``torch.utils.data.Dataset`` whose samples the default ``DataLoader`` collate batches.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch.utils.data

from ..pipeline.cache import Cache
from ..pipeline.data.datasets import open_dataset
from ..pipeline.store.feature_store import FeatureStore
from .data.cached import CachedTargets
from .data.stores import check_input_size, select_stores
from .runs.config import field_default
from .train.setup import _dataset_names, _train_fit, infer_img_size


class TrainingSet(torch.utils.data.Dataset):
    """A split of an indexed dataset joined with teacher stores: ``len`` samples, each a dict of

    ``image`` (3, H, W) float32 normalized (ImageNet mean/std); ``labels`` {task: (H, W) int64 class map
    or (C, H, W) float32}; ``masks`` {task: bool, False where the sample has no such label};
    ``targets`` {teacher key: [(C, h, w) float32 per stored layer]}; ``sample_id``.

    Attributes: ``stores`` (the resolved :class:`FeatureStore` objects), ``teachers`` (their keys in
    ``targets``), ``tasks``, ``img_size`` and ``coverage`` (how much of the split every store holds).
    """

    def __init__(self, data: CachedTargets) -> None:
        self.data = data
        self.stores: list[FeatureStore] = list(data.stores)
        self.teachers: tuple[str, ...] = data.keys
        self.tasks: tuple[str, ...] = data.tasks
        self.img_size: tuple[int, int] = data.img_size
        self.coverage = data.coverage

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.data):
            raise IndexError(f"sample {index} of a {len(self.data)}-sample training set")
        return self.data[index]

    def __repr__(self) -> str:
        return (f"TrainingSet({self.data.dataset.name}/{self.data.split}: {len(self)} samples, teachers "
                f"{list(self.teachers)}, tasks {list(self.tasks)}, input {self.img_size[0]}x{self.img_size[1]})")


def training_set(cache: str | os.PathLike[str] | Cache, dataset: str | None = None, teachers: Sequence[str] = (), *,
                 split: str = "train", img_size: tuple[int, int] | None = None, allow_missing: bool = False,
                 aug: str = "auto") -> TrainingSet:
    """The samples ``sak-train fit`` would train on, as a ``torch.utils.data.Dataset``::

        from torch.utils.data import DataLoader
        from sak.student import training_set

        data = training_set("./cache", dataset="nyud", teachers=["dinov2"], split="train")
        batch = next(iter(DataLoader(data, batch_size=4, num_workers=2)))
        batch["image"].shape, batch["targets"]["dinov2"][0].shape   # (4, 3, H, W), (4, C, h, w)

    ``cache``: a cache root (path or fsspec URL) or an opened :class:`~sak.pipeline.Cache`.
    ``dataset``: an indexed dataset (default: the cache's only one). ``teachers``: store or teacher
    names as ``sak-train fit -t`` takes them (default: every store covering the split). ``img_size``:
    the student input (H, W); default as ``fit`` chooses it (the stores' student input, else the
    stored views', else the split's most common image size). ``allow_missing`` serves the samples
    every store holds when some lack a few; ``aug="none"`` refuses augmented stores.
    Raises :class:`~sak.manifests.errors.SakError` naming the fix (no store, a size mismatch, ...).
    """
    root = os.fspath(cache.root if isinstance(cache, Cache) else cache)
    ds = open_dataset(root, _dataset_names(root, (dataset,) if dataset else ())[0])
    stores = select_stores(root, ds, tuple(teachers), split, img_size=img_size)
    size = tuple(img_size) if img_size is not None else infer_img_size(ds, stores, split, field_default("backbone"))
    hw = (int(size[0]), int(size[1]))
    check_input_size(stores, hw, ds.name, root)
    data = CachedTargets(ds, stores, split, hw, allow_missing=allow_missing, aug=aug, cache_hint=root,
                         fit=_train_fit(stores))
    return TrainingSet(data)
