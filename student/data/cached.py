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
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ...manifests.errors import ConfigError
from ...pipeline.data.augment import pad_eval_image, pad_eval_label
from ...pipeline.data.images import decode_rgb
from ...pipeline.store.gather import StoreGather
from ...pipeline.tasks import get_task
from ...pipeline.teachers.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize
from . import views
from .prefetch import BackgroundIterator, ordered_map
from .sampler import Block, BlockShuffleSampler, Draw, Position, make_blocks
from .stores import Item, StoreJoin, teacher_key
from .targets import StreamTargets, TargetBatch, decode_item

log = logging.getLogger(__name__)

#: How an image without a stored view meets ``img_size`` (see the module docstring).
FITS = ("pad", "resize")


@dataclass
class Batch:
    """A collated batch; ``position`` is the sampler position after its last sample.

    ``targets`` hold each teacher's maps as stored (:class:`~.targets.TargetBatch`: ``.decode()`` gives
    ``(B, C, h, w)`` float maps on their device). :meth:`release` hands the target buffers back to the
    loader for reuse once nothing uses the batch any more (the trainer does, after its step).
    """

    image: torch.Tensor  # (B, 3, H, W)
    labels: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]  # task -> (B,) bool
    targets: dict[str, TargetBatch]  # teacher key -> stored parts
    sample_ids: list[str]
    position: Position = (0, 0)
    teacher_inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # online mode: key -> (B, 3, h, w)

    def _map(self, fn, targets, *, masks: bool = True) -> Batch:
        return Batch(
            image=fn(self.image),
            labels={k: fn(v) for k, v in self.labels.items()},
            masks={k: fn(v) for k, v in self.masks.items()} if masks else self.masks,
            targets={k: targets(v) for k, v in self.targets.items()},
            sample_ids=self.sample_ids,
            position=self.position,
            teacher_inputs={k: fn(v) for k, v in self.teacher_inputs.items()},
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking),
                         lambda v: v.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        return self._map(lambda t: t.pin_memory(), lambda v: v.pin_memory(), masks=False)

    def decoded_targets(self, dtype: torch.dtype = torch.float32) -> dict[str, list[torch.Tensor]]:
        """Teacher key -> per layer ``(B, C, h, w)`` maps in ``dtype``, on the batch's device."""
        return {k: v.decode(dtype) for k, v in self.targets.items()}

    def release(self) -> None:
        """Give the target buffers back for reuse (after the batch and its device copies are consumed)."""
        for v in self.targets.values():
            v.release()


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


def image_orientation(stores: Sequence[Any]) -> str:
    """The decode orientation policy of ``stores`` (their spec's; ``exif`` without stores); they must agree."""
    policies = {s.spec.orientation for s in stores}
    if len(policies) > 1:
        raise ConfigError(
            "stores " + ", ".join(f"{s.name} ({s.spec.orientation})" for s in stores) + " decoded images with different "
            "orientation policies (exif: EXIF tag applied; raw: stored pixel order, stores before issue 14); train with "
            "stores of one policy (extract the raw ones again)"
        )
    return policies.pop() if policies else "exif"


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
        self.orientation = image_orientation(stores)  # before the join: its view check would blame augmentation
        self.join = StoreJoin(dataset, stores, split, aug=aug, allow_missing=allow_missing, cache_hint=cache_hint)
        self.stores = self.join.stores
        self.keys = tuple(teacher_key(s, self.stores) for s in self.stores)
        self.items: list[Item] = self.join.items
        self.coverage = self.join.coverage
        self.gathers = [StoreGather(s) for s in self.stores]
        self._reindex = f"sak-cache index {dataset.root} --name {dataset.name} --cache {cache_hint} --replace, then extract again"

    def target_bytes(self) -> int:
        """On-disk bytes of every item's targets (what resident targets hold)."""
        return len(self.items) * sum(g.sample_bytes() for g in self.gathers)

    def __len__(self) -> int:
        return len(self.items)

    # -- one sample ---------------------------------------------------------------
    def flip_of(self, epoch: int, index: int) -> bool:
        if not self.feature_flip:
            return False
        return bool(np.random.default_rng([self.seed, epoch, index, 7]).random() < 0.5)

    def build(self, item: Item, targets: Mapping[str, list[np.ndarray]] | None = None, flip: bool = False) -> dict:
        """Sample dict for ``item``; ``targets`` are its (h, w, c) layer maps per teacher key."""
        # the bytes the targets were extracted from (sha256 checked: ~60 us for 100 KB, next to ms of decoding),
        # decoded with the orientation policy of the stores (a store without one: raw pixel order)
        rgb = decode_rgb(self.dataset.image_path(item.row), sha256=item.row["sha256"], orientation=self.orientation,
                         reindex_hint=self._reindex)
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
        """Targets of one item as float32 (h, w, c) maps, one small read per store (tests, debugging)."""
        item = self.items[index]
        return {key: decode_item(gather, store, seg, row) for key, store, gather, (seg, row)
                in zip(self.keys, self.stores, self.gathers, item.locations, strict=True)}

    def __getitem__(self, index: int) -> dict:
        return self.build(self.items[index], self.read_item(index) if self.read_targets else None)

    def sample(self, index: int, flip: bool = False) -> dict:
        """Item ``index`` without its targets (the loader gathers those per batch)."""
        return self.build(self.items[index], None, flip)

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

    def batches(self, batch_size: int, sampler: Sampler, *, start: Position = (0, 0),
                workers: int = 4, prefetch: int = 4, pin_memory: bool = False,
                drop_last_epoch: bool = False, targets: TargetSource | None = None) -> Loader:
        """Endless batches from sampler position ``start`` (``drop_last_epoch``: stop after one epoch).

        ``targets``: where the batches' targets come from (default: read from the stores per batch,
        :class:`~.targets.StreamTargets`; or :class:`~.resident.ResidentTargets`).
        """
        return Loader(self, batch_size, sampler, start, workers, prefetch, pin_memory, drop_last_epoch, targets)


class Sampler(Protocol):
    """What a :class:`Loader` takes its order from (:class:`~.sampler.BlockShuffleSampler`, :class:`~.sampler.MixedSampler`)."""

    def draws(self, start: Position) -> Iterator[Draw]: ...


class Samples(Protocol):
    """What a :class:`Loader` serves: :class:`CachedTargets`, or :class:`~.mixed.MixedTargets` (several datasets)."""

    items: list[Item]
    stores: list[Any]
    keys: tuple[str, ...]
    gathers: list[StoreGather]
    read_targets: bool

    def sample(self, index: int, flip: bool = False) -> dict: ...

    def flip_of(self, epoch: int, index: int) -> bool: ...


class TargetSource(Protocol):
    """What a :class:`Loader` takes a batch's targets from (stream reads or resident memory)."""

    mode: str

    def batch(self, indices: Sequence[int], flips: Sequence[bool]) -> dict[str, TargetBatch]: ...


def collate(samples: Sequence[dict], position: Position = (0, 0),
            targets: dict[str, TargetBatch] | None = None) -> Batch:
    """Stack samples (images, labels) into a batch; ``targets`` are already batched (see :class:`~.targets.TargetBatch`)."""
    first = samples[0]
    return Batch(
        image=torch.stack([s["image"] for s in samples]),
        labels={t: torch.stack([s["labels"][t] for s in samples]) for t in first["labels"]},
        masks={t: torch.tensor([s["masks"][t] for s in samples], dtype=torch.bool) for t in first["masks"]},
        targets=dict(targets or {}),
        sample_ids=[s["sample_id"] for s in samples],
        position=position,
        teacher_inputs={k: torch.stack([s["teacher_inputs"][k] for s in samples]) for k in first.get("teacher_inputs", {})},
    )


@dataclass(frozen=True)
class BatchPlan:
    """What one batch holds: item indices and flips in serving order, and the sampler position after it."""

    items: tuple[int, ...]
    flips: tuple[bool, ...]
    position: Position


class Loader(Iterator[Batch]):
    """Batches in the sampler's order, ``workers`` batches built at once on a thread pool (targets gathered
    into reusable buffers, images and labels decoded), ``prefetch`` ready ahead. Deterministic for any ``workers``."""

    def __init__(self, data: Samples, batch_size: int, sampler: Sampler, start: Position,
                 workers: int, prefetch: int, pin_memory: bool, one_epoch: bool,
                 targets: TargetSource | None = None) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.data, self.batch_size, self.sampler = data, batch_size, sampler
        self.start, self.pin_memory, self.one_epoch = start, pin_memory, one_epoch
        self.workers = workers
        if targets is None and data.read_targets:
            # enough released buffer sets for every batch in flight, queued and held by the trainer
            targets = StreamTargets(data.stores, data.keys, data.items, batch_size, pin_memory=pin_memory,
                                    ring=workers + prefetch + 3, gathers=data.gathers)
        self.targets = targets if data.read_targets else None
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="sak-read") if workers > 0 else None
        self._iter: Iterator[Batch] = (
            BackgroundIterator(self._generate(), prefetch) if workers > 0 else self._generate()
        )

    @property
    def wait_seconds(self) -> float:
        return getattr(self._iter, "wait_seconds", 0.0)

    def plans(self) -> Iterator[BatchPlan]:
        """The batches from the start position, without reading anything (pure function of the sampler)."""
        first_epoch = self.start[0]
        draws = self.sampler.draws(self.start)
        if self.one_epoch:
            draws = itertools.takewhile(lambda d: d.epoch == first_epoch, draws)
        items: list[int] = []
        flips: list[bool] = []
        position = self.start
        for d in draws:
            items.append(d.item)
            flips.append(self.data.flip_of(d.flip_epoch, d.item))
            position = d.after
            if len(items) == self.batch_size:
                yield BatchPlan(tuple(items), tuple(flips), position)
                items, flips = [], []
        if items:  # one_epoch: the last, short batch
            yield BatchPlan(tuple(items), tuple(flips), position)

    def make(self, plan: BatchPlan) -> Batch:
        """Build one planned batch: its targets from the target source, its images and labels decoded."""
        targets = self.targets.batch(plan.items, plan.flips) if self.targets is not None else None
        samples = [self.data.sample(i, f) for i, f in zip(plan.items, plan.flips, strict=True)]
        batch = collate(samples, plan.position, targets)
        return batch.pin_memory() if self.pin_memory and torch.cuda.is_available() else batch

    def _generate(self) -> Iterator[Batch]:
        yield from ordered_map(self._pool, self.make, self.plans(), ahead=max(1, self.workers))

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
