"""Continual extension: a trained student plus new teachers and/or tasks, with what it already knows frozen.

``sak-train fit --init RUN --add-teacher sam --add-task parts`` builds the student recorded in ``RUN``
(backbone, levels, input size, widths, teachers, tasks) plus, per added teacher, a new
Teacher-Specific Adapter Path and aligner, and per added task new routers and a head. Every
tensor the source has is loaded from it; the new parts start as a new student's would (seeded
init). By default everything loaded is **frozen**: ``requires_grad`` off, left out of the optimizer
(:func:`trainable_parameters`), and kept in eval mode by :class:`SAKStudent` (BatchNorm statistics do
not move, no gate noise, no drop-path). ``--unfreeze`` trains everything.

**Old tasks stay bit-identical.** A task's routers mix ``("stem", *its teachers)``. Adding a
teacher to every router would change the softmax of the old tasks' gates, so an extension pins each
old task to the teachers it was trained with (``TaskSpec.teachers``; a config without the field
means every teacher, so old configs mean what they meant). The old routers then keep their shape and
weights, every module feeding an old output (backbone, old adapter paths, stem norms, old routers,
old heads) is loaded bit for bit and never updated, and each adapter path only reads the stem, so a
new path changes nothing upstream. In eval mode the old tasks' outputs and the old teachers'
distillation maps are therefore ``torch.equal`` to the source's, before and after training the
extension (tests/student/train/test_extend_fit.py). Other ways were weighed: giving the new expert a
gate logit of -inf in the old routers is exact too but needs special arithmetic in every router and
leaves a dead row that export and the parameter counts would have to know about; per-task experts
are exact by construction and keep a task's router readable on its own. New tasks route over every
teacher, new ones included; with ``--unfreeze`` old tasks keep their experts (their routers were
trained on them) but every weight trains.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ...manifests.errors import ConfigError, SakError
from ..data.stores import describe
from ..model.config import StudentConfig, TaskSpec, TeacherTarget
from ..model.io import CONFIG_KEY
from ..model.student import SAKStudent
from ..runs.checkpoint import META_KEY
from ..runs.config import ModelConfig, TrainConfig, field_default
from ..runs.rundir import RunDir

log = logging.getLogger(__name__)


def is_extension(model: ModelConfig) -> bool:
    """True when the run extends its ``--init`` student (``--add-teacher`` / ``--add-task``)."""
    return bool(model.add_teachers or model.add_tasks)


def source_student(init: str) -> tuple[StudentConfig, tuple[str, ...]]:
    """The ``--init`` source's student config and the store refs its teachers were trained from
    (a run dir's recorded ``--teacher`` list; a file's teacher names)."""
    path = Path(init)
    if path.is_dir():
        run = RunDir(path)
        return run.student_config(), tuple(run.train_config().data.teachers)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise SakError(f"--init {path} is not a readable run dir or safetensors file ({type(exc).__name__}): pass the "
                       "run dir (runs/NAME) of the student to extend") from None
    if META_KEY in meta and "student" in json.loads(meta[META_KEY]):
        record = json.loads(meta[META_KEY])
        cfg = StudentConfig.from_dict(record["student"])
        return cfg, tuple((record.get("config") or {}).get("data", {}).get("teachers") or cfg.teacher_names)
    if CONFIG_KEY in meta:
        cfg = StudentConfig.from_json(meta[CONFIG_KEY])
        return cfg, cfg.teacher_names
    raise SakError(f"--init {path} records no student config, so it cannot be extended: pass the run dir "
                   "(runs/NAME) of the student to extend")


def with_source(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the source's backbone and input size, and its teachers followed by the added ones.

    An option that contradicts the source (another --backbone, --img-size, --levels or --teacher list) is
    refused: the extension is the source's student, grown."""
    model, init = cfg.model, str(cfg.model.init)
    src, refs = source_student(init)
    wrong = []
    if model.backbone not in (src.backbone, field_default("backbone")):
        wrong.append(f"--backbone {model.backbone} (the source's is {src.backbone})")
    if model.img_size is not None and tuple(model.img_size) != tuple(src.img_size):
        wrong.append(f"--img-size {'x'.join(map(str, model.img_size))} (the source's is {'x'.join(map(str, src.img_size))})")
    for key, value in (model.student or {}).items():
        if json.dumps(value, default=list) != json.dumps(getattr(src, key, None), default=list):
            wrong.append(f"student {key}={value} (the source's is {getattr(src, key, None)})")
    teachers = refs + tuple(t for t in model.add_teachers if t not in refs)
    if cfg.data.teachers and tuple(cfg.data.teachers) != teachers:
        wrong.append(f"--teacher {','.join(cfg.data.teachers)} (the extension distills the source's teachers "
                     f"{','.join(refs)} plus --add-teacher)")
    if wrong:
        raise ConfigError(f"--init {init} --add-teacher/--add-task keeps the source's student, but this command asks "
                          f"{'; '.join(wrong)}: drop those options")
    return cfg.with_fields(backbone=src.backbone, img_size=tuple(src.img_size), teachers=teachers)


def extended_config(source: StudentConfig, teachers: Sequence[TeacherTarget] = (),
                    tasks: Sequence[TaskSpec] = ()) -> StudentConfig:
    """``source`` plus ``teachers`` (appended) and ``tasks``; each old task keeps routing over its old teachers."""
    again = [t.name for t in teachers if t.name in source.teacher_names]
    if again:
        raise ConfigError(f"the student already distills {again}: --add-teacher takes teachers it does not have "
                          f"(it has {list(source.teacher_names)})")
    again = [t.name for t in tasks if t.name in source.task_names]
    if again:
        raise ConfigError(f"the student already predicts {again}: --add-task takes tasks it does not have "
                          f"(it has {list(source.task_names)})")
    if not teachers and not tasks:
        raise ConfigError("nothing to add: pass --add-teacher NAME or --add-task NAME")
    pinned = tuple(replace(t, teachers=source.task_teachers(t.name)) for t in source.tasks)
    return replace(source, teachers=source.teachers + tuple(teachers), tasks=pinned + tuple(tasks), pretrained=False)


def run_student_config(cfg: TrainConfig, dataset: Any, stores: list, keys: tuple[str, ...]) -> StudentConfig:
    """The extended student of a fresh run: the ``--init`` source's plus the added teachers' stores and tasks."""
    model = cfg.model
    src, _ = source_student(str(model.init))
    n = len(src.teachers)
    if keys[:n] != src.teacher_names or len(keys) != n + len(model.add_teachers):
        raise ConfigError(
            f"--init {model.init} distills {list(src.teacher_names)}; with --add-teacher {','.join(model.add_teachers)} "
            f"this run's stores are {list(keys)}. Pass teachers it does not have to --add-teacher, each matching one "
            "store (sak-cache ls lists them)"
        )
    missing = [t for t in model.add_tasks if t not in dataset.tasks]
    if missing:
        raise ConfigError(f"--add-task {','.join(missing)}: dataset '{dataset.name}' has no labels for it (its tasks: "
                          f"{', '.join(dataset.tasks) or 'none'}); train the new task on a dataset that has them (--dataset)")
    if cfg.optim.stage == "distill" and not model.add_teachers:
        raise ConfigError("--add-task trains the new head on labels, but --stage distill trains no head: drop "
                          "--stage distill (or pass --stage multitask)")
    for store in stores[n:]:
        if len(store.spec.layers) != len(src.levels):
            raise ConfigError(f"store {describe(store)} holds {len(store.spec.layers)} layer maps but the student "
                              f"distills at {len(src.levels)} levels {list(src.levels)}: extract it with --layers of "
                              f"{len(src.levels)} blocks")
    teachers = [TeacherTarget(name=k, width=s.spec.width, grid=tuple(s.spec.grid))
                for k, s in zip(keys[n:], stores[n:], strict=True)]
    tasks = [TaskSpec(name=t, channels=dataset.task_channels(t)) for t in model.add_tasks]
    return extended_config(src, teachers, tasks)


def new_modules(model: SAKStudent, teachers: Sequence[str], tasks: Sequence[str]) -> list[str]:
    """Module paths of the parts an extension added: the added teachers' paths and aligners, the added tasks'
    routers and heads."""
    cfg = model.cfg
    names = [f"tsap.{cfg.teacher_names.index(t)}" for t in teachers]
    if model.has_distill:
        names += [f"aligners.{cfg.teacher_names.index(t)}" for t in teachers]
    return names + [f"{part}.{t}" for t in tasks for part in ("routers", "heads")]


def frozen_modules(model: SAKStudent, teachers: Sequence[str], tasks: Sequence[str]) -> list[str]:
    """Module paths of everything an extension loaded from its source (all but :func:`new_modules`)."""
    new = set(new_modules(model, teachers, tasks))
    out = []
    for top, module in model.named_children():
        if top in ("tsap", "aligners", "routers", "heads"):
            out += [f"{top}.{name}" for name, _ in module.named_children() if f"{top}.{name}" not in new]
        elif top not in new:
            out.append(top)
    return out


def freeze(model: SAKStudent, modules: Sequence[str]) -> None:
    """Freeze ``modules``: no gradients, and eval mode whatever ``model.train()`` is told."""
    for name in modules:
        for p in model.get_submodule(name).parameters():
            p.requires_grad_(False)
    model.frozen = tuple(modules)
    model.train(model.training)


def trainable_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The (name, parameter) pairs the optimizer updates: those that require gradients."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def readable(path: str, teachers: Sequence[str]) -> str:
    """``tsap.1`` -> ``tsap.sam`` (adapter paths and aligners are stored by position)."""
    top, _, rest = path.partition(".")
    if top in ("tsap", "aligners") and rest.isdigit():
        return f"{top}.{teachers[int(rest)]}"
    return path


def prepare_extension(model: SAKStudent, cfg: TrainConfig, start: dict[str, Any]) -> dict[str, Any]:
    """Freeze an extension's loaded parts (unless ``unfreeze``); returns its run record (config.json ``start``).

    ``start``: what :func:`~sak.student.train.setup.start_weights` loaded ({"resumed": True} on a resume: the
    checkpoint then holds every weight). Refuses a source that left an old part at init."""
    m, scfg = cfg.model, model.cfg
    added = scfg.teacher_names[len(scfg.teachers) - len(m.add_teachers):]
    new = new_modules(model, added, m.add_tasks)
    not_loaded = sorted(set(start.get("init_kept", ())) - {readable(p, scfg.teacher_names) for p in new})
    if not_loaded:
        raise SakError(f"--init {m.init} has no weights for {', '.join(not_loaded)} of the student it records: the "
                       "run dir was changed after training; extend a run whose checkpoint matches its config.json")
    frozen = [] if m.unfreeze else frozen_modules(model, added, m.add_tasks)
    freeze(model, frozen)
    n_frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    n_train = sum(p.numel() for _, p in trainable_parameters(model))
    log.info("extension of %s: + teachers %s, + tasks %s; %s; %d parameters train, %d frozen", m.init, list(added),
             list(m.add_tasks), "everything trains (--unfreeze)" if m.unfreeze else "the source's parts are frozen",
             n_train, n_frozen)
    return {**start, "extension": {
        "source": m.init, "added_teachers": list(added), "added_tasks": list(m.add_tasks), "unfreeze": m.unfreeze,
        "frozen": [readable(p, scfg.teacher_names) for p in frozen],
        "trainable_params": n_train, "frozen_params": n_frozen,
    }}
