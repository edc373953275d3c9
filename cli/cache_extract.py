"""`sak-cache extract`: run teachers once over indexed images and cache their multi-layer features."""

from __future__ import annotations

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
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from ..pipeline.extract.config import ExtractConfig
from ..pipeline.extract.job import extract as run_extract
from .common import (
    console,
    exit_code_for,
    friendly_errors,
    out,
    parse_hw_option,
    parse_int_list,
)

MAX_LISTED_FAILURES = 10


class _RateColumn(ProgressColumn):
    """Samples per second of the task."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- img/s" if speed is None else f"{speed:,.1f} img/s", style="cyan")


class _BytesColumn(ProgressColumn):
    """Feature bytes handed to the writers per second since the start (GB/s beside img/s)."""

    def render(self, task) -> Text:
        elapsed = task.elapsed or 0.0
        nbytes = task.fields.get("feature_bytes", 0)
        return Text(f"{nbytes / 1e9 / elapsed:,.2f} GB/s" if elapsed > 0 and nbytes else "-- GB/s", style="magenta")


def _summary(report) -> Table:
    """One row per teacher, 80 columns wide; the stores are listed under the table."""
    table = Table(title=f"extraction: {report.images} images, {report.samples} samples run, {report.seconds:.1f} s",
                  title_justify="left", caption_justify="left")
    for col in ("teacher", "done", "reused", "failed", "img/s", "GB/s", "MB disk", "writer"):
        table.add_column(col, justify="left" if col == "teacher" else "right")
    stores = []
    for t in report.teachers:
        failed = t.failed + t.skipped_failed
        failed_text = f"[red]{failed}[/]" + (f" ({t.skipped_failed} earlier)" if t.skipped_failed else "") if failed else "0"
        busy = t.write_seconds / t.seconds if t.seconds else 0.0
        name = t.teacher + (" [bold red](RANDOM-INIT)[/]" if t.random_init else "")
        table.add_row(
            name, str(t.done), str(t.skipped_cached), failed_text, f"{t.images_per_s:,.1f}",
            f"{t.feature_gb_per_s:,.3f}", f"{t.bytes_written / 1e6:,.1f}", f"{busy:.0%} x{t.encode_threads or 1}",
        )
        stores.append(f"{t.teacher} -> {t.store}")
    table.caption = ("GB/s: features handed to the writers; writer: busy time x encode threads\n"
                     + "\n".join(f"store {line}" for line in stores))
    return table


def extract(
    teacher: list[str] = typer.Option(..., "--teacher", "-t", help="Teacher name or alias (dinov2, sam, clip, timm:<arch>, open_clip:<arch>@<tag>, test:tiny). Repeat for several teachers: each image is decoded once for all."),
    data: Path | None = typer.Option(None, "--data", help="A dataset folder to index into the cache first, then extract."),
    replace: bool = typer.Option(False, "--replace", help="With --data: replace an index of the same name that comes from another folder, or whose images were removed or changed (refused otherwise; added images are always fine)."),
    dataset: list[str] | None = typer.Option(None, "--dataset", "-d", help="Name of an indexed dataset (repeatable). Default: every dataset indexed in the cache."),
    cache: str = typer.Option("./cache", "--cache", "-c", help="Cache root, a directory or an fsspec URL (s3://bucket/cache): stores go to <cache>/features/<teacher>-<spec_id>/. Samples whose image content (sha256) is already stored are reused, whoever extracted them."),
    layers: str | None = typer.Option(None, "--layers", help="Comma-separated block indices, e.g. 2,5,8,11. Default: the teacher's SAK layers."),
    img_size: str | None = typer.Option(None, "--img-size", help="The student's input size HxW (e.g. 448x576 NYUD, 512x512 PASCAL, 384 stage 1): with the student protocol every teacher is built at it and fed the student's tensor. Default: --aug-crop, else the largest image (smaller images are centre-padded)."),
    input_protocol: str = typer.Option("student", "--input-protocol", help="student (official SAK, default): teachers take the student's own ImageNet-normalized tensor at --img-size, SAM resized to 1024; native: each image squashed to the teacher's native square with its own mean/std."),
    resolution: int | None = typer.Option(None, "--resolution", min=8, help="Native protocol only: square input size of the teachers. Default: each teacher's native size."),
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
    io_threads: int = typer.Option(4, "--io-threads", min=1, help="Decode/augment threads per worker."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="Address of an existing dask scheduler, e.g. tcp://host:8786; each task is one segment."),
    limit: int | None = typer.Option(None, "--limit", min=0, help="Only the first N images (after de-duplication by content)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run images whose earlier attempt failed again (they are skipped and counted otherwise)."),
    weights: list[str] | None = typer.Option(None, "--weights", help="Local weights file (.safetensors) per --teacher, same order. Never unpickled."),
    random_init: bool = typer.Option(False, "--random-init", help="Random weights (tests, demos). Recorded in the spec and flagged everywhere."),
    seed: int = typer.Option(0, "--seed", help="Seed of --random-init weights and of the view sampler."),
    segment_size: int = typer.Option(1024, "--segment-size", min=1, help="Samples per segment: the unit of commit, resume and dask task."),
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
    """
    cfg = ExtractConfig(
        cache=str(cache), teachers=tuple(teacher), datasets=tuple(dataset or ()), data=str(data) if data else None, replace=replace,
        weights=tuple(weights or ()), random_init=random_init, seed=seed, layers=parse_int_list(layers, "--layers"),
        input_protocol=input_protocol, img_size=parse_hw_option(img_size, "--img-size"),
        resolution=resolution, dtype=dtype, quant=quant, codec=codec, orientation=orientation, min_cosine=min_cosine, force_quant=force_quant,
        encode_threads=encode_threads, views=views, aug=aug, aug_crop=parse_hw_option(aug_crop, "--aug-crop"), keep_prefix=keep_prefix, batch_size=batch_size,
        device=device, workers=workers, io_threads=io_threads, scheduler=scheduler, limit=limit,
        retry_failed=retry_failed, segment_size=segment_size, repair=repair,
    )
    if random_init:
        console.print(
            "[bold yellow]WARNING: --random-init: these teachers have RANDOM weights. Their features are not a foundation "
            "model's; use the store for tests and demos only. The store's spec records it.[/]"
        )
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(), _BytesColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("extracting " + ", ".join(teacher), total=None, feature_bytes=0)
        sent = [0]

        def progress(advance: int, **info: Any) -> None:
            if "total" in info:
                bar.update(task, total=info["total"])
            sent[0] += info.get("bytes", 0)
            bar.update(task, advance=advance, feature_bytes=sent[0])

        report = run_extract(cfg, progress=progress)
    out.print(_summary(report))
    for t in report.teachers:
        if t.skipped_cached:
            out.print(f"{t.teacher}: reused {t.skipped_cached} sample(s) already in the cache (same image content and view)", highlight=False)
    if any(t.random_init for t in report.teachers):
        console.print("[bold yellow]WARNING: RANDOM-INIT teacher weights in this cache (see the table).[/]")
    if report.failures:
        console.print(f"[bold red]{len(report.failures)} sample(s) failed[/]; first {min(len(report.failures), MAX_LISTED_FAILURES)}:")
        for name, sample_id, error in report.failures[:MAX_LISTED_FAILURES]:
            console.print(f"  [bold]{sample_id}[/] ({name}): {error}", highlight=False, soft_wrap=True)
    if report.failed:
        console.print("Failed samples are recorded in the store (`sak-cache info STORE`); fix them and run again with --retry-failed.")
    raise typer.Exit(exit_code_for(report.failed))


def register(app: typer.Typer) -> None:
    app.command("extract")(friendly_errors(extract))
