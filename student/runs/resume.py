"""Where a run starts: a new run dir, a run's checkpoint (``--resume``), or step 0 of a run killed before its first.

A run dir gets its ``config.json`` before the first step and its checkpoint every ``ckpt_every``
steps, so a run killed in between holds a record but no checkpoint. ``--resume`` starts such a run
again from step 0 with its recorded settings (nothing was kept, so the result is the run that was
asked for, bit for bit); ``--resume`` on a folder without a run record starts the run, so a job
script can always pass ``--resume``. The plain command refuses a folder that holds a run and says
which of the two options to take.
"""

from __future__ import annotations

import json
import logging
import os

from ...manifests.errors import ConfigError, SakError
from .checkpoint import Checkpoint
from .config import TrainConfig
from .rundir import RunDir

log = logging.getLogger(__name__)

#: Fields that may differ between a run and its --resume (they do not change what is computed).
RESUME_FREE = ("iters", "log_every", "eval_every", "eval_samples", "ckpt_every", "workers", "prefetch", "device", "out",
               "targets", "targets_budget")


def _with_free_fields(recorded: TrainConfig, asked: TrainConfig) -> TrainConfig:
    return recorded.with_fields(**{k: asked.get(k) for k in RESUME_FREE})


def _checkpoint_step(run: RunDir) -> int | None:
    """The step of the run's last checkpoint (from its readable ckpt/last.json), None when it has none."""
    if not run.checkpoint_file.exists():
        return None
    try:
        return int(json.loads((run.ckpt_dir / "last.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1  # a checkpoint whose readable copy is missing: --resume reads the checkpoint itself


def refusal(run: RunDir) -> str:
    """What the plain command says about a folder that already holds a run: the two ways on, by their flags."""
    step = _checkpoint_step(run)
    if step is None:
        state = ("it stopped before its first checkpoint, so it starts again from step 0 with the settings in its "
                 "config.json")
    else:
        state = "from its last checkpoint" + (f", step {step}" if step >= 0 else "")
    return (f"{run.path} already holds a training run: pass --resume to continue it ({state}), "
            f"or --out NEW_DIR to start another run")


def resume_point(cfg: TrainConfig, resume: bool) -> tuple[TrainConfig, Checkpoint | None]:
    """The config to run and, with ``resume``, the checkpoint to continue from (its run's own settings win;
    only :data:`RESUME_FREE` fields follow ``cfg``). ``None``: start at step 0."""
    out = cfg.checkpoint.out
    if not resume:
        if out and RunDir(out).exists():
            raise SakError(refusal(RunDir(out)))
        return cfg, None
    if out is None:
        raise ConfigError("--resume needs --out RUN_DIR: the run to continue")
    run = RunDir(out)
    if run.checkpoint_file.exists():
        ckpt = run.load_checkpoint()
        return _with_free_fields(TrainConfig.from_dict(ckpt.record["config"]), cfg), ckpt
    if not run.exists():
        log.warning("--resume: %s holds no training run yet: starting it from step 0", run.path)
        return cfg, None
    try:
        recorded = run.train_config()
    except (ValueError, KeyError, TypeError) as exc:
        raise SakError(f"{run.config_file} is not a readable run record ({exc}) and the run has no checkpoint: "
                       f"start it again with --out NEW_DIR (or delete {run.path})") from None
    log.warning("no checkpoint yet in %s: starting from step 0 with the run's own config", run.path)
    if int(os.environ.get("RANK", "0")) == 0:  # rank 0 owns the run dir
        run.truncate_metrics(0)  # the killed attempt's records are logged again
    return _with_free_fields(recorded, cfg), None
