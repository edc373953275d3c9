"""`sak-cache compact | copy | rm`: housekeeping, copying and removing stores shared by a lab (`export` is copy's old name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from ..manifests.errors import SakError
from ..pipeline.cache import copy_store, remove_store, store_folder
from ..pipeline.store.catalog import resolve_store
from ..pipeline.store.feature_store import FeatureStore
from ..pipeline.store.transfer import compact_store
from .common import STORE_HELP, console, deprecated, friendly_errors
from .render import line, mb

CACHE_HELP = "Cache root, a directory or an fsspec URL (s3://bucket/cache), to find STORE by name."


def _bar(description: str, total: int):
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    bar = Progress(*columns, console=console)
    task = bar.add_task(description, total=total)

    def progress(advance: int, **info: Any) -> None:
        bar.advance(task, advance)

    return bar, progress


def compact(
    store: str = typer.Argument(..., metavar="STORE", help=STORE_HELP),
    cache: str = typer.Option("./cache", "--cache", "-c", help=CACHE_HELP),
    target_rows: int = typer.Option(4096, "--target-rows", min=1, help="Rows per merged segment; segments with fewer rows are merged."),
) -> None:
    """Merge many small segments into few large ones (faster listing and reading).

    New segments and their commit parts are written first; the old parts are removed only after,
    so a reader always finds every row. Safe beside running extractions; restart training runs
    that opened the store before.
    """
    found = resolve_store(store, cache)
    s = FeatureStore.open(str(found.path), read_only=False)
    bar, progress = _bar("compacting", s.commits(status=None).num_rows)
    with bar:
        report = compact_store(s, target_rows=target_rows, progress=progress)
    if not report.removed_segments:
        line(f"nothing to compact in {s.path}: fewer than two segments under {target_rows} rows")
        return
    line(f"compacted {len(report.removed_segments)} segments into {len(report.new_segments)} "
         f"({report.copied} rows, {report.failed_copied} failed rows kept) in {s.path}")


def copy(
    store: str = typer.Argument(..., metavar="STORE", help=STORE_HELP),
    to: str = typer.Option(..., "--to", help="Target cache root, a directory or URL; the store keeps its name there."),
    cache: str = typer.Option("./cache", "--cache", "-c", help=CACHE_HELP),
    samples: str | None = typer.Option(None, "--samples", help="A text file with one sha256 or sample_id per line: copy only those."),
    segment_rows: int = typer.Option(4096, "--segment-rows", min=1, help="Rows per segment written in the target."),
) -> None:
    """Copy a store (or a subset of its samples) into another cache, e.g. from a lab bucket to local disk.

    The dataset indexes of the copied samples come along (datasets/<name>.parquet, only those samples;
    they still point at the same image folder), so `sak-train fit --cache TARGET` trains from the copy.
    Rows the target already holds (same image content and view) are reused, not copied again.
    """
    s = resolve_store(store, cache)
    wanted = None
    if samples is not None:
        lines = Path(samples).read_text(encoding="utf-8").splitlines()
        wanted = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    bar, progress = _bar("copying", s.commits().num_rows if wanted is None else len(wanted))
    with bar:
        report = copy_store(str(s.path), cache, to, samples=wanted, segment_rows=segment_rows, progress=progress)
    t = report.transfer
    line(f"copied {t.copied} rows to {t.target} (reused {t.reused} already there)")
    for name, rows in report.datasets:
        line(f"dataset index {name}: {rows} image(s) in {to}")
    if report.datasets:
        names = " ".join(f"-d {name}" for name, _ in report.datasets)
        line(f"next: sak-train fit --cache {to} {names} -t {s.spec.teacher}")


def export(
    store: str = typer.Argument(..., metavar="STORE", help=STORE_HELP),
    to: str = typer.Option(..., "--to", help="Target cache root."),
    cache: str = typer.Option("./cache", "--cache", "-c", help=CACHE_HELP),
    samples: str | None = typer.Option(None, "--samples", help="Only these samples."),
    segment_rows: int = typer.Option(4096, "--segment-rows", min=1, help="Rows per segment written in the target."),
) -> None:
    """Old name of `sak-cache copy`."""
    deprecated("sak-cache export", "sak-cache copy")
    copy(store, to=to, cache=cache, samples=samples, segment_rows=segment_rows)


def rm(
    store: str = typer.Argument(..., metavar="STORE", help=STORE_HELP),
    cache: str = typer.Option("./cache", "--cache", "-c", help=CACHE_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete a feature store (found as `sak-cache info` finds it) and say how much space it freed.

    Refused while an extraction holds a live claim on the store; asks first unless --yes.
    """
    name, folder = store_folder(store, cache)  # not found: the error names the stores there
    try:
        s = FeatureStore.open(folder)
        what = f"{s.name} ({s.spec.teacher}, {s.commits('ok').num_rows} rows, {mb(s.size_bytes())}) at {folder}"
    except SakError as exc:  # a damaged store: removed by its folder
        what = f"{name} at {folder} (damaged: {exc})"
    if not yes and not typer.confirm(f"delete store {what}?", default=False, err=True):
        console.print("nothing deleted")
        raise typer.Exit(1)
    report = remove_store(store, cache)
    line(f"removed {report.path}: {report.files} file(s), {mb(report.bytes)} freed")


def register(app: typer.Typer) -> None:
    app.command("compact")(friendly_errors(compact))
    app.command("copy")(friendly_errors(copy))
    app.command("export", hidden=True)(friendly_errors(export))
    app.command("rm")(friendly_errors(rm))
