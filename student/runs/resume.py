"""Where a run starts: a new run dir, a run's checkpoint (``--resume``), or step 0 of a run killed before its first.

A run dir gets its ``config.json`` before the first step and its checkpoint every ``ckpt_every``
steps, so a run killed in between holds a record but no checkpoint. ``--resume`` starts such a run
again from step 0 with its recorded settings (nothing was kept, so the result is the run that was
asked for, bit for bit); ``--resume`` on a folder without a run record starts the run, so a job
script can always pass ``--resume``. The plain command refuses a folder that holds a run and says
which of the two options to take.

``--resume`` continues the run *as recorded*. An option that would change what it computes (another
teacher or dataset list, backbone, levels, input size, stage, learning rate, an extension, ... any field
outside :data:`RESUME_FREE`) is refused, naming the option and both values, instead of being silently
dropped. The check compares every field the command *gave* with the recorded one, so a field added
later is covered without a change here. What counts as given: the CLI passes the options that were
typed (a default or a recipe's value is not a request); a Python caller's :class:`TrainConfig` gives
every field that differs from its default. A given value that only asks for the default resolution
(``None``, ``"auto"``, ``()``) is no change: the recorded run already resolved it. Free fields follow
the command only when given (``--out RUN --resume`` keeps the run's own ``--iters``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...manifests.errors import ConfigError, SakError
from ...pipeline.data.datasets import open_dataset
from ..data.stores import select_stores
from .checkpoint import Checkpoint
from .config import OWNER, TrainConfig, field_default
from .rundir import RunDir

log = logging.getLogger(__name__)

#: Fields that may differ between a run and its --resume (they do not change what is computed).
RESUME_FREE = ("iters", "log_every", "eval_every", "eval_samples", "ckpt_every", "workers", "prefetch", "device", "out",
               "targets", "targets_budget")


#: How the refusal says what the run did with a field (default: "used").
_VERB = {"teachers": "distills", "dataset": "trains on", "datasets": "trains on"}
_UNRESOLVED: tuple[Any, ...] = (None, "auto", [])  # a default that the run resolves (stage auto, lr None, teachers ())


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples -> lists, as in the record


def given_fields(cfg: TrainConfig) -> dict[str, str]:
    """A Python caller's request: every field that differs from its default (a field without one, the cache,
    always counts), each named by its field name."""
    given = {}
    for key, value in cfg.to_flat().items():
        try:
            default = _json(field_default(key))
        except ConfigError:
            default = object()  # no default: always given
        if value != default:
            given[key] = key
    return given


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return "the default" if value is None else str(value)


def _same_place(a: str, b: str) -> bool:
    return a == b or ("://" not in a and "://" not in b and Path(a).resolve() == Path(b).resolve())


def _same_stores(recorded: TrainConfig, a: list, b: list) -> bool:
    """Two --teacher lists that name the same stores (an alias and a store name) ask for the same run."""
    try:
        cache = recorded.data.cache
        dataset = open_dataset(cache, str(recorded.data.dataset))
        return [s.name for s in select_stores(cache, dataset, a)] == [s.name for s in select_stores(cache, dataset, b)]
    except SakError:
        return False


def changed_options(run: RunDir, recorded: TrainConfig, asked: TrainConfig, given: Mapping[str, str],
                    student: Mapping[str, Any]) -> list[str]:
    """One "OPTION: the run used A, this command asks B" per given field outside RESUME_FREE that differs, in field
    order."""
    rec, ask = recorded.to_flat(), asked.to_flat()
    out = []
    for key in ask:  # in the record's field order, whatever order the options were typed in
        option = given.get(key)
        if option is None or key in RESUME_FREE or key not in OWNER or ask[key] == rec.get(key) or ask[key] in _UNRESOLVED:
            continue
        a, r = ask[key], rec.get(key)
        if key == "student":  # --levels and the StudentConfig fields of a recipe: against the run's student
            for sub, value in a.items():
                was = (r or {}).get(sub, student.get(sub))
                if _json(value) != _json(was):
                    name = option if sub == "levels" else f"student {sub}"
                    out.append(f"{name}: the run used {_show(was)}, this command asks {_show(_json(value))}")
            continue
        if (key == "cache" and _same_place(str(a), str(r))) or (key == "teachers" and _same_stores(recorded, a, r or [])):
            continue
        show = (lambda v: "x".join(map(str, v))) if key == "img_size" and r else _show
        text = f"{option}: the run {_VERB.get(key, 'used')} {show(r)}, this command asks {show(a)}"
        if key == "teachers" and isinstance(r, list) and set(r) <= set(a):
            text += f" (or --init {run.path} --add-teacher {','.join(t for t in a if t not in r)} to extend it)"
        out.append(text)
    return out


def _check_unchanged(run: RunDir, recorded: TrainConfig, asked: TrainConfig, given: Mapping[str, str],
                     student: Mapping[str, Any]) -> None:
    changes = changed_options(run, recorded, asked, given, student)
    if not changes:
        return
    tail = "drop the option to resume" if len(changes) == 1 else "drop those options to resume"
    hint = ""
    for i, text in enumerate(changes):  # the extension hint goes last, after the --out alternative
        if " (or --init " in text:
            changes[i], hint = text.split(" (or --init ", 1)
            hint = " (or --init " + hint
    raise ConfigError(f"--resume continues {run.path} as recorded, but {'; '.join(changes)}: {tail}, "
                      f"or start a new run with --out NEW_DIR{hint}")


def _with_free_fields(recorded: TrainConfig, asked: TrainConfig, given: Mapping[str, str]) -> TrainConfig:
    return recorded.with_fields(**{k: asked.get(k) for k in RESUME_FREE if k in given})


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


def resume_point(cfg: TrainConfig, resume: bool,
                 given: Mapping[str, str] | None = None) -> tuple[TrainConfig, Checkpoint | None]:
    """The config to run and, with ``resume``, the checkpoint to continue from (the run's own settings; given
    :data:`RESUME_FREE` fields follow ``cfg``, any other given field that differs is refused). ``given``: the
    fields the command set, each with the option that set it (``{"teachers": "--teacher"}``); None: every
    field of ``cfg`` that differs from its default (see the module docstring). ``None`` checkpoint: step 0."""
    out = cfg.checkpoint.out
    if not resume:
        if out and RunDir(out).exists():
            raise SakError(refusal(RunDir(out)))
        return cfg, None
    if out is None:
        raise ConfigError("--resume needs --out RUN_DIR: the run to continue")
    run = RunDir(out)
    given = given_fields(cfg) if given is None else given
    if run.checkpoint_file.exists():
        ckpt = run.load_checkpoint()
        recorded = TrainConfig.from_dict(ckpt.record["config"])
        _check_unchanged(run, recorded, cfg, given, ckpt.record.get("student") or {})
        return _with_free_fields(recorded, cfg, given), ckpt
    if not run.exists():
        log.warning("--resume: %s holds no training run yet: starting it from step 0", run.path)
        return cfg, None
    try:
        recorded = run.train_config()
    except (ValueError, KeyError, TypeError) as exc:
        raise SakError(f"{run.config_file} is not a readable run record ({exc}) and the run has no checkpoint: "
                       f"start it again with --out NEW_DIR (or delete {run.path})") from None
    _check_unchanged(run, recorded, cfg, given, run.read_record().get("student") or {})
    log.warning("no checkpoint yet in %s: starting from step 0 with the run's own config", run.path)
    if int(os.environ.get("RANK", "0")) == 0:  # rank 0 owns the run dir
        run.truncate_metrics(0)  # the killed attempt's records are logged again
    return _with_free_fields(recorded, cfg, given), None
