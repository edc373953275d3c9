"""Concurrent writers: N extraction runs of one teacher into one store, started together; total samples
extracted / images, with block claims vs without (the claim-less baseline, ``ExtractConfig.claims=False``).

Each writer is a separate process (started once, teacher built in a warm-up, then fed one run at a
time over a pipe, so every round starts N runs within milliseconds); ``--quick`` uses threads of this
process instead (the same code path, seconds instead of process start-ups). Per round and side, a
fresh cache gets the same dataset index; the value is the sum of the writers' reported ``done``
divided by the images, median over the rounds (interleaved claims / baseline / baseline / claims);
1.0 means no image was extracted twice. Target <= 1.05 for 2 and 4 writers. Every round also checks
that the store holds each image exactly once after dedup (a lost sample stops the benchmark).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from .common import Bench, Scratch, alternate, image_folder, indexed, median, parser, pick, setup

SIZES = {
    "quick": dict(images=16, image_size=(32, 40), segment_size=2, batch_size=2, rounds=1, processes=False),
    "cpu": dict(images=96, image_size=(64, 80), segment_size=4, batch_size=4, rounds=3, processes=True),
    # the split does not depend on the device: the GPU preset runs its writers on the CPU too (no CUDA
    # context per writer process), within its run_all budget
    "cuda": dict(images=96, image_size=(64, 80), segment_size=4, batch_size=4, rounds=2, processes=True),
}
WRITERS = (2, 4)
DATASET = "photos"
TARGET = 1.05

SERVER = """
import json, logging, sys, torch
torch.set_num_threads(1)
logging.basicConfig(level=logging.ERROR)
from sak.pipeline.extract.job import ExtractConfig, extract
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    rep = extract(ExtractConfig.from_json(line))
    print(json.dumps({"done": rep.teachers[0].done, "skipped": rep.teachers[0].skipped_cached}), flush=True)
"""


class ProcessWriters:
    """``n`` writer processes, each running one extract() per line it is sent."""

    def __init__(self, n: int) -> None:
        self.procs = [subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                      for _ in range(n)]
        for p in self.procs:
            assert p.stdout is not None
            if "ready" not in json.loads(p.stdout.readline() or "{}"):
                raise SystemExit("a writer process failed to start")

    def run(self, cfgs: list) -> list[int]:
        procs = self.procs[: len(cfgs)]
        for p, cfg in zip(procs, cfgs, strict=True):  # all started before any result is read
            assert p.stdin is not None
            p.stdin.write(cfg.to_json() + "\n")
            p.stdin.flush()
        out = []
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if not line:
                raise SystemExit(f"writer process {p.pid} died (exit {p.wait()})")
            out.append(int(json.loads(line)["done"]))
        return out

    def close(self) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.close()
        for p in self.procs:
            p.wait(timeout=60)


class ThreadWriters:
    """The same in threads of this process (quick runs)."""

    def run(self, cfgs: list) -> list[int]:
        from sak.pipeline.extract.job import extract

        done = [0] * len(cfgs)
        errors: list[BaseException] = []
        go = threading.Barrier(len(cfgs))

        def one(i: int) -> None:
            try:
                go.wait()
                done[i] = extract(cfgs[i]).teachers[0].done
            except BaseException as exc:  # re-raised below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(cfgs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return done

    def close(self) -> None:
        pass


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=None)
    p.add_argument("--segment-size", type=int, default=None, help="samples per block / segment")
    args = p.parse_args(argv)
    setup(args)
    cfg = pick(SIZES, args)
    bench = Bench("concurrent_writers", args)

    from sak.pipeline.extract.job import ExtractConfig
    from sak.pipeline.store.catalog import list_stores
    from sak.pipeline.teachers import create_teacher

    n = cfg["images"]
    size = tuple(cfg["image_size"])
    index = indexed(args.workdir, image_folder(args.workdir, n, size), DATASET, fmt="folder")
    base = dict(teachers=("test:tiny",), datasets=(DATASET,), random_init=True, layers=(1, 3), img_size=size,
                batch_size=cfg["batch_size"], segment_size=cfg["segment_size"], device="cpu", io_threads=1)
    create_teacher("test:tiny", random_init=True)  # imports timm here, before any timing
    writers = ProcessWriters(max(WRITERS)) if cfg["processes"] else ThreadWriters()
    with Scratch(args.workdir, keep=args.keep) as scratch:
        try:
            warm = scratch.fresh_cache(index, DATASET)  # each process builds its teacher once
            writers.run([ExtractConfig(cache=str(warm), limit=1, **base) for _ in range(max(WRITERS))])

            def run(k: int, claims: bool) -> dict:
                cache = scratch.fresh_cache(index, DATASET)
                t0 = time.perf_counter()
                done = writers.run([ExtractConfig(cache=str(cache), claims=claims, **base) for _ in range(k)])
                seconds = time.perf_counter() - t0
                [store] = list_stores(cache)
                if store.commits().num_rows != n:
                    raise SystemExit(f"{k} writers (claims={claims}) left {store.commits().num_rows} of {n} images committed")
                return {"work": sum(done) / n, "done": done, "seconds": round(seconds, 3)}

            for k in WRITERS:
                res = alternate({"claims": lambda k=k: run(k, True), "baseline": lambda k=k: run(k, False)},
                                cfg["rounds"], warmup=0)
                bench.detail(f"writers_{k}", res)
                works = [r["work"] for r in res["claims"]]
                bench.ratio(f"concurrent_{k}_writers_work_per_image", median(works), TARGET, {
                    "max": max(works), "baseline_work_per_image": median(r["work"] for r in res["baseline"]),
                    "baseline_max": max(r["work"] for r in res["baseline"]), "images": n,
                    "blocks": -(-n // cfg["segment_size"]), "rounds": cfg["rounds"],
                    "seconds": median(r["seconds"] for r in res["claims"]),
                    "baseline_seconds": median(r["seconds"] for r in res["baseline"]),
                    "writers": "processes" if cfg["processes"] else "threads", "writer_device": "cpu",
                }, op="<=")
        finally:
            writers.close()
    return bench.finish()


if __name__ == "__main__":
    main()
