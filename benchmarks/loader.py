"""Loader target stage vs `cat` of the same files, before and after issue 13, at 224 px and at the paper's size.

Stores of synthetic teacher targets (the layout ``sak-cache extract`` writes: one chunk per
sample, shards, codec ``none``, the default since issue 13) are written for a procedural NYUD
dataset at two sizes: **224 px** (ViT-B/14: 16x16x768, 4 layers, float16) and **paper size** (one
sample = dinov2 32x41x768 + clip 28x36x768 + sam 64x64x768, 4 layers each, float16: 39 MB).
Measured in one process, interleaved (A B B A) after a warm-up, warm (page cache) and cold (the
files dropped from the page cache with ``posix_fadvise DONTNEED`` before each run):

* cat: every shard file read front to back into one reused buffer (``readinto``), one thread;
* loader (after): the trainer's target stage exactly as ``Loader`` runs it over one epoch of the
  train split: batch plans from the block-shuffle sampler, ``StreamTargets.batch`` (gather reads into
  reused batch buffers) on ``workers`` threads with ``workers`` batches in flight, buffers released;
* before: the target stage of issue 12, kept here verbatim: ``read_window`` per window (``read_rows``
  per block through the old ``ShardReader.read``: fresh ``np.zeros`` per block, bytes copied in),
  two windows in flight;
* resident: ``ResidentTargets`` (``--targets ram``) batches gathered from memory vs ``memcpy`` of the
  same bytes (contiguous rows into a reused buffer), one thread each;
* CPU: samples per CPU-second (process user+sys, ``os.times``) of the target stage at paper size,
  and the cores a 520 samples/s GPU (ViT-B at 448x576 on an H100-class GPU) would need.

An int8 store (codes + scales) is measured too when the store writer supports ``--dtype int8``.

Integrity checks (issue 14): reads check each sample's crc32c, by default at its first read in a
process (``integrity.READ_CHECKS``). The loader stage with the checks off (``StoreGather(checked=False)``,
a library argument for this measurement only) runs interleaved, warm, after a warm-up, at 224 px and
paper size in float16 and int8, against three checked sides: a first epoch (every read checked),
later epochs (nothing left to check) and ``SAK_READ_CHECKS=every`` (every read checked, every epoch):
``checked_{first_epoch,later_epochs,every_read}_vs_unchecked_warm_*``, the issue's bar: at most 5% lost. For zstd stores the two ways to
check a chunk are timed chunk by chunk, interleaved: the zstd frame checksum (XXH64, written with
``checksum: true``) against crc32c over the decoded chunk (``zstd_crc32c_vs_frame_checksum``).

Targets: loader/cat >= 0.8 warm and cold at both sizes; resident gather/memcpy >= 0.8;
checked/unchecked >= 0.95 (met by later epochs; see the README for the others).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .common import Bench, Scratch, alternate, demo_dataset, evict, files_under, indexed, median, parser, pick, say, setup

LAYERS = (2, 5, 8, 11)
PAPER = (("dinov2", (32, 41)), ("clip", (28, 36)), ("sam", (64, 64)))
SIZES = {
    "quick": dict(samples=16, paper_samples=8, width=32, vit_grid=(4, 4), paper_grids=((4, 5), (3, 4), (8, 8)),
                  batch_size=4, block_size=4, window=2, workers=2, rounds=1),
    "cpu": dict(samples=256, paper_samples=24, width=768, vit_grid=(16, 16), paper_grids=tuple(g for _, g in PAPER),
                batch_size=8, block_size=16, window=4, workers=4, rounds=3),
    "cuda": dict(samples=256, paper_samples=48, width=768, vit_grid=(16, 16), paper_grids=tuple(g for _, g in PAPER),
                 batch_size=8, block_size=16, window=4, workers=8, rounds=3),
}
GPU_SAMPLES_S = 520  # ViT-B student at 448x576 on an H100-class GPU (issue 13: 6*P*T FLOP at 40% of 990 TFLOP/s)


def synthetic_store(cache: Path, dataset, teacher: str, grid: tuple[int, int], width: int, dtype: str = "float16",
                    seed: int = 0):
    """A committed store of random heavy-channel targets for every ok sample of ``dataset``."""
    from sak.pipeline.store.feature_store import FeatureStore
    from sak.pipeline.store.spec import FeatureSpec
    from sak.pipeline.store.writer import SampleKey

    extra = {"quant": "token-channel"} if dtype == "int8" else {}
    spec = FeatureSpec(teacher=f"synthetic:{teacher}", weights="file:synthetic-benchmark-targets", layers=LAYERS,
                       resolution=(grid[0] * 14, grid[1] * 14), resize="squash", mean=(0.485, 0.456, 0.406),
                       std=(0.229, 0.224, 0.225), patch_size=14, width=width, grid=grid, codec="none", dtype=dtype,
                       **extra)
    store = FeatureStore.create(cache, spec)
    rows = list(dataset.ok_rows())
    rng = np.random.default_rng(seed)
    scale = rng.lognormal(0.0, 1.0, size=(len(LAYERS), width)).astype(np.float16)  # heavy channels, like real ViTs
    writer = store.writer(len(rows))
    for i in range(0, len(rows), 8):
        chunk = rows[i : i + 8]
        keys = [SampleKey(r["sha256"], r["sample_id"], r["source"], 0, "{}") for r in chunk]
        base = rng.standard_normal((len(chunk), *grid, 1), dtype=np.float32).astype(np.float16)
        writer.append(keys, [base * scale[j] for j in range(len(LAYERS))])
    writer.commit()
    return FeatureStore.open(store.path)


# -- before: the target stage of issue 12, verbatim --------------------------------------------
def legacy_shard_read(reader, start: int, stop: int) -> np.ndarray:
    """``ShardReader.read`` before issue 13: a fresh zeroed block, one span read per shard, each chunk copied in."""
    import google_crc32c

    from sak.pipeline.store.shards import _ABSENT, chunk_codec

    coder, s = chunk_codec(reader.codec), reader.shard_samples
    sample_shape = reader.shape[1:]
    little = reader.dtype.newbyteorder("<")
    out = np.zeros((stop - start, *sample_shape), dtype=reader.dtype)
    index_bytes = 16 * s
    for k in range(start // s, (stop - 1) // s + 1 if stop > start else start // s):
        path = reader.shard_file(k)
        lo, hi = max(start, k * s), min(stop, (k + 1) * s)
        with path.open_ranges() as fh:
            tail = fh.tail(index_bytes + 4)
            assert np.frombuffer(tail[-4:], "<u4")[0] == google_crc32c.value(tail[:-4])
            sel = np.frombuffer(tail[:-4], "<u8").reshape(s, 2)[lo - k * s : hi - k * s]
            present = sel[:, 0] != _ABSENT
            begin = int(sel[present, 0].min())
            buf = fh.span(begin, int((sel[present, 0] + sel[present, 1]).max()))
        for j, (off, nbytes) in enumerate(sel):
            enc = buf[int(off) - begin : int(off) - begin + int(nbytes)]
            raw = enc if coder is None else coder.decode(enc)
            out[lo - start + j] = np.frombuffer(raw, dtype=little).reshape(sample_shape)
    return out


def legacy_read_window(data, window) -> dict:
    """``CachedTargets.read_window`` before issue 13: one ``read_rows`` per block (first store) / per segment."""
    from sak.pipeline.store.arrays import read_rows_contiguous

    def read_rows(store, seg, rows):
        out = {}
        for layer in store.spec.layers:
            arr = store.array(seg, f"layer_{layer}", fast=True)
            rows = list(rows)
            if hasattr(arr, "read_into") and rows == list(range(rows[0], rows[0] + len(rows))):
                out[layer] = legacy_shard_read(arr, rows[0], rows[-1] + 1)
            else:
                out[layer] = read_rows_contiguous(arr, rows)
        return out

    out: dict[int, dict] = {}
    for block in window.blocks:
        first, *others = data.stores
        got = read_rows(first, block.segment_id, range(block.start, block.stop))
        for i, r in block.items:
            out.setdefault(i, {})[data.keys[0]] = [got[layer][r - block.start] for layer in first.spec.layers]
        for s_idx, store in enumerate(others, start=1):
            for i, _ in block.items:
                seg, row = data.items[i].locations[s_idx]
                got_o = read_rows(store, seg, [row])
                out[i][data.keys[s_idx]] = [got_o[layer][0] for layer in store.spec.layers]
    return out


def before_stage(data, sampler, workers: int, files: list[Path] | None) -> dict:
    from sak.student.data.prefetch import ordered_map

    if files:
        evict(files)
    n, c0, t0 = 0, os.times(), time.perf_counter()
    with ThreadPoolExecutor(workers, thread_name_prefix="bench-before") as pool:
        for epoch, win, _ in ordered_map(pool, lambda e: (e[0], e[2], legacy_read_window(data, e[2])),
                                         sampler.windows_from(0, 0), ahead=2):
            if epoch:
                break
            n += len(win.order)
    return _rates(n, t0, c0)


# -- after: the loader's target stage ---------------------------------------------------------
def loader_stage(data, sampler, batch_size: int, workers: int, files: list[Path] | None, source=None, *,
                 checked: bool = True) -> dict:
    """One epoch of exactly what ``Loader`` does for targets: plans -> ``source.batch`` on the pool -> release."""
    from sak.student.data.cached import Loader
    from sak.student.data.prefetch import ordered_map
    from sak.student.data.targets import StreamTargets

    if source is None:
        source = _stream_source(data, batch_size, workers, checked)
    plans = Loader(data, batch_size, sampler, (0, 0), 0, 1, False, True, source).plans()
    if files:
        evict(files)
    n, c0, t0 = 0, os.times(), time.perf_counter()
    with ThreadPoolExecutor(workers, thread_name_prefix="bench-after") as pool:
        for got in ordered_map(pool, lambda p: source.batch(p.items, p.flips), plans, ahead=workers):
            n += next(iter(got.values())).batch_size
            for tb in got.values():
                tb.release()
    del StreamTargets
    return _rates(n, t0, c0)


_SOURCES: dict = {}


def _stream_source(data, batch_size: int, workers: int, checked: bool = True):
    from sak.pipeline.store.gather import StoreGather
    from sak.student.data.targets import StreamTargets

    key = (id(data), batch_size, workers, checked)
    if key not in _SOURCES:  # one ring per data set, as one Loader keeps for a run
        gathers = data.gathers if checked else [StoreGather(s, checked=False) for s in data.stores]
        _SOURCES[key] = StreamTargets(data.stores, data.keys, data.items, batch_size, ring=2 * workers + 3,
                                      gathers=gathers)
    return _SOURCES[key]


def _rates(n: int, t0: float, c0) -> dict:
    s = time.perf_counter() - t0
    c1 = os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    return {"samples_s": n / s, "samples": n, "cpu_s": cpu}


def per_cpu_s(runs: list[dict]) -> float:
    """Samples per CPU-second over all rounds (os.times ticks are 10 ms: sum before dividing)."""
    return sum(r["samples"] for r in runs) / max(0.01, sum(r["cpu_s"] for r in runs))


def cat(files: list[Path], rows: int, cold: bool, buf: bytearray) -> dict:
    """``cat`` of the files into one reused buffer (``readinto``), after dropping them from the page cache when cold."""
    if cold:
        evict(files)
    view = memoryview(buf)
    t0, nbytes = time.perf_counter(), 0
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while True:
                got = fh.readinto(view)
                if not got:
                    break
                nbytes += got
    s = time.perf_counter() - t0
    return {"samples_s": rows / s, "MB_s": nbytes / s / 1e6}


def resident_vs_memcpy(resident, plans) -> dict:
    """Gather every planned batch from resident memory vs memcpy of the same bytes into a reused buffer."""
    import torch

    arrays = [a for per_store in resident.arrays for a in per_store]
    bufs = [torch.empty_like(a[: resident.batch_size]) for a in arrays]

    def gather() -> dict:
        t0, n = time.perf_counter(), 0
        for p in plans:
            for tb in resident.batch(p.items, p.flips).values():
                tb.release()
            n += len(p.items)
        return {"samples_s": n / (time.perf_counter() - t0)}

    def memcpy() -> dict:
        t0, n, lo = time.perf_counter(), 0, 0
        total = arrays[0].shape[0]
        for p in plans:
            k = len(p.items)
            lo = 0 if lo + k > total else lo
            for a, b in zip(arrays, bufs, strict=True):
                b[:k].copy_(a[lo : lo + k])
            lo += k
            n += k
        return {"samples_s": n / (time.perf_counter() - t0)}

    return {"gather": gather, "memcpy": memcpy}


def measure(name: str, bench: Bench, data, store_paths: list[Path], rows: int, cfg: dict, *, before: bool) -> dict:
    """Warm and cold loader/cat (and before/cat) of one data set; RATIO lines named ``<ratio>_<name>``."""
    files = [f for p in store_paths for f in files_under(p / "segments") if "/c/" in str(f)]
    buf = bytearray(64 << 20)
    bs, win, w = cfg["batch_size"], cfg["window"], cfg["workers"]
    sampler = data.sampler(block_size=cfg["block_size"], window=win, seed=0)
    sides = {
        "cat": lambda cold: cat(files, rows, cold, buf),
        "loader": lambda cold: loader_stage(data, sampler, bs, w, files if cold else None),
    }
    if before:
        sides["before"] = lambda cold: before_stage(data, sampler, w, files if cold else None)
    out = {}
    for mode in ("warm", "cold"):
        cold = mode == "cold"
        res = alternate({k: (lambda f=f, cold=cold: f(cold)) for k, f in sides.items()}, cfg["rounds"], warmup=0 if cold else 1)
        med = {k: median(r["samples_s"] for r in v) for k, v in res.items()}
        parts = {"loader_samples_s": med["loader"], "cat_samples_s": med["cat"],
                 "cat_MB_s": median(r["MB_s"] for r in res["cat"]),
                 "loader_samples_per_cpu_s": per_cpu_s(res["loader"])}
        if before:
            parts.update(before_samples_s=med["before"], before_vs_cat=med["before"] / med["cat"],
                         before_samples_per_cpu_s=per_cpu_s(res["before"]))
        parts.update(rows=rows, batch=bs, threads=w, files=len(files))
        bench.ratio(f"loader_vs_cat_{mode}_{name}", med["loader"] / med["cat"], 0.8, parts)
        out[mode] = {"parts": parts, "rounds": res}
    return out


def _checks_policy(data, *, every: bool, forget: bool) -> None:
    """Set the read-check policy of every segment record the loader holds (``every`` read, or the first read per
    process): with ``forget`` every sample unchecked (a run's first epoch), else, under the first-read policy,
    every sample checked (the epochs after the first, which read every train sample once)."""
    for store in data.stores:
        for checks in store._checks.values():
            checks.every = every
            if forget or every:  # every read: nothing is ever marked checked, so start from all pending
                checks.forget()
            else:
                checks.mark_checked()


def measure_checks(name: str, bench: Bench, data, cfg: dict) -> None:
    """Warm loader stage with integrity checks vs without, interleaved after a warm-up.

    Three checked sides against the unchecked one: ``first_epoch`` (the default policy, every sample
    unchecked at the start of the run: each read is checked), ``later_epochs`` (the default policy in
    the epochs after the first: nothing left to check) and ``every_read`` (``SAK_READ_CHECKS=every``).
    """
    bs, w = cfg["batch_size"], cfg["workers"]
    sampler = data.sampler(block_size=cfg["block_size"], window=cfg["window"], seed=0)

    def side(every: bool, forget: bool, checked: bool = True):
        def run():
            _checks_policy(data, every=every, forget=forget)
            return loader_stage(data, sampler, bs, w, None, checked=checked)
        return run

    sides = {"unchecked": side(False, False, checked=False), "first_epoch": side(False, True),
             "later_epochs": side(False, False), "every_read": side(True, False)}
    res = alternate(sides, 2 * cfg["rounds"] + 1, warmup=1)
    _checks_policy(data, every=False, forget=True)
    off = median(r["samples_s"] for r in res["unchecked"])
    off_cpu = per_cpu_s(res["unchecked"])
    for key in ("first_epoch", "later_epochs", "every_read"):
        on = median(r["samples_s"] for r in res[key])
        bench.ratio(f"checked_{key}_vs_unchecked_warm_{name}", on / off, 0.95, {
            "checked_samples_s": on, "unchecked_samples_s": off, "checked_samples_per_cpu_s": per_cpu_s(res[key]),
            "unchecked_samples_per_cpu_s": off_cpu, "cpu_ratio": per_cpu_s(res[key]) / max(off_cpu, 1e-9),
            "rounds": len(res[key]), "threads": w})


def zstd_check_costs(bench: Bench, cfg: dict) -> None:
    """Decoding zstd chunks checked by their frame checksum vs by crc32c after decoding, chunk by chunk interleaved."""
    import google_crc32c
    from numcodecs import Zstd

    from sak.pipeline.store.shards import ZSTD_LEVEL

    rng = np.random.default_rng(0)
    scale = rng.lognormal(0.0, 1.0, size=cfg["width"]).astype(np.float16)
    grids = (cfg["vit_grid"], *cfg["paper_grids"])
    chunks = [rng.standard_normal((*grids[k % len(grids)], 1), dtype=np.float32).astype(np.float16) * scale
              for k in range(8 * len(grids))]
    plain, framed = Zstd(level=ZSTD_LEVEL), Zstd(level=ZSTD_LEVEL, checksum=True)
    enc = [(plain.encode(c), framed.encode(c), np.empty_like(c)) for c in chunks]
    ns = {"decode": 0, "frame": 0, "crc32c": 0}
    for r in range(cfg["rounds"] * 10 + 1):
        for a, b, out in enc if r % 2 else enc[::-1]:  # each chunk three ways back to back: load hits all alike
            t0 = time.perf_counter_ns()
            plain.decode(a, out=out)
            t1 = time.perf_counter_ns()
            framed.decode(b, out=out)
            t2 = time.perf_counter_ns()
            plain.decode(a, out=out)
            google_crc32c.value(out)
            t3 = time.perf_counter_ns()
            if r:  # the first round warms up
                ns["decode"] += t1 - t0
                ns["frame"] += t2 - t1
                ns["crc32c"] += t3 - t2
    frame_cost, crc_cost = ns["frame"] / ns["decode"] - 1, ns["crc32c"] / ns["decode"] - 1
    mb = sum(c.nbytes for c in chunks) * cfg["rounds"] * 10 / 1e6
    bench.ratio("zstd_crc32c_vs_frame_checksum", ns["frame"] / ns["crc32c"], 1.0, {
        "decode_MB_s": mb / (ns["decode"] / 1e9), "frame_checksum_extra_pct": 100 * frame_cost,
        "crc32c_after_decode_extra_pct": 100 * crc_cost, "note": ">= 1: crc32c after decoding costs no more"})


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=None, help="samples of the 224-px data set")
    p.add_argument("--paper-samples", dest="paper_samples", type=int, default=None, help="samples at paper size")
    p.add_argument("--workers", type=int, default=None, help="loader threads")
    p.add_argument("--no-before", dest="before", action="store_false", help="skip the issue-12 target stage")
    args = p.parse_args(argv)
    setup(args)
    cfg = pick(SIZES, args)
    bench = Bench("loader", args)

    from sak.pipeline.data.datasets import open_dataset
    from sak.student.data.cached import CachedTargets
    from sak.student.data.resident import ResidentTargets

    img = (32, 40)  # the target stage never decodes images
    scratch = Scratch(args.workdir, keep=args.keep)
    try:
        # -- 224 px ----------------------------------------------------------------------------
        index = indexed(args.workdir, demo_dataset(args.workdir, cfg["samples"], img), "nyud")
        cache = scratch.fresh_cache(index, "nyud")
        ds = open_dataset(cache, "nyud")
        store = synthetic_store(cache, ds, "vitb14", cfg["vit_grid"], cfg["width"])
        data = CachedTargets(ds, [store], "train", img)
        bench.detail("store_224", {"rows": store.commits().num_rows, "MB_per_sample": data.gathers[0].sample_bytes() / 1e6,
                                   "train_items": len(data)})
        measure("224", bench, data, [store.path], store.commits().num_rows, cfg, before=args.before)
        measure_checks("224", bench, data, cfg)
        _SOURCES.clear()

        # -- paper size ------------------------------------------------------------------------
        index = indexed(args.workdir, demo_dataset(args.workdir, cfg["paper_samples"], img), "nyud")
        paper: dict[str, dict] = {}
        for dtype in ("float16", "int8"):
            cache = scratch.fresh_cache(index, "nyud")
            ds = open_dataset(cache, "nyud")
            t0 = time.perf_counter()
            try:
                stores = [synthetic_store(cache, ds, name, grid, cfg["width"], dtype, seed=k)
                          for k, ((name, _), grid) in enumerate(zip(PAPER, cfg["paper_grids"], strict=True))]
            except Exception as exc:  # the writer of this checkout has no int8 yet
                say(f"#   {dtype} paper-size store not written ({type(exc).__name__}: {exc}); skipped")
                continue
            data = CachedTargets(ds, stores, "train", img)
            sample_mb = sum(g.sample_bytes() for g in data.gathers) / 1e6
            bench.detail(f"store_paper_{dtype}", {"rows": stores[0].commits().num_rows, "MB_per_sample": sample_mb,
                                                  "train_items": len(data), "write_s": time.perf_counter() - t0})
            suffix = "paper" if dtype == "float16" else "paper_int8"
            paper[dtype] = measure(suffix, bench, data, [s.path for s in stores], stores[0].commits().num_rows, cfg,
                                   before=args.before and dtype == "float16")
            measure_checks(suffix, bench, data, cfg)
            resident = ResidentTargets(data, "cpu", cfg["batch_size"], workers=cfg["workers"])
            from sak.student.data.cached import Loader

            sampler = data.sampler(block_size=cfg["block_size"], window=cfg["window"], seed=0)
            plans = list(Loader(data, cfg["batch_size"], sampler, (0, 0), 0, 1, False, True, resident).plans())
            res = alternate(resident_vs_memcpy(resident, plans), cfg["rounds"] + 2, warmup=1)
            g, m = median(r["samples_s"] for r in res["gather"]), median(r["samples_s"] for r in res["memcpy"])
            bench.ratio(f"resident_gather_vs_memcpy_{suffix}", g / m, 0.8, {
                "gather_samples_s": g, "memcpy_samples_s": m, "gather_GB_s": g * sample_mb / 1e3,
                "memcpy_GB_s": m * sample_mb / 1e3, "resident_GB": resident.nbytes / 1e9})
            del resident
            _SOURCES.clear()
        zstd_check_costs(bench, cfg)
    finally:
        scratch.close()

    warm = paper["float16"]["warm"]["parts"]
    per_cpu = warm["loader_samples_per_cpu_s"]
    parts = {"after_samples_per_cpu_s": per_cpu, "cores_for_520_samples_s": GPU_SAMPLES_S / per_cpu,
             "note": "warm (page cache), process user+sys over all threads"}
    if "before_samples_per_cpu_s" in warm:
        before = warm["before_samples_per_cpu_s"]
        parts.update(before_samples_per_cpu_s=before, before_cores_for_520_samples_s=GPU_SAMPLES_S / before)
        bench.ratio("target_stage_cpu_efficiency_vs_before_paper", per_cpu / before, 1.0, parts)
    else:
        bench.detail("target_stage_cpu_paper", parts)
    say(f"#   paper size: {per_cpu:.1f} samples per CPU-second -> {GPU_SAMPLES_S / per_cpu:.1f} cores for "
        f"{GPU_SAMPLES_S} samples/s (ViT-B 448x576 on an H100-class GPU)")
    say("#   cold = files dropped from the page cache before each run; warm = read again from the page cache")
    return bench.finish()


if __name__ == "__main__":
    main()
