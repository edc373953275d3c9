"""RunDir: the one owner of a training run's directory and everything in it.

Layout of ``runs/NAME/``::

    config.json               the experiment record: {"train", "student", "dataset", "stores", "coverage"}
    ckpt/last.safetensors     weights, optimizer state and RNG states (+ ckpt/last.json, readable)
    metrics.jsonl             one record per log step: step, lr, loss parts, throughput
    eval/step_<k>.json        {"step", "split", "metrics"} of the evaluation after step k (0: untrained)
    plots/<name>.png          loss curve, predictions
    summary.json              what the finished run reported (RunResult)
    run.log                   the log records of every fit of the run (appended on resume)

Training writes it (rank 0 only), ``sak-train eval`` / ``export`` and ``--init`` read it. Every
weight read goes through :func:`load_weights` / :meth:`RunDir.load_checkpoint` (one format,
one reader). Run dirs written before the config sections existed load unchanged
(:meth:`TrainConfig.from_dict` reads their flat record).
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import safe_open

from ...manifests.errors import SakError
from ...pipeline.data.datasets import open_dataset
from ..data.cached import CachedTargets
from ..model.config import StudentConfig
from ..model.io import CONFIG_KEY
from ..model.student import SAKStudent
from .checkpoint import META_KEY, Checkpoint, CheckpointError, load_checkpoint, save_checkpoint, write_json_atomic
from .checkpoint import load_weights as _load_file_weights
from .config import TrainConfig, absolute_cache, is_url
from .runtime import seed_everything

log = logging.getLogger(__name__)

class RunDir:
    """The files of one run; ``RunDir(path)`` touches nothing until a method reads or writes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    config_file = property(lambda self: self.path / "config.json")
    ckpt_dir = property(lambda self: self.path / "ckpt")
    checkpoint_file = property(lambda self: self.path / "ckpt" / "last.safetensors")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    eval_dir = property(lambda self: self.path / "eval")
    plots_dir = property(lambda self: self.path / "plots")
    summary_file = property(lambda self: self.path / "summary.json")
    log_file = property(lambda self: self.path / "run.log")

    # -- the experiment record -------------------------------------------------------------------
    def exists(self) -> bool:
        """True when the folder holds a training run (its config.json)."""
        return self.config_file.exists()

    def write_record(self, record: dict[str, Any]) -> None:
        write_json_atomic(self.config_file, record)

    def read_record(self) -> dict[str, Any]:
        if not self.exists():
            raise SakError(f"{self.path} is not a training run (no config.json); train one with sak-train fit")
        return json.loads(self.config_file.read_text())

    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.read_record()["train"])

    def student_config(self) -> StudentConfig:
        return StudentConfig.from_dict(self.read_record()["student"])

    # -- checkpoints -----------------------------------------------------------------------------
    def save_checkpoint(self, *, model: dict[str, torch.Tensor], optimizer: dict[str, Any] | None,
                        record: dict[str, Any]) -> Path:
        return save_checkpoint(self.ckpt_dir, model=model, optimizer=optimizer, record=record)

    def load_checkpoint(self) -> Checkpoint:
        """(weights, optimizer state or None, record with step, sampler, config and RNG states)."""
        return load_checkpoint(self.checkpoint_file)

    # -- metrics ---------------------------------------------------------------------------------
    def open_metrics(self) -> IO[str]:
        """metrics.jsonl opened for appending one JSON record per line."""
        self.path.mkdir(parents=True, exist_ok=True)
        return open(self.metrics_file, "a")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.exists():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, step: int) -> None:
        """Drop the records after ``step`` (a resumed run logs them again)."""
        if not self.metrics_file.exists():
            return
        keep = [line for line in self.metrics_file.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        self.metrics_file.write_text("".join(line + "\n" for line in keep))

    # -- evaluations, plots, summary -------------------------------------------------------------
    def write_eval(self, step: int, metrics: dict[str, float], split: str = "val") -> dict[str, float]:
        """Write ``eval/step_<step>.json`` atomically; returns ``metrics``."""
        write_json_atomic(self.eval_dir / f"step_{step}.json", {"step": step, "split": split, "metrics": metrics})
        log.info("eval step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())))
        return metrics

    def read_eval(self, step: int) -> dict[str, float]:
        """The metrics recorded after ``step``; {} when that evaluation was not written."""
        path = self.eval_dir / f"step_{step}.json"
        return json.loads(path.read_text())["metrics"] if path.exists() else {}

    def has_eval(self, step: int) -> bool:
        return (self.eval_dir / f"step_{step}.json").exists()

    def plot_file(self, name: str) -> Path:
        return self.plots_dir / f"{name}.png"

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.summary_file, {k: str(v) if isinstance(v, Path) else v for k, v in summary.items()})

    @contextlib.contextmanager
    def logging_to_file(self, buffered: logging.handlers.MemoryHandler | None = None) -> Iterator[None]:
        """Append the ``sak`` log records to ``run.log`` while the block runs (a resume appends to the same file).

        ``buffered``: records kept before the run dir was known (setup), written first and then detached.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.log_file, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.DEBUG)
        logger = logging.getLogger("sak")
        if buffered is not None:
            buffered.setTarget(handler)
            buffered.flush()
            logger.removeHandler(buffered)
        logger.addHandler(handler)
        try:
            yield
        finally:
            logger.removeHandler(handler)
            handler.close()

    # -- rebuilding the run's student --------------------------------------------------------------
    def trained_student(self) -> tuple[SAKStudent, int]:
        """The student with the weights of the last checkpoint (built without downloading), and its step."""
        cfg = self.student_config()
        model = SAKStudent(replace(cfg, pretrained=False))  # every weight comes from the checkpoint
        model.cfg = cfg
        ckpt = self.load_checkpoint()
        model.load_state_dict(ckpt.weights)
        return model, int(ckpt.record["step"])

    def cache(self, override: str | os.PathLike[str] | None = None) -> str:
        """The run's cache root: ``override`` (``--cache``: the cache moved), else the recorded one.

        Runs record it absolute; a relative record (runs before issue 16: ``./cache``) meant the directory fit ran
        in, which is found from the recorded ``out`` (``runs/a`` trained in X lives at X/runs/a); failing that,
        the working directory, the run dir's parent and grandparent are tried, in that order.
        """
        if override is not None:
            return absolute_cache(os.fspath(override))
        cfg = self.train_config()
        recorded = cfg.data.cache
        if is_url(recorded) or os.path.isabs(recorded.removeprefix("file://")):
            return recorded
        here = self.path.resolve()
        bases = [b for b in (_trained_in(here, cfg.checkpoint.out), Path.cwd(), here.parent, here.parent.parent) if b]
        for base in bases:
            if (Path(absolute_cache(recorded, base)) / "datasets").is_dir():
                return absolute_cache(recorded, base)
        return absolute_cache(recorded, bases[0])

    def load(self, split: str = "val", *, cache: str | os.PathLike[str] | None = None,
             data_root: str | os.PathLike[str] | None = None) -> LoadedRun:
        """The run's configs and ``split`` of its dataset(s) (in order, no augmentation), ready to evaluate.

        A multi-dataset run: ``data`` is its first dataset's split, ``datasets`` every dataset's that has
        ``split`` (each with its own tasks), ``heads`` each dataset's task -> student head. ``cache``: the cache
        root when it moved (default :meth:`cache`); ``data_root``: the dataset's images when they moved (default:
        the folder recorded by ``sak-cache index``; a single-dataset run only).
        """
        cfg = self.train_config()
        scfg = self.student_config()
        names, img_size = cfg.data.names, cfg.model.img_size
        if not names or img_size is None:  # training records the resolved config, which names both
            raise SakError(f"{self.config_file} does not name the dataset and img_size of the run: "
                           "it was not written by sak-train fit; train the run again")
        root = self.cache(cache)
        if not is_url(root) and not (Path(root) / "datasets").is_dir():
            given = "given with --cache" if cache is not None else f"recorded as {cfg.data.cache!r} in {self.config_file}"
            raise SakError(f"cache {root} of run {self.path} ({given}) holds no datasets/ folder: if the cache moved, "
                           "pass --cache DIR (its new place)")
        hw = (img_size[0], img_size[1])
        fit = "resize" if cfg.eval.eval_resize else "pad"
        # each dataset's task -> head, as training scored it (runs before multi-dataset training: every head)
        recorded = {d["name"]: d.get("tasks", {}) for d in self.read_record().get("datasets", [])}
        if len(names) == 1:
            # an extension trained on another dataset scores only the heads that dataset's labels fit
            tasks = tuple(recorded[names[0]]) if names[0] in recorded else scfg.task_names
            dataset = open_dataset(root, names[0], root_override=data_root)
            data = CachedTargets(dataset, (), split, hw, tasks=tasks, seed=cfg.runtime.seed, fit=fit)
            heads = {names[0]: {t: t for t in tasks}}
            return LoadedRun(self, cfg, scfg, data, {names[0]: data}, heads, root)
        if data_root is not None:
            raise SakError(f"--data-root moves the images of one dataset, but run {self.path} trained on "
                           f"{', '.join(names)}: re-index a moved dataset under its name instead (sak-cache index "
                           "NEWDIR --name NAME --replace)")
        heads = {n: dict(recorded.get(n, {})) for n in names}
        parts = {}
        for n in names:
            dataset = open_dataset(root, n)
            if split in dataset.splits():
                parts[n] = CachedTargets(dataset, (), split, hw, tasks=tuple(heads[n]), seed=cfg.runtime.seed, fit=fit)
        if names[0] not in parts:
            raise SakError(f"dataset '{names[0]}' of run {self.path} has no '{split}' split; pick another (--split)")
        return LoadedRun(self, cfg, scfg, parts[names[0]], parts, heads, root)


@dataclass
class LoadedRun:
    run: RunDir
    cfg: TrainConfig
    student_cfg: StudentConfig
    data: CachedTargets
    datasets: dict[str, CachedTargets] = field(default_factory=dict)  # name -> its split (multi-dataset runs: all)
    heads: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {task: student head}
    cache: str = ""  # the cache root the data was opened from (the recorded one, or --cache when it moved)

    def build_model(self) -> SAKStudent:
        """The student as the run built it at step 0 (same seed, same init)."""
        seed_everything(self.cfg.runtime.seed)
        return SAKStudent(self.student_cfg)

    def trained_model(self) -> tuple[SAKStudent, int]:
        """The student with the weights of the run's last checkpoint, and that checkpoint's step."""
        return self.run.trained_student()


def _trained_in(run_path: Path, out: str | None) -> Path | None:
    """The directory fit ran in, when the run dir was given relative (``out``) and ``run_path`` ends with it."""
    if not out or os.path.isabs(out):
        return None
    parts = Path(os.path.normpath(out)).parts
    if ".." in parts or len(run_path.parts) <= len(parts) or run_path.parts[-len(parts):] != parts:
        return None
    return Path(*run_path.parts[:-len(parts)])


def init_source(source: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """(weights, teacher names of its adapter paths) of an --init source: a run dir, its checkpoint or a student file."""
    path = Path(source)
    if path.is_dir():
        return load_weights(path), RunDir(path).student_config().teacher_names
    try:
        weights = load_weights(path)
    except CheckpointError as exc:
        if not path.is_file():
            raise
        detail = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        raise CheckpointError(f"{path} is not a safetensors file{detail}: --init takes a run dir (runs/NAME), its "
                              "ckpt/last.safetensors, or a .safetensors student file written by sak-train export "
                              "(a PyTorch .pt/.pth pickle is never loaded)") from None
    teachers = _file_teachers(path)
    if teachers is None:
        raise SakError(f"--init {path} does not say which teachers its adapter paths belong to (no sak record in "
                       "the file): pass the run dir, its ckpt/last.safetensors or a file written by save_student")
    return weights, teachers


def _file_teachers(path: Path) -> tuple[str, ...] | None:
    """Teacher names recorded in a sak safetensors file (training checkpoint or student file), None if none."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        if META_KEY in meta:
            student = json.loads(meta[META_KEY]).get("student")
        elif CONFIG_KEY in meta:
            student = json.loads(meta[CONFIG_KEY])
        else:
            return None
        return tuple(t["name"] for t in student["teachers"])
    except Exception:  # a file without a readable record says nothing
        return None


def load_weights(source: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Student weights from a run dir (its last checkpoint), a training checkpoint or a student file."""
    path = Path(source)
    return _load_file_weights(RunDir(path).checkpoint_file if path.is_dir() else path)
