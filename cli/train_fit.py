"""`sak-train fit` and plain `sak-train --cache ./cache` (fit with defaults); eval/export live in :mod:`.train_eval`."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer
from rich.live import Live
from rich.markup import escape

from ..student.runs.config import OWNER, TrainConfig  # option defaults are the config's
from ..student.runs.config import field_default as D
from ..student.runs.recipes import get_recipe
from ..student.runs.rundir import RunDir
from ..student.train.trainer import TrainingInterrupted, fit
from .common import (
    EXIT_INTERRUPTED,
    console,
    friendly_errors,
    out,
    parse_hw_option,
    parse_int_list,
    parse_names,
    parse_str_list,
    renamed,
    renamed_options,
    setup_logging,
    version_option,
)
from .train_view import LiveView, metrics_table

#: fields a --resume takes from the command line (student/runs/resume.py RESUME_FREE), by their fit flag
RESUME_FLAGS = {"iters": "--iters", "device": "--device", "workers": "--threads", "eval_every": "--eval-every",
                "eval_samples": "--eval-limit", "log_every": "--log-every", "ckpt_every": "--ckpt-every",
                "targets": "--targets", "targets_budget": "--targets-budget"}


def resume_command(cfg: TrainConfig, run_dir: str | os.PathLike[str]) -> str:
    """The command that continues ``run_dir`` as ``cfg`` ran it: --resume reads everything else from the
    checkpoint, but these fields follow the command line, so each one not at its default is spelled out
    (--iters always: a recipe's count is not the default)."""
    words = ["sak-train", "fit", "--out", shlex.quote(str(run_dir)), "--resume", "--iters", str(cfg.optim.iters)]
    for name, flag in RESUME_FLAGS.items():
        value = cfg.get(name)
        if name != "iters" and value is not None and value != D(name):
            words += [flag, shlex.quote(str(value))]
    return " ".join(words)


def _interrupted(message: str, command: str) -> typer.Exit:
    console.print(f"[yellow]interrupted[/]: {escape(message)}; continue with:", highlight=False, soft_wrap=True)
    out.print(f"  {command}", highlight=False, soft_wrap=True, markup=False)
    return typer.Exit(EXIT_INTERRUPTED)


def _run_fit(cfg: TrainConfig, resume: bool, given: dict[str, str] | None = None) -> None:
    main = int(os.environ.get("RANK", "0")) == 0
    if not main:
        fit(cfg, resume=resume, given=given)
        return
    view = LiveView(cfg.optim.iters)
    try:
        with Live(view, console=console, refresh_per_second=4, transient=False) as live:
            try:
                result = fit(cfg, view, resume=resume, given=given)
            except BaseException:
                live.transient = view.info == {}  # no step finished: leave no empty view above the message
                raise
    except TrainingInterrupted as stop:
        raise _interrupted(f"{stop.signal_name} after step {stop.step}; its checkpoint is in {stop.run_dir}/ckpt",
                           resume_command(stop.cfg, stop.run_dir)) from None
    except KeyboardInterrupt:
        if cfg.checkpoint.out is None or not RunDir(cfg.checkpoint.out).exists():
            raise
        raise _interrupted("aborted; the run keeps its last checkpoint (or starts again from step 0 without one)",
                           resume_command(cfg, cfg.checkpoint.out)) from None
    console.line()
    out.print(metrics_table(result.metrics, result.baseline, f"val metrics after {result.steps} steps ({result.run_dir})"))
    out.print(
        f"{result.coverage}; {result.samples_per_s:.1f} samples/s, {result.s_per_step:.3f} s/step, "
        f"data wait {result.data_wait:.0%}; run dir {result.run_dir} (plots in {result.run_dir}/plots, "
        f"log in {result.run_dir}/run.log)",
        highlight=False,
    )
    run = shlex.quote(str(result.run_dir))
    out.print(f"next: sak-train eval {run}\n      sak-train predict {run} IMAGES... --out preds",
              highlight=False, markup=False, soft_wrap=True)


#: TrainConfig fields whose fit option has another name
OPTION_OF = {"out": "out_dir", "student": "levels", "datasets": "dataset", "teachers": "teacher", "workers": "threads",
             "eval_samples": "eval_limit", "sync_bn": "no_sync_bn"}


def _typed(ctx: typer.Context, renames: Mapping[str, tuple[str, ...]]) -> set[str]:
    """The parameters typed on the command line (not defaults); an option given in an old spelling counts as its
    new parameter."""
    # compared by name: typer may carry its own click, whose ParameterSource is another enum
    typed = {p for p in ctx.params if getattr(ctx.get_parameter_source(p), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")}
    return typed | {target for old, (target, *_) in renames.items() if old in typed}


def _given_fields(ctx: typer.Context, renames: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    """The TrainConfig fields the user typed, each with its option's spelling: what --resume checks against
    the run's record (a default or a recipe's value is never a request to change the run)."""
    field_of = {option: name for name, option in OPTION_OF.items()}
    spelled = {p.name: next((o for o in p.opts if o.startswith("--")), p.opts[0]) for p in ctx.command.params}
    fields = {field_of.get(p, p): spelled[p] for p in _typed(ctx, renames) if p in spelled}
    return {k: v for k, v in fields.items() if k in OWNER}


def _with_recipe(ctx: typer.Context, name: str, given: dict[str, Any], renames: Mapping[str, tuple[str, ...]]) -> TrainConfig:
    """The recipe's values, with every option given on the command line on top (and --cache, always)."""
    recipe = get_recipe(name)
    typed = _typed(ctx, renames)
    fields = dict(recipe.fields)
    for key, value in given.items():
        if key == "cache" or OPTION_OF.get(key, key) in typed:
            fields[key] = {**(fields.get(key) or {}), **value} if key == "student" else value
    return recipe.config(**fields)


def register(app: typer.Typer) -> None:
    @app.callback(invoke_without_command=True)
    def default(
        ctx: typer.Context,
        cache: str | None = typer.Option(None, "--cache", "-c", help="Cache root (directory or fsspec URL such as s3://bucket/cache): train with defaults (fit) from it."),
        iters: int = typer.Option(D("iters"), "--iters", min=1, help="Training steps for the default fit."),
        out_dir: Path | None = typer.Option(D("out"), "--out", help="Run dir (default runs/<UTC time>)."),
        device: str = typer.Option(D("device"), "--device", help="auto, cpu, cuda or cuda:N."),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging; an internal error also prints its traceback (as SAK_DEBUG=1 does)."),
        version: bool = version_option("sak-train"),
    ) -> None:
        """With --cache and no command: fit with defaults (the cache's only dataset, every teacher store that
        covers it, multitask when it has labels else distill)."""
        setup_logging(verbose)
        if ctx.invoked_subcommand is not None:
            return
        if cache is None:
            console.print(ctx.get_help())
            raise typer.Exit(0)
        friendly_errors(_run_fit)(TrainConfig(cache=str(cache), iters=iters, device=device,
                                              out=str(out_dir) if out_dir else None), False)

    @app.command("fit")
    @friendly_errors
    def fit_cmd(
        ctx: typer.Context,
        recipe: str | None = typer.Option(D("recipe"), "--recipe", "-r", help="Start from an official recipe (sak-train recipes lists them); flags given here override its values."),
        cache: str = typer.Option("./cache", "--cache", "-c", help="Cache root with datasets/ and features/: a directory or an fsspec URL (s3://bucket/cache); opened read-only."),
        dataset: list[str] | None = typer.Option(None, "--dataset", "-d", help="Indexed dataset name; repeat it (or give a comma list) to train on several: the student gets every dataset's tasks, each sample's loss covers the tasks it is labelled for. Default: the cache's only dataset."),
        mix: str = typer.Option(D("mix"), "--mix", help="Several datasets: how samples are drawn. proportional (dataset k with probability n_k/N: every item once per epoch) | balanced (1/K: small datasets repeat) | temperature:T (n_k^(1/T) / sum)."),
        teacher: list[str] | None = typer.Option(None, "--teacher", "-t", help="Teacher to distill (repeatable, or a comma list): a store name, a teacher name or alias as given to sak-cache extract -t, or a unique store name prefix; NAME@RES picks an input size (dinov2@448x576). Default: every store covering the dataset."),
        teachers_old: str | None = renamed("--teachers", "--teacher"),
        backbone: str = typer.Option(D("backbone"), "--backbone", help="timm ViT of the student."),
        backbone_weights: str = typer.Option(D("backbone_weights"), "--backbone-weights", help="Student backbone start: hub (timm's pretrained weights of --backbone; official: the augreg_in21k_ft_in1k tag of vit_base_patch16_384), none (random init, flagged) or FILE.safetensors."),
        img_size: str | None = typer.Option(None, "--img-size", help="Student input HxW (e.g. 448x576). Default: the stored views' or images' size."),
        levels: str | None = typer.Option(None, "--levels", help="Student feature levels (block indices), e.g. 2,5,8,11."),
        stage: str = typer.Option(D("stage"), "--stage", help="distill (paper stage 1: distillation only) | multitask (stage 2: tasks + alpha * distill) | auto."),
        iters: int = typer.Option(D("iters"), "--iters", min=1, help="Training steps."),
        batch_size: int = typer.Option(D("batch_size"), "--batch-size", "-b", min=1, help="Samples per step (per rank)."),
        lr: float | None = typer.Option(D("lr"), "--lr", help="Peak learning rate (default: distill 1e-3, multitask 2e-5)."),
        weight_decay: float | None = typer.Option(D("weight_decay"), "--weight-decay", help="AdamW weight decay (default: distill 0.01, multitask 1e-6)."),
        decay_scope: str = typer.Option(D("decay_scope"), "--decay-scope", help="Weight decay on all parameters (official) | matrices (none on norms and biases)."),
        warmup: int | None = typer.Option(D("warmup"), "--warmup", help="Warmup steps (default: distill 2/30 of --iters as official, multitask 0)."),
        warmup_lr: float | None = typer.Option(D("warmup_lr"), "--warmup-lr", help="Learning rate the warmup starts from (default: distill 1.25e-7, multitask 0)."),
        min_lr: float | None = typer.Option(D("min_lr"), "--min-lr", help="Learning rate at the end of the decay (default: distill 1e-5, multitask 0)."),
        schedule: str | None = typer.Option(D("schedule"), "--schedule", help="cosine | poly | constant (default: distill cosine, multitask poly 0.9)."),
        schedule_style: str = typer.Option(D("schedule_style"), "--schedule-style", help="timm (official: warmup from --warmup-lr, timm cosine stepped per iteration) | plain (sak's first schedule: warmup from 0 as lr*(k+1)/warmup, no one-step lag)."),
        grad_clip: float | None = typer.Option(D("grad_clip"), "--grad-clip", help="Max grad norm, 0 = off (default: multitask 10)."),
        alpha: float = typer.Option(D("alpha"), "--alpha", help="Weight of the distillation loss in the multitask stage."),
        seed: int = typer.Option(D("seed"), "--seed", help="Seed of the init, the sampler and the gate noise."),
        out_dir: Path | None = typer.Option(D("out"), "--out", help="Run dir (default runs/<UTC time>)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where its checkpoint stopped."),
        init: Path | None = typer.Option(D("init"), "--init", help="Start from another run's weights (e.g. the distill stage)."),
        add_teachers: list[str] = typer.Option(D("add_teachers"), "--add-teacher", help="Extend the --init student with this teacher (a new adapter path; repeatable, comma lists ok). Everything it already has is frozen unless --unfreeze."),
        add_tasks: list[str] = typer.Option(D("add_tasks"), "--add-task", help="Extend the --init student with this task (new routers and head; repeatable, comma lists ok)."),
        unfreeze: bool = typer.Option(D("unfreeze"), "--unfreeze", help="Extension: train the parts loaded from --init too (default frozen: the old tasks' outputs stay exactly the same)."),
        online: bool = typer.Option(D("online"), "--online", help="Run the teachers every step instead of reading the cache (the official SAK way; slow)."),
        teacher_weights: str | None = typer.Option(None, "--teacher-weights", help="--online with file-weight stores: NAME=FILE,... e.g. dinov2=d.safetensors."),
        aug: str = typer.Option(D("aug"), "--aug", help="auto: replay the stored views exactly (identity for --aug none stores) | none: refuse augmented stores."),
        standardize: bool = typer.Option(D("standardize"), "--standardize", help="Z-score the teacher targets with the stores' stats (default off: official distills raw block outputs)."),
        feature_flip: bool = typer.Option(D("feature_flip"), "--feature-flip", help="APPROXIMATE: also mirror the cached target maps with the image. A ViT's features of a mirrored image are not mirrored features; extract --views K --aug sak for exact augmentation."),
        allow_missing: bool = typer.Option(D("allow_missing"), "--allow-missing", help="Train on the covered samples when a store lacks some."),
        eval_every: int = typer.Option(D("eval_every"), "--eval-every", min=0, help="Evaluate every N steps (0: at the start and the end only)."),
        eval_limit: int | None = typer.Option(D("eval_samples"), "--eval-limit", help="At most N val samples per evaluation."),
        val_split: str = typer.Option(D("val_split"), "--val-split", help="The split evaluations score (task metrics and val cosines of every dataset that has it); none: no evaluation. The s1-* recipes set none (ImageNet train only): index a held-out folder split to watch the cosines."),
        eval_samples_old: int | None = renamed("--eval-samples", "--eval-limit"),
        log_every: int = typer.Option(D("log_every"), "--log-every", min=1, help="metrics.jsonl record every N steps."),
        ckpt_every: int = typer.Option(D("ckpt_every"), "--ckpt-every", min=0, help="Checkpoint every N steps (and at the end)."),
        device: str = typer.Option(D("device"), "--device", help="auto, cpu, cuda or cuda:N (torchrun: one GPU per rank)."),
        threads: int = typer.Option(D("workers"), "--threads", min=0, help="Reader/decoder threads (0: read in the training thread)."),
        workers_old: int | None = renamed("--workers", "--threads", "-w"),
        block_size: int = typer.Option(D("block_size"), "--block-size", min=1, help="Rows per contiguous store read."),
        targets: str = typer.Option(D("targets"), "--targets", help="Where the teacher targets live: auto (gpu if they fit in half the free GPU memory, else ram if in half of MemAvailable, else stream; the log says why) | ram (loaded once into pinned host memory) | gpu (loaded once onto the GPU) | stream (read per batch)."),
        targets_budget: float | None = typer.Option(D("targets_budget"), "--targets-budget", min=0.0, help="auto: resident targets may take at most this many GB."),
        amp: str = typer.Option(D("amp"), "--amp", help="Training: auto (bf16 autocast on cuda) | bf16 | off. Evaluation runs in float32 unless bf16."),
        no_sync_bn: bool = typer.Option(not D("sync_bn"), "--no-sync-bn", help="Plain BatchNorm in the heads under torchrun (default: SyncBatchNorm on cuda, as official)."),
    ) -> None:
        """Train the SAK student from cached teacher targets.

        Under torchrun (torchrun --nproc-per-node N -m sak.cli.train fit ...) every rank reads its own blocks of the stores
        and DistributedDataParallel averages the gradients (gloo on cpu, nccl on cuda).

        Examples:

          sak-train fit --recipe s1-vitb --cache ./cache --dataset imagenet --out runs/s1

          sak-train fit --recipe nyud-vitb --cache ./cache --dataset nyud --init runs/s1 --out runs/s2

          sak-train fit --cache ./cache --backbone test_vit --iters 300 --batch-size 8 --lr 1e-3 --out runs/demo

          sak-train fit --cache ./cache --init runs/s2 --add-teacher sam --out runs/s2-sam
        """
        student = {"levels": parse_int_list(levels, "--levels")} if levels else None
        given: dict[str, Any] = dict(
            cache=str(cache), datasets=parse_names(dataset), mix=mix, teachers=parse_names(teacher), backbone=backbone,
            backbone_weights=backbone_weights, img_size=parse_hw_option(img_size, "--img-size"), student=student,
            stage=stage, iters=iters, batch_size=batch_size, lr=lr, weight_decay=weight_decay, decay_scope=decay_scope,
            warmup=warmup, warmup_lr=warmup_lr, min_lr=min_lr, schedule=schedule, schedule_style=schedule_style,
            grad_clip=grad_clip, alpha=alpha, seed=seed, out=str(out_dir) if out_dir else None,
            init=str(init) if init else None, add_teachers=parse_names(add_teachers), add_tasks=parse_names(add_tasks),
            unfreeze=unfreeze, online=online, teacher_weights=parse_str_list(teacher_weights) or (),
            aug=aug, standardize=standardize, feature_flip=feature_flip, allow_missing=allow_missing,
            eval_every=eval_every, eval_samples=eval_limit, val_split=None if val_split.lower() == "none" else val_split, log_every=log_every, ckpt_every=ckpt_every, device=device,
            workers=threads, block_size=block_size, amp=amp, sync_bn=not no_sync_bn, targets=targets,
            targets_budget=targets_budget,
        )
        renames = renamed_options(fit_cmd)
        cfg = _with_recipe(ctx, recipe, given, renames) if recipe else TrainConfig(**given)
        if resume:  # --resume refuses a typed option that would change the run (student/runs/resume.py)
            _run_fit(cfg, resume, _given_fields(ctx, renames))
        else:
            _run_fit(cfg, resume)
