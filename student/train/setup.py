"""Everything a run needs before its first step: dataset, stores, student config, model, target stats.

:func:`prepare` turns a :class:`TrainConfig` into a :class:`RunSetup` and refuses every
mismatch before training (no store, wrong levels, missing samples, ...). The process side
(devices, ranks, autocast) is :mod:`sak.student.runs.runtime`; the run directory is
:class:`~sak.student.runs.rundir.RunDir`.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from ...manifests.errors import ConfigError, SakError, SpecMismatch, StoreCorrupt
from ...pipeline.data.datasets import list_datasets, open_dataset
from ..data import views
from ..data.cached import CachedTargets
from ..data.mixed import Heads, MixedTargets, assign_heads, head_kinds
from ..data.online import OnlineTeachers
from ..data.resident import ResidentTargets, TargetsChoice, choose_targets, gpu_free, mem_available
from ..data.stores import check_input_size, describe, select_stores, teacher_key
from ..evaluate.distill_metric import eval_splits
from ..evaluate.distill_metric import train_fit as _train_fit
from ..model.config import StudentConfig, TaskSpec, TeacherTarget
from ..model.distill import target_stats as _target_stats  # the val metric standardizes as training does
from ..model.student import SAKStudent
from ..model.weights import RANDOM_INIT, handoff, load_backbone_weights
from ..runs.checkpoint import CheckpointError
from ..runs.config import TrainConfig
from ..runs.rundir import RunDir, init_source
from ..runs.runtime import broadcast, seed_everything
from .extend import is_extension, prepare_extension, run_student_config, with_source

log = logging.getLogger(__name__)


def patch_size(backbone: str) -> int:
    m = re.search(r"patch(\d+)", backbone)
    return int(m.group(1)) if m else 16


def infer_img_size(dataset: Any, stores: list, split: str, backbone: str) -> tuple[int, int]:
    """The student input the stores were extracted for (student protocol), else the stored views' size
    (augmented stores), else the split's most common image size; a patch multiple."""
    fed = [tuple(s.spec.img_size) for s in stores if s.spec.input_protocol == "student"]
    if fed:
        return fed[0][0], fed[0][1]
    if stores and stores[0].spec.aug != "none":
        view = views.parse(stores[0].commits().column("view_params")[0].as_py())
        if view is None:
            raise StoreCorrupt(f"store {describe(stores[0])} is augmented but its first row records no view; "
                               "extract it again")
        h, w = view.out_hw
    else:
        sizes = Counter((r["height"], r["width"]) for r in dataset.ok_rows() if r["split"] == split)
        (h, w), _ = sizes.most_common(1)[0]
    p = patch_size(backbone)
    return max(p, round(h / p) * p), max(p, round(w / p) * p)


@dataclass
class RunSetup:
    """What :func:`prepare` resolved. Several datasets: ``dataset`` and ``val`` are the first one's, ``datasets``
    and ``vals`` all of them, ``train`` a :class:`MixedTargets`, ``heads`` each dataset's task -> head."""

    cfg: TrainConfig
    dataset: Any
    stores: list
    keys: tuple[str, ...]
    train: CachedTargets | MixedTargets
    val: CachedTargets | None
    student_cfg: StudentConfig
    model: torch.nn.Module
    stats: dict | None
    online: OnlineTeachers | None
    device: torch.device
    start: dict[str, Any] = field(default_factory=dict)  # the starting weights (see start_weights)
    targets_choice: TargetsChoice | None = None  # where the targets live (None: online, or no stores)
    datasets: list = field(default_factory=list)  # every dataset of the run (the first is ``dataset``)
    vals: dict[str, CachedTargets] = field(default_factory=dict)  # dataset name -> its val split
    heads: Heads = field(default_factory=dict)  # dataset name -> {task: student head}
    vals_targets: dict[str, CachedTargets] = field(default_factory=dict)  # dataset name -> its val split joined
    # with the stores, for the distillation metrics, where ``vals[name]`` itself carries no targets
    _resident: ResidentTargets | None = None

    @property
    def val_targets(self) -> CachedTargets | None:
        """The first dataset's entry of :attr:`vals_targets` (None: its val carries the targets, or none)."""
        return self.vals_targets.get(self.dataset.name)

    @property
    def multi(self) -> bool:
        """True when the run trains on several datasets (metric keys then start with the dataset name)."""
        return len(self.datasets) > 1

    def target_source(self, world: int = 1) -> ResidentTargets | None:
        """The resident targets of ``targets_choice`` (loaded on first use), or None: read them per batch."""
        choice = self.targets_choice
        if choice is None or choice.mode == "stream":
            return None
        if self._resident is None:
            loader = self.cfg.loader
            self._resident = ResidentTargets(self.train, self.device if choice.mode == "gpu" else "cpu",
                                             loader.batch_size, workers=loader.workers,
                                             ring=loader.workers + loader.prefetch + 3)
        return self._resident

    @property
    def run(self) -> RunDir:
        out = self.cfg.checkpoint.out
        if out is None:  # prepare() always sets it
            raise ConfigError("RunSetup.cfg has no checkpoint.out: build the setup with prepare()")
        return RunDir(out)

    def targets(self, batch: Any) -> dict[str, list[torch.Tensor]]:
        """Teacher targets of a batch: read from the stores, or computed by the online teachers."""
        return self.online(batch) if self.online is not None else batch.decoded_targets()

    def record(self) -> dict[str, Any]:
        """The experiment record written to config.json (``dataset`` and ``coverage``: the first dataset's, as
        before ``datasets`` existed)."""
        parts = self.train.parts if isinstance(self.train, MixedTargets) else [self.train]
        first = parts[0].coverage.__dict__
        return {
            "train": self.cfg.to_dict(),
            "student": self.student_cfg.to_dict(),
            "dataset": _dataset_record(self.dataset),
            "datasets": [{**_dataset_record(p.dataset), "tasks": self.heads.get(p.dataset.name, {}),
                          "coverage": {**p.coverage.__dict__, "teachers": {k: len(p) for k in self.keys}}}
                         for p in parts],
            "mix": self.cfg.data.mix if len(parts) > 1 else None,
            "stores": [{"key": k, "name": s.name, "path": str(s.path), "spec_id": s.spec.spec_id,
                        "spec": s.spec.to_dict()} for k, s in zip(self.keys, self.stores, strict=True)],
            "coverage": first,
            "start": self.start,
            "targets": self.targets_choice.to_dict() if self.targets_choice is not None else None,
        }


def _dataset_record(dataset: Any) -> dict[str, Any]:
    return {"name": dataset.name, "root": str(dataset.root), "format": dataset.format, "splits": dataset.splits()}


def build_student_config(cfg: TrainConfig, datasets: list, stores: list, keys: tuple[str, ...],
                         heads: Heads) -> StudentConfig:
    """The student of the run: an adapter path per store, a head per entry of ``heads`` (see :func:`assign_heads`)."""
    teachers = [TeacherTarget(name=k, width=s.spec.width, grid=tuple(s.spec.grid)) for k, s in zip(keys, stores, strict=True)]
    channels = {head: ds.task_channels(task) for ds in datasets for task, head in heads[ds.name].items()}
    task_specs = [TaskSpec(name=head, channels=channels[head], kind=None if head == kind else kind)
                  for head, kind in head_kinds(heads).items()]
    scfg = StudentConfig.for_backbone(cfg.model.backbone, teachers=teachers, tasks=task_specs,
                                      img_size=cfg.model.img_size, **dict(cfg.model.student or {}))
    for store in stores:
        if len(store.spec.layers) != len(scfg.levels):
            raise SpecMismatch(
                f"store {describe(store)} holds {len(store.spec.layers)} layer maps but the student distills at "
                f"{len(scfg.levels)} levels {list(scfg.levels)}: extract with --layers of {len(scfg.levels)} blocks, "
                f"or give the student {len(store.spec.layers)} levels (--levels)"
            )
    return scfg


def _dataset_names(cache: str, names: tuple[str, ...]) -> tuple[str, ...]:
    if names:
        return names
    found = list_datasets(cache)
    if len(found) != 1:
        raise SakError(f"cache {cache} has datasets {found or 'none'}: pass --dataset NAME (repeat it to train on "
                       "several)" + ("" if found else " after indexing one (sak-cache index)"))
    return (found[0],)


def _select_stores(cache: str, datasets: list, refs: tuple[str, ...], split: str, *,
                   img_size: tuple[int, int] | None = None) -> list:
    """The run's stores: those named, else every store covering any of the datasets (in catalog order).

    Every store must then hold every dataset's samples: the join refuses a gap and names its extract command."""
    if refs or len(datasets) == 1:
        return select_stores(cache, datasets[0], refs, split, img_size=img_size)
    chosen: dict[str, Any] = {}
    for ds in datasets:
        try:
            found = select_stores(cache, ds, (), split, img_size=img_size)
        except SakError:
            if ds is datasets[-1] and not chosen:
                raise
            continue
        for s in found:
            chosen.setdefault(s.name, s)
    return list(chosen.values())


def start_weights(model: SAKStudent, cfg: TrainConfig, *, main: bool) -> dict[str, Any]:
    """Put the run's starting weights into ``model``: the --init hand-off, else the backbone weights; returns
    what was loaded, for the run record (``backbone_weights``: ``hub:...``, ``file:<sha256>`` or ``random-init``)."""
    init, weights = cfg.model.init, cfg.model.backbone_weights
    if init:
        try:
            state, source_teachers = init_source(init)
        except CheckpointError as exc:
            raise CheckpointError(f"--init {init}: {exc}") from None
        report = handoff(model, state, source_teachers, teachers=model.cfg.teacher_names, source=init)
        if main:
            log.info("--init %s: %s", init, report.summary())
            if weights != "none":
                log.info("--init gives the backbone its weights; --backbone-weights %s is not loaded", weights)
        return {"init": init, "init_loaded": report.loaded, "init_kept": report.kept, "init_pos_embed": report.resampled}
    weights_id = load_backbone_weights(model.vit, weights, model.cfg.backbone)
    if weights_id == RANDOM_INIT and main:
        log.warning("the student backbone %s starts from RANDOM weights (--backbone-weights none): fine for tests and "
                    "demos, not the paper's student, which starts from ImageNet-21k->1k weights "
                    "(--backbone-weights hub or FILE.safetensors)", model.cfg.backbone)
    return {"backbone_weights": weights_id}


def prepare(cfg: TrainConfig, *, device: torch.device, rank: int = 0, world: int = 1, resuming: bool = False) -> RunSetup:
    """Resolve defaults, join data and stores, build the student; raises before any training on a mismatch.

    ``resuming``: a checkpoint will overwrite every weight, so the starting weights (``--init`` source or hub
    backbone) are not loaded again (a resume must work offline and after the init run moved).
    """
    extending = is_extension(cfg.model)  # --init RUN --add-teacher/--add-task (see .extend)
    if extending and not resuming:
        cfg = with_source(cfg)
    data = cfg.data
    names = _dataset_names(data.cache, data.names)
    datasets = [open_dataset(data.cache, n) for n in names]
    dataset, name = datasets[0], names[0]
    stores = _select_stores(data.cache, datasets, data.teachers, data.train_split, img_size=cfg.model.img_size)
    keys = tuple(teacher_key(s, stores) for s in stores)
    heads = assign_heads(datasets)
    train_tasks = tuple(head_kinds(heads))
    stage = cfg.optim.stage if cfg.optim.stage != "auto" else ("multitask" if train_tasks else "distill")
    if stage == "multitask" and not train_tasks:
        which = f"dataset '{name}' has" if len(names) == 1 else f"datasets {', '.join(names)} have"
        raise ConfigError(f"{which} no labels: train --stage distill")
    out = cfg.checkpoint.out or broadcast(f"runs/{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}", world)
    given = cfg.model.img_size
    img = (given[0], given[1]) if given else infer_img_size(dataset, stores, data.train_split, cfg.model.backbone)
    for n in names:
        check_input_size(stores, img, n, data.cache)
    cfg = cfg.with_fields(dataset=name, datasets=names, stage=stage, out=str(out), img_size=img,
                          teachers=tuple(data.teachers) or tuple(s.name for s in stores)).resolved()
    data = cfg.data
    if extending:  # resuming: the checkpoint's student is the one recorded
        if len(datasets) > 1:
            raise ConfigError(f"--init {cfg.model.init} with --add-teacher/--add-task trains on one dataset, got "
                              f"{', '.join(names)}: extend on one (-d NAME); a multi-dataset extension is not supported")
        student_cfg = RunDir(str(out)).student_config() if resuming else run_student_config(cfg, dataset, stores, keys)
        # the dataset's tasks the student has a head for, with the head's channels (an old 40-class NYUD semseg
        # head is not trained or scored on 21-class PASCAL labels)
        channels = {t.name: t.channels for t in student_cfg.tasks}
        heads = {name: {t: h for t, h in heads[name].items() if channels.get(h) == dataset.task_channels(t)}}
        train_tasks = tuple(head_kinds(heads))
    else:
        student_cfg = build_student_config(cfg, datasets, stores, keys, heads)

    online = None
    if data.online:
        weights = dict(item.split("=", 1) for item in data.teacher_weights)
        online = OnlineTeachers(stores, keys, device, weights=weights, amp=cfg.runtime.amp != "off")
    seed = cfg.runtime.seed
    parts = [CachedTargets(ds, stores, data.train_split, img, feature_flip=data.feature_flip,
                           allow_missing=data.allow_missing, read_targets=not data.online,
                           teacher_preprocess=online.preprocess if online else None, cache_hint=data.cache,
                           tasks=tuple(heads[ds.name]), aug=data.aug, seed=seed, fit=_train_fit(stores))
             for ds in datasets]
    train = parts[0] if len(parts) == 1 else MixedTargets(parts, heads, mix=data.mix)
    vals, val_targets = {}, {}
    for ds in datasets:
        val, targets = val_data(cfg, ds, stores, img, tuple(heads[ds.name]), main=rank == 0)
        if val is not None:
            vals[ds.name] = val
        if targets is not None:
            val_targets[ds.name] = targets

    stats = _target_stats(keys, stores, device) if data.standardize else None
    choice = None
    if train.read_targets:
        choice = choose_targets(cfg.loader.targets, train.target_bytes(), device=device, gpu_free_bytes=gpu_free(device),
                                ram_available=mem_available(), budget_gb=cfg.loader.targets_budget,
                                ranks_per_node=ranks_per_node(world))
        if rank == 0:
            log.info("targets: %s (%s)", choice.mode, choice.reason)
    seed_everything(seed)
    model = SAKStudent(student_cfg)
    start = {"resumed": True} if resuming else start_weights(model, cfg, main=rank == 0)
    if extending:
        start = prepare_extension(model, cfg, start)
    model.to(device)
    if rank == 0:
        if len(parts) > 1:
            log.info("datasets %s mixed %s; heads %s", ", ".join(names), data.mix,
                     ", ".join(f"{n}: {sorted(heads[n].values())}" for n in names))
        log.info("%s; teachers %s; student %s at %dx%d; stage %s", train.coverage.summary(), ", ".join(keys),
                 cfg.model.backbone, img[0], img[1], stage)
    return RunSetup(cfg, dataset, stores, keys, train, vals.get(name), student_cfg, model, stats, online, device,
                    start, choice, datasets=datasets, vals=vals, heads=heads, vals_targets=val_targets)


def val_data(cfg: TrainConfig, dataset: Any, stores: list, img: tuple[int, int], tasks: tuple[str, ...], *,
             main: bool) -> tuple[CachedTargets | None, CachedTargets | None]:
    """``(val, targets)`` of one dataset: its val split with ``tasks`` (those of its tasks the student has), and that split joined with the stores
    for the distillation metrics when ``val`` does not carry them (:func:`~..evaluate.distill_metric.eval_splits`);
    ``(None, None)``, with a warning, when the dataset has no such split."""
    val_split = cfg.eval.val_split
    if val_split is None:
        return None, None
    if val_split not in dataset.splits():
        if main:
            log.warning("dataset '%s' has no '%s' split: no evaluation (splits: %s)", dataset.name, val_split,
                        dataset.splits())
        return None, None
    return eval_splits(dataset, stores, val_split, img, tasks=tasks, fit=_train_fit(stores),
                       eval_fit="resize" if cfg.eval.eval_resize else "pad", aug=cfg.data.aug, seed=cfg.runtime.seed,
                       cache_hint=cfg.data.cache)


def ranks_per_node(world: int) -> int:
    """Processes on this machine (torchrun's LOCAL_WORLD_SIZE; else all of them): each holds its own resident copy."""
    local = os.environ.get("LOCAL_WORLD_SIZE")
    return int(local) if local and local.isdigit() else world
