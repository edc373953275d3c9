"""Evaluate a student on a dataset split with the paper's metrics (``student.metrics``).

``evaluate_model(model, data)`` runs a built model over a :class:`CachedTargets` split
(in manifest order, no augmentation) and returns ``{"<task>/<metric>": value}``. As the
official ``test.py`` (no autocast), the forward pass runs in fp32 unless ``amp`` asks for bf16
autocast; mIoU uses the official convention unless ``miou="present"``.
``evaluate(run_dir)`` rebuilds a run's student from ``config.json`` and its last
checkpoint; with ``step0=True`` it also evaluates the untrained student the run
started from (same seed, same init), so the improvement is visible.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch

from ...manifests.errors import ConfigError
from ...pipeline.devices import resolve_device
from ..data.cached import IMAGENET_MEAN, IMAGENET_STD, CachedTargets
from ..model.export import dropped_gate_mass, export_submodel, routing_weights
from ..model.io import save_student
from ..runs.config import AMP_MODES
from ..runs.rundir import RunDir
from ..runs.runtime import autocast
from .distill_metric import DistillCosine, run_targets
from .metrics import metric_for_task
from .plots import display_map

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    data: CachedTargets,
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    max_samples: int | None = None,
    workers: int = 2,
    progress: Callable[..., None] | None = None,
    amp: str = "off",
    miou: str = "official",
    targets: CachedTargets | None = None,
    stats: Mapping[str, Sequence[Any]] | None = None,
) -> dict[str, float]:
    """Metrics of ``model`` over ``data`` (every item once, in order; at most ``max_samples``).

    ``amp``: ``"off"`` (fp32, the official evaluation) or ``"auto"`` / ``"bf16"`` (bf16 autocast on
    cuda); ``miou``: ``"official"`` or ``"present"`` (see :class:`~sak.pipeline.tasks.metrics.MeanIoU`).
    Distillation metrics (:mod:`.distill_metric`) are scored on ``data`` when it reads teacher targets,
    else on ``targets`` (the split joined with the stores, :func:`~.distill_metric.eval_splits`), with the
    run's ``stats`` when it standardizes its targets; none when neither carries targets or the student
    has no distillation outputs.
    """
    if amp not in AMP_MODES:
        raise ConfigError(f"amp must be one of {', '.join(AMP_MODES)} (off: fp32 as the official evaluation), got {amp!r}")
    device = torch.device(device)
    distills = getattr(model, "has_distill", False)
    metrics = {t: metric_for_task(t, data.dataset.format, miou=miou) for t in data.tasks}
    cosine = DistillCosine(stats) if distills and (data.read_targets or targets is not None) else None
    run = partial(_score, model, batch_size=batch_size, device=device, max_samples=max_samples, workers=workers,
                  progress=progress, amp=amp)
    was_training = model.training
    model.eval()
    try:
        if metrics or (cosine is not None and data.read_targets):
            run(data, metrics, cosine if data.read_targets else None)
        if cosine is not None and not data.read_targets and targets is not None:
            run(targets, {}, cosine)  # a second pass: the images as the loss saw them
    finally:
        model.train(was_training)
    result: dict[str, float] = {}
    for task, metric in metrics.items():
        for key, value in metric.compute().items():
            result[f"{task}/{key}"] = float(value)
    if cosine is not None:
        result.update(cosine.compute())
    return result


def _score(model: torch.nn.Module, data: CachedTargets, metrics: dict[str, Any], cosine: DistillCosine | None, *,
           batch_size: int, device: torch.device, max_samples: int | None, workers: int,
           progress: Callable[..., None] | None, amp: str) -> None:
    """One pass over ``data`` (at most ``max_samples`` items, the last batch cut to fit) into the accumulators."""
    sampler = data.sampler(block_size=max(1, batch_size), window=1, shuffle=False)
    seen = 0
    with data.batches(batch_size, sampler, workers=workers, drop_last_epoch=True) as loader:
        for host in loader:
            n = host.image.shape[0] if max_samples is None else min(host.image.shape[0], max_samples - seen)
            if n <= 0:
                break
            batch = host.to(device)
            with autocast(device, amp):
                out = model(batch.image[:n], distill=cosine is not None)
            for task, metric in metrics.items():
                metric.update(out.tasks[task].float(), batch.labels[task][:n], batch.masks[task][:n])
            if cosine is not None:
                cosine.update(out.distill, {k: [m[:n] for m in maps] for k, maps in batch.decoded_targets().items()})
            host.release()  # every result above is on the host or computed: the loader may reuse the buffers
            seen += n
            if progress is not None:
                progress(n)


def evaluate(
    run_dir: str | os.PathLike[str],
    split: str = "val",
    *,
    step0: bool = False,
    device: str = "auto",
    batch_size: int | None = None,
    max_samples: int | None = None,
    progress: Callable[..., None] | None = None,
    amp: str = "off",
    miou: str | None = None,
    cache: str | os.PathLike[str] | None = None,
    data_root: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Evaluate a run's last checkpoint on ``split``: ``{"step", "split", "metrics", "baseline"}``.

    ``baseline`` holds the untrained (step-0) student's metrics: recomputed when
    ``step0`` is true, else read from ``eval/step_0.json`` when the split is the run's val split
    (scored when the run was trained, with the conventions of that time). ``amp`` and ``miou``
    as in :func:`evaluate_model` (fp32 and the official mIoU by default). ``cache`` / ``data_root``: where the
    cache / the dataset's images are now, when they moved (:meth:`RunDir.load`).
    """
    dev = resolve_device(device)
    run = RunDir(run_dir)
    loaded = run.load(split, cache=cache, data_root=data_root)
    model, step = loaded.trained_model()
    miou = miou or loaded.cfg.eval.miou  # the run's own convention unless asked otherwise
    bs = batch_size or loaded.cfg.loader.batch_size
    datas, targets, stats = run_targets(loaded, split, dev)
    name = loaded.data.dataset.name  # the run's (first) dataset
    score = partial(evaluate_model, data=datas[name], batch_size=bs, device=dev, max_samples=max_samples, amp=amp,
                    miou=miou, targets=targets.get(name), stats=stats)
    out: dict[str, Any] = {"step": step, "split": split}
    if step0:
        out["baseline"] = score(loaded.build_model().to(dev))
    elif split == loaded.cfg.eval.val_split and run.has_eval(0) and miou == loaded.cfg.eval.miou:  # same convention
        out["baseline"] = run.read_eval(0)
    out["metrics"] = score(model.to(dev), progress=progress)
    return out


@torch.no_grad()
def predictions(model: torch.nn.Module, data: CachedTargets, n: int = 4, device: torch.device | str = "cpu",
                amp: str = "off") -> list[dict]:
    """The first ``n`` samples of ``data`` as plot rows: image in [0, 1], labels and predictions as arrays."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    rows = []
    try:
        for i in range(min(n, len(data))):
            s = data[i]
            with autocast(device, amp):
                out = model(s["image"][None].to(device), distill=False)
            img = s["image"] * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
            preds, labels = {}, {}
            for task, p in out.tasks.items():
                p = p[0].float().cpu()
                preds[task] = display_map(task, p, prediction=True)
                if s["masks"].get(task):
                    labels[task] = display_map(task, s["labels"][task], prediction=False)
            rows.append({"image": img.permute(1, 2, 0).numpy(), "labels": labels, "preds": preds})
    finally:
        model.train(was_training)
    return rows


def export_run(
    run_dir: str | os.PathLike[str],
    task: str,
    out: str | os.PathLike[str],
    *,
    threshold: float = 0.1,
    split: str = "val",
    max_images: int | None = 64,
    device: str = "auto",
    batch_size: int | None = None,
    cache: str | os.PathLike[str] | None = None,
    data_root: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Export a one-task sub-model of a run's student (teachers whose mean gate > ``threshold``).

    Gates are averaged over up to ``max_images`` images of ``split``; the sub-model is
    saved with :func:`~sak.student.model.io.save_student` and evaluated next to the full model
    on the same images. Returns kept/dropped teachers, routing weights, dropped gate
    mass, both models' metrics for ``task`` and the file path. ``cache`` / ``data_root`` as in :func:`evaluate`.
    """
    dev = resolve_device(device)
    loaded = RunDir(run_dir).load(split, cache=cache, data_root=data_root)
    model, step = loaded.trained_model()
    model.to(dev)
    bs = batch_size or loaded.cfg.loader.batch_size
    sampler = loaded.data.sampler(block_size=bs, window=1, shuffle=False)
    images, seen = [], 0
    with loaded.data.batches(bs, sampler, workers=0, drop_last_epoch=True) as loader:
        for batch in loader:
            if max_images is not None and seen >= max_images:
                break
            images.append(batch.image)
            seen += batch.image.shape[0]
    gates = routing_weights(model, images, task, device=dev)
    sub, kept = export_submodel(model, task, threshold, weights=gates)
    path = save_student(out, sub, fit=loaded.data.fit)
    one_task = CachedTargets(loaded.data.dataset, (), split, loaded.data.img_size, tasks=(task,), fit=loaded.data.fit)
    full_metrics = evaluate_model(model, one_task, batch_size=bs, device=dev, max_samples=max_images)
    sub_metrics = evaluate_model(sub, one_task, batch_size=bs, device=dev, max_samples=max_images)
    names = loaded.student_cfg.task_teachers(task)  # the teachers this task routes over (all unless extended)
    return {
        "task": task, "step": step, "path": str(path), "threshold": threshold,
        "kept": list(kept), "dropped": [n for n in names if n not in kept],
        "experts": list(loaded.student_cfg.task_experts(task)), "routing": gates.mean(0).tolist(),
        "dropped_gate_mass": dropped_gate_mass(gates, kept, names),
        "full_metrics": full_metrics, "sub_metrics": sub_metrics,
        "full_params": sum(p.numel() for p in model.parameters()),
        "sub_params": sum(p.numel() for p in sub.parameters()),
    }
