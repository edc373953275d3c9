"""Scaling: extraction with 1 and 2 dask workers; opening a cache of 100k committed rows vs 1k.

Extraction: two dask ``LocalCluster``s (one worker process with all cores' torch threads, and
two with half each: what ``sak-cache extract --workers 2`` starts) are started once and warmed
up (each worker builds and caches its teacher), then ``extract(..., scheduler=<cluster>)`` runs
into a fresh cache on each, interleaved; images/s is timed from the run's start of work to its
return (cluster start and teacher builds are reported apart, as the cold run's seconds). On a
machine with C cores the ideal ratio is about 1 when C is what binds (this CPU) and up to 2
when each worker has its own GPU.

Open: a cache with N committed rows is grown synthetically (a dataset manifest of N rows, a
store with N/1024 Parquet commit parts and their stats files; no teacher, no arrays), then
timed: what ``sak-train`` does before building the model (open the dataset, pick the stores
covering it, join manifest and commits on (sha256, view), merge the stats), beside the same stages
through the code before issue 13 (``benchmarks/legacy_open.py``: per-row Python join, commits built
per caller, stats JSONs parsed on every call), interleaved; and ``sak-cache ls`` on the same cache.
Targets: 100k rows (98 segments) open in under 1 s, ``ls`` under 1 s, no worse than linear from 1k.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from .common import Bench, Scratch, alternate, image_folder, indexed, load_avg, median, parser, pick, say, setup

SIZES = {
    # quick: worker threads instead of processes (a smoke run of the same path, seconds instead of a minute)
    "quick": dict(teacher="test:tiny", resolution=64, images=16, image_size=(64, 80), batch_size=4, rounds=1,
                  rows=(200, 2_000), processes=False),
    "cpu": dict(teacher="timm:vit_base_patch14_dinov2", resolution=112, images=48, image_size=(480, 640), batch_size=8,
                rounds=2, rows=(1_000, 100_000), processes=True),
    "cuda": dict(teacher="timm:vit_base_patch14_dinov2", resolution=448, images=256, image_size=(480, 640),
                 batch_size=32, rounds=2, rows=(1_000, 100_000), processes=True),
}
DATASET = "photos"
PART_ROWS = 1024
OPEN_BUDGET_S = 1.0


def _set_threads(n: int) -> int:
    """Run as a TASK: dask workers start with OMP_NUM_THREADS=1 and OpenMP's thread count is per calling
    thread, so it must be set in the worker's task thread (client.run would set the event-loop thread's)."""
    import torch

    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def _task_threads(client, n: int = 0) -> list[int]:
    """Torch threads in each worker's task thread (set to ``n`` first when n > 0)."""
    workers = list(client.scheduler_info()["workers"])
    futures = [client.submit(_set_threads, n, workers=[w], allow_other_workers=False, pure=False) for w in workers]
    return client.gather(futures)


# -- extraction -------------------------------------------------------------------
def extraction(bench: Bench, args, cfg: dict) -> None:
    from distributed import Client, LocalCluster

    from sak.pipeline.extract.job import ExtractConfig, extract

    n, bs = cfg["images"], cfg["batch_size"]
    root = image_folder(args.workdir, n, tuple(cfg["image_size"]))
    index = indexed(args.workdir, root, DATASET, fmt="folder")
    cores = len(os.sched_getaffinity(0))
    base = dict(teachers=(cfg["teacher"],), datasets=(DATASET,), random_init=True, seed=0, resolution=cfg["resolution"],
                input_protocol="native",
                batch_size=bs, device=args.device, segment_size=max(bs, n // 4))

    def run(scratch: Scratch, **kw) -> dict:
        cache = scratch.fresh_cache(index, DATASET)
        marks: dict[str, float] = {}
        t0 = time.perf_counter()
        rep = extract(ExtractConfig(cache=str(cache), **{**base, **kw}),
                      progress=lambda a, **info: marks.setdefault("start", time.perf_counter()) if "total" in info else None)
        t1 = time.perf_counter()
        done = rep.teachers[0].done
        if done != kw.get("limit", n):
            raise SystemExit(f"extract committed {done} images, expected {kw.get('limit', n)}: {rep.failures[:3]}")
        return {"img_s": done / (t1 - marks["start"]), "setup_s": marks["start"] - t0, "seconds": t1 - t0}

    clusters, clients, cold = {}, {}, {}
    with Scratch(args.workdir, keep=args.keep) as scratch:
        try:
            for k in (1, 2):
                t0 = time.perf_counter()
                clusters[k] = LocalCluster(n_workers=k, threads_per_worker=1, processes=cfg["processes"],
                                           dashboard_address=":0")
                clients[k] = Client(clusters[k])
                # worker processes: what `--workers k` does (cores // k torch threads each); threads: leave torch as is
                threads = _task_threads(clients[k], max(1, cores // k) if cfg["processes"] else 0)
                # warm-up: one segment per worker, so every worker builds and caches its teacher
                warm = run(scratch, scheduler=clusters[k].scheduler_address, workers=k, limit=k * bs, segment_size=bs)
                cold[k] = {"cluster_start_and_warmup_s": time.perf_counter() - t0, "warmup": warm,
                           "torch_threads": threads}
            bench.detail("cold_start", cold)
            res = alternate({
                "dask_1_worker": lambda: run(scratch, scheduler=clusters[1].scheduler_address, workers=1),
                "dask_2_workers": lambda: run(scratch, scheduler=clusters[2].scheduler_address, workers=2),
                "in_process": lambda: run(scratch, workers=1),
            }, cfg["rounds"], warmup=0)
            bench.detail("task_threads_after", {k: _task_threads(c) for k, c in clients.items()})
        finally:
            for c in clients.values():
                c.close()
            for c in clusters.values():
                c.close()
    bench.detail("extraction_rounds", res)
    one = median(r["img_s"] for r in res["dask_1_worker"])
    two = median(r["img_s"] for r in res["dask_2_workers"])
    bench.ratio("extract_2_vs_1_dask_workers", two / one, 0.9, {
        "img_s_2_workers": two, "img_s_1_worker": one, "img_s_in_process": median(r["img_s"] for r in res["in_process"]),
        "cores": cores, "teacher": cfg["teacher"].split(":")[-1], "res": cfg["resolution"], "images": n,
        "segments": -(-n // base["segment_size"]), "cold_start_2_workers_s": cold[2]["cluster_start_and_warmup_s"],
        "cold_start_1_worker_s": cold[1]["cluster_start_and_warmup_s"],
    })
    in_proc = median(r["img_s"] for r in res["in_process"])
    bench.ratio("extract_2_dask_workers_vs_in_process", two / in_proc, 0.9, {
        "img_s_2_workers": two, "img_s_in_process": in_proc, "cores": cores,
        "note": "in_process=the default --workers 1 path (no dask)",
    })


# -- opening a big cache -------------------------------------------------------------
def grow_cache(cache: Path, rows: int) -> None:
    """A cache whose dataset manifest and one store hold ``rows`` committed samples (see the module doc)."""
    import numpy as np
    import pyarrow as pa

    from sak.manifests.schemas import COMMIT_SCHEMA, STATUS_OK, write_commit_part
    from sak.pipeline.data.datasets import manifest_schema, write_dataset_index
    from sak.pipeline.store.feature_store import FeatureStore
    from sak.pipeline.store.spec import FeatureSpec
    from sak.pipeline.store.stats import LayerStats, stats_to_json
    from sak.pipeline.store.writer import write_text_atomic

    data_root = cache / "images-root"
    data_root.mkdir(parents=True)
    ids = [f"{i:07d}" for i in range(rows)]
    shas = [hashlib.sha256(s.encode()).hexdigest() for s in ids]
    n_train = int(rows * 0.9)
    cols = {
        "sample_id": ids, "path": [f"images/{s}.jpg" for s in ids], "sha256": shas,
        "width": pa.array([640] * rows, pa.int32()), "height": pa.array([480] * rows, pa.int32()),
        "split": ["train"] * n_train + ["val"] * (rows - n_train), "source": ["big"] * rows,
        "label_semseg": [f"segmentation/{s}.png" for s in ids], "label_depth": [f"depth/{s}.npy" for s in ids],
        "label_normals": [f"normals/{s}.png" for s in ids], "label_edge": [f"edge/{s}.png" for s in ids],
        "label_parts": [None] * rows, "label_saliency": [None] * rows, "status": ["ok"] * rows, "error": [None] * rows,
    }
    schema = manifest_schema()
    table = pa.table({f.name: pa.array(cols[f.name], f.type) for f in schema}, schema=schema)
    write_dataset_index(cache, "big", table, data_root)
    width, layers = 768, (2, 5, 8, 11)
    spec = FeatureSpec(teacher="synthetic:vit_base_patch14", weights="file:synthetic-benchmark-targets", layers=layers,
                       resolution=(448, 448), resize="squash", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                       patch_size=14, width=width, grid=(32, 32))
    store = FeatureStore.create(cache, spec)
    rng = np.random.default_rng(0)
    for p, start in enumerate(range(0, rows, PART_ROWS)):
        seg = f"20260101T000000{p:06d}Z-bench-1-{p:08x}"
        stop = min(rows, start + PART_ROWS)
        k = stop - start
        part = {
            "image_sha256": shas[start:stop], "sample_id": ids[start:stop], "source": ["big"] * k,
            "view": pa.array([0] * k, pa.int32()), "view_params": ["{}"] * k, "segment_id": [seg] * k,
            "row": pa.array(range(k), pa.int64()), "checksum": ["0" * 64] * k, "crc32c": [None] * k, "status": [STATUS_OK] * k,
            "error": [None] * k,
        }
        write_commit_part(pa.table({f.name: pa.array(part[f.name], f.type) for f in COMMIT_SCHEMA}, schema=COMMIT_SCHEMA),
                          store.path / "manifest" / f"part-{seg}.parquet")
        st = {i: LayerStats.from_values(rng.standard_normal((4, width))) for i in layers}
        write_text_atomic(store.path / "stats" / f"{seg}.json", stats_to_json(seg, st))


def _timed_open(cache: Path, select, join_cls) -> dict:
    """Open dataset "big", select its stores, join them, merge their stats; seconds per stage."""
    from sak.pipeline.data.datasets import open_dataset

    t = [time.perf_counter()]
    ds = open_dataset(cache, "big")
    t.append(time.perf_counter())
    stores = select(str(cache), ds)
    t.append(time.perf_counter())
    join = join_cls(ds, stores, "train", cache_hint=str(cache))
    t.append(time.perf_counter())
    for s in stores:
        s.stats()
    t.append(time.perf_counter())
    return {"seconds": t[-1] - t[0], "open_dataset_s": t[1] - t[0], "select_stores_s": t[2] - t[1],
            "join_s": t[3] - t[2], "stats_s": t[4] - t[3], "items": len(join.items)}


def open_cache(cache: Path) -> dict:
    """What sak-train does with a cache before building the model; seconds per stage."""
    from sak.student.data.stores import StoreJoin, select_stores

    return _timed_open(cache, lambda c, ds: select_stores(c, ds, (), "train"), StoreJoin)


def open_cache_before(cache: Path) -> dict:
    """The same stages through the code before issue 13 (benchmarks/legacy_open.py): the baseline."""
    from .legacy_open import LegacyStoreJoin, select_covering

    return _timed_open(cache, lambda c, ds: select_covering(c, ds, "train"), LegacyStoreJoin)


def ls_cache(cache: Path) -> dict:
    """``sak-cache ls --cache CACHE`` in this process (rendering included)."""
    from typer.testing import CliRunner

    from sak.cli.cache import app

    t0 = time.perf_counter()
    res = CliRunner().invoke(app, ["ls", "--cache", str(cache)])
    if res.exit_code != 0:
        raise SystemExit(f"sak-cache ls failed: {res.output}")
    return {"seconds": time.perf_counter() - t0}


def ls_cache_before(cache: Path) -> dict:
    """What ``sak-cache ls`` computed before (without rendering)."""
    from .legacy_open import ls_rows

    t0 = time.perf_counter()
    ls_rows(str(cache))
    return {"seconds": time.perf_counter() - t0}


def opening(bench: Bench, args, cfg: dict) -> None:
    small, big = cfg["rows"]
    with Scratch(args.workdir, keep=args.keep) as scratch:
        caches = {}
        for rows in (small, big):
            caches[rows] = scratch.new(f"rows{rows}")
            t0 = time.perf_counter()
            grow_cache(caches[rows], rows)
            say(f"#   grew a cache of {rows} committed rows in {time.perf_counter() - t0:.1f} s")
        fns = {}
        for rows in (small, big):
            fns[f"open_{rows}"] = lambda c=caches[rows]: open_cache(c)
            fns[f"open_{rows}_before"] = lambda c=caches[rows]: open_cache_before(c)
        fns[f"ls_{big}"] = lambda: ls_cache(caches[big])
        fns[f"ls_{big}_before"] = lambda: ls_cache_before(caches[big])
        res = alternate(fns, max(3, cfg["rounds"]), warmup=1)
    bench.detail("open_rounds", res)
    sec = {k: median(r["seconds"] for r in v) for k, v in res.items()}
    t_small, t_big = sec[f"open_{small}"], sec[f"open_{big}"]
    stage = {k: median(r[k] for r in res[f"open_{big}"]) for k in ("open_dataset_s", "select_stores_s", "join_s", "stats_s")}
    before = {f"before_{k}": median(r[k] for r in res[f"open_{big}_before"]) for k in ("select_stores_s", "join_s", "stats_s")}
    if res[f"open_{big}"][0]["items"] != res[f"open_{big}_before"][0]["items"]:
        raise SystemExit("the new and the old join served different numbers of items")
    parts = {f"t_{big}_s": t_big, f"t_{big}_before_s": sec[f"open_{big}_before"], f"t_{small}_s": t_small,
             f"t_{small}_before_s": sec[f"open_{small}_before"], **stage, **before, "parts": -(-big // PART_ROWS),
             "items": res[f"open_{big}"][0]["items"], "load": load_avg()}
    bench.ratio(f"open_{big}_rows_within_{OPEN_BUDGET_S:g}s", OPEN_BUDGET_S / t_big, 1.0, parts)
    bench.ratio(f"open_{big}_rows_before_vs_after", sec[f"open_{big}_before"] / t_big, 1.0, parts)
    bench.ratio(f"open_{big}_vs_{small}_rows_time", t_big / t_small, big / small, {**parts, "linear": big / small}, op="<=")
    ls_parts = {f"ls_{big}_s": sec[f"ls_{big}"], f"ls_{big}_before_s": sec[f"ls_{big}_before"],
                "segments": -(-big // PART_ROWS), "note": "after: the CLI with rendering; before: its computations only"}
    bench.ratio(f"ls_{big}_rows_within_{OPEN_BUDGET_S:g}s", OPEN_BUDGET_S / sec[f"ls_{big}"], 1.0, ls_parts)


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default=None)
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--images", type=int, default=None)
    p.add_argument("--only", choices=("extract", "open"), default=None, help="run one half only")
    args = p.parse_args(argv)
    setup(args)
    cfg = pick(SIZES, args)
    bench = Bench("scaling", args)
    if args.only in (None, "open"):
        opening(bench, args, cfg)
    if args.only in (None, "extract"):
        extraction(bench, args, cfg)
    return bench.finish()


if __name__ == "__main__":
    main()
