"""Extraction: run each teacher once over indexed datasets and commit its features to a FeatureStore.

``extract(cfg)``:
1. builds every teacher first (a teacher that cannot be loaded fails before any image is read),
   derives its :class:`FeatureSpec` and creates (or reopens) its store;
2. indexes ``cfg.data`` if given, opens the datasets, and plans the work: one sample per
   (image, view), keyed by content (sha256), so an image reached from two datasets is
   extracted once (its commit row names the first occurrence); samples that already have an
   ``ok`` row in a teacher's store are skipped (resume), ``failed`` ones too unless
   ``retry_failed``; dataset rows that failed to index become failed commit rows (``repair``: damaged
   samples are uncommitted first, :mod:`..store.repair`, so they are planned again);
3. cuts the samples into segments of at most ``segment_size`` and runs them as tasks
   (:mod:`.execution`: in-process, a LocalCluster, or a remote dask scheduler). A task decodes
   each image once for all teachers (:mod:`.segment`). The run's options are :class:`.config.ExtractConfig`.

Concurrent runs of one spec split the work: each claims a block (:mod:`.blocks`) before running
it, skips blocks other live runs hold and comes back to them, and skips samples committed since
the plan; each writes only its own segments and parts, and any duplicate is resolved at read time.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from ...manifests.errors import ConfigError
from ...manifests.schemas import STATUS_OK, label_column
from ..data.datasets import FORMAT_KEY, Dataset, index_dataset, list_datasets, open_dataset, write_dataset_index
from ..devices import resolve_device
from ..storage import Location
from ..store.arrays import sample_arrays
from ..store.claims import CLAIMS_DIR
from ..store.feature_store import SPEC_FILE, FeatureStore
from ..store.quant import DEFAULT_QUANT
from ..store.repair import repair_before_extract
from ..store.spec import FeatureSpec
from ..teachers import create_teacher, teacher_info
from .blocks import BlockRounds, block_names, task_groups
from .config import ExtractConfig
from .execution import drop_worker_cached, run_tasks, set_worker_cached
from .segment import RunContext, Sample, SegmentResult, SegmentTask, run_segment, teacher_key

log = logging.getLogger(__name__)

Progress = Callable[..., None]


@dataclass
class TeacherReport:
    teacher: str
    store: Location
    weights: str
    done: int = 0
    skipped_cached: int = 0
    skipped_failed: int = 0  # failed earlier and not retried (pass retry_failed)
    failed: int = 0  # failed in this run
    bytes_written: int = 0  # on disk (arrays, stats, commit parts)
    feature_bytes: int = 0  # features handed to the writers (what crossed from the device)
    write_seconds: float = 0.0  # busy time of the background writers (summed over their threads)
    seconds: float = 0.0  # wall time of the run
    encode_threads: int = 0  # writer threads of the last segment
    segments: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def write_mb_per_s(self) -> float:
        """Write throughput while writing (MB per writer-busy second): compare with the data rate to see what binds."""
        return self.bytes_written / 1e6 / self.write_seconds if self.write_seconds > 0 else 0.0

    @property
    def feature_gb_per_s(self) -> float:
        """Feature bytes handed to the writers per second of the run (beside ``images_per_s``)."""
        return self.feature_bytes / 1e9 / self.seconds if self.seconds > 0 else 0.0

    @property
    def disk_gb_per_s(self) -> float:
        """Bytes on disk per second of the run."""
        return self.bytes_written / 1e9 / self.seconds if self.seconds > 0 else 0.0

    @property
    def random_init(self) -> bool:
        return self.weights.startswith("random-init")


@dataclass
class ExtractReport:
    teachers: list[TeacherReport]
    seconds: float
    images: int  # distinct images considered (after dedup and limit)
    samples: int  # (image, view) samples run in this job
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (teacher, sample_id, error)
    datasets: list[str] = field(default_factory=list)  # names of the datasets the run read

    @property
    def failed(self) -> int:
        return sum(t.failed + t.skipped_failed for t in self.teachers)

    @property
    def stores(self) -> list[Location]:
        return [t.store for t in self.teachers]


def spec_aug(policy: str) -> tuple[str, int]:
    """(spec ``aug``, ``aug_version``) of an extraction policy: ``sak`` -> ("sak", 2), ``sak-v1`` -> ("sak", 1)."""
    return {"none": ("none", 1), "sak": ("sak", 2), "sak-v1": ("sak", 1)}[policy]


def spec_for(teacher, cfg: ExtractConfig) -> FeatureSpec:
    """The FeatureSpec of ``teacher`` under ``cfg`` (layers, dtype, views, ...)."""
    layers = tuple(cfg.layers) if cfg.layers else tuple(teacher.default_layers)
    teacher.check_layers(layers)
    pp = teacher.preprocess
    aug, aug_version = spec_aug(cfg.aug)
    return FeatureSpec(
        aug_crop=cfg.aug_crop, teacher=teacher.name, weights=teacher.weights_id, layers=layers, resolution=tuple(pp.resolution),
        resize=pp.resize, mean=tuple(pp.mean), std=tuple(pp.std), patch_size=teacher.patch_size,
        width=teacher.width, grid=tuple(teacher.grid), num_prefix_tokens=teacher.num_prefix_tokens,
        keep_prefix=cfg.keep_prefix, dtype=cfg.dtype, views=cfg.views, aug=aug, aug_seed=cfg.seed,
        input_protocol=pp.protocol, img_size=pp.frame, aug_version=aug_version,
        quant=(cfg.quant or DEFAULT_QUANT) if cfg.dtype == "int8" else None, codec=cfg.codec, orientation=cfg.orientation or "exif",
    )


def _open_datasets(cfg: ExtractConfig, *, write: bool = True) -> list:
    """The datasets of the run; ``cfg.data`` is indexed into the cache first (``write=False``: in memory only)."""
    names = list(cfg.datasets)
    fresh: Dataset | None = None
    if cfg.data is not None:
        table = index_dataset(cfg.data, name=cfg.data_name, workers=cfg.io_threads)
        name = table.column("source")[0].as_py() if table.num_rows else (cfg.data_name or Path(cfg.data).name)
        if write:
            write_dataset_index(cfg.cache, name, table, cfg.data, replace=cfg.replace)
        else:
            fmt = (table.schema.metadata or {}).get(FORMAT_KEY, b"folder").decode()
            fresh = Dataset(name=name, root=Path(cfg.data).resolve(), table=table, format=fmt)
        names = names + [name] if name not in names else names
    if not names:
        names = list_datasets(cfg.cache)
    if not names:
        raise ConfigError(
            f"no datasets indexed in {cfg.cache}: pass --data <folder> (indexed on the fly) or run "
            f"`sak-cache index <folder> --cache {cfg.cache}` first"
        )
    return [fresh if fresh is not None and n == fresh.name else open_dataset(cfg.cache, n) for n in names]


def student_size(datasets: list) -> tuple[int, int]:
    """The default student input of the student protocol: the largest height and width of the ok images.

    Every image then fits (smaller ones are centre-padded, as the official val transform pads to the
    dataset's input size); pass --img-size to choose (NYUD 448x576, PASCAL 512x512 as official).
    """
    h = w = 0
    for ds in datasets:
        t = ds.table.filter(pc.equal(ds.table.column("status"), STATUS_OK))
        if t.num_rows:
            h = max(h, int(pc.max(t.column("height")).as_py()))
            w = max(w, int(pc.max(t.column("width")).as_py()))
    if not h or not w:
        raise ConfigError("no readable image to size the student input from: pass --img-size HxW")
    return h, w


def _check_fits(cfg: ExtractConfig, datasets: list) -> None:
    """Identity views of the student protocol are only padded: refuse images larger than the student input."""
    if cfg.input_protocol != "student" or cfg.aug != "none" or cfg.img_size is None:
        return
    fh, fw = cfg.img_size
    for ds in datasets:
        t = ds.table
        big = t.filter(pc.and_(pc.equal(t.column("status"), STATUS_OK),
                               pc.or_(pc.greater(t.column("height"), fh), pc.greater(t.column("width"), fw))))
        if big.num_rows:
            row = big.slice(0, 1).to_pylist()[0]
            raise ConfigError(
                f"{big.num_rows} image(s) of dataset '{ds.name}' are larger than the student input {fh}x{fw} (e.g. "
                f"{row['sample_id']}: {row['height']}x{row['width']}); the official protocol pads, it never shrinks. "
                f"Pass --aug sak --aug-crop {fh}x{fw} (crops of the student size), or a larger --img-size"
            )


def _warn_raw_twin(cfg: ExtractConfig, spec: FeatureSpec) -> None:
    """Say so when a store of the same spec but raw orientation exists (written before EXIF support) and this
    run is about to start a new ``exif`` store next to it instead of resuming that one."""
    if spec.orientation != "exif":
        return
    twin = FeatureStore.path_for(cfg.cache, replace(spec, orientation="raw"))
    if (twin / "spec.json").exists() and not (FeatureStore.path_for(cfg.cache, spec) / "spec.json").exists():
        log.warning("%s holds this teacher's features decoded in raw pixel order (a store from before EXIF orientation "
                    "was applied); this run starts a new store that applies it and extracts every image again. To keep "
                    "adding to the old store instead, pass --orientation raw", twin)


def _store_keys(store: FeatureStore, status: str) -> set[tuple[str, int]]:
    t = store.commits(status)
    return set(zip(t.column("image_sha256").to_pylist(), t.column("view").to_pylist(), strict=True))


def plan_samples(cfg: ExtractConfig, datasets: list, stores: list[FeatureStore], reports: list[TeacherReport]) -> tuple[list[Sample], int]:
    """The (image, view) samples still to run, in manifest order; counts skips into ``reports``."""
    seen: set[str] = set()
    images: list[tuple[str, str, str, str, str, str | None, str | None, str, int]] = []
    semseg_col = label_column("semseg")  # the official crop retry reads it (augment.NEEDS_SEMSEG)
    for ds in datasets:
        root = str(ds.root)
        cols = ["sample_id", "path", "sha256", "source", "status", "error", "width", "height"]
        cols += [semseg_col] if semseg_col in ds.table.column_names else []
        for row in ds.table.select(cols).to_pylist():
            key = row["sha256"] or f"unreadable:{row['source']}:{row['sample_id']}"
            if key in seen:
                continue
            seen.add(key)
            error = None if row["status"] == STATUS_OK else (row["error"] or "dataset indexing failed")
            images.append((key, row["sample_id"], row["source"], root, row["path"], error, row.get(semseg_col), ds.format,
                           (row["width"] or 0) * (row["height"] or 0)))
    if cfg.limit is not None:
        images = images[: cfg.limit]
    done = [_store_keys(s, "ok") for s in stores]
    failed = [_store_keys(s, "failed") for s in stores]
    blocks = iter(block_names([(image[0], view) for image in images for view in range(cfg.views)], cfg.segment_size))
    samples = []
    for key, sample_id, source, root, path, error, semseg, fmt, pixels in images:
        for view in range(cfg.views):
            block = next(blocks)  # over the full list: every writer computes the same blocks (.blocks)
            need = []
            for t, rep in enumerate(reports):
                if (key, view) in done[t]:
                    rep.skipped_cached += 1
                elif (key, view) in failed[t] and not cfg.retry_failed:
                    rep.skipped_failed += 1
                else:
                    need.append(t)
            if need:
                samples.append(Sample(key, sample_id, source, root, path, view, tuple(need), error, semseg, fmt, pixels, block))
    return samples, len(images)


def extract(cfg: ExtractConfig, progress: Progress | None = None) -> ExtractReport:
    """Run the extraction described by ``cfg``; returns per-teacher counts and throughput.

    ``progress(advance, **info)`` is called with ``total=`` and ``plan=`` (:func:`plan_record`: samples and bytes
    per teacher) once, with ``decoded=n`` (advance 0) as images are decoded, then per batch with ``failed=`` and
    ``bytes=`` (feature bytes handed to the writers; per segment, without ``bytes``, when a dask
    cluster runs the tasks). int8 stores stop with :class:`.forward.FidelityError` when a batch's
    codes fall below ``min_cosine`` (unless ``force_quant``), before that batch is written.
    """
    t0 = time.perf_counter()
    device = str(resolve_device(cfg.device))  # a plain name travels to dask workers
    cfg, teachers, specs, datasets = resolve_run(cfg)
    created = [not (FeatureStore.path_for(cfg.cache, spec) / SPEC_FILE).exists() for spec in specs]
    stores = []
    try:
        for spec in specs:
            _warn_raw_twin(cfg, spec)
            stores.append(FeatureStore.create(cfg.cache, spec))
        return _run(cfg, t0, device, teachers, specs, stores, datasets, progress)
    except BaseException:  # a run that fails before its first commit leaves no empty store behind
        for store, new in zip(stores, created, strict=False):
            if new:
                remove_if_empty(store.path)
        raise


def resolve_run(cfg: ExtractConfig, *, write: bool = True) -> tuple[ExtractConfig, list, list[FeatureSpec], list]:
    """Build the teachers, derive their specs and open the datasets (``write=False``: nothing is written, as
    ``--dry-run`` needs); ``cfg`` comes back with the student size filled in. Fails on a bad teacher, weights
    file or dataset before any image is read and before any store is created."""
    datasets = None
    if cfg.input_protocol == "student" and cfg.img_size is None:  # the images decide the student size
        for i, name in enumerate(cfg.teachers):  # an unknown teacher or weights file fails before any image is read
            teacher_info(name)
            if cfg.weights and not Path(cfg.weights[i]).is_file():
                raise ConfigError(f"weights file {cfg.weights[i]} does not exist; pass the path of a .safetensors file")
        datasets = _open_datasets(cfg, write=write)
        size = student_size(datasets)
        log.info("student input %dx%d (the largest image; pass --img-size to choose)", *size)
        cfg = replace(cfg, img_size=size, aug_crop=size if cfg.aug != "none" else None)
    teachers, specs = [], []
    for i, name in enumerate(cfg.teachers):  # fail on a bad teacher before touching any image
        weights = cfg.weights[i] if cfg.weights else None
        teacher = create_teacher(name, weights=weights, random_init=cfg.random_init, seed=cfg.seed, resolution=cfg.resolution,
                                 img_size=cfg.img_size)
        teachers.append(teacher)
        specs.append(spec_for(teacher, cfg))
    if datasets is None:
        datasets = _open_datasets(cfg, write=write)
    _check_fits(cfg, datasets)  # before any store is created
    return cfg, teachers, specs, datasets


def remove_if_empty(store_path: Location) -> None:
    """Remove a store folder that holds no segment and no commit part (then ``features/`` if that is empty)."""
    if any((store_path / sub).is_dir() and (store_path / sub).list_names() for sub in ("segments", "manifest", CLAIMS_DIR)):
        return
    store_path.remove_tree()
    log.info("removed the empty store %s (the run failed before its first commit)", store_path)
    features = store_path.parent
    if features.is_dir() and not features.list_names():
        features.remove_tree()


def sample_bytes(spec: FeatureSpec) -> int:
    """Bytes one sample takes in the store's arrays: grid x width x layers x dtype (int8: codes + scales; plus the
    prefix tokens when kept). Exact: the sum over :func:`..store.arrays.sample_arrays`."""
    return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for _, shape, dtype in sample_arrays(spec))


def plan_record(specs: list[FeatureSpec], stores: list, reports: list[TeacherReport], samples: list[Sample], n_images: int) -> dict:
    """The planned size of a run, per teacher: samples to extract, bytes per sample and in total."""
    teachers = []
    for t, spec in enumerate(specs):
        n = sum(t in s.teachers for s in samples)
        per = sample_bytes(spec)
        teachers.append({"teacher": spec.teacher, "store": spec.store_name, "path": str(stores[t]), "samples": n,
                         "reused": reports[t].skipped_cached, "bytes_per_sample": per, "bytes": n * per,
                         "shape": f"{spec.grid[0]}x{spec.grid[1]} x {spec.width} x {len(spec.layers)} layers x {spec.dtype}"})
    return {"images": n_images, "samples": len(samples), "bytes": sum(t["bytes"] for t in teachers), "teachers": teachers}


def _run(cfg: ExtractConfig, t0: float, device: str, teachers: list, specs: list[FeatureSpec], stores: list[FeatureStore],
         datasets: list, progress: Progress | None) -> ExtractReport:
    if cfg.repair:
        for store in stores:
            repair_before_extract(store)
    reports = [TeacherReport(teacher=s.teacher, store=st.path, weights=s.weights) for s, st in zip(specs, stores, strict=True)]
    samples, n_images = plan_samples(cfg, datasets, stores, reports)
    ctx = RunContext(
        cfg=cfg, specs=tuple(specs), store_paths=tuple(str(s.path) for s in stores), device=device,
        known_segments=tuple(frozenset(s.committed_segments()) for s in stores), run_token=secrets.token_hex(8),
    )
    in_process = cfg.scheduler is None and cfg.workers <= 1
    if in_process:  # reuse the teachers built above instead of building them again
        for t, teacher in enumerate(teachers):
            set_worker_cached(teacher_key(ctx, t), teacher.to(device))
    teachers.clear()  # the caller's list too: dask workers build their own
    def make_tasks(todo: list[Sample], first: int) -> list[SegmentTask]:  # whole blocks packed (claims), else chunks
        return [SegmentTask(index=first + i, samples=tuple(g)) for i, g in enumerate(task_groups(todo, cfg.segment_size, cfg.claims))]

    tasks = make_tasks(samples, 0)
    plan = plan_record(specs, [st.path for st in stores], reports, samples, n_images)
    log.info("extracting %d samples of %d images in %d segment(s) for %s: %s", len(samples), n_images, len(tasks), ", ".join(cfg.teachers),
             "; ".join(f"{t['teacher']} {t['bytes_per_sample']:,} bytes per sample, {t['bytes'] / 1e6:,.1f} MB" for t in plan["teachers"]))
    if progress is not None:
        progress(0, total=len(samples), plan=plan)

    def on_result(res: SegmentResult) -> None:
        if progress is not None and not in_process:
            progress(res.samples, bytes=sum(t.feature_bytes for t in res.teachers))

    try:
        results = run_tasks(
            run_segment, tasks, args=(ctx,), workers=cfg.workers, scheduler=cfg.scheduler, on_result=on_result,
            local_kwargs={"progress": progress},
            next_round=BlockRounds(cfg.lease_seconds, make_tasks, first=len(tasks)),
        )
    finally:
        if in_process:  # free the models (GPU memory) once the run is over
            for t in range(len(specs)):
                drop_worker_cached(teacher_key(ctx, t))
    seconds = time.perf_counter() - t0
    failures: list[tuple[str, str, str]] = []
    for res in results:
        for t, rep in enumerate(reports):
            part = res.teachers[t]
            rep.done += part.done
            rep.failed += part.failed
            rep.skipped_cached += part.skipped_cached
            rep.skipped_failed += part.skipped_failed
            rep.bytes_written += part.bytes_written
            rep.feature_bytes += part.feature_bytes
            rep.write_seconds += part.write_seconds
            rep.encode_threads = part.encode_threads or rep.encode_threads
            rep.segments += part.segments
        failures += [(cfg.teachers[t], sid, err) for t, sid, err in res.failures]
    for rep in reports:
        rep.seconds = seconds
    return ExtractReport(teachers=reports, seconds=seconds, images=n_images, samples=len(samples), failures=failures,
                         datasets=[ds.name for ds in datasets])
