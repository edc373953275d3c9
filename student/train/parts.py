"""The parts a :func:`~sak.student.train.trainer.fit` loop is assembled from (torchtitan-style).

* :func:`build_optimizer`: AdamW, weight decay on every parameter (official) or on matrices only;
* :func:`build_loader`: this rank's sampler and batch iterator, from a sampler position;
* :class:`Checkpointer`: restores a resumed run, saves every ``ckpt_every`` steps and at the end;
* :class:`MetricsLogger`: throughput accounting and ``metrics.jsonl`` records;
* :class:`PeriodicEvaluator`: the val metrics at step 0, every ``eval_every`` steps and at the end;
* :func:`write_plots`: the loss curve and a few predictions.

Only rank 0 writes to the run dir; the other ranks get parts that do nothing.
"""

from __future__ import annotations

import json
import logging
from typing import IO, Any

import torch

from ...manifests.errors import ConfigError
from ..data.cached import Loader
from ..data.sampler import Position, parse_position
from ..evaluate.datasets import HeadView, evaluate_datasets
from ..evaluate.evaluator import predictions
from ..evaluate.plots import loss_plot, predictions_plot
from ..runs.checkpoint import Checkpoint, CheckpointError, restore_rng
from ..runs.config import OptimConfig, TrainConfig
from ..runs.rundir import RunDir
from .extend import trainable_parameters
from .setup import RunSetup

log = logging.getLogger(__name__)


def build_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (betas 0.9/0.999, eps 1e-8) with ``weight_decay`` on every parameter (``decay_scope="all"``, official
    ``AdamW(model.parameters())``, train_s1.py:153-157, train_utils.py:20-38) or on matrices only (``"matrices"``).
    Frozen parameters (``requires_grad`` off: an extension's source, see :mod:`.extend`) are left out."""
    if optim.lr is None or optim.weight_decay is None:
        raise ConfigError("build_optimizer needs the resolved optimizer settings: pass cfg.resolved().optim")
    trainable = trainable_parameters(model)  # frozen parts (an extension's source) stay out of the optimizer
    if optim.decay_scope == "all":
        return torch.optim.AdamW([p for _, p in trainable], lr=optim.lr, weight_decay=optim.weight_decay)
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in trainable:
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": optim.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=optim.lr)


def build_loader(setup: RunSetup, *, rank: int, world: int, start: Position) -> Loader:
    """This rank's training batches from sampler position ``start`` (close() it when done)."""
    cfg = setup.cfg
    loader = cfg.loader
    sampler = setup.train.sampler(block_size=loader.block_size, window=loader.window, seed=cfg.runtime.seed,
                                  rank=rank, world=world)
    return setup.train.batches(loader.batch_size, sampler, start=start, workers=loader.workers,
                               prefetch=loader.prefetch, pin_memory=setup.device.type == "cuda",
                               targets=setup.target_source(world))


class Checkpointer:
    """Saves the model, optimizer, RNG and sampler position to the run dir; puts them back on resume."""

    def __init__(self, run: RunDir, cfg: TrainConfig, student: dict[str, Any], *, main: bool) -> None:
        self.run, self.cfg, self.student, self.main = run, cfg, student, main

    def restore(self, ckpt: Checkpoint, model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[int, Position]:
        """Load a checkpoint into ``model`` and ``opt``, restore the RNGs; returns (step, sampler position)."""
        if ckpt.optimizer is None:
            raise CheckpointError(f"{self.run.checkpoint_file} holds no optimizer state, so the run cannot resume "
                                  f"from it; start a new run from its weights with --init {self.run.path}")
        model.load_state_dict(ckpt.weights)
        opt.load_state_dict(ckpt.optimizer)
        step, position = int(ckpt.record["step"]), parse_position(ckpt.record["sampler"])
        restore_rng(ckpt.record)
        if self.main:
            self.run.truncate_metrics(step)  # the records after the checkpoint are logged again
        log.info("resumed %s at step %d (sampler epoch %d, offset %d)", self.run.path, step, position[0], position[1])
        return step, position

    def maybe_save(self, step: int, position: Position, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        every, last = self.cfg.checkpoint.ckpt_every, self.cfg.optim.iters
        if step == last or (every and step % every == 0):
            self.save(step, position, model, opt)

    def save(self, step: int, position: Position, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        """Write the checkpoint of ``step`` now (rank 0; e.g. on SIGINT)."""
        if self.main:
            self.run.save_checkpoint(model=model.state_dict(), optimizer=opt.state_dict(),
                                     record={"step": step, "sampler": _plain(position), "config": self.cfg.to_dict(),
                                             "student": self.student})


def _plain(position: Position) -> list:
    """A sampler position as JSON lists (``[epoch, offset]``, mixed runs ``[epoch, offset, [[e, o], ...]]``)."""
    return [list(map(list, v)) if isinstance(v, tuple) else v for v in position]


class MetricsLogger:
    """Training time and data wait per step; a metrics.jsonl record every ``log_every`` steps (rank 0)."""

    FIELDS = ("step", "lr", "losses", "samples_per_s", "s_per_step", "data_wait")

    def __init__(self, run: RunDir, cfg: TrainConfig, *, first_step: int, world: int, main: bool) -> None:
        self.every, self.total = cfg.runtime.log_every, cfg.optim.iters
        self.samples_per_step = cfg.loader.batch_size * world
        self.first_step, self.busy, self.wait = first_step, 0.0, 0.0
        self.file: IO[str] | None = run.open_metrics() if main else None

    def record(self, step: int, lr: float, losses: dict[str, float], *, data_s: float, step_s: float) -> dict[str, Any]:
        """Account one step (evaluation and checkpoints are not training time); returns the progress info."""
        self.wait += data_s
        self.busy += step_s
        done = step - self.first_step
        info = {
            "step": step, "total": self.total, "lr": lr, "losses": losses,
            "samples_per_s": done * self.samples_per_step / self.busy, "s_per_step": self.busy / done,
            "data_wait": self.wait / self.busy, "eta_s": (self.total - step) * self.busy / done,
        }
        if self.file is not None and (step % self.every == 0 or step == self.total or step == self.first_step + 1):
            self.file.write(json.dumps({k: info[k] for k in self.FIELDS}) + "\n")
            self.file.flush()
        return info

    def throughput(self, step: int) -> dict[str, float]:
        """samples_per_s, s_per_step and data_wait over the steps of this process ({} when it ran none)."""
        done = step - self.first_step
        if not done:
            return {}
        return {"samples_per_s": done * self.samples_per_step / self.busy, "s_per_step": self.busy / done,
                "data_wait": self.wait / self.busy}

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class PeriodicEvaluator:
    """Scores the student on the val split and writes ``eval/step_<k>.json`` (rank 0, when there is a val split).

    Task metrics and the distillation cosines per teacher and level (:mod:`sak.student.evaluate.distill_metric`,
    against the stores' val targets, standardized as the loss does); several datasets: each dataset's val split
    with its own tasks, keys ``<dataset>/<task>/<metric>`` and ``<dataset>/distill/...``. :attr:`latest` is the
    last evaluation (``{"step", "metrics"}``), for a live view.
    """

    def __init__(self, run: RunDir, setup: RunSetup, *, main: bool) -> None:
        self.run, self.val, self.device = run, setup.val, setup.device
        self.vals, self.heads = setup.vals, setup.heads
        self.targets, self.stats = setup.vals_targets, setup.stats
        cfg = setup.cfg
        self.every, self.total = cfg.eval.eval_every, cfg.optim.iters
        self.batch_size, self.max_samples, self.miou = cfg.loader.batch_size, cfg.eval.eval_samples, cfg.eval.miou
        self.amp = cfg.runtime.amp
        self.active = main and bool(self.vals)
        self.latest: dict[str, Any] = {}

    def evaluate(self, step: int, model: torch.nn.Module) -> dict[str, float]:
        """The metrics after ``step`` ({} when this rank does not evaluate)."""
        if not self.active:
            return {}
        metrics = evaluate_datasets(model, self.vals, self.heads, batch_size=self.batch_size, device=self.device,
                                    max_samples=self.max_samples, miou=self.miou,
                                    amp="bf16" if self.amp == "bf16" else "off",  # float32 unless bf16 is asked for
                                    targets=self.targets, stats=self.stats)
        self.latest = {"step": step, "metrics": metrics}
        return self.run.write_eval(step, metrics)

    def due(self, step: int) -> bool:
        """An evaluation inside the run (the last step's is :meth:`evaluate` after the loop)."""
        return self.active and bool(self.every) and step % self.every == 0 and step < self.total


def write_plots(run: RunDir, model: torch.nn.Module, setup: RunSetup) -> None:
    """plots/loss.png from metrics.jsonl and plots/predictions.png of the first val samples (of the first dataset
    with a val split: ``predictions.png``; the others: ``predictions_<dataset>.png``)."""
    loss_plot(run.read_metrics(), run.plot_file("loss"))
    for k, (name, val) in enumerate(setup.vals.items()):
        if len(val):
            view = HeadView(model, setup.heads[name]) if setup.multi else model
            predictions_plot(predictions(view, val, n=4, device=setup.device),
                             run.plot_file("predictions" if k == 0 else f"predictions_{name}"))
