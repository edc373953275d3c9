"""Cached vs online training: step time of `sak-train fit --online` over the cached run, against the ideal.

Both runs call ``sak.student.train.trainer.fit`` (the library path of ``sak-train fit``) with the
same student, teachers, data, seed and batch size (so the same batches in the same order);
the online run rebuilds the teachers from the stores' specs and runs them on every batch
(the official SAK way), the cached run reads their stored targets. A step's time is the
interval between two of the trainer's progress calls (data wait, forward, losses, backward,
optimizer step); the first two steps (warm-up) and the last one (it writes the checkpoint)
are not counted; the median is reported.

Ideal speedup, from parts measured in the same process and interleaved:
(teacher forward + student step) / student step, where teacher forward is every teacher
on one batch and student step is forward + losses + backward + AdamW on one batch whose
targets are already in memory. Target: achieved >= 0.9 x ideal.

Also reported: the one-time extraction cost and after how many epochs the cache has paid for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from itertools import pairwise
from typing import Any

from .common import Bench, Scratch, alternate, demo_dataset, indexed, median, parser, pick, say, setup, sync

SIZES = {
    "quick": dict(teachers=("test:tiny", "test:tiny2"), resolution=64, student="vit_tiny_patch16_224",
                  image_size=(64, 80), images=16, batch_size=4, steps=6, rounds=1, part_rounds=2, protocol="native"),
    # CPU: the paper's architectures (ViT-S student, two B teachers, random init) at a reduced resolution.
    "cpu": dict(teachers=("timm:vit_base_patch14_dinov2", "timm:vit_base_patch16_clip_quickgelu_224"), resolution=112,
                student="vit_small_patch16_224", image_size=(112, 144), images=32, batch_size=4, steps=8, rounds=3,
                part_rounds=3, protocol="native"),
    # GPU (H100-class, < 3 min): the paper's NYUD recipe at full size: ViT-B student at 448x576, the three B teachers
    # (dinov2 + clip + sam) fed the student's own tensor (official protocol: 32x41, 28x36 and SAM's 64x64 tokens,
    # 39 MB of float16 targets per sample), targets resident on the GPU when they fit (--targets auto).
    "cuda": dict(teachers=("dinov2", "clip", "sam"), resolution=448, student="vit_base_patch16_384",
                 image_size=(448, 576), images=96, batch_size=8, steps=24, rounds=2, part_rounds=5, protocol="student"),
}
SKIP_FIRST = 2  # warm-up steps not counted


def student_step_timer(run_setup: Any, batch: Any) -> Callable[[], float]:
    """A callable timing one training step of ``run_setup``'s student on ``batch`` (same ops as the trainer's step)."""
    import torch

    from sak.student.train.trainer import compute_losses

    cfg, device, model = run_setup.cfg, run_setup.device, run_setup.model
    batch = batch.to(device)
    targets = run_setup.targets(batch)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr or 1e-4)
    model.train()
    amp = device.type == "cuda" and cfg.runtime.amp in ("auto", "bf16")

    def step() -> float:
        sync(str(device))
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out = model(batch.image)
            loss, _ = compute_losses(out, batch, targets, stage=cfg.optim.stage, alpha=cfg.optim.alpha, stats=run_setup.stats)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        sync(str(device))
        return time.perf_counter() - t0

    return step


def first_batch(run_setup: Any) -> Any:
    cfg = run_setup.cfg
    sampler = run_setup.train.sampler(block_size=cfg.loader.block_size, window=cfg.loader.window, seed=cfg.runtime.seed)
    loader = run_setup.train.batches(cfg.loader.batch_size, sampler, workers=0)
    try:
        return next(loader)
    finally:
        loader.close()


def timed_fit(train_cfg: Any, out: str) -> dict:
    """One ``fit`` run; per-step times from the progress calls (see the module doc)."""
    from sak.student.train.trainer import fit

    marks: list[float] = []
    result = fit(replace(train_cfg, out=out), progress=lambda advance, **info: marks.append(time.perf_counter()))
    steps = [b - a for a, b in pairwise(marks)][SKIP_FIRST - 1 : -1]  # steps 3 .. n-1
    return {"step_s": median(steps), "steps_timed": len(steps), "data_wait": result.data_wait,
            "mean_s_per_step": result.s_per_step}


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--student", default=None, help="timm ViT backbone of the student")
    p.add_argument("--resolution", type=int, default=None, help="teacher input size")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="steps per fit run (the first 2 and the last are not timed)")
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "int8"),
                   help="stored target dtype (int8: codes + scales, dequantized on the training device)")
    p.add_argument("--targets", default="auto", choices=("auto", "ram", "gpu", "stream"),
                   help="where the cached run keeps its targets (see sak-train fit --targets)")
    p.add_argument("--stage", default="distill", choices=("distill", "multitask"),
                   help="distill: SAK's first stage, where the teachers cost the most (default); multitask adds the task heads")
    args = p.parse_args(argv)
    setup(args)
    cfg = pick(SIZES, args)
    if cfg["steps"] < SKIP_FIRST + 2:
        raise SystemExit(f"--steps must be >= {SKIP_FIRST + 2}")
    bench = Bench("cached_vs_online", args)

    import torch

    from sak.pipeline.extract.job import ExtractConfig, extract
    from sak.student.runs.config import TrainConfig
    from sak.student.train.setup import prepare

    device = args.device
    root = demo_dataset(args.workdir, cfg["images"], tuple(cfg["image_size"]))
    index = indexed(args.workdir, root, "nyud")
    scratch = Scratch(args.workdir, keep=args.keep)
    try:
        cache = scratch.fresh_cache(index, "nyud")
        t0 = time.perf_counter()
        protocol = ({"input_protocol": "student", "img_size": tuple(cfg["image_size"])} if cfg["protocol"] == "student"
                    else {"input_protocol": "native", "resolution": cfg["resolution"]})
        rep = extract(ExtractConfig(cache=str(cache), teachers=tuple(cfg["teachers"]), datasets=("nyud",), random_init=True,
                                    batch_size=cfg["batch_size"], device=device, dtype=args.dtype, **protocol))
        extract_s = time.perf_counter() - t0
        bench.detail("extraction", {"seconds": extract_s, "images": rep.images,
                                    "img_s": [t.images_per_s for t in rep.teachers]})
        train = TrainConfig(cache=str(cache), dataset="nyud", backbone=cfg["student"], img_size=tuple(cfg["image_size"]),
                            iters=cfg["steps"], batch_size=cfg["batch_size"], val_split="none", ckpt_every=0,
                            log_every=10_000, device=device, seed=0, stage=args.stage, targets=args.targets)
        dev = torch.device(device)

        # -- ideal, from the parts ---------------------------------------------------
        cached_setup = prepare(replace(train, out=str(scratch.new("parts"))), device=dev)
        online_setup = prepare(replace(train, online=True, out=str(scratch.new("parts"))), device=dev)
        student_step = student_step_timer(cached_setup, first_batch(cached_setup))
        online_batch = first_batch(online_setup).to(dev)

        def teacher_forward() -> float:
            sync(device)
            t = time.perf_counter()
            online_setup.online(online_batch)
            sync(device)
            return time.perf_counter() - t

        parts = alternate({"teacher_forward": teacher_forward, "student_step": student_step}, cfg["part_rounds"], 1)
        n_train = len(cached_setup.train)
        choice = cached_setup.targets_choice
        bench.detail("setup", {**cfg, "train_samples": n_train, "stage": cached_setup.cfg.optim.stage, "dtype": args.dtype,
                               "targets": choice.to_dict() if choice is not None else None,
                               "torch_threads": torch.get_num_threads()})
        del cached_setup, student_step, teacher_forward
        online_setup = online_batch = None  # free the parts' memory before the whole-trainer runs

        # -- achieved, from the trainer ------------------------------------------------
        fits = alternate({
            "cached_fit": lambda: timed_fit(train, str(scratch.new("run"))),
            "online_fit": lambda: timed_fit(replace(train, online=True), str(scratch.new("run"))),
        }, cfg["rounds"], warmup=0)
    finally:
        scratch.close()

    t_teacher, t_student = median(parts["teacher_forward"]), median(parts["student_step"])
    ideal = (t_teacher + t_student) / t_student
    s_cached = median(r["step_s"] for r in fits["cached_fit"])
    s_online = median(r["step_s"] for r in fits["online_fit"])
    achieved = s_online / s_cached
    steps_per_epoch = n_train / cfg["batch_size"]
    saved_per_epoch = steps_per_epoch * (s_online - s_cached)
    bench.detail("fits", fits)
    common = {"online_step_s": s_online, "cached_step_s": s_cached, "stage": args.stage, "student": cfg["student"],
              "teachers": "+".join(t.split(":")[-1] for t in cfg["teachers"]), "res": cfg["resolution"],
              "img": "x".join(map(str, cfg["image_size"])), "batch": cfg["batch_size"], "device": device,
              "dtype": args.dtype, "targets": args.targets}
    bench.ratio("cached_speedup", achieved, 0.9 * ideal, {**common, "ideal": ideal})
    bench.ratio("cached_speedup_vs_ideal", achieved / ideal, 0.9, {
        "achieved": achieved, "ideal": ideal, "teacher_forward_s": t_teacher, "student_step_s": t_student,
        "cached_data_wait": median(r["data_wait"] for r in fits["cached_fit"]),
        "online_data_wait": median(r["data_wait"] for r in fits["online_fit"]),
    })
    bench.detail("break_even", {
        "extract_s": extract_s, "saved_s_per_epoch": saved_per_epoch,
        "epochs_to_pay_back": extract_s / saved_per_epoch if saved_per_epoch > 0 else float("inf"),
        "note": "extract_s includes building the teachers once; one epoch = the train split once",
    })
    say("#   ideal = (teacher_forward_s + student_step_s) / student_step_s, parts timed on one batch, interleaved")
    return bench.finish()


if __name__ == "__main__":
    main()
