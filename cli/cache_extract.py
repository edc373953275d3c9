"""`sak-cache extract`: run teachers once over indexed images and cache their multi-layer features."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from ..pipeline.extract.config import ExtractConfig
from ..pipeline.extract.dryrun import dry_run as run_dry_run
from ..pipeline.extract.job import ExtractReport
from ..pipeline.extract.job import extract as run_extract
from .common import (
    console,
    exit_code_for,
    friendly_errors,
    out,
    parse_hw_option,
    parse_int_list,
    renamed,
)
from .render import NAME, NUMERIC, cell, emit_json, line, table

MAX_LISTED_FAILURES = 10


class _RateColumn(ProgressColumn):
    """Samples per second since the plan was made: known as soon as the first batch is done."""

    def render(self, task) -> Text:
        rate = _rate(task)
        return Text("-- img/s" if rate is None else f"{rate:,.1f} img/s", style="cyan")


class _EtaColumn(ProgressColumn):
    """Time left at the rate so far (rich's own needs two updates; the first batch can take minutes on a CPU)."""

    def render(self, task) -> Text:
        rate = _rate(task)
        if rate is None or task.total is None:
            return Text("eta --", style="cyan")
        left = max(0.0, (task.total - task.completed) / rate)
        return Text(f"eta {int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}", style="cyan")


def _rate(task) -> float | None:
    start = task.fields.get("started")
    if not task.completed or start is None or time.monotonic() <= start:
        return None
    return task.completed / (time.monotonic() - start)


class _BytesColumn(ProgressColumn):
    """Feature bytes handed to the writers per second since the start (GB/s beside img/s)."""

    def render(self, task) -> Text:
        elapsed = task.elapsed or 0.0
        nbytes = task.fields.get("feature_bytes", 0)
        return Text(f"{nbytes / 1e9 / elapsed:,.2f} GB/s" if elapsed > 0 and nbytes else "-- GB/s", style="magenta")


def report_record(report: ExtractReport, teachers: list[str], cache: str) -> dict[str, Any]:
    """The summary as plain data (``--json``): the table's numbers, the stores, the failures and the next command."""
    return {
        "images": report.images, "samples": report.samples, "seconds": report.seconds, "failed": report.failed,
        "teachers": [{
            "teacher": t.teacher, "name": name, "store": t.store.name, "path": str(t.store), "weights": t.weights, "random_init": t.random_init,
            "done": t.done, "reused": t.skipped_cached, "failed": t.failed, "failed_earlier": t.skipped_failed,
            "images_per_s": t.images_per_s, "feature_gb_per_s": t.feature_gb_per_s, "bytes_written": t.bytes_written,
            "writer_busy": t.write_seconds / t.seconds if t.seconds else 0.0, "encode_threads": t.encode_threads or 1,
            "segments": list(t.segments),
        } for name, t in zip(teachers, report.teachers, strict=True)],
        "failures": [{"teacher": name, "sample_id": sid, "error": err} for name, sid, err in report.failures],
        "next": next_command(report, teachers, cache),
    }


def next_command(report: ExtractReport, teachers: list[str], cache: str) -> str:
    """The `sak-train fit` command that trains on what this run stored."""
    return " ".join(["sak-train fit --cache", cache, *(f"-d {d}" for d in report.datasets), *(f"-t {name}" for name in teachers)])


def _summary(rec: dict[str, Any]) -> Table:
    """One row per teacher; the full teacher names fold, the numbers never wrap; the stores follow on lines of their own."""
    t = table(f"extraction: {rec['images']} images, {rec['samples']} samples run, {rec['seconds']:.1f} s",
              [("teacher", NAME), ("done", NUMERIC), ("reused", NUMERIC), ("failed", NUMERIC), ("img/s", NUMERIC),
               ("GB/s", NUMERIC), ("MB disk", NUMERIC), ("writer", NUMERIC)])
    for r in rec["teachers"]:
        failed = r["failed"] + r["failed_earlier"]
        failed_text = (f"{failed}" + (f" ({r['failed_earlier']} earlier)" if r["failed_earlier"] else "")) if failed else "0"
        t.add_row(
            cell(r["teacher"] + (" (RANDOM-INIT)" if r["random_init"] else ""), "bold red" if r["random_init"] else None),
            str(r["done"]), str(r["reused"]), cell(failed_text, "red" if failed else None), f"{r['images_per_s']:,.1f}",
            f"{r['feature_gb_per_s']:,.3f}", f"{r['bytes_written'] / 1e6:,.1f}", f"{r['writer_busy']:.0%} x{r['encode_threads']}",
        )
    t.caption = "GB/s: features handed to the writers; writer: busy time x encode threads"
    t.caption_justify = "left"
    return t


def extract(
    teacher: list[str] = typer.Option(..., "--teacher", "-t", help="Teacher name or alias (dinov2, sam, clip, timm:<arch>, open_clip:<arch>@<tag>, test:tiny; `sak-cache teachers` lists them). Repeat, or separate by commas, for several teachers: each image is decoded once for all."),
    data: Path | None = typer.Option(None, "--data", help="A dataset folder to index into the cache first, then extract."),
    replace: bool = typer.Option(False, "--replace", help="With --data: replace an index of the same name that comes from another folder, or whose images were removed or changed (refused otherwise; added images are always fine)."),
    dataset: list[str] | None = typer.Option(None, "--dataset", "-d", help="Name of an indexed dataset (repeatable). Default: every dataset indexed in the cache."),
    cache: str = typer.Option("./cache", "--cache", "-c", help="Cache root, a directory or an fsspec URL (s3://bucket/cache): stores go to <cache>/features/, one folder per teacher spec. Samples whose image content (sha256) is already stored are reused, whoever extracted them."),
    layers: str | None = typer.Option(None, "--layers", help="Comma-separated block indices, e.g. 2,5,8,11. Default: the teacher's SAK layers."),
    img_size: str | None = typer.Option(None, "--img-size", help="The student's input size HxW (e.g. 448x576 NYUD, 512x512 PASCAL, 384 stage 1): with the student protocol every teacher is built at it and fed the student's tensor. Default: --aug-crop, else the largest image (smaller images are centre-padded)."),
    input_protocol: str = typer.Option("student", "--input-protocol", help="student (official SAK, default): teachers take the student's own ImageNet-normalized tensor at --img-size, SAM resized to 1024; native: each image squashed to the teacher's native square with its own mean/std."),
    native_size: int | None = typer.Option(None, "--native-size", min=8, help="Native protocol only: square input size of the teachers. Default: each teacher's native size."),
    resolution_old: int | None = renamed("--resolution", "--native-size"),
    dtype: str = typer.Option("float16", "--dtype", help="Stored dtype: float16 (default), bfloat16 (kept as uint16 bits), float32, or int8 (codes + float32 scales, quantized on the GPU: half the bytes of float16 on disk, over PCIe and in the loader; use it at the paper's sizes, e.g. SAM's 64x64x768 maps = 25 MB per sample in float16). int8 is fidelity-gated: see --min-cosine."),
    quant: str | None = typer.Option(None, "--quant", help="int8 scales: token-channel-offset (default: each channel centred on its mean and scaled by its std, then a scale per token; real teachers have outlier channels, channels with large constant offsets and high-norm tokens), token-channel, channel, or token (faster to decode, lower fidelity on real features; benchmarks/storage.py measures all four)."),
    orientation: str = typer.Option(None, "--orientation", help="Image orientation on decode, recorded in the spec: exif (the default: the EXIF Orientation tag applied, the image as a viewer shows it) or raw (stored pixel order: stores before EXIF support, and --input-protocol native)."),
    codec: str = typer.Option("none", "--codec", help="Compression of the feature arrays: none (default and fastest: float16/int8 features compress by under 10%, and decoding would bound training reads), lz4 (cheap, rarely pays), zstd (saves <10% at a large CPU cost; every store before this option)."),
    min_cosine: float = typer.Option(0.9999, "--min-cosine", help="int8 fidelity gate: the extraction stops (before writing) when a layer's standardized mean cosine between the int8 codes and the teacher's maps, on any batch, is below this. Shown per layer by `sak-cache info`."),
    force_quant: bool = typer.Option(False, "--force-quant", help="int8: keep going below --min-cosine with a warning (the measured fidelity is recorded in the store)."),
    encode_threads: int | None = typer.Option(None, "--encode-threads", min=1, help="Writer threads per store that checksum, compress and write shards. Default: as many as the output rate needs (measured per segment)."),
    views: int = typer.Option(1, "--views", min=1, help="Augmented views per image (K > 1 needs --aug sak)."),
    aug: str = typer.Option("none", "--aug", help="none: one un-augmented view; sak: the official SAK pipeline (scale, crop with class-ratio retry, flip, photometric, centred pad), replayable exactly; sak-v1: sak's first policy (older stores)."),
    aug_crop: str | None = typer.Option(None, "--aug-crop", help="Size HxW of the augmented views (e.g. 448x576). Student protocol: it is --img-size (the default); native protocol: default each image's own size."),
    keep_prefix: bool = typer.Option(False, "--keep-prefix", help="Also store the CLS/register tokens as prefix_<i>."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1, help="Images per teacher forward."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda or cuda:N."),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Dask worker processes (e.g. one per GPU). 1 runs in this process."),
    threads: int = typer.Option(4, "--threads", min=1, help="Decode/augment threads per worker."),
    io_threads_old: int | None = renamed("--io-threads", "--threads"),
    scheduler: str | None = typer.Option(None, "--scheduler", help="Address of an existing dask scheduler, e.g. tcp://host:8786; each task is one segment."),
    limit: int | None = typer.Option(None, "--limit", min=0, help="Only the first N images (after de-duplication by content)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run images whose earlier attempt failed again (they are skipped and counted otherwise)."),
    weights: list[str] | None = typer.Option(None, "--weights", help="Local weights file (.safetensors) per --teacher, same order. Never unpickled."),
    random_init: bool = typer.Option(False, "--random-init", help="Random weights (tests, demos). Recorded in the spec and flagged everywhere."),
    seed: int = typer.Option(0, "--seed", help="Seed of --random-init weights and of the view sampler."),
    segment_size: int = typer.Option(1024, "--segment-size", min=1, help="Samples per segment: the unit of commit, resume and dask task."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Resolve everything and run ONE batch on --device (not stored): print the bytes per sample, the total, the measured img/s and the time estimate. Writes nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object at the end (the summary, or the --dry-run estimate); progress and logs go to stderr."),
    repair: bool = typer.Option(False, "--repair", help="Verify each store this run writes to first (reads all of it), uncommit its damaged samples (bad checksums, missing shards or segments, unusable parts), recompute bad statistics, then extract the uncommitted samples again."),
) -> None:
    """Run each teacher ONCE over the images and store its multi-layer features (Zarr + Parquet).

    Resumable: images (by sha256) that already have a committed row are skipped; a kill loses at most the segment in flight. Images that cannot be decoded are recorded as failed with the reason, the run goes on, and the command exits with code 1 (run again with --retry-failed after fixing them).

    [bold]Augmentation.[/] Online SAK shows teachers the same augmented crop the student sees. With --aug sak --views K each image is cached under K augmented views (scale 0.5-2, crop, flip, photometric); the parameters of each view are stored with it and the trainer replays exactly that augmentation on the image and its labels, so student input and teacher target match bit for bit. [bold]This exact replay is the faithful path.[/] Mirroring or cropping cached feature maps instead (a feature-space flip) is only an approximation the trainer offers as an explicit option: a ViT's features of a mirrored image are not mirrored features (positional embeddings); one public measurement (DINOv3-S, 640 px) found cosine 0.9999 between cached and live features of the same image, but only 0.867 for mirrored cache vs the live mirrored image.

    [bold]Bytes.[/] At the paper's sizes (dinov2 + sam + clip, 4 layers each: ~35 MB per sample in float16) the cache only beats the teachers if it moves few bytes: --dtype int8 halves disk, PCIe and loader traffic, and refuses layers whose int8 codes drift from the teacher's maps (--min-cosine; the default --quant token-channel-offset handles outlier channels, offsets and high-norm tokens). Compression (--codec) buys under 10% on these features: keep none.

    [bold]Teacher inputs.[/] By default (--input-protocol student, as official SAK) each teacher is built at the student's input size (--img-size) and receives the student's own tensor, ImageNet mean/std: DINOv2-B/14 at 448x576 gives a 32x41 grid, CLIP-B/16 28x36; SAM alone is resized (longest side 1024, zero pad). --input-protocol native squashes each image to the teacher's native square with its own mean/std instead.

    Examples:

      sak-cache extract --teacher dinov2 --dataset nyud --cache ./cache --img-size 448x576

      sak-cache extract -t dinov2 -t sam -t clip --data ./NYUD_MT --cache ./cache --img-size 448x576 --aug sak --views 4

      sak-cache extract -t dinov2 --dataset nyud --cache ./cache --input-protocol native

      sak-cache extract -t sam --dataset nyud --cache ./cache --img-size 448x576 --dtype int8

      sak-cache extract -t test:tiny --random-init --data ./demo --cache ./cache --workers 2

      sak-cache extract -t dinov2 --dataset nyud --cache ./cache --img-size 448x576 --dry-run   # bytes and time first
    """
    teachers = [name.strip() for value in teacher for name in value.split(",") if name.strip()]
    cfg = ExtractConfig(
        cache=str(cache), teachers=tuple(teachers), datasets=tuple(dataset or ()), data=str(data) if data else None, replace=replace,
        weights=tuple(weights or ()), random_init=random_init, seed=seed, layers=parse_int_list(layers, "--layers"),
        input_protocol=input_protocol, img_size=parse_hw_option(img_size, "--img-size"),
        resolution=native_size, dtype=dtype, quant=quant, codec=codec, orientation=orientation, min_cosine=min_cosine, force_quant=force_quant,
        encode_threads=encode_threads, views=views, aug=aug, aug_crop=parse_hw_option(aug_crop, "--aug-crop"), keep_prefix=keep_prefix, batch_size=batch_size,
        device=device, workers=workers, io_threads=threads, scheduler=scheduler, limit=limit,
        retry_failed=retry_failed, segment_size=segment_size, repair=repair,
    )
    if random_init:
        console.print(
            "[bold yellow]WARNING: --random-init: these teachers have RANDOM weights. Their features are not a foundation "
            "model's; use the store for tests and demos only. The store's spec records it.[/]"
        )
    if dry_run:
        _dry_run(cfg, as_json)
        return
    wide = console.width >= 100  # at 80 columns the GB/s column goes (the summary has it) and the bar is short
    columns = (TextColumn("[bold]{task.description}"), BarColumn(bar_width=None if wide else 10), MofNCompleteColumn(),
               TextColumn("{task.fields[phase]}"), _RateColumn(), *((_BytesColumn(),) if wide else ()), TimeElapsedColumn(), _EtaColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("extracting", total=None, feature_bytes=0, phase="loading", started=None)
        sent, decoded, done = [0], [0], [0]

        def progress(advance: int, **info: Any) -> None:
            if "plan" in info:
                _print_plan(info["plan"])
            if "total" in info:
                bar.update(task, total=info["total"], started=time.monotonic())
            decoded[0] += info.get("decoded", 0)
            sent[0] += info.get("bytes", 0)
            done[0] += advance
            bar.update(task, advance=advance, feature_bytes=sent[0], phase=_phase(done[0], decoded[0], batch_size, bar.tasks[0].total))

        report = run_extract(cfg, progress=progress)
    rec = report_record(report, teachers, str(cache))
    if as_json:
        emit_json(rec)
    else:
        _print_summary(rec, report)
    raise typer.Exit(exit_code_for(report.failed))


def _phase(done: int, decoded: int, batch_size: int, total: float | None) -> str:
    """What the run is doing: images decoded of the first batch, then its forward (minutes on a CPU), then decoded count."""
    if done:
        return f"{decoded} decoded"
    first = min(batch_size, int(total)) if total else batch_size
    return f"batch 1: {decoded}/{first} decoded" if decoded < first else "batch 1: forward"


def _print_plan(plan: dict[str, Any]) -> None:
    """Before the first image: what will be extracted and how many bytes it takes (exact, from the spec)."""
    line(f"plan: {plan['images']} images, {plan['samples']} samples to extract, {plan['bytes'] / 1e6:,.1f} MB in all", console=console)
    for t in plan["teachers"]:
        line(f"  {t['teacher']}: {t['samples']} samples x {t['bytes_per_sample']:,} bytes ({t['shape']}) = {t['bytes'] / 1e6:,.1f} MB"
             + (f"; {t['reused']} already stored" if t["reused"] else ""), console=console)


def _print_summary(rec: dict[str, Any], report: ExtractReport) -> None:
    out.print(_summary(rec))
    for r in rec["teachers"]:
        line(f"store of {r['teacher']}: {r['path']}")
        if r["reused"]:
            line(f"{r['teacher']}: reused {r['reused']} sample(s) already in the cache (same image content and view)")
    if any(r["random_init"] for r in rec["teachers"]):
        console.print("[bold yellow]WARNING: RANDOM-INIT teacher weights in this cache (see the table).[/]")
    if report.failures:
        console.print(f"[bold red]{len(report.failures)} sample(s) failed[/]; first {min(len(report.failures), MAX_LISTED_FAILURES)}:")
        for name, sample_id, error in report.failures[:MAX_LISTED_FAILURES]:
            line(f"  {sample_id} ({name}): {error}", console=console)
    if report.failed:
        console.print("Failed samples are recorded in the store (`sak-cache info STORE`); fix them and run again with --retry-failed.")
    line(f"next: {rec['next']}")


def _dry_run(cfg: ExtractConfig, as_json: bool) -> None:
    """Print what the run would store and how long it would take (one measured batch); nothing is written."""
    rep = run_dry_run(cfg)
    if as_json:
        emit_json(rep.to_dict())
        return
    plan = rep.plan
    t = table(f"dry run: {plan['images']} images, {plan['samples']} samples to extract (nothing written)",
              [("teacher", NAME), ("samples", NUMERIC), ("bytes/sample", NUMERIC), ("total MB", NUMERIC)])
    for r in plan["teachers"]:
        t.add_row(cell(r["teacher"]), str(r["samples"]), f"{r['bytes_per_sample']:,}", f"{r['bytes'] / 1e6:,.1f}")
    out.print(t)
    for r in plan["teachers"]:
        line(f"store of {r['teacher']}: {r['path']} ({r['shape']})")
    line(f"total: {plan['bytes']:,} bytes ({plan['bytes'] / 1e6:,.1f} MB)")
    if not rep.measured:
        line("nothing to extract: every sample is already stored")
        return
    line(f"measured: {rep.measured} images in {rep.seconds:.2f} s on {rep.device} = {rep.images_per_s:,.1f} img/s "
         f"(one batch, decode + every teacher's forward, first-call warm-up included)")
    minutes, secs = divmod(rep.estimate_seconds, 60)
    line(f"estimate: {plan['samples']} samples in about {int(minutes)} min {secs:.0f} s")


def register(app: typer.Typer) -> None:
    app.command("extract")(friendly_errors(extract))
