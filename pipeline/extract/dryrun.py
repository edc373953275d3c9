"""``extract --dry-run``: what a run would cost, from the spec and ONE measured batch; nothing is written.

Everything a real run resolves is resolved (teachers built, specs derived, datasets opened or, with
``data``, indexed in memory, the work planned against the stores that exist), then one batch of the
planned samples is decoded and forwarded through every teacher on the run's device and dropped.
Bytes come from the spec (exact for the stored arrays, :func:`.job.sample_bytes`); the time estimate
is the planned samples at the measured rate. The measured batch includes the first forward's warm-up,
so the estimate errs long on a GPU; on a CPU the first batch is representative.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pyarrow as pa

from ..devices import resolve_device
from ..store.feature_store import SPEC_FILE, FeatureStore
from .config import ExtractConfig
from .forward import forward
from .job import TeacherReport, plan_record, plan_samples, resolve_run
from .segment import _prepared_batches


class _Absent:
    """A store that does not exist yet: nothing committed."""

    def commits(self, status: str | None = None) -> pa.Table:
        return pa.table({"image_sha256": pa.array([], pa.string()), "view": pa.array([], pa.int32())})


@dataclass
class DryRunReport:
    """The plan of a run (:func:`.job.plan_record`) and one measured batch."""

    plan: dict
    device: str
    measured: int = 0  # samples in the measured batch (0: nothing to run)
    seconds: float = 0.0  # decode + forward of the measured batch, every teacher
    measured_bytes: list[int] = field(default_factory=list)  # per teacher: feature bytes per sample of the batch

    @property
    def images_per_s(self) -> float:
        return self.measured / self.seconds if self.seconds > 0 else 0.0

    @property
    def estimate_seconds(self) -> float:
        """The planned samples at the measured rate (0 when nothing is to run)."""
        return self.plan["samples"] / self.images_per_s if self.images_per_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {**self.plan, "device": self.device, "measured_samples": self.measured, "measured_seconds": self.seconds,
                "images_per_s": self.images_per_s, "estimate_seconds": self.estimate_seconds,
                "measured_bytes_per_sample": self.measured_bytes}


def dry_run(cfg: ExtractConfig) -> DryRunReport:
    """Plan ``cfg`` and time one batch of it on ``cfg.device``; writes nothing (no store, no index, no claim)."""
    device = str(resolve_device(cfg.device))
    cfg, teachers, specs, datasets = resolve_run(cfg, write=False)
    stores: list = []
    for spec in specs:
        path = FeatureStore.path_for(cfg.cache, spec)
        stores.append(FeatureStore.open(path) if (path / SPEC_FILE).exists() else _Absent())
    reports = [TeacherReport(teacher=s.teacher, store=FeatureStore.path_for(cfg.cache, s), weights=s.weights) for s in specs]
    samples, n_images = plan_samples(cfg, datasets, stores, reports)
    plan = plan_record(specs, [r.store for r in reports], reports, samples, n_images)
    report = DryRunReport(plan=plan, device=device)
    if not samples:
        return report
    models = [t.to(device) for t in teachers]
    t0 = time.perf_counter()
    batch = next(_prepared_batches(samples[: cfg.batch_size], models, cfg))
    sizes = []
    for t, spec in enumerate(specs):
        good = [p for p in batch if t in p.sample.teachers and p.error is None]
        if good:
            out = forward(models[t], spec, [p.inputs[t] for p in good], device)
            sizes.append(out.nbytes // len(good))
        else:
            sizes.append(0)
    report.seconds = time.perf_counter() - t0
    report.measured, report.measured_bytes = len(batch), sizes
    return report
