"""Evaluation of a multi-dataset run: each dataset's val split with its own tasks, and Delta_m per dataset.

A multi-dataset student has a head per (task, dataset format) (``semseg`` for NYUD, ``semseg_pascal``
for PASCAL-Context, see :mod:`sak.student.data.mixed`); :class:`HeadView` shows the student to one
dataset under its own task names, so the single-dataset evaluator scores it unchanged.
:func:`evaluate_datasets` returns ``{"<dataset>/<task>/<metric>": value}`` for several datasets and
today's ``{"<task>/<metric>": value}`` for one.

Delta_m (:func:`delta_m_by_dataset`): per dataset, the mean relative gain of its metrics over a
baseline's (``sak.student.evaluate.metrics.delta_m``), over the metric keys both have and that have
a direction (``edge/ods_threshold`` has none) and a non-zero baseline value (the relative gain of a 0 is
undefined; such keys are listed as ``skipped``). A baseline is a run dir (its last evaluation) or a
JSON file of metrics (``eval/step_<k>.json``, ``summary.json`` or a flat ``{"<task>/<metric>": value}``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ...manifests.errors import ConfigError, SakError
from ...pipeline.devices import resolve_device
from ...pipeline.tasks import metric_direction
from ..runs.rundir import RunDir
from .distill_metric import run_targets, split_key
from .evaluator import evaluate_model
from .metrics import delta_m


class HeadView(torch.nn.Module):
    """``model`` seen by one dataset: its output ``tasks`` hold only that dataset's heads, under its task names."""

    def __init__(self, model: torch.nn.Module, heads: Mapping[str, str]) -> None:
        super().__init__()
        self.model, self.heads = model, dict(heads)

    @property
    def has_distill(self) -> bool:
        """Whether the student has distillation outputs (the evaluator then scores the distillation cosines)."""
        return bool(getattr(self.model, "has_distill", False))

    def forward(self, x_bchw: torch.Tensor, *, distill: bool = True) -> Any:
        out = self.model(x_bchw, distill=distill)
        return replace(out, tasks={task: out.tasks[head] for task, head in self.heads.items()})


def evaluate_datasets(model: torch.nn.Module, vals: Mapping[str, Any], heads: Mapping[str, Mapping[str, str]], *,
                      targets: Mapping[str, Any] | None = None, **kw: Any) -> dict[str, float]:
    """Metrics of ``model`` on each dataset's val data (``vals``: name -> CachedTargets with its own tasks).

    One dataset: ``"<task>/<metric>"`` and ``"distill/..."`` keys, as single-dataset runs always had; several:
    ``"<dataset>/<task>/<metric>"`` and ``"<dataset>/distill/..."``. ``targets``: name -> that dataset's val split
    joined with the stores, for the distillation metrics where ``vals[name]`` carries no targets. ``kw`` go to
    :func:`~.evaluator.evaluate_model` (``max_samples`` per dataset, ``stats``).
    """
    targets = targets or {}
    if len(vals) == 1 and len(heads) <= 1:
        ((name, data),) = vals.items()
        return evaluate_model(model, data, targets=targets.get(name), **kw)
    out: dict[str, float] = {}
    for name, data in vals.items():
        scored = evaluate_model(HeadView(model, heads[name]), data, targets=targets.get(name), **kw)
        out.update({f"{name}/{key}": value for key, value in scored.items()})
    return out


def split_by_dataset(metrics: Mapping[str, float], datasets: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{"<dataset>/<task>/<metric>": v}`` -> ``{dataset: {"<task>/<metric>": v}}`` (one dataset: keys as they are)."""
    if len(datasets) == 1:
        return {datasets[0]: dict(metrics)}
    return {ds: {k[len(ds) + 1:]: v for k, v in metrics.items() if k.startswith(f"{ds}/")} for ds in datasets}


def parse_baseline(item: str) -> tuple[str | None, Path]:
    """``[DATASET=]RUN_DIR_OR_JSON`` -> (dataset or None, path)."""
    name, sep, path = item.partition("=")
    if not sep:
        return None, Path(item)
    if not name or not path:
        raise ConfigError(f"--baseline takes [DATASET=]RUN_DIR_OR_JSON, got {item!r}")
    return name, Path(path)


def baseline_metrics(path: str | os.PathLike[str]) -> tuple[dict[str, float], tuple[str, ...]]:
    """(metrics, datasets) of a baseline: a run dir's last evaluation and datasets, or a JSON file's metrics."""
    path = Path(path)
    if path.is_dir():
        run = RunDir(path)
        steps = sorted(int(p.stem.split("_", 1)[1]) for p in run.eval_dir.glob("step_*.json")) if run.exists() else []
        if not steps:
            raise SakError(f"--baseline {path}: not a run dir with an evaluation (eval/step_<k>.json); train it with "
                           "sak-train fit, or pass a JSON file of metrics")
        return run.read_eval(steps[-1]), run.train_config().data.names
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SakError(f"--baseline {path}: not a run dir or a readable JSON file of metrics ({exc})") from None
    metrics = data.get("metrics", data) if isinstance(data, dict) else None
    if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) for v in metrics.values()):
        raise SakError(f"--baseline {path}: expected {{\"<task>/<metric>\": value}} or {{\"metrics\": {{...}}}} "
                       "(eval/step_<k>.json, summary.json)")
    return {k: float(v) for k, v in metrics.items()}, ()


def delta_m_by_dataset(metrics: Mapping[str, float], datasets: Sequence[str],
                       baselines: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Delta_m of ``metrics`` (a run over ``datasets``) per dataset against ``baselines`` (``[DATASET=]PATH`` items).

    A baseline without ``DATASET=`` belongs to the dataset its run trained on (a single-dataset run), or to the
    run's only dataset. Returns ``{dataset: {"delta_m": %, "keys": [...], "baseline": path}}``.
    """
    by_ds = split_by_dataset(metrics, datasets)
    out: dict[str, dict[str, Any]] = {}
    for item in baselines:
        name, path = parse_baseline(item)
        base, base_datasets = baseline_metrics(path)
        if name is None:
            candidates = [d for d in base_datasets if d in datasets] or (list(datasets) if len(datasets) == 1 else [])
            if len(candidates) != 1:
                raise ConfigError(f"--baseline {item}: say which dataset it is for: --baseline DATASET={path} "
                                  f"(datasets of the run: {', '.join(datasets)})")
            name = candidates[0]
        if name not in by_ds:
            raise ConfigError(f"--baseline {item}: the run has no dataset {name!r}; its datasets: {', '.join(datasets)}")
        if len(base_datasets) > 1:  # a multi-dataset baseline: its metrics of this dataset
            base = split_by_dataset(base, base_datasets).get(name, {})
        shared = sorted(k for k in by_ds[name]  # task metrics only: the distillation cosines are not part of Delta_m
                        if k in base and metric_direction(k) is not None and split_key(k) is None)
        keys = [k for k in shared if base[k] != 0]
        if not keys:
            raise ConfigError(f"--baseline {item}: no metric of dataset {name!r} with a non-zero value in it "
                              f"(run: {sorted(by_ds[name])}; baseline: {sorted(base)})")
        out[name] = {"delta_m": delta_m({k: by_ds[name][k] for k in keys}, base), "keys": keys,
                     "skipped": [k for k in shared if base[k] == 0], "baseline": str(path)}
    return out


def evaluate_run(run_dir: str | os.PathLike[str], split: str = "val", *, baselines: Sequence[str] = (),
                 step0: bool = False, device: str = "auto", batch_size: int | None = None,
                 max_samples: int | None = None, progress: Callable[..., None] | None = None, amp: str = "off",
                 miou: str | None = None, cache: str | os.PathLike[str] | None = None,
                 data_root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``sak-train eval``: a run's metrics on ``split`` (per dataset in a multi-dataset run), and Delta_m per dataset.

    Returns ``{"step", "split", "metrics", "baseline" (step-0 metrics, when known), "datasets", "delta_m"}``;
    every value is plain JSON. ``cache`` / ``data_root``: where the cache / the images are now, when they moved
    (:meth:`~sak.student.runs.rundir.RunDir.load`).
    """
    run = RunDir(run_dir)
    loaded = run.load(split, cache=cache, data_root=data_root)
    names = loaded.cfg.data.names
    dev = resolve_device(device)
    miou = miou or loaded.cfg.eval.miou  # the run's own convention unless asked otherwise
    model, step = loaded.trained_model()
    vals, targets, stats = run_targets(loaded, split, dev)  # the run's stores are opened once for every dataset
    score = partial(evaluate_datasets, vals=vals, heads=loaded.heads, targets=targets, stats=stats,
                    batch_size=batch_size or loaded.cfg.loader.batch_size, device=dev, max_samples=max_samples,
                    amp=amp, miou=miou)
    res: dict[str, Any] = {"step": step, "split": split}
    if step0:
        res["baseline"] = score(loaded.build_model().to(dev))
    elif split == loaded.cfg.eval.val_split and run.has_eval(0) and miou == loaded.cfg.eval.miou:  # same convention
        res["baseline"] = run.read_eval(0)
    res["metrics"] = score(model.to(dev), progress=progress)
    res["datasets"] = list(names)
    res["delta_m"] = delta_m_by_dataset(res["metrics"], names, baselines) if baselines else {}
    return res
