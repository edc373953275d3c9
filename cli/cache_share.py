"""`sak-cache compact | export`: housekeeping and copying of stores shared by a lab."""

from __future__ import annotations

from typing import Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from ..pipeline.store.catalog import resolve_store
from ..pipeline.store.feature_store import FeatureStore
from ..pipeline.store.transfer import compact_store, export_store
from .common import console, friendly_errors, out

STORE_HELP = "A store directory or URL, or a store name (or unique prefix, or teacher name) inside --cache."
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
    bar, progress = _bar(f"compacting {s.name}", s.commits(status=None).num_rows)
    with bar:
        report = compact_store(s, target_rows=target_rows, progress=progress)
    if not report.removed_segments:
        out.print(f"nothing to compact in {s.path}: fewer than two segments under {target_rows} rows")
        return
    out.print(
        f"[green]compacted[/] {len(report.removed_segments)} segments into {len(report.new_segments)} "
        f"({report.copied} rows, {report.failed_copied} failed rows kept) in {s.path}", highlight=False,
    )


def export(
    store: str = typer.Argument(..., metavar="STORE", help=STORE_HELP),
    to: str = typer.Option(..., "--to", help="Target cache root, a directory or URL; the store keeps its name there."),
    cache: str = typer.Option("./cache", "--cache", "-c", help=CACHE_HELP),
    samples: str | None = typer.Option(None, "--samples", help="A text file with one sha256 or sample_id per line: export only those."),
    segment_rows: int = typer.Option(4096, "--segment-rows", min=1, help="Rows per segment written in the target."),
) -> None:
    """Copy a store (or a subset of its samples) into another cache, e.g. from a lab bucket to local disk.

    Rows the target already holds (same image content and view) are reused, not copied again.
    """
    from pathlib import Path

    s = resolve_store(store, cache)
    wanted = None
    if samples is not None:
        lines = Path(samples).read_text(encoding="utf-8").splitlines()
        wanted = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    bar, progress = _bar(f"exporting {s.name}", s.commits().num_rows if wanted is None else len(wanted))
    with bar:
        report = export_store(s, to, samples=wanted, segment_rows=segment_rows, progress=progress)
    out.print(f"[green]exported[/] {report.copied} rows to {report.target} (reused {report.reused} already there)", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("compact")(friendly_errors(compact))
    app.command("export")(friendly_errors(export))
