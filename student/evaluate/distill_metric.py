"""Distillation metrics on val: how close the student's aligned features are to the teachers' cached targets.

Keys (higher is better, 1 = the target's direction in every token):

* ``distill/<teacher>/level<k>/cosine``: per image, the mean over its tokens of the cosine over
  channels between the student's aligned map and the target, compared exactly as the loss compares
  them (same standardization and grid matching: :func:`sak.student.model.distill.aligned_pairs`);
  then the mean over the images of the split (every image weighs the same, so the value does not
  depend on the batch size);
* ``distill/<teacher>/cosine``: the mean of that teacher's level cosines.

The targets come from the run's stores (in ``--online`` runs too: online mode joins the same stores,
and their stored val targets are what the online teachers compute up to the store's float16
rounding). :func:`eval_splits` builds the val data: the images as the loss saw them (the stores'
views, or the training fit), samples no store holds left out of the distillation metrics (and
logged), never out of the task metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ...manifests.errors import SakError
from ..data.cached import CachedTargets, image_orientation
from ..data.stores import select_stores, teacher_key
from ..model.distill import aligned_pairs, target_stats, token_cosine
from ..runs.rundir import LoadedRun

log = logging.getLogger(__name__)

PREFIX = "distill/"


def metric_key(teacher: str, level: int | None = None) -> str:
    """``distill/<teacher>/level<k>/cosine``, or the teacher's mean over levels ``distill/<teacher>/cosine``."""
    return f"{PREFIX}{teacher}/cosine" if level is None else f"{PREFIX}{teacher}/level{level}/cosine"


def split_key(key: str) -> tuple[str, int | None] | None:
    """(teacher, level or None for the mean) of a distillation metric key; None for any other key.

    A multi-dataset run's ``<dataset>/distill/<teacher>/...`` gives the teacher as ``<dataset>/<teacher>``."""
    dataset, sep, rest = key.partition("/" + PREFIX)
    if sep and "/" not in dataset:
        parsed = split_key(PREFIX + rest)
        return None if parsed is None else (f"{dataset}/{parsed[0]}", parsed[1])
    if not key.startswith(PREFIX) or not key.endswith("/cosine"):
        return None
    middle = key[len(PREFIX) : -len("/cosine")]
    teacher, _, level = middle.rpartition("/")
    if teacher and level.startswith("level") and level[5:].isdigit():
        return teacher, int(level[5:])
    return middle, None


class DistillCosine:
    """Accumulates per-image token-mean cosines per (teacher, level) in float64; :meth:`compute` gives the keys above."""

    def __init__(self, stats: Mapping[str, Sequence[Any]] | None = None, *, resize: str = "larger") -> None:
        self.stats, self.resize = stats, resize
        self.sums: dict[tuple[str, int], torch.Tensor] = {}
        self.counts: dict[tuple[str, int], int] = {}

    def update(self, student_maps: Mapping[str, Sequence[torch.Tensor]],
               teacher_maps: Mapping[str, Sequence[torch.Tensor]]) -> None:
        """Add a batch: ``student_maps`` from ``StudentOutput.distill``, ``teacher_maps`` (B, C, h, w) per level."""
        for name, level, s, t in aligned_pairs(student_maps, teacher_maps, self.stats, resize=self.resize):
            per_image = token_cosine(s, t)
            key = (name, level)
            self.sums[key] = self.sums.get(key, 0) + per_image.sum()
            self.counts[key] = self.counts.get(key, 0) + int(per_image.shape[0])

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        by_teacher: dict[str, list[float]] = {}
        for (name, level), total in sorted(self.sums.items()):
            value = float(total) / self.counts[(name, level)]
            out[metric_key(name, level)] = value
            by_teacher.setdefault(name, []).append(value)
        for name, values in by_teacher.items():
            out[metric_key(name)] = sum(values) / len(values)
        return out


def train_fit(stores: Sequence[Any]) -> str:
    """How training fits an image without a stored view to the input size: as its teachers saw it.

    Under the student protocol extraction centre-pads such an image (official val transform), so the
    student must too; native stores (and sak before issue 12) resize it.
    """
    spec = stores[0].spec if stores else None
    return "pad" if spec is not None and spec.input_protocol == "student" and spec.aug == "none" else "resize"


def eval_splits(dataset: Any, stores: Sequence[Any], split: str, img_size: tuple[int, int], *,
                tasks: Sequence[str], fit: str, eval_fit: str, aug: str = "auto", seed: int = 0,
                cache_hint: str = "./cache") -> tuple[CachedTargets, CachedTargets | None]:
    """``(data, targets)`` to evaluate ``split`` on: ``data`` for the task metrics, ``targets`` for the
    distillation metrics (None: ``data`` carries the targets itself, or no store holds a sample of the split).

    ``fit``: how training fitted images to ``img_size`` (the distillation pass sees them the same way);
    ``eval_fit``: how the task metrics see them. When both agree, the stores hold no augmented views and
    cover the whole split, one pass scores everything (``data`` is joined with the stores).
    """
    def plain() -> CachedTargets:
        return CachedTargets(dataset, (), split, img_size, tasks=tasks, seed=seed, fit=eval_fit)

    if not stores:
        return plain(), None
    one_pass = fit == eval_fit and stores[0].spec.aug == "none" and image_orientation(stores) == "exif"
    try:
        joined = CachedTargets(dataset, stores, split, img_size, tasks=tasks if one_pass else (), aug=aug,
                               allow_missing=True, seed=seed, fit=fit, cache_hint=cache_hint)
    except SakError as exc:  # no sample of the split in some store: score the tasks only
        log.warning("no distillation metrics on %s/%s: %s", dataset.name, split, exc)
        return plain(), None
    cov = joined.coverage
    if cov.covered < cov.samples:
        log.warning("distillation metrics on %s/%s score the %d of %d samples every store holds (%s)", dataset.name,
                    split, cov.covered, cov.samples, cov.summary())
    if one_pass and cov.covered == cov.samples:
        return joined, None
    return plain(), joined


def run_targets(loaded: LoadedRun, split: str, device: torch.device | str, cache: str | None = None
                ) -> tuple[dict[str, CachedTargets], dict[str, CachedTargets], dict | None]:
    """:func:`eval_splits` of every dataset of a trained run (``loaded.datasets``), with its stores (found again
    once, by the names and spec ids in its config.json, in ``cache`` or where the run's data was found) and target
    stats: ``(data by dataset, targets by dataset where the data carries none, stats)``.

    A store that is gone or changed costs the distillation metrics (logged), never the evaluation.
    """
    cfg, record = loaded.cfg, loaded.run.read_record()
    cache = cache or loaded.cache or cfg.data.cache  # where the run's data was found (it may have moved)
    plain = dict(loaded.datasets) or {loaded.data.dataset.name: loaded.data}
    recorded = record.get("stores") or []
    try:
        first = next(iter(plain.values())).dataset
        stores = select_stores(cache, first, [r["name"] for r in recorded], cfg.data.train_split) if recorded else []
    except SakError as exc:
        log.warning("no distillation metrics: the run's stores cannot be opened (%s)", exc)
        return plain, {}, None
    keys = tuple(teacher_key(s, stores) for s in stores)
    changed = [r["name"] for r, s in zip(recorded, stores, strict=True) if r.get("spec_id") != s.spec.spec_id]
    if changed or keys != tuple(loaded.student_cfg.teacher_names):
        log.warning("no distillation metrics: the stores in %s no longer match the run's teachers %s (changed: %s)",
                    cache, list(loaded.student_cfg.teacher_names), changed or list(keys))
        return plain, {}, None
    fit = "resize" if cfg.eval.eval_resize else "pad"
    datas, targets = {}, {}
    for name, data in plain.items():
        datas[name], joined = eval_splits(data.dataset, stores, split, data.img_size, tasks=data.tasks,
                                          fit=train_fit(stores), eval_fit=fit, aug=cfg.data.aug, seed=cfg.runtime.seed,
                                          cache_hint=cache)
        if joined is not None:
            targets[name] = joined
    return datas, targets, target_stats(keys, stores, device) if cfg.data.standardize else None
