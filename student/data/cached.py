"""CachedTargets: a dataset manifest joined with feature stores, served as student training samples.

A sample is ``{"image": (3, H, W) normalized, "labels": {task: map}, "masks": {task: bool},
"targets": {teacher key: [(C, h, w) float32 per layer]}}`` (plus ``"teacher_inputs"`` in
online mode). The join is an inner join on ``(sha256, view)``: a sample is served only
if every store holds it. Augmentation is the stored view replayed exactly (identity for
``--aug none`` stores), so the student sees the very pixels the teacher saw.

Label maps: class tasks ``(H, W) int64`` (ignore 255), map tasks ``(C, H, W)`` float32 (C = the
task's ``label_channels``: 3 for normals, else 1); a sample without a task's label gets a map
filled with the task's ``pad_value`` and ``masks[task] = False``.

An image without a stored view (evaluation, ``--aug none`` stores) meets ``img_size`` by
``fit``: ``"pad"`` is the official val transform (``custom_transforms.py:30-38``): no resize,
the image centre-padded with the mean colour (0 once normalized), labels kept at their stored
resolution and padded with the task's pad value (ignored), so metrics score the stored labels;
an image larger than ``img_size`` is refused. ``"resize"`` squashes the image (bilinear) and the
labels (nearest) to ``img_size``, as sak did before issue 12 (run config ``eval_resize``).

``feature_flip=True`` also mirrors image, labels and the stored target maps for a
seeded half of the samples. That is APPROXIMATE: a ViT's features of a mirrored image
are not the mirrored features (positional embeddings); one public measurement found
cosine 0.867 between them. Exact replay of extracted views (``--views K --aug sak``) is
the faithful way to augment.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...manifests.errors import ConfigError
from ...pipeline.data.augment import pad_eval_image, pad_eval_label
from ...pipeline.data.images import decode_rgb
from ...pipeline.tasks import get_task
from ...pipeline.teachers.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize
from . import views
from .prefetch import BackgroundIterator, ordered_map
from .sampler import Block, BlockShuffleSampler, Window, make_blocks
from .stores import Item, StoreJoin, teacher_key

log = logging.getLogger(__name__)

#: How an image without a stored view meets ``img_size`` (see the module docstring).
FITS = ("pad", "resize")


@dataclass
class Batch:
    """A collated batch; ``position`` is the sampler position after its last sample."""

    image: torch.Tensor  # (B, 3, H, W)
    labels: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]  # task -> (B,) bool
    targets: dict[str, list[torch.Tensor]]  # teacher key -> [(B, C, h, w)]
    sample_ids: list[str]
    position: tuple[int, int] = (0, 0)
    teacher_inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # online mode: key -> (B, 3, h, w)

    def _map(self, fn, *, masks: bool = True) -> Batch:
        return Batch(
            image=fn(self.image),
            labels={k: fn(v) for k, v in self.labels.items()},
            masks={k: fn(v) for k, v in self.masks.items()} if masks else self.masks,
            targets={k: [fn(t) for t in v] for k, v in self.targets.items()},
            sample_ids=self.sample_ids,
            position=self.position,
            teacher_inputs={k: fn(v) for k, v in self.teacher_inputs.items()},
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        return self._map(lambda t: t.pin_memory(), masks=False)


def _resize(x_chw: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize a (C, H, W) map, or an (H, W) class map (nearest only), to ``size``."""
    if tuple(x_chw.shape[-2:]) == tuple(size):
        return x_chw
    if mode == "nearest":
        x_bchw = x_chw[None, None] if x_chw.ndim == 2 else x_chw[None]
        out = F.interpolate(x_bchw.float(), size=size, mode="nearest-exact")[0].to(x_chw.dtype)
        return out[0] if x_chw.ndim == 2 else out
    return F.interpolate(x_chw[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def normalize_image(img01_chw: torch.Tensor) -> torch.Tensor:
    """The student's input: ImageNet mean/std, as every SAK teacher and the official transforms use."""
    return normalize(img01_chw, IMAGENET_MEAN, IMAGENET_STD)


def empty_label(task: str, size: tuple[int, int]) -> torch.Tensor:
    """The label of a sample without one: filled with the task's pad value (masked out of the loss)."""
    spec = get_task(task)
    if spec.is_class_map:
        return torch.full(size, spec.pad_value, dtype=torch.int64)
    return torch.full((spec.label_channels, *size), spec.pad_value, dtype=torch.float32)


def flip_label(task: str, label: torch.Tensor) -> torch.Tensor:
    """A channels-first label mirrored left-right, the task's ``flip_negate`` channels negated."""
    out = label.flip(-1)
    negate = get_task(task).flip_negate
    if negate:
        out = out.clone()
        for c in negate:
            out[c] = -out[c]
    return out


class CachedTargets:
    """A split of a dataset joined with feature stores; see the module docstring.

    ``stores=()`` serves images and labels only (evaluation). ``teacher_preprocess``
    (online mode) adds each teacher's preprocessed input instead of reading targets.
    ``fit``: ``"pad"`` (official val transform) or ``"resize"`` for images without a stored view.
    """

    def __init__(
        self,
        dataset,
        stores: Sequence[Any],
        split: str,
        img_size: tuple[int, int],
        *,
        tasks: Sequence[str] | None = None,
        aug: str = "auto",
        feature_flip: bool = False,
        allow_missing: bool = False,
        read_targets: bool = True,
        teacher_preprocess: Mapping[str, Any] | None = None,
        cache_hint: str = "./cache",
        seed: int = 0,
        fit: str = "pad",
    ) -> None:
        if fit not in FITS:
            raise ConfigError(f"fit must be one of {FITS}, got {fit!r}")
        self.fit = fit
        self.dataset = dataset
        self.split = split
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.tasks = tuple(tasks) if tasks is not None else tuple(dataset.tasks)
        self.feature_flip = feature_flip
        self.seed = seed
        self.read_targets = read_targets and bool(stores)
        self.teacher_preprocess = dict(teacher_preprocess or {})
        self.join = StoreJoin(dataset, stores, split, aug=aug, allow_missing=allow_missing, cache_hint=cache_hint)
        self.stores = self.join.stores
        self.keys = tuple(teacher_key(s, self.stores) for s in self.stores)
        self.items: list[Item] = self.join.items
        self.coverage = self.join.coverage

    def __len__(self) -> int:
        return len(self.items)

    # -- one sample ---------------------------------------------------------------
    def flip_of(self, epoch: int, index: int) -> bool:
        if not self.feature_flip:
            return False
        return bool(np.random.default_rng([self.seed, epoch, index, 7]).random() < 0.5)

    def build(self, item: Item, targets: Mapping[str, list[np.ndarray]] | None = None, flip: bool = False) -> dict:
        """Sample dict for ``item``; ``targets`` are its (h, w, c) layer maps per teacher key."""
        rgb = decode_rgb(self.dataset.image_path(item.row))
        params = views.parse(item.view_params)
        img01 = views.apply_image(torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0), params)
        if flip:
            img01 = img01.flip(-1)
        sample: dict[str, Any] = {"sample_id": item.row["sample_id"]}
        if self.teacher_preprocess:
            sample["teacher_inputs"] = {k: pre.from_tensor(img01.clone()) for k, pre in self.teacher_preprocess.items()}
        padded = params is None and self.fit == "pad"
        if padded:
            image = pad_eval_image(img01, self.img_size)
        else:
            image = _resize(img01, self.img_size, "bilinear").clamp_(0.0, 1.0)
        labels, masks = {}, {}
        for task in self.tasks:
            path = self.dataset.label_path(item.row, task)
            if path is None:
                labels[task], masks[task] = empty_label(task, self.img_size), False
                continue
            raw = self.dataset.load_label(item.row, task)
            if padded:
                labels[task] = views.label_tensor(task, pad_eval_label(raw, self.img_size, task).numpy())
            else:
                # nearest for every task: bilinear would blend valid depth/normals with the invalid 0
                labels[task] = _resize(views.apply_label(raw, params, task), self.img_size, "nearest")
            masks[task] = True
        tmaps: dict[str, list[torch.Tensor]] = {}
        for key, layers in (targets or {}).items():
            tmaps[key] = [torch.from_numpy(np.ascontiguousarray(m)).permute(2, 0, 1).float() for m in layers]
        if flip:
            labels = {t: flip_label(t, v) for t, v in labels.items()}
            tmaps = {k: [m.flip(-1) for m in v] for k, v in tmaps.items()}
        sample.update(image=normalize_image(image), labels=labels, masks=masks, targets=tmaps)
        return sample

    def read_item(self, index: int) -> dict[str, list[np.ndarray]]:
        """Targets of one item, one small read per store (tests, debugging; the loader reads blocks)."""
        item = self.items[index]
        out = {}
        for key, store, (seg, row) in zip(self.keys, self.stores, item.locations, strict=True):
            got = store.read_rows(seg, [row])
            out[key] = [got[layer][0] for layer in store.spec.layers]
        return out

    def __getitem__(self, index: int) -> dict:
        return self.build(self.items[index], self.read_item(index) if self.read_targets else None)

    # -- blocks and batches ---------------------------------------------------------
    def blocks(self, block_size: int) -> list[Block]:
        """Contiguous row blocks of the first store (one block per item when there are no stores)."""
        if not self.stores:
            return make_blocks(["-"] * len(self.items), list(range(len(self.items))), block_size)
        locs = [it.locations[0] for it in self.items]
        return make_blocks([s for s, _ in locs], [r for _, r in locs], block_size)

    def sampler(self, *, block_size: int = 16, window: int = 4, seed: int = 0, rank: int = 0, world: int = 1,
                shuffle: bool = True) -> BlockShuffleSampler:
        return BlockShuffleSampler(self.blocks(block_size), seed=seed, rank=rank, world=world, window=window,
                                   shuffle=shuffle)

    def read_window(self, window: Window) -> dict[int, dict[str, list[np.ndarray]]]:
        """Targets of every wanted item of a window: one contiguous read per block for the first store,
        one read per (block, segment) for the others."""
        out: dict[int, dict[str, list[np.ndarray]]] = {}
        if not self.read_targets:
            return out
        for block in window.blocks:
            ids = [i for i, _ in block.items]
            first, *others = self.stores
            got = first.read_rows(block.segment_id, range(block.start, block.stop))
            for i, r in block.items:
                out.setdefault(i, {})[self.keys[0]] = [got[layer][r - block.start] for layer in first.spec.layers]
            for s_idx, store in enumerate(others, start=1):
                by_seg: dict[str, list[int]] = {}
                for i in ids:
                    by_seg.setdefault(self.items[i].locations[s_idx][0], []).append(i)
                for seg, members in by_seg.items():
                    rows = sorted(self.items[i].locations[s_idx][1] for i in members)
                    got = store.read_rows(seg, rows)
                    pos = {r: k for k, r in enumerate(rows)}
                    for i in members:
                        k = pos[self.items[i].locations[s_idx][1]]
                        out[i][self.keys[s_idx]] = [got[layer][k] for layer in store.spec.layers]
        return out

    def batches(self, batch_size: int, sampler: BlockShuffleSampler, *, start: tuple[int, int] = (0, 0),
                workers: int = 4, prefetch: int = 4, pin_memory: bool = False,
                drop_last_epoch: bool = False) -> Loader:
        """Endless batches from sampler position ``start`` (``drop_last_epoch``: stop after one epoch)."""
        return Loader(self, batch_size, sampler, start, workers, prefetch, pin_memory, drop_last_epoch)


def collate(samples: Sequence[dict], position: tuple[int, int] = (0, 0)) -> Batch:
    first = samples[0]
    return Batch(
        image=torch.stack([s["image"] for s in samples]),
        labels={t: torch.stack([s["labels"][t] for s in samples]) for t in first["labels"]},
        masks={t: torch.tensor([s["masks"][t] for s in samples], dtype=torch.bool) for t in first["masks"]},
        targets={k: [torch.stack([s["targets"][k][j] for s in samples]) for j in range(len(v))]
                 for k, v in first["targets"].items()},
        sample_ids=[s["sample_id"] for s in samples],
        position=position,
        teacher_inputs={k: torch.stack([s["teacher_inputs"][k] for s in samples]) for k in first.get("teacher_inputs", {})},
    )


class Loader(Iterator[Batch]):
    """Batches in the sampler's order: window reads and sample decoding on a thread pool,
    collation on a background thread, ``prefetch`` batches ahead. Deterministic for any ``workers``."""

    def __init__(self, data: CachedTargets, batch_size: int, sampler: BlockShuffleSampler, start: tuple[int, int],
                 workers: int, prefetch: int, pin_memory: bool, one_epoch: bool) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.data, self.batch_size, self.sampler = data, batch_size, sampler
        self.start, self.pin_memory, self.one_epoch = start, pin_memory, one_epoch
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="sak-read") if workers > 0 else None
        self._iter: Iterator[Batch] = (
            BackgroundIterator(self._generate(), prefetch) if workers > 0 else self._generate()
        )

    @property
    def wait_seconds(self) -> float:
        return getattr(self._iter, "wait_seconds", 0.0)

    def _positions(self) -> Iterator[tuple[int, int, int, dict]]:
        """(epoch, offset after the item, item index, its targets) in serving order."""
        first_epoch = self.start[0]

        def read(entry: tuple[int, int, Window]):
            return entry, self.data.read_window(entry[2])

        windows = self.sampler.windows_from(*self.start)
        if self.one_epoch:
            windows = itertools.takewhile(lambda entry: entry[0] == first_epoch, windows)
        for (epoch, offset, win), targets in ordered_map(self._pool, read, windows, ahead=2):
            for k, i in enumerate(win.order):
                yield epoch, offset + k + 1, i, targets.get(i)

    def _generate(self) -> Iterator[Batch]:
        def build(entry):
            epoch, after, i, targets = entry
            return (epoch, after), self.data.build(self.data.items[i], targets, self.data.flip_of(epoch, i))

        buf: list[dict] = []
        for (epoch, after), sample in ordered_map(self._pool, build, self._positions(), ahead=2 * self.batch_size):
            buf.append(sample)
            if after >= self.sampler.epoch_len(epoch):
                epoch, after = epoch + 1, 0
            if len(buf) == self.batch_size:
                batch = collate(buf, (epoch, after))
                yield batch.pin_memory() if self.pin_memory else batch
                buf = []
        if buf:  # one_epoch: the last, short batch
            batch = collate(buf, (epoch, after))
            yield batch.pin_memory() if self.pin_memory else batch

    def __next__(self) -> Batch:
        return next(self._iter)

    def close(self) -> None:
        if isinstance(self._iter, BackgroundIterator):
            self._iter.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
