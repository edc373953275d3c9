"""Several datasets in one training run: the union of their heads, and their samples mixed.

Heads (:func:`assign_heads`): every task of every dataset gets a student head. A task that two
datasets share gets one head when they label it in one convention, i.e. the same dataset format
(a format fixes the class list and the label files: NYUD semseg has 40 classes, PASCAL-Context
21); otherwise the later dataset's head is named ``<task>_<format>`` (``semseg_pascal``). The
head's *kind* (the registered task: ``semseg``) gives its loss, weight and metrics; the student
config records it (``TaskSpec.kind``).

Batches (:class:`MixedTargets`) mix datasets: one batch holds samples of several datasets, all
fitted to the one student input (``img_size``: a stored view replayed, else padded or resized as
in single-dataset runs), every sample carrying a label and a mask for every head (False and the
task's pad value where its dataset has no such task), so each sample's loss covers exactly the
tasks it is labelled for. Mixed rather than per-dataset batches because (1) every step then
updates every head with a gradient from the shared trunk, as the single-dataset multi-task
recipe does, instead of alternating which tasks pull on the backbone from step to step; (2) the
heads' BatchNorm sees the mixture it is evaluated on rather than one dataset per step; (3) the
teacher stores are one per teacher spec and one student input size, so every dataset's targets
already have one shape (no per-dataset crop sizes to bucket). The cost: a batch's images share one
input size, so datasets of very different sizes are padded or resized to it.

Distillation: every selected teacher store must hold every dataset's training samples (the join
refuses otherwise and names the extract command that fills the gap); a per-sample teacher mask
for stores that cover only some datasets is not built.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import torch

from ...manifests.errors import ConfigError
from .cached import CachedTargets, Loader, Sampler, TargetSource, empty_label
from .sampler import MixedSampler, Position, mix_probabilities, parse_mix

#: Per dataset name: its task -> the student head that predicts it.
Heads = dict[str, dict[str, str]]


def assign_heads(datasets: Sequence[Any]) -> Heads:
    """Heads for ``datasets`` (objects with ``name``, ``format`` and ``tasks``), in order; see the module docstring."""
    owner: dict[tuple[str, str], str] = {}
    heads: Heads = {}
    for ds in datasets:
        mapping = {}
        for task in ds.tasks:
            key = (task, ds.format)
            if key not in owner:
                name = task if task not in owner.values() else f"{task}_{ds.format}"
                if name in owner.values():  # pragma: no cover - a format names one key
                    raise ConfigError(f"two heads would be named {name!r}; give the datasets different formats")
                owner[key] = name
            mapping[task] = owner[key]
        heads[ds.name] = mapping
    return heads


def head_kinds(heads: Heads) -> dict[str, str]:
    """Every head (in first-seen order) -> the registered task it predicts."""
    kinds: dict[str, str] = {}
    for mapping in heads.values():
        for task, head in mapping.items():
            kinds.setdefault(head, task)
    return kinds


@dataclass(frozen=True)
class MixedCoverage:
    """The coverage of every dataset of a mixed run."""

    parts: tuple[Any, ...]  # one Coverage per dataset

    def summary(self) -> str:
        return "; ".join(p.summary() for p in self.parts)


class MixedTargets:
    """The training splits of several datasets joined with the same stores, served as one item list.

    Items are the datasets' items one after the other (dataset k's item i is ``offsets[k] + i``);
    the stores' targets are gathered by the usual target sources (stream or resident), which only
    see items and their store locations. Samples carry every head's label (see the module docstring).
    """

    def __init__(self, parts: Sequence[CachedTargets], heads: Heads, *, mix: str = "proportional") -> None:
        if len(parts) < 2:
            raise ConfigError("MixedTargets mixes two or more datasets; train one dataset with CachedTargets")
        parse_mix(mix)
        names = [p.dataset.name for p in parts]
        if len(set(names)) != len(names):
            raise ConfigError(f"dataset {sorted(n for n in names if names.count(n) > 1)[0]!r} is given twice: "
                              "pass each --dataset once")
        first = parts[0]
        for p in parts[1:]:
            if [s.name for s in p.stores] != [s.name for s in first.stores] or p.img_size != first.img_size:
                raise ConfigError("the datasets of a mixed run must be joined with the same stores at one img_size")
        self.parts, self.mix = list(parts), mix
        self.heads: Heads = {n: dict(heads[n]) for n in names}
        self.kinds = head_kinds(self.heads)
        self.tasks = tuple(self.kinds)
        self.stores, self.keys, self.gathers = first.stores, first.keys, first.gathers
        self.read_targets, self.img_size = first.read_targets, first.img_size
        self.items = [it for p in self.parts for it in p.items]
        self.offsets = [0, *accumulate(len(p) for p in self.parts)][:-1]
        self.coverage = MixedCoverage(tuple(p.coverage for p in self.parts))
        self._owner = [{head: task for task, head in self.heads[n].items()} for n in names]

    def __len__(self) -> int:
        return len(self.items)

    def target_bytes(self) -> int:
        """On-disk bytes of every item's targets (what resident targets hold)."""
        return len(self.items) * sum(g.sample_bytes() for g in self.gathers)

    def part_of(self, index: int) -> tuple[int, int]:
        """(dataset number, its item index) of combined item ``index``."""
        k = bisect.bisect_right(self.offsets, index) - 1
        return k, index - self.offsets[k]

    def flip_of(self, epoch: int, index: int) -> bool:
        k, i = self.part_of(index)
        return self.parts[k].flip_of(epoch, i)

    def sample(self, index: int, flip: bool = False) -> dict:
        """Item ``index`` without its targets, with a label and a mask for every head of the run."""
        k, i = self.part_of(index)
        sample = self.parts[k].sample(i, flip)
        task_of = self._owner[k]
        labels: dict[str, torch.Tensor] = {}
        masks: dict[str, bool] = {}
        for head, kind in self.kinds.items():
            task = task_of.get(head)
            if task is None:
                labels[head], masks[head] = empty_label(kind, self.img_size), False
            else:
                labels[head], masks[head] = sample["labels"][task], sample["masks"][task]
        sample.update(labels=labels, masks=masks, dataset=self.parts[k].dataset.name)
        return sample

    def sampler(self, *, block_size: int = 16, window: int = 4, seed: int = 0, rank: int = 0, world: int = 1,
                shuffle: bool = True) -> MixedSampler:
        """Each dataset's block shuffle (seeded ``seed + 7919 * k``) mixed by the run's ``mix`` strategy."""
        samplers = [p.sampler(block_size=block_size, window=window, seed=seed + 7919 * k, rank=rank, world=world,
                              shuffle=shuffle) for k, p in enumerate(self.parts)]
        probs = mix_probabilities(self.mix, [len(p) for p in self.parts])
        return MixedSampler(samplers, self.offsets, probs, seed=seed, rank=rank)

    def batches(self, batch_size: int, sampler: Sampler, *, start: Position = (0, 0), workers: int = 4,
                prefetch: int = 4, pin_memory: bool = False, drop_last_epoch: bool = False,
                targets: TargetSource | None = None) -> Loader:
        """Endless mixed batches from sampler position ``start`` (see :meth:`CachedTargets.batches`)."""
        return Loader(self, batch_size, sampler, start, workers, prefetch, pin_memory, drop_last_epoch, targets)

    def served(self) -> dict[str, int]:
        """Training items per dataset."""
        return {p.dataset.name: len(p) for p in self.parts}

