"""TrainConfig: the experiment record of one `sak-train fit` run, in sections (saved in runs/NAME/config.json).

Sections, torchtitan-style, each a frozen config with one docstring per field:
``data`` (cache, dataset, teachers, splits, augmentation), ``model`` (student), ``optim``
(stage, steps, learning rate), ``loader`` (batching and reader threads), ``eval``,
``checkpoint`` (run dir and checkpoints) and ``runtime`` (seed, device, precision, logging).

Every field name is unique across sections, so a run can also be written flat:
``TrainConfig(cache="./cache", lr=1e-3)`` routes each name to its section, and
:meth:`TrainConfig.from_dict` reads both the sectioned record and the flat one that run dirs
written before the sections hold (config.json ``"train"``, checkpoint ``"config"``).

Stage defaults follow the official SAK code (``configs/s1/*.yml``, ``configs/s2/*.yml``,
``train_s1.py:153-167``, ``train_utils.py:6-51``):

===========  =====  ======  ===============  =======================  =======  =========
stage        lr     wd      schedule         warmup                   min lr   grad clip
===========  =====  ======  ===============  =======================  =======  =========
distill      1e-3   0.01    cosine (timm)    2/30 of iters from 1.25e-7  1e-5  off
multitask    2e-5   1e-6    poly 0.9         0                        0        10
===========  =====  ======  ===============  =======================  =======  =========

Weight decay applies to every parameter (official: ``AdamW(model.parameters())``);
``decay_scope="matrices"`` is the earlier sak choice (none on norms and biases).

Run dirs written before a field existed keep what they meant: :meth:`TrainConfig.from_dict`
fills a field the record lacks with :data:`LEGACY_DEFAULTS` (e.g. ``standardize=True``).

Fields left ``None`` are filled by :meth:`TrainConfig.resolved` so the saved
config always states every number the run used.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ...manifests.config import Config
from ...manifests.errors import ConfigError
from ...manifests.sizes import parse_hw
from ...pipeline.tasks.metrics import check_miou
from ..data.resident import TARGET_MODES
from ..data.sampler import parse_mix

STAGES = ("auto", "distill", "multitask")  # auto: multitask when the dataset has labels, else distill
AUG_MODES = ("auto", "none")
AMP_MODES = ("auto", "bf16", "off")
SCHEDULES = ("cosine", "poly", "constant")
SCHEDULE_STYLES = ("timm", "plain")
DECAY_SCOPES = ("all", "matrices")
BACKBONE_WEIGHTS = ("hub", "none")  # or the path of a .safetensors file

STAGE_DEFAULTS: dict[str, dict[str, float | str]] = {
    "distill": {"lr": 1e-3, "weight_decay": 0.01, "schedule": "cosine", "warmup_frac": 2 / 30, "grad_clip": 0.0,
                "min_lr": 1e-5, "warmup_lr": 1.25e-7},
    "multitask": {"lr": 2e-5, "weight_decay": 1e-6, "schedule": "poly", "warmup_frac": 0.0, "grad_clip": 10.0,
                  "min_lr": 0.0, "warmup_lr": 0.0},
}

#: What a field meant before it existed: a record (config.json "train", checkpoint "config") that lacks
#: the field was written by an earlier sak, which behaved like this value.
LEGACY_DEFAULTS: dict[str, Any] = {
    "standardize": True,  # targets were z-scored with the stores' stats
    "backbone_weights": "none",  # the student always started from random init
    "decay_scope": "matrices",  # no weight decay on norms and biases
    "schedule_style": "plain",  # warmup from 0 as lr*(k+1)/warmup, no one-step lag
    "warmup_lr": 0.0,
    "sync_bn": False,
    "miou": "present",  # mIoU over the classes present in label or prediction
    "eval_resize": True,  # val images and labels were resized to the student input
}


def _at_least(section: object, names: tuple[str, ...], low: int) -> None:
    for name in names:
        if getattr(section, name) < low:
            raise ConfigError(f"{name} must be >= {low}, got {getattr(section, name)}")


@dataclass(frozen=True, kw_only=True)
class DataConfig(Config):
    """Where the training samples and their teacher targets come from."""

    cache: str
    """Cache root with datasets/ and features/ (a directory or an fsspec URL); opened read-only. A training run
    records it absolute (:meth:`TrainConfig.resolved`), so the run dir works from any directory."""
    dataset: str | None = None
    """Indexed dataset name; None: the cache's only dataset. A multi-dataset run records its first dataset here
    (records written before ``datasets`` existed name their one dataset only here)."""
    datasets: tuple[str, ...] = ()
    """Every dataset the run trains on, in order (the union of their tasks: one head per task and dataset format);
    (): ``dataset`` alone."""
    mix: str = "proportional"
    """How a multi-dataset run draws its samples: proportional (dataset k with probability n_k/N) | balanced (1/K) |
    temperature:T (n_k^(1/T) / sum). An epoch is as many draws as the datasets have training items together."""
    teachers: tuple[str, ...] = ()
    """Store names, teacher names or aliases; (): every store covering the dataset."""
    train_split: str = "train"
    """Split the student trains on."""
    aug: str = "auto"
    """auto: replay the stores' stored views (identity for aug=none stores); none: refuse augmented stores."""
    feature_flip: bool = False
    """APPROXIMATE: flip image, labels AND target maps (a ViT's features are not mirror-equivariant)."""
    online: bool = False
    """Run the teachers every step instead of reading the cache (the official SAK way)."""
    teacher_weights: tuple[str, ...] = ()
    """Online mode with "file:" stores: "<store or teacher>=<weights.safetensors>" items."""
    standardize: bool = False
    """Standardize teacher targets with the stores' per-channel stats (an option; official distills raw outputs).

    The stats cover every row of a store (val images included); runs recorded before this field keep True."""
    allow_missing: bool = False
    """Train on the covered samples when a store lacks some (else refuse)."""

    def __post_init__(self) -> None:
        parse_mix(self.mix)
        if len(set(self.datasets)) != len(self.datasets):
            raise ConfigError(f"datasets {list(self.datasets)} name a dataset twice: pass each --dataset once")
        if self.dataset is not None and self.datasets and self.dataset != self.datasets[0]:
            raise ConfigError(f"dataset {self.dataset!r} must be the first of datasets {list(self.datasets)}")
        if self.aug not in AUG_MODES:
            raise ConfigError(f"aug must be one of {AUG_MODES}, got {self.aug!r}")
        for item in self.teacher_weights:
            if "=" not in item:
                raise ConfigError(f"teacher_weights entries look like 'dinov2=/path/w.safetensors', got {item!r}")


    @property
    def names(self) -> tuple[str, ...]:
        """The datasets named by the config, in order (empty: the cache's only dataset)."""
        return self.datasets or ((self.dataset,) if self.dataset is not None else ())


@dataclass(frozen=True, kw_only=True)
class ModelConfig(Config):
    """The student to build, and the weights it starts from."""

    backbone: str = "vit_small_patch16_224"
    """timm ViT of the student."""
    img_size: tuple[int, int] | None = None
    """(H, W) student input; None: the stores' view size or the images' size (a patch multiple)."""
    student: dict[str, object] | None = None
    """Extra StudentConfig fields (levels, adapter_ratio, depth, ...)."""
    backbone_weights: str = "none"
    """Student backbone start: hub (timm's pretrained weights of ``backbone``, e.g.
    vit_base_patch16_384.augreg_in21k_ft_in1k as official), none (random init, loudly flagged) or a .safetensors file."""
    init: str | None = None
    """Start from the weights of another run (e.g. the distill stage): a run dir or a .safetensors file.
    Loaded as the official hand-off: parameters matched by name, pos-embed resampled, the rest kept at init."""
    add_teachers: tuple[str, ...] = ()
    """Extend the ``init`` student with these teachers (a new adapter path and aligner each); its own teachers,
    backbone, levels and input size are kept (sak.student.train.extend)."""
    add_tasks: tuple[str, ...] = ()
    """Extend the ``init`` student with these tasks (new routers and head each)."""
    unfreeze: bool = False
    """Extension: train the parts loaded from ``init`` too (default: frozen, so its old tasks are unchanged)."""

    def __post_init__(self) -> None:
        if (self.add_teachers or self.add_tasks) and not self.init:
            raise ConfigError("--add-teacher / --add-task extend a trained student: pass it with --init RUN")
        if self.unfreeze and not (self.add_teachers or self.add_tasks):
            raise ConfigError("--unfreeze applies to an extension: pass --add-teacher or --add-task with --init RUN "
                              "(a plain --init run trains every weight)")
        if self.backbone_weights not in BACKBONE_WEIGHTS and not self.backbone_weights.endswith(".safetensors"):
            raise ConfigError(f"backbone_weights must be 'hub', 'none' or a .safetensors file, got {self.backbone_weights!r}")
        if isinstance(self.img_size, str):  # "448x576"
            object.__setattr__(self, "img_size", parse_hw(self.img_size, "img_size"))
        if self.img_size is not None and (len(self.img_size) != 2 or min(self.img_size) < 1):
            raise ConfigError(f"img_size must be (H, W) with positive sides, got {self.img_size}")


@dataclass(frozen=True, kw_only=True)
class OptimConfig(Config):
    """What is optimized, for how long, and with which learning rate (None: the stage's default)."""

    stage: str = "auto"
    """distill (paper stage 1) | multitask (stage 2: tasks + alpha * distill) | auto (multitask when labelled)."""
    alpha: float = 1.0
    """Weight of the distillation loss in the multitask stage."""
    iters: int = 1000
    """Training steps."""
    lr: float | None = None
    """Peak learning rate (default: distill 1e-3, multitask 2e-5)."""
    weight_decay: float | None = None
    """AdamW weight decay (default: distill 0.01, multitask 1e-6)."""
    decay_scope: str = "all"
    """Parameters that get weight decay: all (official) | matrices (none on norms and biases)."""
    schedule: str | None = None
    """cosine | poly | constant (default: distill cosine, multitask poly 0.9)."""
    schedule_style: str = "timm"
    """timm: official semantics (warmup from warmup_lr; cosine = timm CosineLRScheduler stepped per iteration, so
    step k uses the value of k-1) | plain: warmup from 0 as lr*(k+1)/warmup, value of step k (runs before issue 12)."""
    warmup: int | None = None
    """Linear warmup steps (default: distill 2/30 of iters as official 2 of 30 epochs, multitask 0)."""
    warmup_lr: float | None = None
    """Learning rate the warmup starts from (default: distill 1.25e-7 as official, multitask 0)."""
    min_lr: float | None = None
    """Learning rate at the end of the cosine / poly decay (default: distill 1e-5 as official, multitask 0)."""
    grad_clip: float | None = None
    """Max gradient norm, 0 = off (default: distill off, multitask 10)."""

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        _at_least(self, ("iters",), 1)
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {self.alpha}")
        if self.decay_scope not in DECAY_SCOPES:
            raise ConfigError(f"decay_scope must be one of {DECAY_SCOPES}, got {self.decay_scope!r}")
        if self.schedule_style not in SCHEDULE_STYLES:
            raise ConfigError(f"schedule_style must be one of {SCHEDULE_STYLES}, got {self.schedule_style!r}")

    def resolved(self) -> OptimConfig:
        """Fill the stage defaults (lr, weight decay, schedule, warmup, grad clip); the stage must be chosen."""
        if self.stage not in STAGE_DEFAULTS:
            raise ConfigError(f"choose the stage before resolving: 'distill' or 'multitask', got {self.stage!r}")
        d = STAGE_DEFAULTS[self.stage]
        return replace(
            self,
            lr=self.lr if self.lr is not None else float(d["lr"]),
            weight_decay=self.weight_decay if self.weight_decay is not None else float(d["weight_decay"]),
            schedule=self.schedule or str(d["schedule"]),
            warmup=self.warmup if self.warmup is not None else int(round(self.iters * float(d["warmup_frac"]))),
            grad_clip=self.grad_clip if self.grad_clip is not None else float(d["grad_clip"]),
            min_lr=self.min_lr if self.min_lr is not None else float(d["min_lr"]),
            warmup_lr=self.warmup_lr if self.warmup_lr is not None else float(d["warmup_lr"]),
        )


@dataclass(frozen=True, kw_only=True)
class LoaderConfig(Config):
    """How batches are read: size, reader threads and the block shuffle."""

    batch_size: int = 8
    """Samples per step (per rank); also the evaluation batch."""
    workers: int = 4
    """Reader/decoder threads (0: read in the training thread)."""
    prefetch: int = 4
    """Batches collated ahead."""
    block_size: int = 16
    """Rows per contiguous store read."""
    window: int = 4
    """Blocks shuffled together."""
    targets: str = "auto"
    """Where the teacher targets live: ram / gpu (every selected item's stored targets loaded once into pinned
    host memory / GPU memory, batches gathered there), stream (read from the stores per batch) or auto (gpu if
    they fit in half the free GPU memory, else ram if they fit in half of MemAvailable, else stream).
    Batches are bit-identical in every mode."""
    targets_budget: float | None = None
    """auto: resident targets may take at most this many GB (None: no cap beyond the free memory)."""

    def __post_init__(self) -> None:
        _at_least(self, ("batch_size", "block_size", "window"), 1)
        if self.workers < 0 or self.prefetch < 1:
            raise ConfigError(f"workers must be >= 0 and prefetch >= 1, got {self.workers}, {self.prefetch}")
        if self.targets not in TARGET_MODES:
            raise ConfigError(f"targets must be one of {TARGET_MODES}, got {self.targets!r}")
        if self.targets_budget is not None and self.targets_budget < 0:
            raise ConfigError(f"targets_budget must be >= 0 GB, got {self.targets_budget}")


@dataclass(frozen=True, kw_only=True)
class EvalConfig(Config):
    """When the student is scored on the val split."""

    val_split: str | None = "val"
    """Split scored at step 0, every eval_every steps and at the end; None: no evaluation."""
    eval_every: int = 0
    """Evaluate every N steps (0: at the start and the end only)."""
    eval_samples: int | None = None
    """At most N val samples per evaluation."""
    miou: str = "official"
    """mIoU convention: official (mean over every class, absent = 0) | present (sak's earlier mean over seen classes)."""
    eval_resize: bool = False
    """Resize val images (bilinear) and labels (nearest) to img_size, as sak did before issue 12;
    off: the official val transform, labels scored at their stored resolution, centre-padded."""

    def __post_init__(self) -> None:
        check_miou(self.miou)


@dataclass(frozen=True, kw_only=True)
class CheckpointConfig(Config):
    """Where the run is recorded and how often its state is saved."""

    out: str | None = None
    """Run dir; None: runs/<UTC timestamp>."""
    ckpt_every: int = 100
    """Checkpoint every N steps (0: only at the end)."""


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig(Config):
    """The process: seed, device, precision and how often the metrics are logged."""

    seed: int = 0
    """Seed of the init, the sampler and the gate noise."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N (torchrun: one GPU per rank)."""
    amp: str = "auto"
    """Training: auto (bf16 autocast on cuda) | bf16 | off; never on cpu. Evaluation runs in float32 (as official
    test.py) unless bf16 is asked for explicitly."""
    sync_bn: bool = True
    """Under DDP (world > 1), convert the heads' BatchNorm to SyncBatchNorm (official train_s2.py:243)."""
    log_every: int = 10
    """A metrics.jsonl record every N steps (and at the first and last step)."""
    recipe: str | None = None
    """Name of the recipe (sak-train recipes) the run's values started from; a label, it changes nothing."""

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise ConfigError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        _at_least(self, ("log_every",), 1)


SECTIONS: dict[str, type[Config]] = {
    "data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "loader": LoaderConfig,
    "eval": EvalConfig, "checkpoint": CheckpointConfig, "runtime": RuntimeConfig,
}
#: flat field name -> the section that owns it (field names are unique across sections)
OWNER: dict[str, str] = {f.name: name for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


def field_default(name: str) -> Any:
    """The default of a flat field (e.g. ``"iters"`` -> 1000): the CLI takes its defaults from here."""
    f = next(f for f in dataclasses.fields(SECTIONS[OWNER[name]]) if f.name == name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise ConfigError(f"{name} has no default: pass it")


@dataclass(frozen=True, kw_only=True, init=False)
class TrainConfig(Config):
    """Everything that decides what a training run computes, in sections (see the module docstring).

    Build it from sections, from flat field names, or both (a flat name overrides its section's field):
    ``TrainConfig(cache="./cache", iters=100)`` equals
    ``TrainConfig(data=DataConfig(cache="./cache"), optim=OptimConfig(iters=100))``.
    """

    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __init__(self, **given: Any) -> None:
        unknown = sorted(set(given) - set(SECTIONS) - set(OWNER))
        if unknown:
            raise ConfigError(f"TrainConfig has no field(s) {unknown}; known fields: {sorted(OWNER)}")
        for name, cls in SECTIONS.items():
            section = given.get(name)
            flat = {k: v for k, v in given.items() if OWNER.get(k) == name}
            if isinstance(section, Mapping):
                section = cls.from_dict({**section, **flat})
            elif section is None:
                if name == "data" and "cache" not in flat:
                    raise ConfigError("TrainConfig needs the cache root: TrainConfig(cache='./cache', ...)")
                section = cls(**flat)
            elif flat:
                section = replace(section, **flat)
            object.__setattr__(self, name, section)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Read a sectioned record, or the flat one of run dirs written before the sections."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"TrainConfig: expected an object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(SECTIONS) - set(OWNER))
        if unknown:
            raise ConfigError(f"TrainConfig has no field(s) {unknown}; known fields: {sorted(OWNER)}. "
                              "The file was probably written by a newer version of sak: upgrade sak.")
        grouped: dict[str, dict[str, Any]] = {name: dict(data.get(name) or {}) for name in SECTIONS}
        for key, value in data.items():
            if key in OWNER:
                grouped[OWNER[key]][key] = value
        model = grouped["model"]
        if "backbone_weights" not in model:  # written before issue 12: gate noise was drawn per image
            model["student"] = {"gate_noise": "image", **(model.get("student") or {})}
        for key, value in LEGACY_DEFAULTS.items():  # a record without the field predates it
            grouped[OWNER[key]].setdefault(key, value)
        return cls(**{name: SECTIONS[name].from_dict(values) for name, values in grouped.items()})

    def with_fields(self, **fields: Any) -> TrainConfig:
        """A copy with sections or flat fields changed: ``cfg.with_fields(iters=10, out="runs/x")``.

        What ``dataclasses.replace(cfg, iters=10)`` does at run time, in a form a type checker accepts.
        """
        return type(self)(**{**{name: getattr(self, name) for name in SECTIONS}, **fields})

    def get(self, name: str) -> Any:
        """A field by its flat name (``cfg.get("iters") == cfg.optim.iters``)."""
        if name not in OWNER:
            raise ConfigError(f"TrainConfig has no field {name!r}; known fields: {sorted(OWNER)}")
        return getattr(getattr(self, OWNER[name]), name)

    def to_flat(self) -> dict[str, Any]:
        """The record as one flat dict of JSON values (the layout of run dirs before the sections)."""
        return {k: v for section in SECTIONS for k, v in getattr(self, section).to_dict().items()}

    def resolved(self) -> TrainConfig:
        """Fill the stage defaults of ``optim`` (the stage must be chosen) and make a local cache path absolute."""
        return replace(self, optim=self.optim.resolved(), data=replace(self.data, cache=absolute_cache(self.data.cache)))


def is_url(location: str) -> bool:
    """True for an fsspec URL such as s3://bucket/cache (file:// is a local path)."""
    return "://" in location and not location.startswith("file://")


def absolute_cache(cache: str, base: str | os.PathLike[str] | None = None) -> str:
    """``cache`` as an absolute local path (relative ones against ``base``, default the working directory);
    URLs unchanged. Runs record their cache this way: a relative ``./cache`` meant nothing from another directory."""
    if is_url(cache):
        return cache
    path = cache[len("file://"):] if cache.startswith("file://") else cache
    return os.path.normpath(os.path.join(base if base is not None else os.getcwd(), os.path.expanduser(path)))
