"""`fit(cfg)`: train the SAK student from cached teacher targets (or online teachers), resumable exactly.

One step: next batch -> student forward (bf16 autocast on cuda) -> losses -> backward ->
optional grad clip -> AdamW step with the lr of :func:`~sak.student.train.schedule.lr_at`.

Stages: ``distill`` (distillation loss only) and ``multitask`` (task losses + alpha *
distillation). Under ``torchrun`` every rank reads its own blocks of the stores and
gradients are averaged by DistributedDataParallel (gloo on cpu, nccl on cuda).

Run dir ``runs/NAME/``: ``config.json`` (the experiment record), ``metrics.jsonl``
(loss parts per log step), ``eval/step_<k>.json``, ``ckpt/last.safetensors`` + ``.json``,
``plots/loss.png`` and ``plots/predictions.png``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ...manifests.errors import ConfigError, SakError

from .checkpoint import load_checkpoint, restore_rng, save_checkpoint, write_json_atomic
from ..data.cached import Batch
from ..evaluate.evaluator import evaluate_model, write_eval
from .losses import distill_loss_terms, task_losses
from .setup import RunSetup, autocast, prepare, setup_distributed, teardown_distributed
from .schedule import lr_at
from .config import TrainConfig

log = logging.getLogger(__name__)

Progress = Callable[..., None]

#: Fields that may differ between a run and its --resume (they do not change what is computed).
RESUME_FREE = ("iters", "log_every", "eval_every", "eval_samples", "ckpt_every", "workers", "prefetch", "device", "out")


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


def compute_losses(out: Any, batch: Batch, targets: dict[str, list[torch.Tensor]], *, stage: str, alpha: float,
                   stats: dict | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its parts (``distill``, ``distill/<teacher>``, ``task/<name>``, ``total``)."""
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
        tl = task_losses(out.tasks, batch.labels, batch.masks)
        for k, v in tl.items():
            if k != "total":
                parts[f"task/{k}"] = v
        parts["task"] = tl["total"]
        total = tl["total"] if total is None else total + tl["total"]
    if total is None:
        raise ConfigError("nothing to train: the distill stage needs teacher stores (--teachers)")
    parts["total"] = total
    return total, parts


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: Batch, targets: dict[str, list[torch.Tensor]],
               *, cfg: TrainConfig, stats: dict | None, lr: float) -> dict[str, float]:
    """One optimizer step on a batch already on the model's device; returns the loss parts as floats."""
    for g in opt.param_groups:
        g["lr"] = lr
    with autocast(batch.image.device, cfg.amp):
        out = model(batch.image)
        loss, parts = compute_losses(out, batch, targets, stage=cfg.stage, alpha=cfg.alpha, stats=stats)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    return dict(zip(parts, torch.stack([v.detach().float() for v in parts.values()]).tolist()))  # one device sync


def param_checksum(model: torch.nn.Module) -> str:
    """sha256 over every parameter's bytes: equal strings mean bit-identical weights."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for p in model.parameters():
            digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def fit(cfg: TrainConfig, progress: Progress | None = None, *, resume: bool = False) -> RunResult:
    """Train the student as ``cfg`` says; see the module docstring. Returns a :class:`RunResult`."""
    rank, world, device = setup_distributed(cfg.device)
    try:
        return _fit(cfg, progress, resume, rank, world, device)
    finally:
        teardown_distributed()


def _fit(cfg: TrainConfig, progress: Progress | None, resume: bool, rank: int, world: int,
         device: torch.device) -> RunResult:
    t_start = time.perf_counter()
    record = None
    if not resume and cfg.out and (Path(cfg.out) / "config.json").exists():
        raise SakError(f"{cfg.out} already holds a training run: pass --resume to continue it, "
                       "or a new --out (or delete the folder)")
    if resume:
        if cfg.out is None:
            raise ConfigError("--resume needs --out RUN_DIR: the run to continue")
        weights, optim_state, record = load_checkpoint(Path(cfg.out) / "ckpt" / "last.safetensors")
        # the run's own settings win; only what does not change the computation may differ
        cfg = TrainConfig.from_dict({**record["config"], **{k: getattr(cfg, k) for k in RESUME_FREE}})
    setup: RunSetup = prepare(cfg, device=device, rank=rank, world=world)
    cfg = setup.cfg
    run_dir = Path(cfg.out)
    main = rank == 0
    ckpt_dir = run_dir / "ckpt"

    model = setup.model
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    step, position = 0, (0, 0)
    if record is not None:
        model.load_state_dict(weights)
        opt.load_state_dict(optim_state)
        step, position = int(record["step"]), tuple(record["sampler"])  # type: ignore[assignment]
        restore_rng(record)
        if main:
            _truncate_metrics(run_dir / "metrics.jsonl", step)
        log.info("resumed %s at step %d (sampler epoch %d, offset %d)", run_dir, step, *position)
    elif main:
        setup.write_record(run_dir)

    ddp = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=cfg.stage == "distill")
    result = RunResult(run_dir=run_dir, steps=step, coverage=setup.train.coverage.summary())
    if main and setup.val is not None and step == 0 and not resume:
        result.baseline = write_eval(run_dir, 0, evaluate_model(model, setup.val, batch_size=cfg.batch_size,
                                                                device=device, max_samples=cfg.eval_samples))

    sampler = setup.train.sampler(block_size=cfg.block_size, window=cfg.window, seed=cfg.seed, rank=rank, world=world)
    loader = setup.train.batches(cfg.batch_size, sampler, start=position, workers=cfg.workers,
                                 prefetch=cfg.prefetch, pin_memory=device.type == "cuda")
    sched = dict(lr=cfg.lr, total=cfg.iters, schedule=cfg.schedule, warmup=cfg.warmup, min_lr=cfg.min_lr)
    first_step, busy, wait = step, 0.0, 0.0
    metrics_fh = open(run_dir / "metrics.jsonl", "a") if main else None
    try:
        while step < cfg.iters:
            t0 = time.perf_counter()
            batch = next(loader)
            t_data = time.perf_counter() - t0
            batch = batch.to(device, non_blocking=True)
            lr = lr_at(step, **sched)
            losses = train_step(ddp, opt, batch, setup.targets(batch), cfg=cfg, stats=setup.stats, lr=lr)
            if not math.isfinite(losses["total"]):
                raise ConfigError(f"loss became {losses['total']} at step {step + 1}; lower --lr (now {lr:g})")
            step += 1
            position = batch.position
            wait += t_data
            busy += time.perf_counter() - t0  # evaluation and checkpoints are not training time
            done = step - first_step
            info = {
                "step": step, "total": cfg.iters, "lr": lr, "losses": losses,
                "samples_per_s": done * cfg.batch_size * world / busy, "s_per_step": busy / done,
                "data_wait": wait / busy, "eta_s": (cfg.iters - step) * busy / done,
            }
            result.losses = info["losses"]
            if main and (step % cfg.log_every == 0 or step == cfg.iters or step == first_step + 1):
                metrics_fh.write(json.dumps({k: info[k] for k in ("step", "lr", "losses", "samples_per_s",
                                                                  "s_per_step", "data_wait")}) + "\n")
                metrics_fh.flush()
            if main and setup.val is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.iters:
                result.metrics = write_eval(run_dir, step, evaluate_model(
                    model, setup.val, batch_size=cfg.batch_size, device=device, max_samples=cfg.eval_samples))
            if main and (step == cfg.iters or (cfg.ckpt_every and step % cfg.ckpt_every == 0)):
                save_checkpoint(ckpt_dir, model=model.state_dict(), optimizer=opt.state_dict(),
                                record={"step": step, "sampler": list(position), "config": cfg.to_dict(),
                                        "student": setup.student_cfg.to_dict()})
            if progress is not None and main:
                progress(1, **info)  # after the checkpoint: a stop here loses nothing
    finally:
        loader.close()
        if metrics_fh is not None:
            metrics_fh.close()
    done = step - first_step
    result.steps = step
    if done:
        result.samples_per_s = done * cfg.batch_size * world / busy
        result.s_per_step, result.data_wait = busy / done, wait / busy
    result.param_checksums = _gather_checksums(model, world)
    if main:
        if setup.val is not None:
            result.metrics = write_eval(run_dir, step, evaluate_model(
                model, setup.val, batch_size=cfg.batch_size, device=device, max_samples=cfg.eval_samples))
            setup.plot(run_dir, model)
        if not result.baseline:
            result.baseline = _read_json(run_dir / "eval" / "step_0.json").get("metrics", {})
        _write_summary(run_dir, result)
    result.seconds = time.perf_counter() - t_start
    return result


def _gather_checksums(model: torch.nn.Module, world: int) -> list[str]:
    mine = param_checksum(model)
    if world == 1:
        return [mine]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, mine)
    return [str(v) for v in out]


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics.jsonl records after the checkpoint's step (they will be logged again)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _write_summary(run_dir: Path, result: RunResult) -> None:
    write_json_atomic(run_dir / "summary.json", {k: str(v) if isinstance(v, Path) else v for k, v in result.__dict__.items()})
