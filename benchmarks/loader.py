"""Loader efficiency: the cached-target loader's samples/s vs plain reads of the same store files.

A store of synthetic teacher targets (float16, the layout ``sak-cache extract`` writes:
one chunk per sample, shards, zstd) is written for a procedural NYUD dataset. Then, after
dropping the store files from the OS page cache (``posix_fadvise DONTNEED``) before each cold
measurement:

* raw: every file of the store's segments read front to back with plain ``read()`` calls;
  samples/s = stored rows / seconds (the bandwidth the disk gives to a sequential reader);
* targets: the loader's target stage exactly as ``Loader`` runs it (block-shuffle sampler,
  ``CachedTargets.read_window`` on a thread pool, windows in order) over one epoch of the
  train split; also without shuffling, and with one-row blocks (per-sample random reads:
  what block shuffling avoids);
* full loader: ``CachedTargets.batches`` (targets + image/label decode + collation), warm;
* step: one training step of the student on a batch (``sak.student.train.setup.prepare`` + the
  trainer's step), as samples/s: the rate a training run consumes samples.

Targets: targets/raw >= 0.8 (cold, block shuffle), and full loader / step >= 1 (never the bottleneck).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .common import (
    Bench,
    Scratch,
    alternate,
    demo_dataset,
    dir_bytes,
    evict,
    files_under,
    indexed,
    median,
    parser,
    pick,
    say,
    setup,
)

SIZES = {
    "quick": dict(samples=32, image_size=(64, 80), grid=(4, 4), width=32, student="vit_tiny_patch16_224",
                  batch_size=4, block_size=8, window=2, workers=2, rounds=1),
    # CPU: ViT-B/14 targets at 224 px (16x16 x 768, 4 layers: 1.5 MB per sample in float16).
    "cpu": dict(samples=256, image_size=(224, 288), grid=(16, 16), width=768, student="vit_small_patch16_224",
                batch_size=8, block_size=16, window=4, workers=4, rounds=3),
    # GPU machine: ViT-B/14 targets at 448 px (32x32 x 768, 4 layers: 6.3 MB per sample).
    "cuda": dict(samples=384, image_size=(448, 576), grid=(32, 32), width=768, student="vit_base_patch16_384",
                 batch_size=8, block_size=16, window=4, workers=8, rounds=3),
}
LAYERS = (2, 5, 8, 11)


def synthetic_store(cache: Path, dataset, grid: tuple[int, int], width: int, seed: int = 0):
    """A committed store holding float16 targets for every ok sample of ``dataset``, in manifest order."""
    import numpy as np

    from sak.pipeline.store.feature_store import FeatureStore
    from sak.pipeline.store.spec import FeatureSpec
    from sak.pipeline.store.writer import SampleKey

    spec = FeatureSpec(teacher="synthetic:vit_base_patch14", weights="file:synthetic-benchmark-targets", layers=LAYERS,
                       resolution=(grid[0] * 14, grid[1] * 14), resize="squash", mean=(0.485, 0.456, 0.406),
                       std=(0.229, 0.224, 0.225), patch_size=14, width=width, grid=grid, codec="zstd")
    store = FeatureStore.create(cache, spec)
    rows = list(dataset.ok_rows())
    rng = np.random.default_rng(seed)
    scale = rng.lognormal(0.0, 1.0, size=(len(LAYERS), width)).astype(np.float32)  # heavy channels, like real ViTs
    shift = rng.normal(0.0, 0.5, size=(len(LAYERS), width)).astype(np.float32)
    writer = store.writer(len(rows))
    for i in range(0, len(rows), 16):
        chunk = rows[i : i + 16]
        keys = [SampleKey(r["sha256"], r["sample_id"], r["source"], 0, "{}") for r in chunk]
        layers = [(rng.standard_normal((len(chunk), *grid, width), dtype=np.float32) * scale[j] + shift[j]).astype(np.float16)
                  for j in range(len(LAYERS))]
        writer.append(keys, layers)
    writer.commit()
    return FeatureStore.open(store.path)


def _timed_read(files: list[Path], rows: int) -> dict:
    """Read every byte of ``files`` sequentially, unbuffered; samples/s and MB/s."""
    t0 = time.perf_counter()
    nbytes = 0
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while True:
                block = fh.read(16 << 20)
                if not block:
                    break
                nbytes += len(block)
    s = time.perf_counter() - t0
    return {"samples_s": rows / s, "MB_s": nbytes / s / 1e6}


def raw_read(files: list[Path], rows: int) -> dict:
    """Plain reads after dropping the files from the page cache."""
    evict(files)
    return _timed_read(files, rows)


def target_epoch(data, sampler, workers: int, files: list[Path] | None) -> dict:
    """One epoch of the loader's target stage (what ``Loader._positions`` does), optionally from a cold cache."""
    from sak.student.data.prefetch import ordered_map

    if files:
        evict(files)
    def read(entry):  # (epoch, offset, window) -> (epoch, window, {item: targets})
        return entry[0], entry[2], data.read_window(entry[2])

    n = 0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers, thread_name_prefix="bench-read") as pool:
        for epoch, window, _targets in ordered_map(pool, read, sampler.windows_from(0, 0), ahead=2):
            if epoch:
                break
            n += len(window.order)
    s = time.perf_counter() - t0
    return {"samples_s": n / s, "samples": n}


def direct_read(array_dir: Path, start: int, stop: int, shard: int, shape: tuple, dtype) -> np.ndarray:
    """WHAT-IF (not the store's reader): rows [start, stop) of a sharded layer array read straight from its
    shard files (one ranged read per shard, the index at the end, zstd per chunk into the output)."""
    import numpy as np
    from numcodecs import Zstd

    codec, out = Zstd(), np.empty((stop - start, *shape), dtype=dtype)
    item = int(np.prod(shape)) * np.dtype(dtype).itemsize
    for s in range(start // shard, (stop - 1) // shard + 1):
        lo, hi = max(start, s * shard) - s * shard, min(stop, (s + 1) * shard) - s * shard
        with open(array_dir / "c" / str(s) / "0" / "0" / "0", "rb") as fh:
            fh.seek(-(16 * shard + 4), os.SEEK_END)
            index = np.frombuffer(fh.read(16 * shard), dtype="<u8").reshape(shard, 2)[lo:hi]
            first, end = int(index[0, 0]), int(index[-1, 0] + index[-1, 1])
            fh.seek(first)
            blob = memoryview(fh.read(end - first))
        for k, (off, n) in enumerate(index):
            row = out[s * shard + lo + k - start]
            codec.decode(blob[int(off) - first : int(off + n) - first], out=row.reshape(-1).view(np.uint8)[:item])
    return out


def direct_epoch(data, store, sampler, workers: int, files: list[Path] | None) -> dict:
    """The target stage with :func:`direct_read` instead of ``read_rows`` (single store): the proposed fix, measured."""
    import json

    import numpy as np

    from sak.student.data.prefetch import ordered_map

    if files:
        evict(files)
    meta = {}

    def read(entry):
        win = entry[2]
        for block in win.blocks:
            seg_dir = store.path / "segments" / block.segment_id
            for layer in store.spec.layers:
                d = seg_dir / f"layer_{layer}"
                if d not in meta:
                    m = json.loads((d / "zarr.json").read_text())
                    meta[d] = (m["chunk_grid"]["configuration"]["chunk_shape"][0], tuple(m["shape"][1:]))
                shard, shape = meta[d]
                direct_read(d, block.start, block.stop, shard, shape, np.float16)
        return entry[0], win

    n = 0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers, thread_name_prefix="bench-read") as pool:
        for epoch, window in ordered_map(pool, read, sampler.windows_from(0, 0), ahead=2):
            if epoch:
                break
            n += len(window.order)
    return {"samples_s": n / (time.perf_counter() - t0), "samples": n}


def full_loader(data, sampler, batch_size: int, workers: int) -> dict:
    t0 = time.perf_counter()
    n = 0
    with data.batches(batch_size, sampler, workers=workers, prefetch=4, drop_last_epoch=True) as loader:
        for batch in loader:
            n += batch.image.shape[0]
    return {"samples_s": n / (time.perf_counter() - t0)}


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--block-size", dest="block_size", type=int, default=None)
    p.add_argument("--window", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="loader threads")
    args = p.parse_args(argv)
    setup(args)
    cfg = pick(SIZES, args)
    bench = Bench("loader", args)

    import torch

    from sak.pipeline.data.datasets import open_dataset
    from sak.student.data.cached import CachedTargets
    from sak.student.runs.config import TrainConfig
    from sak.student.train.setup import prepare

    from .cached_vs_online import first_batch, student_step_timer

    root = demo_dataset(args.workdir, cfg["samples"], tuple(cfg["image_size"]))
    index = indexed(args.workdir, root, "nyud")
    scratch = Scratch(args.workdir, keep=args.keep)
    try:
        cache = scratch.fresh_cache(index, "nyud")
        dataset = open_dataset(cache, "nyud")
        t0 = time.perf_counter()
        store = synthetic_store(cache, dataset, tuple(cfg["grid"]), cfg["width"])
        write_s = time.perf_counter() - t0
        files = files_under(store.path / "segments")
        rows = store.commits().num_rows
        disk = dir_bytes(store.path / "segments")
        raw_fp16 = rows * len(LAYERS) * cfg["grid"][0] * cfg["grid"][1] * cfg["width"] * 2
        bench.detail("store", {"rows": rows, "files": len(files), "disk_MB": disk / 1e6, "raw_fp16_MB": raw_fp16 / 1e6,
                               "write_s": write_s, "setup": cfg})
        img = tuple(cfg["image_size"])
        data = CachedTargets(dataset, [store], "train", img, seed=0)
        bs, win, w = cfg["block_size"], cfg["window"], cfg["workers"]
        shuffled = data.sampler(block_size=bs, window=win, seed=0)
        in_order = data.sampler(block_size=bs, window=win, seed=0, shuffle=False)
        per_row = data.sampler(block_size=1, window=win * bs, seed=0)

        cold = alternate({
            "raw_read": lambda: raw_read(files, rows),
            "targets_block_shuffle": lambda: target_epoch(data, shuffled, w, files),
            "targets_sequential": lambda: target_epoch(data, in_order, w, files),
            "targets_per_row_random": lambda: target_epoch(data, per_row, w, files),
            "whatif_direct_shard_read": lambda: direct_epoch(data, store, shuffled, w, files),
        }, cfg["rounds"], warmup=1)
        warm = alternate({
            "raw_read_warm": lambda: _warm_raw(files, rows),
            "targets_block_shuffle_warm": lambda: target_epoch(data, shuffled, w, None),
            "whatif_direct_shard_read_warm": lambda: direct_epoch(data, store, shuffled, w, None),
        }, cfg["rounds"], warmup=1)

        train = TrainConfig(cache=str(cache), dataset="nyud", backbone=cfg["student"], img_size=img,
                            batch_size=cfg["batch_size"], block_size=bs, window=win, workers=w, val_split="none",
                            device=args.device, out=str(scratch.new("run")))
        run_setup = prepare(train, device=torch.device(args.device))
        step = student_step_timer(run_setup, first_batch(run_setup))
        rates = alternate({
            "full_loader": lambda: full_loader(data, shuffled, cfg["batch_size"], w),
            "student_step": lambda: {"samples_s": cfg["batch_size"] / step()},
        }, cfg["rounds"], warmup=1)
    finally:
        scratch.close()

    med = lambda res, name, key="samples_s": median(r[key] for r in res[name])
    raw_s, raw_mb = med(cold, "raw_read"), med(cold, "raw_read", "MB_s")
    shuf = med(cold, "targets_block_shuffle")
    mb_per_sample = disk / rows / 1e6
    bench.detail("rounds", {**cold, **warm, **rates})
    bench.ratio("loader_targets_vs_raw_read_cold", shuf / raw_s, 0.8, {
        "targets_samples_s": shuf, "raw_samples_s": raw_s, "raw_MB_s": raw_mb,
        "targets_MB_s": shuf * mb_per_sample, "sequential_samples_s": med(cold, "targets_sequential"),
        "per_row_random_samples_s": med(cold, "targets_per_row_random"), "MB_per_sample_disk": mb_per_sample,
        "whatif_direct_shard_read_samples_s": med(cold, "whatif_direct_shard_read"),
        "block": bs, "window": win, "threads": w,
    })
    warm_raw, warm_t = med(warm, "raw_read_warm"), med(warm, "targets_block_shuffle_warm")
    bench.ratio("loader_targets_vs_raw_read_warm", warm_t / warm_raw, 0.8, {
        "targets_samples_s": warm_t, "raw_samples_s": warm_raw, "raw_MB_s": med(warm, "raw_read_warm", "MB_s"),
        "targets_MB_s": warm_t * mb_per_sample, "raw_fp16_MB_per_sample": raw_fp16 / rows / 1e6,
        "whatif_direct_shard_read_samples_s": med(warm, "whatif_direct_shard_read_warm"),
    })
    loader_s, step_s = med(rates, "full_loader"), med(rates, "student_step")
    bench.ratio("full_loader_vs_step_consumption", loader_s / step_s, 1.0, {
        "full_loader_samples_s": loader_s, "step_samples_s": step_s, "student": cfg["student"],
        "img": "x".join(map(str, img)), "batch": cfg["batch_size"], "device": args.device,
    })
    say("#   whatif_direct_shard_read: NOT the store's reader; the same rows read straight from the shard files"
        " (index + one ranged read per shard + zstd into the output), to size the fix for zarr's per-chunk overhead")
    say("#   cold = store files dropped from the page cache before each read; warm = read again from the page cache")
    return bench.finish()


def _warm_raw(files: list[Path], rows: int) -> dict:
    """Plain reads of files already in the page cache (read once first)."""
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(16 << 20):
                pass
    return _timed_read(files, rows)


if __name__ == "__main__":
    main()
