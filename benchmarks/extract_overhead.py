"""Extraction overhead: `sak-cache extract` images/s over a bare loop of the same teacher's forward.

Ours: the library path of ``sak-cache extract`` (``sak.pipeline.extract.job.extract``) into a fresh
cache each round: JPEG decode and preprocessing in the decode thread pool, batched
``forward_layers``, conversion to the store dtype (or int8 quantization and its fidelity measure) and
per-layer statistics on the device, copy to host, background sha256 checksums + shard encoding + one
``writev`` and ``fsync`` per shard file, commit (stats, Parquet part). It is timed from the moment the run
starts its tasks (its ``progress(total=...)`` call: the teacher is built and the plan made) to
its return; the setup time before that is reported as a part.

Baseline: the same teacher (name, random-init seed, resolution, layers) built once, the same
images decoded and preprocessed BEFORE timing and stacked into batches of the same size on
the same device, and ``forward_layers`` called on them in a loop under ``inference_mode``
(with the same float16 autocast the extractor uses on CUDA).

Target: ours / bare >= 0.95 (decode, compress and write overlapped with the teacher).

Paper-size maps (``--maps paper``, also run by default after the ViT case): the same comparison for a
teacher whose outputs are SAM-size, 4 layers of 64x64x768 (25 MB per sample in float16), so the
write path is what is exercised: on the CPU a cheap synthetic teacher (``bench:paper-maps``: patch
average, a 3->768 projection and per-token bottleneck MLPs, ~10 GFLOP per image) stands in for SAM;
on CUDA the same teacher runs on the GPU at full batch. Printed beside img/s: the features handed
to the writers (GB/s), the bytes on disk (GB/s), the writer threads and their busy share.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from .common import Bench, Scratch, alternate, image_folder, indexed, load_avg, median, parser, pick, say, setup, size_name, sync

SIZES = {
    "quick": dict(teacher="test:tiny", resolution=64, images=16, image_size=(64, 80), batch_size=4, rounds=1, warmup=1),
    # CPU: the DINOv2 ViT-B/14 architecture (random init) at a reduced 112 px, NYUD-sized JPEGs.
    "cpu": dict(teacher="timm:vit_base_patch14_dinov2", resolution=112, images=96, image_size=(480, 640),
                batch_size=8, rounds=3, warmup=1),
    # GPU: full size, B teacher at 448 px.
    "cuda": dict(teacher="timm:vit_base_patch14_dinov2", resolution=448, images=512, image_size=(480, 640),
                 batch_size=32, rounds=3, warmup=1),
}
DATASET = "photos"
PAPER = {
    "quick": dict(images=4, batch_size=2, hidden=8, rounds=1, warmup=0),
    "cpu": dict(images=32, batch_size=4, hidden=64, rounds=3, warmup=1),
    "cuda": dict(images=128, batch_size=32, hidden=512, rounds=2, warmup=1),  # 3.2 GB per run: fits run_all's budget
}
PAPER_TEACHER = "bench:paper-maps"


@contextmanager
def paper_teacher(hidden: int) -> Iterator[None]:
    """``bench:paper-maps`` registered while the block runs: SAM-size outputs (64x64 tokens x 768, 12 blocks), cheap forward."""
    import torch

    from sak.pipeline.teachers.base import Teacher
    from sak.pipeline.teachers.info import TeacherInfo
    from sak.pipeline.teachers.preprocess import Preprocess
    from sak.pipeline.teachers.registry import SOURCES, register_source
    from sak.pipeline.teachers.source import TeacherSource
    from sak.pipeline.teachers.weights import random_init_id, seeded

    info = TeacherInfo(name=PAPER_TEACHER, width=768, patch_size=4, depth=12, default_layers=(2, 5, 8, 11),
                       preprocess=Preprocess(resolution=(256, 256), resize="squash"), num_prefix_tokens=0)

    class PaperMaps(Teacher):
        def __init__(self, seed: int) -> None:
            super().__init__()
            self.name, self.weights_id, self.width, self.patch_size = info.name, random_init_id(seed), 768, 4
            self.num_blocks, self.num_prefix_tokens, self.default_layers = 12, 0, info.default_layers
            self.preprocess = info.preprocess
            with seeded(seed):
                self.embed = torch.nn.Linear(3, 768)
                self.down = torch.nn.ModuleList(torch.nn.Linear(768, hidden) for _ in range(12))
                self.up = torch.nn.ModuleList(torch.nn.Linear(hidden, 768) for _ in range(12))

        def forward_layers(self, x_bchw, layers):
            layers = self.check_input(x_bchw, layers)
            h = self.embed(torch.nn.functional.avg_pool2d(x_bchw, 4).permute(0, 2, 3, 1))
            out = {}
            for i in range(max(layers) + 1):
                h = h + self.up[i](torch.nn.functional.gelu(self.down[i](h)))
                if i in layers:
                    out[i] = h
            return [out[i] for i in layers], None

    def build(model: str, request) -> Teacher:
        return PaperMaps(request.seed).eval().requires_grad_(False)

    register_source(TeacherSource(prefix="bench", build=build, describe=lambda model: info))
    try:
        yield
    finally:  # the registry has no removal: a benchmark must not leave its teacher to the rest of the process
        SOURCES._entries.pop("bench", None)


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default=None, help="teacher name (random-init)")
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--images", type=int, default=None)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    p.add_argument("--io-threads", dest="io_threads", type=int, default=4, help="the extractor's decode threads")
    p.add_argument("--maps", choices=("vit", "paper", "both"), default="both",
                   help="vit: the ViT teacher of the size preset; paper: SAM-size maps (64x64x768 x 4 layers); both")
    p.add_argument("--dtype", default="float16", help="store dtype of the paper-size case (float16 or int8)")
    args = p.parse_args(argv)
    setup(args)
    bench = Bench("extract_overhead", args)
    if args.maps in ("vit", "both"):
        run_case(bench, args, pick(SIZES, args), "extract_vs_bare_forward", dtype="float16")
    if args.maps in ("paper", "both"):
        paper = dict(PAPER[size_name(args)])
        cfg = {**paper, "teacher": PAPER_TEACHER, "resolution": None, "image_size": (240, 320)}
        if args.rounds is not None:
            cfg["rounds"] = args.rounds
        with paper_teacher(paper["hidden"]):
            run_case(bench, args, cfg, "extract_vs_bare_forward_paper_maps", dtype=args.dtype)
    say("#   first_batch_s: start of work to the first batch's forward done (decode not yet overlapped);"
        " commit_after_last_batch_s: the last shard's write, fsync and commit after the last forward")
    say("#   extract img/s is timed from the run's start of work (teacher built, plan made) to its return;"
        " setup_s is the time before that, end_to_end_img_s includes it; features_GB_s: bytes handed to the writers"
        " per second, disk_GB_s: bytes on disk per second")
    return bench.finish()


def run_case(bench: Bench, args, cfg: dict, name: str, dtype: str) -> None:
    import torch

    from sak.pipeline.data.datasets import open_dataset
    from sak.pipeline.data.images import decode_rgb
    from sak.pipeline.extract.job import ExtractConfig, extract
    from sak.pipeline.teachers import create_teacher

    device, n, bs = args.device, cfg["images"], cfg["batch_size"]
    root = image_folder(args.workdir, n, tuple(cfg["image_size"]))
    index = indexed(args.workdir, root, DATASET, fmt="folder")
    teacher = create_teacher(cfg["teacher"], random_init=True, seed=0, resolution=cfg["resolution"]).to(device)
    amp_dtype = torch.float16  # what the extractor autocasts to on CUDA for float16 and int8 stores
    layers = tuple(teacher.default_layers)
    ds = open_dataset(index.parent.parent, DATASET)
    inputs = [teacher.preprocess(decode_rgb(ds.image_path(r))) for r in ds.ok_rows()]
    assert len(inputs) == n, f"expected {n} images in {root}, indexed {len(inputs)}"
    batches = [torch.stack(inputs[i : i + bs]).to(device) for i in range(0, n, bs)]
    on_cuda = device.startswith("cuda")
    bench.detail(f"setup_{name}", {**cfg, "layers": layers, "grid": teacher.grid, "width": teacher.width,
                           "io_threads": args.io_threads, "torch_threads": torch.get_num_threads()})

    def bare() -> dict:
        amp = torch.autocast("cuda", dtype=amp_dtype) if on_cuda else nullcontext()
        sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode(), amp:
            for x in batches:
                teacher.forward_layers(x, layers)
        sync(device)
        return {"img_s": n / (time.perf_counter() - t0)}

    scratch = Scratch(args.workdir, keep=args.keep)

    def ours() -> dict:
        cache = scratch.fresh_cache(index, DATASET)
        marks: dict[str, float] = {}

        def progress(advance: int, **info) -> None:
            now = time.perf_counter()
            if "total" in info:
                marks["start"] = now
            elif advance:
                marks.setdefault("first_batch", now)
                marks["last_batch"] = now

        t0 = time.perf_counter()
        report = extract(ExtractConfig(cache=str(cache), teachers=(cfg["teacher"],), datasets=(DATASET,), random_init=True,
                                       seed=0, resolution=cfg["resolution"], input_protocol="native", batch_size=bs, device=device,
                                       io_threads=args.io_threads, dtype=dtype, force_quant=True), progress=progress)
        t1 = time.perf_counter()
        rep = report.teachers[0]
        if rep.done != n:
            raise SystemExit(f"extract committed {rep.done} of {n} images ({report.failures[:3]})")
        run_s = t1 - marks["start"]
        if not args.keep:
            shutil.rmtree(cache, ignore_errors=True)
        return {"img_s": n / run_s, "setup_s": marks["start"] - t0, "end_to_end_img_s": n / (t1 - t0),
                "features_gb_s": rep.feature_bytes / 1e9 / run_s, "disk_gb_s": rep.bytes_written / 1e9 / run_s,
                "encode_threads": rep.encode_threads,
                "write_mb_s": rep.write_mb_per_s, "writer_busy": rep.write_seconds / run_s,
                "mb_per_image": rep.bytes_written / n / 1e6,
                "fill_s": marks["first_batch"] - marks["start"], "drain_s": t1 - marks["last_batch"]}

    try:
        res = alternate({"bare_forward": bare, "extract": ours}, cfg["rounds"], cfg["warmup"])
    finally:
        scratch.close()
    bare_s = median(r["img_s"] for r in res["bare_forward"])
    ours_s = median(r["img_s"] for r in res["extract"])
    med = lambda key: median(r[key] for r in res["extract"])
    bench.detail(f"rounds_{name}", res)
    bench.ratio(name, ours_s / bare_s, 0.95, {
        "extract_img_s": ours_s, "bare_forward_img_s": bare_s, "teacher": cfg["teacher"].split(":")[-1],
        "res": cfg["resolution"], "batch": bs, "images": n, "device": device,
        "setup_s": med("setup_s"), "end_to_end_img_s": med("end_to_end_img_s"), "write_MB_s": med("write_mb_s"),
        "writer_busy": med("writer_busy"), "MB_per_image": med("mb_per_image"),
        "first_batch_s": med("fill_s"), "commit_after_last_batch_s": med("drain_s"), "dtype": dtype,
        "features_GB_s": med("features_gb_s"), "disk_GB_s": med("disk_gb_s"), "encode_threads": med("encode_threads"),
        "grid": f"{teacher.grid[0]}x{teacher.grid[1]}x{teacher.width}", "layers": len(layers), "load": load_avg(),
    })


if __name__ == "__main__":
    main()
