"""Everything a run needs before its first step: devices, ranks, data, student, stats, teachers.

:func:`prepare` turns a :class:`TrainConfig` into a :class:`RunSetup` and refuses every
mismatch before training (no store, wrong levels, missing samples, ...). :func:`load_run`
rebuilds a finished run's student and evaluation data from its ``config.json``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...manifests.errors import ConfigError, SakError, SpecMismatch

from .checkpoint import write_json_atomic
from ..data import views
from ..data.cached import CachedTargets
from ..data.stores import describe, select_stores, teacher_key
from .config import TrainConfig

log = logging.getLogger(__name__)

_INITIALIZED_HERE = False


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is visible; use --device cpu")
    return dev


def setup_distributed(device: str = "auto") -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the torchrun process group when WORLD_SIZE > 1."""
    global _INITIALIZED_HERE
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = pick_device(device)
    if world == 1:
        return 0, 1, dev
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        _INITIALIZED_HERE = True
    return dist.get_rank(), dist.get_world_size(), dev


def teardown_distributed() -> None:
    global _INITIALIZED_HERE
    if _INITIALIZED_HERE:
        import torch.distributed as dist

        dist.destroy_process_group()
        _INITIALIZED_HERE = False


def autocast(device: torch.device, amp: str = "auto"):
    """bf16 autocast on cuda (unless ``amp="off"``); nothing on cpu."""
    if device.type == "cuda" and amp != "off":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def patch_size(backbone: str) -> int:
    m = re.search(r"patch(\d+)", backbone)
    return int(m.group(1)) if m else 16


def infer_img_size(dataset: Any, stores: list, split: str, backbone: str) -> tuple[int, int]:
    """The stored views' size (augmented stores), else the split's most common image size; a patch multiple."""
    if stores and stores[0].spec.aug != "none":
        h, w = views.parse(stores[0].commits().column("view_params")[0].as_py()).out_hw
    else:
        sizes = Counter((r["height"], r["width"]) for r in dataset.ok_rows() if r["split"] == split)
        (h, w), _ = sizes.most_common(1)[0]
    p = patch_size(backbone)
    return max(p, round(h / p) * p), max(p, round(w / p) * p)


def _broadcast(value: Any, world: int) -> Any:
    if world == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _load_weights(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    p = Path(path)
    if p.is_dir():
        p = p / "ckpt" / "last.safetensors"
    if not p.exists():
        raise SakError(f"--init {path}: no checkpoint at {p}; pass a run dir or a .safetensors file")
    state = load_file(str(p))
    return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")} or state


@dataclass
class RunSetup:
    cfg: TrainConfig
    dataset: Any
    stores: list
    keys: tuple[str, ...]
    train: CachedTargets
    val: CachedTargets | None
    student_cfg: Any
    model: torch.nn.Module
    stats: dict | None
    online: Any
    device: torch.device

    def targets(self, batch: Any) -> dict[str, list[torch.Tensor]]:
        """Teacher targets of a batch: read from the stores, or computed by the online teachers."""
        return self.online(batch) if self.online is not None else batch.targets

    def record(self) -> dict[str, Any]:
        return {
            "train": self.cfg.to_dict(),
            "student": self.student_cfg.to_dict(),
            "dataset": {"name": self.dataset.name, "root": str(self.dataset.root), "format": self.dataset.format,
                        "splits": self.dataset.splits()},
            "stores": [{"key": k, "name": s.name, "path": str(s.path), "spec_id": s.spec.spec_id,
                        "spec": s.spec.to_dict()} for k, s in zip(self.keys, self.stores)],
            "coverage": self.train.coverage.__dict__,
        }

    def write_record(self, run_dir: Path) -> None:
        write_json_atomic(run_dir / "config.json", self.record())

    def plot(self, run_dir: Path, model: torch.nn.Module) -> None:
        from ..evaluate.evaluator import predictions
        from ..evaluate.plots import loss_plot, predictions_plot

        path = run_dir / "metrics.jsonl"
        records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
        loss_plot(records, run_dir / "plots" / "loss.png")
        if self.val is not None and len(self.val):
            predictions_plot(predictions(model, self.val, n=4, device=self.device), run_dir / "plots" / "predictions.png")


def build_student_config(cfg: TrainConfig, dataset: Any, stores: list, keys: tuple[str, ...], tasks: tuple[str, ...]):
    from ..model.config import StudentConfig, TaskSpec, TeacherTarget

    teachers = [TeacherTarget(name=k, width=s.spec.width, grid=tuple(s.spec.grid)) for k, s in zip(keys, stores)]
    task_specs = [TaskSpec(name=t, channels=dataset.task_channels(t)) for t in tasks]
    scfg = StudentConfig.for_backbone(cfg.backbone, teachers=teachers, tasks=task_specs, img_size=cfg.img_size,
                                      **dict(cfg.student or {}))
    for key, store in zip(keys, stores):
        if len(store.spec.layers) != len(scfg.levels):
            raise SpecMismatch(
                f"store {describe(store)} holds {len(store.spec.layers)} layer maps but the student distills at "
                f"{len(scfg.levels)} levels {list(scfg.levels)}: extract with --layers of {len(scfg.levels)} blocks, "
                f"or give the student {len(store.spec.layers)} levels (student levels=...)"
            )
    return scfg


def prepare(cfg: TrainConfig, *, device: torch.device, rank: int = 0, world: int = 1) -> RunSetup:
    """Resolve defaults, join data and stores, build the student; raises before any training on a mismatch."""
    from ...pipeline.data.datasets import list_datasets, open_dataset

    from ..model.student import SAKStudent

    name = cfg.dataset
    if name is None:
        names = list_datasets(cfg.cache)
        if len(names) != 1:
            raise SakError(f"cache {cfg.cache} has datasets {names or 'none'}: pass --dataset NAME"
                           + ("" if names else " after indexing one (sak-cache index)"))
        name = names[0]
    dataset = open_dataset(cfg.cache, name)
    stores = select_stores(cfg.cache, dataset, cfg.teachers, cfg.train_split)
    keys = tuple(teacher_key(s, stores) for s in stores)
    train_tasks = tuple(t for t in dataset.tasks)
    stage = cfg.stage if cfg.stage != "auto" else ("multitask" if train_tasks else "distill")
    if stage == "multitask" and not train_tasks:
        raise ConfigError(f"dataset '{name}' has no labels: train --stage distill")
    out = cfg.out or _broadcast(f"runs/{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}", world)
    img = tuple(cfg.img_size) if cfg.img_size else infer_img_size(dataset, stores, cfg.train_split, cfg.backbone)
    cfg = replace(cfg, dataset=name, stage=stage, out=str(out), img_size=img,
                  teachers=tuple(cfg.teachers) or tuple(s.name for s in stores)).resolved()
    student_cfg = build_student_config(cfg, dataset, stores, keys, train_tasks)

    online = None
    if cfg.online:
        from ..data.online import OnlineTeachers

        weights = dict(item.split("=", 1) for item in cfg.teacher_weights)
        online = OnlineTeachers(stores, keys, device, weights=weights, amp=cfg.amp != "off")
    common = dict(tasks=train_tasks, aug=cfg.aug, seed=cfg.seed)
    train = CachedTargets(dataset, stores, cfg.train_split, img, feature_flip=cfg.feature_flip,
                          allow_missing=cfg.allow_missing, read_targets=not cfg.online,
                          teacher_preprocess=online.preprocess if online else None, cache_hint=cfg.cache, **common)
    val = None
    if cfg.val_split is None:
        pass
    elif cfg.val_split in dataset.splits():
        val = CachedTargets(dataset, (), cfg.val_split, img, tasks=train_tasks, seed=cfg.seed)
    elif rank == 0:
        log.warning("dataset '%s' has no '%s' split: no evaluation (splits: %s)", name, cfg.val_split, dataset.splits())

    stats = None
    if cfg.standardize:
        stats = {}
        for key, store in zip(keys, stores):
            st = store.stats()
            if all(st[layer].count > 0 for layer in store.spec.layers):
                stats[key] = [(torch.as_tensor(st[i].mean, dtype=torch.float32, device=device),
                               torch.as_tensor(st[i].var, dtype=torch.float32, device=device))
                              for i in store.spec.layers]
        stats = stats or None

    seed_everything(cfg.seed)
    model = SAKStudent(student_cfg)
    if cfg.init:
        try:
            model.load_state_dict(_load_weights(cfg.init))
        except RuntimeError as exc:
            raise SakError(f"--init {cfg.init}: its student does not match this one ({exc}); "
                           "use the same backbone, teachers and tasks") from None
    model.to(device)
    if rank == 0:
        log.info("%s; teachers %s; student %s at %dx%d; stage %s", train.coverage.summary(), ", ".join(keys),
                 cfg.backbone, img[0], img[1], stage)
    return RunSetup(cfg, dataset, stores, keys, train, val, student_cfg, model, stats, online, device)


@dataclass
class LoadedRun:
    cfg: TrainConfig
    student_cfg: Any
    data: CachedTargets

    def build_model(self) -> torch.nn.Module:
        """The student as the run built it at step 0 (same seed, same init)."""
        from ..model.student import SAKStudent

        seed_everything(self.cfg.seed)
        return SAKStudent(self.student_cfg)


def load_run(run_dir: str | os.PathLike[str], split: str = "val") -> LoadedRun:
    from ...pipeline.data.datasets import open_dataset

    from ..model.config import StudentConfig

    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise SakError(f"{run_dir} is not a training run (no config.json); train one with sak-train fit")
    record = json.loads(path.read_text())
    cfg = TrainConfig.from_dict(record["train"])
    scfg = StudentConfig.from_dict(record["student"])
    dataset = open_dataset(cfg.cache, cfg.dataset)
    data = CachedTargets(dataset, (), split, tuple(cfg.img_size), tasks=scfg.task_names, seed=cfg.seed)
    return LoadedRun(cfg, scfg, data)
