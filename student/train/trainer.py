"""`fit(cfg)`: train the SAK student from cached teacher targets (or online teachers), resumable exactly.

One step: next batch -> student forward (bf16 autocast on cuda) -> losses -> backward ->
optional grad clip -> AdamW step with the lr of :func:`~sak.student.train.schedule.lr_at`.

Stages: ``distill`` (distillation loss only) and ``multitask`` (task losses + alpha *
distillation). Under ``torchrun`` every rank reads its own blocks of the stores and
gradients are averaged by DistributedDataParallel (gloo on cpu, nccl on cuda).

The loop is assembled from the parts in :mod:`.parts` (optimizer, loader, checkpointer,
metrics logger, evaluator); the run dir and its layout belong to
:class:`~sak.student.runs.rundir.RunDir`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import logging.handlers
import math
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from ...manifests.errors import ConfigError
from ...pipeline.tasks import get_task
from ..data.cached import Batch
from ..runs.checkpoint import Checkpoint
from ..runs.config import TrainConfig
from ..runs.resume import resume_point
from ..runs.runtime import autocast, gather, setup_distributed, teardown_distributed
from .losses import distill_loss_terms, task_losses
from .parts import Checkpointer, MetricsLogger, PeriodicEvaluator, build_loader, build_optimizer, write_plots
from .schedule import lr_at
from .setup import RunSetup, prepare

log = logging.getLogger(__name__)

Progress = Callable[..., None]


@dataclass
class RunResult:
    """What a finished (or resumed-and-finished) run reports."""

    run_dir: Path
    steps: int
    losses: dict[str, float] = field(default_factory=dict)  # last logged loss parts
    metrics: dict[str, float] = field(default_factory=dict)  # last evaluation
    baseline: dict[str, float] = field(default_factory=dict)  # step-0 (untrained) evaluation
    coverage: str = ""
    seconds: float = 0.0
    samples_per_s: float = 0.0
    s_per_step: float = 0.0
    data_wait: float = 0.0  # fraction of the step time spent waiting for data
    param_checksums: list[str] = field(default_factory=list)  # one per rank (all equal under DDP)


def head_losses(kinds: dict[str, str] | None) -> dict[str, Any]:
    """``task_losses`` keywords for heads named apart from their task (``semseg_pascal``: the semseg loss and
    weight); {} when every head is named as its task."""
    if not kinds or all(head == kind for head, kind in kinds.items()):
        return {}
    return {"weights": {h: get_task(k).loss_weight for h, k in kinds.items()},
            "loss_fns": {h: get_task(k).loss for h, k in kinds.items()}}


def compute_losses(out: Any, batch: Batch, targets: dict[str, list[torch.Tensor]], *, stage: str, alpha: float,
                   stats: dict | None, kinds: dict[str, str] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its parts (``distill``, ``distill/<teacher>``, ``task/<name>``, ``total``).

    ``kinds``: head -> registered task, for heads named apart from their task (multi-dataset runs). Each task
    loss is the mean over the samples labelled for it (``batch.masks``); an unlabelled head gets an exact 0."""
    parts: dict[str, torch.Tensor] = {}
    total = None
    if targets:
        terms = distill_loss_terms(out.distill, targets, stats)
        for key in targets:
            parts[f"distill/{key}"] = torch.stack([v for k, v in terms.items() if k.startswith(f"{key}/")]).sum()
        dist = torch.stack(list(terms.values())).sum()
        parts["distill"] = dist
        total = dist if stage == "distill" else alpha * dist
    if stage == "multitask":
        tl = task_losses(out.tasks, batch.labels, batch.masks, **head_losses(kinds))
        for k, v in tl.items():
            if k != "total":
                parts[f"task/{k}"] = v
        parts["task"] = tl["total"]
        total = tl["total"] if total is None else total + tl["total"]
    if total is None:
        raise ConfigError("nothing to train: the distill stage needs teacher stores (--teacher)")
    parts["total"] = total
    return total, parts


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: Batch, targets: dict[str, list[torch.Tensor]],
               *, cfg: TrainConfig, stats: dict | None, lr: float, kinds: dict[str, str] | None = None) -> dict[str, float]:
    """One optimizer step on a batch already on the model's device; returns the loss parts as floats."""
    for g in opt.param_groups:
        g["lr"] = lr
    with autocast(batch.image.device, cfg.runtime.amp):
        out = model(batch.image)
        loss, parts = compute_losses(out, batch, targets, stage=cfg.optim.stage, alpha=cfg.optim.alpha, stats=stats,
                                     kinds=kinds)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.optim.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    opt.step()
    return dict(zip(parts, torch.stack([v.detach().float() for v in parts.values()]).tolist(), strict=True))  # one device sync


def sync_batchnorm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The heads' BatchNorm as SyncBatchNorm, as official under DDP (train_s2.py:243); cuda only (torch has no cpu
    SyncBatchNorm), so gloo/cpu runs keep per-rank statistics and say so."""
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    if device.type != "cuda":
        log.warning("sync_bn: SyncBatchNorm needs cuda; on %s each rank keeps its own BatchNorm statistics", device)
        return model
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def param_checksum(model: torch.nn.Module) -> str:
    """sha256 over every parameter's bytes: equal strings mean bit-identical weights."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for p in model.parameters():
            digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def fit(cfg: TrainConfig, progress: Progress | None = None, *, resume: bool = False,
        given: Mapping[str, str] | None = None) -> RunResult:
    """Train the student as ``cfg`` says; see the module docstring. Returns a :class:`RunResult`.

    ``given``: with ``resume``, the fields the command set and their options (see :func:`resume_point`).
    SIGINT / SIGTERM during the steps: the current step finishes, a checkpoint is written and
    :class:`TrainingInterrupted` is raised (``fit(cfg, resume=True)`` continues bit for bit); a second
    signal aborts at once (KeyboardInterrupt, the last periodic checkpoint is kept).
    """
    rank, world, device = setup_distributed(cfg.runtime.device)
    early = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)  # until run.log exists
    if rank == 0:
        logging.getLogger("sak").addHandler(early)
    try:
        return _fit(cfg, progress, resume, rank, world, device, early, given)
    finally:
        logging.getLogger("sak").removeHandler(early)
        early.close()
        teardown_distributed()


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after a finished step whose checkpoint was written."""

    def __init__(self, run_dir: Path, step: int, signal_name: str, cfg: TrainConfig) -> None:
        super().__init__(f"{signal_name}: training stopped after step {step}; checkpoint {run_dir}/ckpt/last.safetensors "
                         f"holds it; continue with fit(cfg, resume=True) (sak-train fit --out {run_dir} --resume)")
        self.run_dir, self.step, self.signal_name, self.cfg = run_dir, step, signal_name, cfg


class StopRequest:
    """SIGINT/SIGTERM -> a flag the loop reads after each step; the second signal raises KeyboardInterrupt at once.

    Installed only in the main thread (Python delivers signals there); under DDP the flag is combined over the
    ranks every step, so every rank stops after the same step.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, world: int, device: torch.device) -> None:
        self.world, self.device, self.name = world, device, ""
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.name:  # the second signal: abort now
            raise KeyboardInterrupt
        self.name = signal.Signals(signum).name
        log.warning("%s: finishing the current step, then writing a checkpoint (send it again to abort at once)",
                    self.name)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)

    def requested(self) -> bool:
        if self.world == 1:
            return bool(self.name)
        flag = torch.tensor([1.0 if self.name else 0.0], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() and not self.name:
            self.name = "SIGINT"  # another rank's signal
        return bool(flag.item())


def _fit(cfg: TrainConfig, progress: Progress | None, resume: bool, rank: int, world: int,
         device: torch.device, early: logging.handlers.MemoryHandler,
         given: Mapping[str, str] | None = None) -> RunResult:
    t_start, main = time.perf_counter(), rank == 0
    cfg, ckpt = resume_point(cfg, resume, given)
    setup = prepare(cfg, device=device, rank=rank, world=world, resuming=ckpt is not None)
    run = setup.run
    with run.logging_to_file(early) if main else contextlib.nullcontext():
        return _train(setup, ckpt, progress, rank, world, device, t_start)


def _train(setup: RunSetup, ckpt: Checkpoint | None, progress: Progress | None, rank: int, world: int,
           device: torch.device, t_start: float) -> RunResult:
    main = rank == 0
    cfg, run, model = setup.cfg, setup.run, setup.model
    if world > 1 and cfg.runtime.sync_bn:
        model = sync_batchnorm(model, device)
    opt = build_optimizer(model, cfg.optim)
    optim = cfg.optim
    if optim.lr is None or optim.schedule is None or optim.warmup is None or optim.min_lr is None \
            or optim.warmup_lr is None:  # prepare() resolves them
        raise ConfigError("the learning rate schedule is not resolved: train with cfg.resolved()")
    sched = partial(lr_at, lr=optim.lr, total=optim.iters, schedule=optim.schedule, warmup=optim.warmup,
                    min_lr=optim.min_lr, warmup_lr=optim.warmup_lr, style=optim.schedule_style)
    checkpointer = Checkpointer(run, cfg, setup.student_cfg.to_dict(), main=main)
    step, position = checkpointer.restore(ckpt, model, opt) if ckpt else (0, (0, 0))
    if ckpt is None and main:
        run.write_record(setup.record())
    ddp = model if world == 1 else DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=cfg.optim.stage == "distill")
    evaluator = PeriodicEvaluator(run, setup, main=main)
    kinds = {t.name: t.kind or t.name for t in setup.student_cfg.tasks}
    result = RunResult(run_dir=run.path, steps=step, coverage=setup.train.coverage.summary())
    if step == 0 and ckpt is None:  # a fresh run, or --resume of one killed before its first checkpoint
        result.baseline = evaluator.evaluate(0, model)
    loader = build_loader(setup, rank=rank, world=world, start=position)
    meter = MetricsLogger(run, cfg, first_step=step, world=world, main=main)
    try:
        with StopRequest(world, device) as stop:
            while step < cfg.optim.iters:
                t0 = time.perf_counter()
                host = next(loader)
                t_data = time.perf_counter() - t0
                batch = host.to(device, non_blocking=True)
                lr = sched(step)
                losses = train_step(ddp, opt, batch, setup.targets(batch), cfg=cfg, stats=setup.stats, lr=lr,
                                    kinds=kinds)
                host.release()  # train_step synchronized (its losses are on the host): the loader may reuse the buffers
                if not math.isfinite(losses["total"]):
                    raise ConfigError(f"loss became {losses['total']} at step {step + 1}; lower --lr (now {lr:g})")
                step, position = step + 1, batch.position
                info = meter.record(step, lr, losses, data_s=t_data, step_s=time.perf_counter() - t0)
                result.losses = losses
                if evaluator.due(step):
                    result.metrics = evaluator.evaluate(step, model)
                checkpointer.maybe_save(step, position, model, opt)
                if progress is not None and main:
                    progress(1, **info, eval=evaluator.latest)  # after the checkpoint: a stop here loses nothing
                if step < cfg.optim.iters and stop.requested():
                    checkpointer.save(step, position, model, opt)
                    log.warning("%s: checkpoint of step %d written to %s", stop.name, step, run.checkpoint_file)
                    raise TrainingInterrupted(run.path, step, stop.name, cfg)
    finally:
        loader.close()
        meter.close()
    result.steps = step
    for key, value in meter.throughput(step).items():
        setattr(result, key, value)
    result.param_checksums = [str(v) for v in gather(param_checksum(model), world)]
    if main:
        if evaluator.active:
            result.metrics = evaluator.evaluate(step, model)
            write_plots(run, model, setup)
        result.baseline = result.baseline or run.read_eval(0)
        result.seconds = time.perf_counter() - t_start
        run.write_summary(result.__dict__)
    result.seconds = result.seconds or time.perf_counter() - t_start
    return result
