"""One extraction task: a segment of (image, view) samples, run through every teacher that needs them.

Inside a task, once its blocks are claimed in each teacher's store (:mod:`.blocks`; blocks another
live run holds are handed back as deferred) and what others committed meanwhile is dropped:
* a thread pool reads each image's bytes once, checks them against the sha256 the index recorded
  (bytes that changed since indexing make a failed row: their features would otherwise be stored,
  and served to every dataset holding the original bytes, under the original's hash), decodes
  them with the spec's orientation policy (``decode_rgb``), builds its views (identity, or the
  replayable ``sample_view`` params applied with ``apply_view_image``) and each teacher's
  preprocessing, a few batches ahead of the model (prefetch). The decode-ahead is bounded by
  decoded bytes in flight (:data:`DECODE_AHEAD_BYTES`, from the index's width x height; always
  at least one image) as well as by count: one 9000x9000 image is 243 MB decoded;
* each teacher runs batched under ``torch.inference_mode`` (autocast fp16/bf16 on CUDA, matching
  the store dtype; fp16 for int8), its maps are converted to the store dtype, or quantized to int8
  codes + scales with their fidelity measured and gated, on the device (:mod:`.forward`), copied to
  host, and handed to that teacher's :class:`SegmentWriter`, whose encode threads (as many as the
  output rate needs: :func:`encode_threads_for`) compress and write;
* a sample that cannot be decoded (:class:`BadImage`) or gives non-finite values becomes a
  ``failed`` commit row with its error, and the task goes on;
* at the end every writer commits its segment (one part per teacher store). If the task dies,
  nothing of it is committed.
Models and open stores are cached per worker process (:func:`.execution.worker_cached`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...manifests.errors import SakError
from ...manifests.paths import resolve_inside
from ..data.augment import NEEDS_SEMSEG, View, apply_view_image, identity_view, sample_view
from ..data.images import decode_rgb
from ..data.labels import load_label
from ..store.claims import BlockClaims, LeaseKeeper
from ..store.feature_store import FeatureStore
from ..store.spec import FeatureSpec
from ..store.writer import SampleKey
from ..teachers import create_teacher
from .blocks import claim_blocks
from .execution import worker_cached, worker_index
from .forward import check_fidelity, forward

log = logging.getLogger(__name__)

#: Encode threads a writer may get, and how much faster than the output they should be able to go.
MAX_ENCODE_THREADS = 8
ENCODE_HEADROOM = 1.25
#: Decoded RGB bytes (width * height * 3, from the index) that the decode-ahead may hold in flight per task.
DECODE_AHEAD_BYTES = 128 << 20  # a 9000x9000 image (243 MB) decodes alone; 4K photos (24 MB) 5 at a time
NON_FINITE = "non-finite feature values (float16 overflow?); extract this teacher with --dtype bfloat16 or float32"


@dataclass(frozen=True)
class Sample:
    """One (image, view) to extract, and which teachers (indices) still need it."""

    image_sha256: str  # content key; "unreadable:<source>:<sample_id>" when indexing could not hash it
    sample_id: str
    source: str
    root: str  # dataset root
    path: str  # image path relative to the root (resolved, path-escape checked, in the worker)
    view: int
    teachers: tuple[int, ...]
    error: str | None = None  # dataset-level failure: recorded as failed without decoding
    semseg: str | None = None  # semseg label path relative to the root (the official crop retry reads it)
    fmt: str = "nyud"  # dataset format (how the label decodes)
    pixels: int = 0  # width * height from the index (the decode-ahead budget); 0: unknown
    block: str = ""  # the block of work it belongs to (claimed per store before it runs: .blocks)


@dataclass(frozen=True)
class SegmentTask:
    index: int
    samples: tuple[Sample, ...]


@dataclass(frozen=True)
class RunContext:
    """Everything a worker needs (picklable): the config, the specs and where their stores are."""

    cfg: Any  # ExtractConfig
    specs: tuple[FeatureSpec, ...]
    store_paths: tuple[str, ...]
    device: str
    known_segments: tuple[frozenset, ...]  # committed segments per store when the plan was made
    run_token: str = ""  # this run's token in block claims (its dask workers share it)


@dataclass
class TeacherPart:
    done: int = 0
    failed: int = 0
    skipped_cached: int = 0  # committed by another writer after the plan was made
    skipped_failed: int = 0  # failed in a part another writer committed after the plan was made
    bytes_written: int = 0  # on disk (arrays, stats, commit part)
    feature_bytes: int = 0  # features handed to the writer (what crossed from the device)
    write_seconds: float = 0.0
    encode_threads: int = 1
    segments: list[str] = field(default_factory=list)


@dataclass
class SegmentResult:
    index: int
    samples: int  # samples handled (run or skipped) for every teacher that needed them
    teachers: list[TeacherPart]
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # (teacher index, sample_id, error)
    deferred: list[Sample] = field(default_factory=list)  # blocks another live run holds: the teachers still to do
    holders: set[str] = field(default_factory=set)  # "host:pid" of those claims


@dataclass
class _Prepared:
    sample: Sample
    view_params: str
    inputs: dict[int, Any]  # teacher index -> (3, H, W) float32 tensor
    error: str | None = None


def _worker_device(device: str) -> str:
    """One GPU per dask worker process when several GPUs are visible."""
    idx = worker_index()
    if device == "cuda" and idx is not None:
        import torch

        count = torch.cuda.device_count()
        if count > 1:
            return f"cuda:{idx % count}"
    return device


def teacher_key(ctx: RunContext, t: int) -> tuple:
    cfg = ctx.cfg
    weights = cfg.weights[t] if cfg.weights else None
    return ("teacher", cfg.teachers[t], weights, cfg.random_init, cfg.seed, cfg.resolution, cfg.img_size,
            _worker_device(ctx.device))


def _teacher(ctx: RunContext, t: int):
    cfg, key = ctx.cfg, teacher_key(ctx, t)
    return worker_cached(
        key,
        lambda: create_teacher(
            cfg.teachers[t], weights=key[2], random_init=cfg.random_init, seed=cfg.seed, resolution=cfg.resolution,
            img_size=cfg.img_size,
        ).to(key[-1]),
    )


def _late_keys(store: FeatureStore, known: frozenset) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
    """(ok, failed) (sha256, view) keys of parts committed after the plan (by other writers).

    Parts never change once committed, so each is read once per process (a run that comes back
    to deferred blocks reads only the parts committed since its last look).
    """
    seen = worker_cached(("late-parts", str(store.path)), dict)
    ok: set[tuple[str, int]] = set()
    failed: set[tuple[str, int]] = set()
    for seg in store.committed_segments():
        if seg in known:
            continue
        if seg not in seen:
            t = store.read_part(seg)
            rows = zip(t.column("image_sha256").to_pylist(), t.column("view").to_pylist(), t.column("status").to_pylist(), strict=True)
            seen[seg] = [((h, v), st == "ok") for h, v, st in rows]
        for key, is_ok in seen[seg]:
            (ok if is_ok else failed).add(key)
    return ok, failed - ok


def _prepare_image(group: list[Sample], teachers: list, cfg) -> list[_Prepared]:
    """Decode one image once and build every (view, teacher) input its samples need."""
    import torch

    first = group[0]
    if first.error is not None:
        return [_Prepared(s, "{}", {}, first.error) for s in group]
    try:
        hint = f"sak-cache index {first.root} --name {first.source} --cache {cfg.cache} --replace"
        rgb = decode_rgb(resolve_inside(first.root, first.path), sha256=first.image_sha256,
                         orientation=cfg.orientation, reindex_hint=hint)
        semseg = None
        if cfg.aug in NEEDS_SEMSEG and first.semseg is not None:
            semseg = load_label("semseg", resolve_inside(first.root, first.semseg), dataset=first.fmt)
    except SakError as exc:  # BadImage, PathEscape, DatasetError
        return [_Prepared(s, "{}", {}, str(exc)) for s in group]
    hw = (int(rgb.shape[0]), int(rgb.shape[1]))
    out, x01 = [], None
    for s in group:
        try:
            params: View
            if cfg.aug == "none":
                params = identity_view(hw)
                inputs = {t: teachers[t].preprocess(rgb) for t in s.teachers}
            else:
                params = sample_view(s.image_sha256, s.view, hw, policy=cfg.aug, seed=cfg.seed, crop_hw=cfg.aug_crop,
                                     semseg=semseg)
                if x01 is None:
                    x01 = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)
                view = apply_view_image(x01, params)
                inputs = {t: teachers[t].preprocess.from_tensor(view) for t in s.teachers}
            out.append(_Prepared(s, params.to_json(), inputs))
        except (SakError, ValueError, RuntimeError) as exc:
            log.debug("view %d of %s failed", s.view, s.sample_id, exc_info=True)
            out.append(_Prepared(s, "{}", {}, f"{type(exc).__name__}: {exc}"))
    return out


def _image_groups(samples: list[Sample]) -> list[list[Sample]]:
    groups: list[list[Sample]] = []
    for s in samples:
        if groups and groups[-1][0].image_sha256 == s.image_sha256:
            groups[-1].append(s)
        else:
            groups.append([s])
    return groups


def _group_bytes(group: list[Sample]) -> int:
    return 3 * group[0].pixels  # decoded RGB uint8; views and teacher inputs are sized by the spec, not the image


def _prepared_batches(samples: list[Sample], teachers: list, cfg,
                      decoded: Callable[[int], None] | None = None) -> Iterator[list[_Prepared]]:
    """Prepared samples in plan order, ``batch_size`` at a time, decoded ahead in a thread pool.

    Ahead of the consumer: at most ``ahead`` samples, and at most :data:`DECODE_AHEAD_BYTES` of
    decoded images (by the index's size; counted from submission until the result is taken), but
    always at least one image, so an image larger than the budget still runs, alone.
    """
    groups = _image_groups(samples)
    ahead = max(2 * cfg.batch_size, 4 * cfg.io_threads)
    batch: list[_Prepared] = []
    with ThreadPoolExecutor(max_workers=cfg.io_threads, thread_name_prefix="sak-decode") as pool:
        pending: deque = deque()
        queued = queued_bytes = 0
        it = iter(groups)
        group = next(it, None)
        while True:
            while group is not None and queued < ahead and (
                    not pending or queued_bytes + _group_bytes(group) <= DECODE_AHEAD_BYTES):
                nbytes = _group_bytes(group)
                pending.append((len(group), nbytes, pool.submit(_prepare_image, group, teachers, cfg)))
                queued += len(group)
                queued_bytes += nbytes
                group = next(it, None)
            if not pending:
                break
            n, nbytes, fut = pending.popleft()
            queued -= n
            queued_bytes -= nbytes
            batch.extend(fut.result())
            if decoded is not None:  # image granularity: a CPU batch can take minutes
                decoded(n)
            while len(batch) >= cfg.batch_size:
                yield batch[: cfg.batch_size]
                batch = batch[cfg.batch_size :]
    if batch:
        yield batch


def encode_threads_for(cfg, spec: FeatureSpec, history: dict | None, device: str | None = None) -> int:
    """Encode threads of a segment writer, following the output rate.

    ``history`` is what the previous segment of this store measured in this process (bytes/s handed
    to the writer, and bytes per busy writer-second per thread); with none yet, a guess by sample size
    (paper-size maps need several threads, 224-px ones one). ``--encode-threads`` overrides.
    When the teacher runs on the CPU (``device`` cpu), its intra-op threads already take the cores:
    the writer gets only the cores they leave (at least one thread), since a writer thread that
    preempts one of torch's threads stalls the whole forward, not just its own share.
    """
    if cfg.encode_threads:
        return int(cfg.encode_threads)
    cores = os.cpu_count() or 1
    if device is not None and device.startswith("cpu"):
        import torch

        cores = max(1, cores - torch.get_num_threads())
    top = max(1, min(MAX_ENCODE_THREADS, cores))
    if not history or history.get("per_thread_bps", 0) <= 0:
        h, w = spec.grid
        sample = h * w * spec.width * len(spec.layers) * 2
        return 1 if sample < (4 << 20) else min(4, top)
    return max(1, min(top, math.ceil(ENCODE_HEADROOM * history["out_bps"] / history["per_thread_bps"])))


def run_segment(task: SegmentTask, ctx: RunContext, progress: Callable[..., None] | None = None) -> SegmentResult:
    """Extract one segment for every teacher; commit one part per teacher store. Worker entry point."""
    cfg, specs = ctx.cfg, ctx.specs
    if worker_index() is not None and cfg.scheduler is None:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, cfg.workers)))
    result = SegmentResult(index=task.index, samples=len(task.samples), teachers=[TeacherPart() for _ in specs])
    stores = [worker_cached(("store", p), functools.partial(FeatureStore.open, p, read_only=False)) for p in ctx.store_paths]
    samples = list(task.samples)
    held: list = []
    if cfg.claims:  # claim each block per store; blocks another live run holds come back as deferred
        claims = [BlockClaims(store.path, run=ctx.run_token, lease_seconds=cfg.lease_seconds) for store in stores]
        samples, result.deferred, held, result.holders = claim_blocks(samples, claims)
        waiting = {(s.image_sha256, s.view) for s in result.deferred}
        result.samples = sum((s.image_sha256, s.view) not in waiting for s in task.samples)
    keeper = LeaseKeeper(held)
    try:
        with keeper:  # renews the claims while the blocks run; released after their commit (or failure)
            samples = _skip_late(samples, stores, ctx, result, progress)
            _run_samples(samples, stores, ctx, result, progress)
    finally:
        keeper.release_all()
    return result


def _skip_late(samples: list[Sample], stores: list[FeatureStore], ctx: RunContext, result: SegmentResult,
               progress: Callable[..., None] | None) -> list[Sample]:
    """Drop what other writers committed since the plan (read after claiming, so nothing they
    finished meanwhile is redone)."""
    late = [_late_keys(store, known) for store, known in zip(stores, ctx.known_segments, strict=True)]
    if not any(ok or failed for ok, failed in late):
        return samples
    kept, skipped = [], 0
    for s in samples:
        key = (s.image_sha256, s.view)
        need = tuple(t for t in s.teachers if key not in late[t][0] and key not in late[t][1])
        for t in set(s.teachers) - set(need):
            if key in late[t][0]:
                result.teachers[t].skipped_cached += 1
            else:
                result.teachers[t].skipped_failed += 1
        if need:
            kept.append(dataclasses.replace(s, teachers=need))
        else:
            skipped += 1
    if progress is not None and skipped:
        progress(skipped)
    return kept


def _run_samples(samples: list[Sample], stores: list[FeatureStore], ctx: RunContext, result: SegmentResult,
                 progress: Callable[..., None] | None) -> None:
    """Run ``samples`` through their teachers and commit one segment per teacher store."""
    cfg, specs = ctx.cfg, ctx.specs
    counts = [sum(t in s.teachers for s in samples) for t in range(len(specs))]
    teachers = [_teacher(ctx, t) if counts[t] else None for t in range(len(specs))]
    device = _worker_device(ctx.device)
    threads = [encode_threads_for(cfg, spec, worker_cached(("encode-rate", spec.spec_id), dict), device) for spec in specs]
    writers = [stores[t].writer(counts[t], encode_threads=threads[t]) if counts[t] else None for t in range(len(specs))]
    t_start = time.perf_counter()
    try:
        on_decoded = None if progress is None else (lambda n: progress(0, decoded=n))
        for batch in _prepared_batches(samples, teachers, cfg, on_decoded):
            n_failed, n_bytes = 0, 0
            for t, spec in enumerate(specs):
                writer = writers[t]
                if writer is None:
                    continue
                mine = [p for p in batch if t in p.sample.teachers]
                for p in mine:
                    if p.error is not None:
                        writer.add_failed(_key(p), p.error)
                        result.failures.append((t, p.sample.sample_id, p.error))
                        n_failed += 1
                good = [p for p in mine if p.error is None]
                if not good:
                    continue
                out = forward(teachers[t], spec, [p.inputs[t] for p in good], device)
                if spec.dtype == "int8":  # before anything of this batch reaches the writer
                    check_fidelity(spec, out.fidelity, cfg.min_cosine, cfg.force_quant)
                    for f in out.fidelity:
                        if f.count:
                            writer.add_fidelity(f.layer, "raw", f.count, f.raw_sum, f.raw_min)
                            writer.add_fidelity(f.layer, "std", f.count, f.std_sum, f.std_min)
                if not out.finite.all():
                    for p in (p for p, ok in zip(good, out.finite, strict=True) if not ok):
                        writer.add_failed(_key(p), NON_FINITE)
                        result.failures.append((t, p.sample.sample_id, NON_FINITE))
                        n_failed += 1
                    good = [p for p, ok in zip(good, out.finite, strict=True) if ok]
                    out = out.select(out.finite)
                if good:
                    writer.append([_key(p) for p in good], out.layers, out.prefix, stats=out.stats)
                    result.teachers[t].feature_bytes += out.nbytes
                    n_bytes += out.nbytes
            if progress is not None:
                progress(len(batch), failed=n_failed, bytes=n_bytes)
        for t, writer in enumerate(writers):
            if writer is None:
                continue
            rep = writer.commit()
            part = result.teachers[t]
            part.done, part.failed = rep.n_ok, rep.n_failed
            part.bytes_written, part.write_seconds = rep.bytes_written, rep.write_seconds
            part.encode_threads = threads[t]
            part.segments.append(rep.segment_id)
            _remember_rate(specs[t], part, time.perf_counter() - t_start)
    except BaseException:
        for writer in writers:
            if writer is not None:
                writer.abort()
        raise


def _remember_rate(spec: FeatureSpec, part: TeacherPart, seconds: float) -> None:
    """What the next segment of this store sizes its writer pool from (:func:`encode_threads_for`)."""
    if part.feature_bytes and part.write_seconds > 0 and seconds > 0:
        rate = worker_cached(("encode-rate", spec.spec_id), dict)
        rate["out_bps"] = part.feature_bytes / seconds
        rate["per_thread_bps"] = part.feature_bytes / part.write_seconds  # write_seconds: busy time summed over threads


def _key(p: _Prepared) -> SampleKey:
    s = p.sample
    return SampleKey(s.image_sha256, s.sample_id, s.source, s.view, p.view_params)
