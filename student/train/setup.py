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
from ..data.online import OnlineTeachers
from ..data.resident import ResidentTargets, TargetsChoice, choose_targets, gpu_free, mem_available
from ..data.stores import check_input_size, describe, select_stores, teacher_key
from ..model.config import StudentConfig, TaskSpec, TeacherTarget
from ..model.student import SAKStudent
from ..model.weights import RANDOM_INIT, handoff, load_backbone_weights
from ..runs.checkpoint import CheckpointError
from ..runs.config import TrainConfig
from ..runs.rundir import RunDir, init_source
from ..runs.runtime import broadcast, seed_everything

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
    cfg: TrainConfig
    dataset: Any
    stores: list
    keys: tuple[str, ...]
    train: CachedTargets
    val: CachedTargets | None
    student_cfg: StudentConfig
    model: torch.nn.Module
    stats: dict | None
    online: OnlineTeachers | None
    device: torch.device
    start: dict[str, Any] = field(default_factory=dict)  # the starting weights (see start_weights)
    targets_choice: TargetsChoice | None = None  # where the targets live (None: online, or no stores)
    _resident: ResidentTargets | None = None

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
        """The experiment record written to config.json."""
        return {
            "train": self.cfg.to_dict(),
            "student": self.student_cfg.to_dict(),
            "dataset": {"name": self.dataset.name, "root": str(self.dataset.root), "format": self.dataset.format,
                        "splits": self.dataset.splits()},
            "stores": [{"key": k, "name": s.name, "path": str(s.path), "spec_id": s.spec.spec_id,
                        "spec": s.spec.to_dict()} for k, s in zip(self.keys, self.stores, strict=True)],
            "coverage": self.train.coverage.__dict__,
            "start": self.start,
            "targets": self.targets_choice.to_dict() if self.targets_choice is not None else None,
        }


def build_student_config(cfg: TrainConfig, dataset: Any, stores: list, keys: tuple[str, ...],
                         tasks: tuple[str, ...]) -> StudentConfig:
    teachers = [TeacherTarget(name=k, width=s.spec.width, grid=tuple(s.spec.grid)) for k, s in zip(keys, stores, strict=True)]
    task_specs = [TaskSpec(name=t, channels=dataset.task_channels(t)) for t in tasks]
    scfg = StudentConfig.for_backbone(cfg.model.backbone, teachers=teachers, tasks=task_specs,
                                      img_size=cfg.model.img_size, **dict(cfg.model.student or {}))
    for store in stores:
        if len(store.spec.layers) != len(scfg.levels):
            raise SpecMismatch(
                f"store {describe(store)} holds {len(store.spec.layers)} layer maps but the student distills at "
                f"{len(scfg.levels)} levels {list(scfg.levels)}: extract with --layers of {len(scfg.levels)} blocks, "
                f"or give the student {len(store.spec.layers)} levels (student levels=...)"
            )
    return scfg


def _dataset_name(cache: str, name: str | None) -> str:
    if name is not None:
        return name
    names = list_datasets(cache)
    if len(names) != 1:
        raise SakError(f"cache {cache} has datasets {names or 'none'}: pass --dataset NAME"
                       + ("" if names else " after indexing one (sak-cache index)"))
    return names[0]


def _target_stats(keys: tuple[str, ...], stores: list, device: torch.device) -> dict | None:
    """Per-level (mean, var) of every store that has stats for all its layers; None when none has."""
    stats = {}
    for key, store in zip(keys, stores, strict=True):
        st = store.stats()
        if all(st[layer].count > 0 for layer in store.spec.layers):
            stats[key] = [(torch.as_tensor(st[i].mean, dtype=torch.float32, device=device),
                           torch.as_tensor(st[i].var, dtype=torch.float32, device=device))
                          for i in store.spec.layers]
    return stats or None


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


def _train_fit(stores: list) -> str:
    """How training fits an image without a stored view to the input size: as its teachers saw it.

    Under the student protocol extraction centre-pads such an image (official val transform), so the
    student must too; native stores (and sak before issue 12) resize it.
    """
    spec = stores[0].spec if stores else None
    return "pad" if spec is not None and spec.input_protocol == "student" and spec.aug == "none" else "resize"


def prepare(cfg: TrainConfig, *, device: torch.device, rank: int = 0, world: int = 1, resuming: bool = False) -> RunSetup:
    """Resolve defaults, join data and stores, build the student; raises before any training on a mismatch.

    ``resuming``: a checkpoint will overwrite every weight, so the starting weights (``--init`` source or hub
    backbone) are not loaded again (a resume must work offline and after the init run moved).
    """
    data = cfg.data
    name = _dataset_name(data.cache, data.dataset)
    dataset = open_dataset(data.cache, name)
    stores = select_stores(data.cache, dataset, data.teachers, data.train_split, img_size=cfg.model.img_size)
    keys = tuple(teacher_key(s, stores) for s in stores)
    train_tasks = tuple(t for t in dataset.tasks)
    stage = cfg.optim.stage if cfg.optim.stage != "auto" else ("multitask" if train_tasks else "distill")
    if stage == "multitask" and not train_tasks:
        raise ConfigError(f"dataset '{name}' has no labels: train --stage distill")
    out = cfg.checkpoint.out or broadcast(f"runs/{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}", world)
    given = cfg.model.img_size
    img = (given[0], given[1]) if given else infer_img_size(dataset, stores, data.train_split, cfg.model.backbone)
    check_input_size(stores, img, name, data.cache)
    cfg = cfg.with_fields(dataset=name, stage=stage, out=str(out), img_size=img,
                          teachers=tuple(data.teachers) or tuple(s.name for s in stores)).resolved()
    data = cfg.data
    student_cfg = build_student_config(cfg, dataset, stores, keys, train_tasks)

    online = None
    if data.online:
        weights = dict(item.split("=", 1) for item in data.teacher_weights)
        online = OnlineTeachers(stores, keys, device, weights=weights, amp=cfg.runtime.amp != "off")
    seed = cfg.runtime.seed
    train = CachedTargets(dataset, stores, data.train_split, img, feature_flip=data.feature_flip,
                          allow_missing=data.allow_missing, read_targets=not data.online,
                          teacher_preprocess=online.preprocess if online else None, cache_hint=data.cache,
                          tasks=train_tasks, aug=data.aug, seed=seed, fit=_train_fit(stores))
    val = None
    val_split = cfg.eval.val_split
    if val_split is None:
        pass
    elif val_split in dataset.splits():
        val = CachedTargets(dataset, (), val_split, img, tasks=train_tasks, seed=seed,
                            fit="resize" if cfg.eval.eval_resize else "pad")
    elif rank == 0:
        log.warning("dataset '%s' has no '%s' split: no evaluation (splits: %s)", name, val_split, dataset.splits())

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
    model.to(device)
    if rank == 0:
        log.info("%s; teachers %s; student %s at %dx%d; stage %s", train.coverage.summary(), ", ".join(keys),
                 cfg.model.backbone, img[0], img[1], stage)
    return RunSetup(cfg, dataset, stores, keys, train, val, student_cfg, model, stats, online, device, start, choice)


def ranks_per_node(world: int) -> int:
    """Processes on this machine (torchrun's LOCAL_WORLD_SIZE; else all of them): each holds its own resident copy."""
    local = os.environ.get("LOCAL_WORLD_SIZE")
    return int(local) if local and local.isdigit() else world
