"""TrainConfig: the experiment record of one `sak-train fit` run (saved as runs/NAME/config.json).

Stage defaults follow the SAK paper:

===========  =====  ======  ========  ======  =========
stage        lr     wd      schedule  warmup  grad clip
===========  =====  ======  ========  ======  =========
distill      1e-3   0.01    cosine    5%      off
multitask    2e-5   1e-6    poly 0.9  0       10
===========  =====  ======  ========  ======  =========

Fields left ``None`` are filled by :meth:`TrainConfig.resolved` so the saved
config always states every number the run used.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ...manifests.config import Config
from ...manifests.errors import ConfigError

from .schedule import SCHEDULES

STAGES = ("auto", "distill", "multitask")  # auto: multitask when the dataset has labels, else distill
AUG_MODES = ("auto", "none")
AMP_MODES = ("auto", "bf16", "off")

STAGE_DEFAULTS: dict[str, dict[str, object]] = {
    "distill": {"lr": 1e-3, "weight_decay": 0.01, "schedule": "cosine", "warmup_frac": 0.05, "grad_clip": 0.0},
    "multitask": {"lr": 2e-5, "weight_decay": 1e-6, "schedule": "poly", "warmup_frac": 0.0, "grad_clip": 10.0},
}


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Config):
    """Everything that decides what a training run computes."""

    cache: str
    dataset: str | None = None  # None: the cache's only dataset
    teachers: tuple[str, ...] = ()  # store names, teacher names or aliases; (): every store covering the dataset
    backbone: str = "vit_small_patch16_224"
    img_size: tuple[int, int] | None = None  # (H, W) student input; None: the stores' view size or the images' size
    student: dict[str, object] | None = None  # extra StudentConfig fields (levels, adapter_ratio, depth, ...)
    stage: str = "auto"
    alpha: float = 1.0  # weight of the distillation loss in the multitask stage
    iters: int = 1000
    batch_size: int = 8
    lr: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    warmup: int | None = None  # steps
    min_lr: float = 0.0
    grad_clip: float | None = None  # 0 = off
    seed: int = 0
    train_split: str = "train"
    val_split: str | None = "val"  # None: no evaluation
    aug: str = "auto"  # auto: replay the stores' stored views (identity for --aug none stores); none: refuse augmented stores
    feature_flip: bool = False  # approximate: flips image, labels AND target maps (a ViT's features are not mirror-equivariant)
    online: bool = False  # run the teachers every step instead of reading the cache (the official SAK way)
    teacher_weights: tuple[str, ...] = ()  # online mode, "file:" stores: "<store or teacher>=<weights.safetensors>"
    standardize: bool = True  # standardize teacher targets with the stores' per-channel stats when they have them
    amp: str = "auto"  # bf16 autocast on cuda; never on cpu
    device: str = "auto"
    workers: int = 4  # reader/decoder threads
    prefetch: int = 4  # batches collated ahead
    block_size: int = 16  # rows per contiguous read
    window: int = 4  # blocks shuffled together
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate at the start and the end only
    eval_samples: int | None = None  # cap on val samples per evaluation
    ckpt_every: int = 100
    allow_missing: bool = False  # train on the covered samples when a store lacks some (else refuse)
    init: str | None = None  # start from the weights of another run (e.g. the distill stage): run dir or .safetensors
    out: str | None = None  # run dir; None: runs/<UTC timestamp>

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.aug not in AUG_MODES:
            raise ConfigError(f"aug must be one of {AUG_MODES}, got {self.aug!r}")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for name in ("iters", "batch_size", "block_size", "window", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.img_size is not None and (len(self.img_size) != 2 or min(self.img_size) < 1):
            raise ConfigError(f"img_size must be (H, W) with positive sides, got {self.img_size}")
        if self.workers < 0 or self.prefetch < 1:
            raise ConfigError(f"workers must be >= 0 and prefetch >= 1, got {self.workers}, {self.prefetch}")
        if self.alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {self.alpha}")
        for item in self.teacher_weights:
            if "=" not in item:
                raise ConfigError(f"teacher_weights entries look like 'dinov2=/path/w.safetensors', got {item!r}")

    def resolved(self) -> "TrainConfig":
        """Fill the stage defaults (lr, weight decay, schedule, warmup, grad clip); the stage must be chosen."""
        if self.stage not in STAGE_DEFAULTS:
            raise ConfigError(f"choose the stage before resolving: 'distill' or 'multitask', got {self.stage!r}")
        d = STAGE_DEFAULTS[self.stage]
        return replace(
            self,
            lr=self.lr if self.lr is not None else float(d["lr"]),  # type: ignore[arg-type]
            weight_decay=self.weight_decay if self.weight_decay is not None else float(d["weight_decay"]),  # type: ignore[arg-type]
            schedule=self.schedule or str(d["schedule"]),
            warmup=self.warmup if self.warmup is not None else int(round(self.iters * float(d["warmup_frac"]))),  # type: ignore[arg-type]
            grad_clip=self.grad_clip if self.grad_clip is not None else float(d["grad_clip"]),  # type: ignore[arg-type]
        )
