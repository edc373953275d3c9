"""`sak-cache ls | info | verify | gc`: look into feature stores and keep them healthy."""

from __future__ import annotations

from typing import Any, NoReturn

import numpy as np
import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ..manifests.errors import StoreCorrupt
from ..pipeline.cache import scan_stores, store_damage
from ..pipeline.storage import as_location
from ..pipeline.store.catalog import list_stores, resolve_store
from ..pipeline.store.feature_store import FEATURES_DIR, SPEC_FILE
from ..pipeline.store.maintenance import FIXES
from ..pipeline.store.repair import repair_store
from .common import EXIT_PARTIAL, console, friendly_errors, out

MAX_LISTED = 20
STORE_HELP = "A store directory, or a store name (or unique prefix, or teacher name) inside --cache."


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _weights(spec) -> str:
    return f"[bold red]{spec.weights} (RANDOM-INIT)[/]" if spec.random_init else spec.weights


def _created(store) -> str:
    rec = store.created()
    return f"{rec.get('created_by', '?')} {rec.get('created_at', '')}".strip() if rec else "-"


def _dtype(spec) -> str:
    return f"{spec.dtype} ({spec.quant})" if spec.quant else spec.dtype


def _fidelity_table(s) -> Table | None:
    """Per-layer fidelity measured at extraction (mean/min token cosine, raw and standardized), or None."""
    fid = s.fidelity()
    if not fid:
        return None
    table = Table(title="per-layer fidelity to the teacher's values (cosine per token, measured at extraction)", title_justify="left")
    for col in ("layer", "tokens", "raw mean", "raw min", "standardized mean", "standardized min"):
        table.add_column(col, justify="right")
    for layer, kinds in fid.items():
        raw, std = kinds.get("raw", {}), kinds.get("std", {})

        def cell(d: dict, key: str) -> str:
            return f"{d[key]:.6f}" if key in d else "-"

        count = int(max(raw.get("count", 0), std.get("count", 0)))
        table.add_row(str(layer), f"{count:,}", cell(raw, "mean"), cell(raw, "min"), cell(std, "mean"), cell(std, "min"))
    return table


def ls(cache: str = typer.Option("./cache", "--cache", "-c", help="Cache root: a directory or an fsspec URL (s3://bucket/cache).")) -> None:
    """List the feature stores of a cache: teacher, weights, layers, shapes, rows and size.

    A store whose spec.json is missing or damaged, or one of whose commit parts cannot be read, is listed
    as [bold]damaged: <reason>[/] after the healthy ones, and the command exits with code 1.
    """
    scan = scan_stores(cache)
    stores = scan.stores
    if not stores and not scan.damaged:
        console.print(f"no feature stores in {cache}/features; create one with `sak-cache extract --cache {cache}`")
        return
    if stores:
        table = Table(title=f"feature stores in {cache}", title_justify="left")
        for col in ("store", "teacher", "weights", "layers", "grid x width", "dtype", "codec", "views", "rows ok", "failed", "size", "created"):
            table.add_column(col, justify="right" if col in ("rows ok", "failed", "size", "views") else "left")
        for s in stores:
            spec = s.spec
            ok, failed = s.commits("ok").num_rows, s.commits("failed").num_rows
            table.add_row(
                s.name, spec.teacher, _weights(spec), ",".join(map(str, spec.layers)),
                f"{spec.grid[0]}x{spec.grid[1]} x {spec.width}", _dtype(spec), spec.codec, f"{spec.views} ({spec.aug})",
                str(ok), f"[red]{failed}[/]" if failed else "0", _mb(s.size_bytes()), _created(s),
            )
        out.print(table)
    for path, why in scan.damaged:
        out.print(f"[bold]{escape(path.name)}[/] [bold red]damaged:[/] {escape(why)}", highlight=False, soft_wrap=True)
    if any(s.spec.random_init for s in stores):
        console.print("[bold yellow]WARNING: some stores hold RANDOM-INIT teacher features: use them for tests and demos only.[/]")
    if scan.damaged:
        console.print(f"[bold red]{len(scan.damaged)} damaged store(s)[/]: `sak-cache verify STORE` lists what is wrong, "
                      "`sak-cache verify STORE --fix` repairs what can be repaired.")
        raise typer.Exit(EXIT_PARTIAL)


def info(
    store: str = typer.Argument(..., metavar="STORE", help=STORE_HELP),
    cache: str = typer.Option("./cache", "--cache", "-c", help="Cache root, directory or URL (to find STORE by name)."),
) -> None:
    """Show a store's spec (dtype, quant, codec, ...), per-layer statistics and fidelity, and its failed samples."""
    s = resolve_store(store, cache)
    spec_table = Table(title=f"{s.path}", show_header=False, title_justify="left")
    spec_table.add_column(style="bold")
    spec_table.add_column()
    for key, value in s.spec.to_dict().items():
        spec_table.add_row(key, _weights(s.spec) if key == "weights" else str(value))
    spec_table.add_row("spec_id", s.spec.spec_id)
    spec_table.add_row("segments committed", str(len(s.committed_segments())))
    spec_table.add_row("size on disk", _mb(s.size_bytes()))
    out.print(spec_table)

    stats = s.stats()
    st_table = Table(title="per-layer channel statistics (over all positions of all committed rows)", title_justify="left")
    for col in ("layer", "values", "mean of means", "mean std", "min std", "max std", "max |mean|"):
        st_table.add_column(col, justify="right")
    for layer, st in stats.items():
        if st.count == 0:
            st_table.add_row(str(layer), "0", "-", "-", "-", "-", "-")
            continue
        std = st.std
        st_table.add_row(
            str(layer), f"{st.count:,}", f"{st.mean.mean():.4g}", f"{std.mean():.4g}", f"{std.min():.4g}",
            f"{std.max():.4g}", f"{np.abs(st.mean).max():.4g}",
        )
    out.print(st_table)
    fid_table = _fidelity_table(s)
    if fid_table is not None:
        out.print(fid_table)
    elif s.spec.dtype == "int8":
        out.print("fidelity: none recorded (segments written without a fidelity measurement)")
    else:
        out.print(f"fidelity: none recorded ({s.spec.dtype} store: values are the teacher's, rounded to {s.spec.dtype})")

    ok, failed = s.commits("ok"), s.commits("failed")
    out.print(f"rows: {ok.num_rows} ok, {failed.num_rows} failed")
    if failed.num_rows:
        ft = Table(title=f"failed samples (first {min(failed.num_rows, MAX_LISTED)})", title_justify="left")
        for col in ("sample_id", "source", "view", "error"):
            ft.add_column(col)
        for r in failed.slice(0, MAX_LISTED).to_pylist():
            ft.add_row(r["sample_id"], r["source"], str(r["view"]), r["error"] or "")
        out.print(ft)
    if s.spec.random_init:
        console.print("[bold yellow]WARNING: this store holds RANDOM-INIT teacher features.[/]")


def _print_report(s, report) -> None:
    if report.missing_segments:
        out.print(f"[bold red]{len(report.missing_segments)} committed segment(s) missing[/]: " + ", ".join(report.missing_segments[:MAX_LISTED]), highlight=False)
    if report.corrupt:
        table = Table(title=f"{len(report.corrupt)} of {report.checked} samples are corrupt or missing", title_justify="left")
        for col in ("segment", "row", "image sha256", "problem"):
            table.add_column(col)
        for seg, row, sha, reason in report.corrupt[:MAX_LISTED]:
            table.add_row(seg, str(row), sha[:16], reason)
        out.print(table)
    if report.problems:
        table = Table(title=f"{len(report.problems)} store-level problem(s)", title_justify="left")
        for col in ("kind", "file", "problem"):
            table.add_column(col)
        for kind, where, detail in report.problems[:MAX_LISTED]:
            table.add_row(kind, where, detail)
        out.print(table)
    kinds = sorted({k for k, _, _ in report.problems} | ({"sample"} if report.corrupt else set()))
    for kind in kinds:
        out.print(f"fix ({kind}): {FIXES[kind].format(store=s.path)}", highlight=False, soft_wrap=True)


def _damaged_spec(store: str, why: str) -> NoReturn:
    out.print(f"[bold red]the store is damaged[/]: {escape(why)}", highlight=False, soft_wrap=True)
    out.print(f"fix (spec): {FIXES['spec']}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_PARTIAL)


def verify(
    store: str = typer.Argument(..., metavar="STORE", help=STORE_HELP),
    cache: str = typer.Option("./cache", "--cache", "-c", help="Cache root, directory or URL (to find STORE by name)."),
    fix: bool = typer.Option(False, "--fix", help="Repair what verify finds: uncommit damaged samples (their parts are rewritten without them), recompute bad statistics, move unusable parts to manifest/damaged/; then print the `sak-cache extract ... --repair` command that extracts the uncommitted samples again."),
) -> None:
    """Check everything a store holds: spec.json against the arrays, every commit part (schema, ids), every committed
    sample's checksum, and every segment's statistics against the committed rows.

    Exit 0: clean (or, with --fix, consistent again); 1: damaged (each problem listed with its fix); 2: cannot be
    checked or repaired (not a store, a newer format, or a spec.json that does not describe the arrays with --fix).
    """
    for path in (as_location(store), as_location(cache) / FEATURES_DIR / store):  # by path, or by name in --cache
        if not (path / SPEC_FILE).exists() and ((path / "manifest").exists() or (path / "segments").exists()):
            _damaged_spec(store, store_damage(path)[1] or "")
    try:
        s = resolve_store(store, cache)
    except StoreCorrupt as exc:  # spec.json present but unreadable or invalid
        _damaged_spec(store, str(exc))
    if fix:
        s.read_only = False
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(f"verifying {s.name}", total=None)

        def progress(advance: int, **info: Any) -> None:
            bar.advance(task, advance)

        report = s.verify(progress=progress)
    if report.ok:
        out.print(f"[green]ok[/]: {report.checked} committed samples match their checksums, and spec.json, "
                  f"{len(s.committed_segments())} commit part(s) and their statistics are consistent in {s.path}", highlight=False)
        return
    _print_report(s, report)
    if not fix:
        console.print(f"[bold red]the store is damaged[/]: run `sak-cache verify {s.path} --fix` to repair it.", highlight=False)
        raise typer.Exit(EXIT_PARTIAL)
    fixed = repair_store(s, report)
    out.print(
        f"[green]repaired[/] {s.path}: uncommitted {len(fixed.dropped)} damaged sample(s), moved {len(fixed.moved_parts)} "
        f"part(s) to manifest/damaged/, recomputed {len(fixed.rewritten_stats)} statistics file(s)", highlight=False,
    )
    if fixed.command:
        out.print(f"extract the uncommitted samples again with:\n  {fixed.command}", highlight=False, soft_wrap=True)


def gc(
    cache: str = typer.Option("./cache", "--cache", "-c", help="Cache root: a directory or an fsspec URL (s3://bucket/cache)."),
    delete: bool = typer.Option(False, "--delete", help="Really delete. Without it, only list what would go (dry run)."),
    grace: float = typer.Option(3600.0, "--grace-seconds", min=0, help="Uncommitted segments of writers on other hosts are kept until unchanged this long."),
) -> None:
    """Find uncommitted segments (a killed writer's leftovers) and stale temp files; --delete removes them.

    A committed segment is never touched, and neither is a segment whose writer still runs on this host.
    """
    total_files, total_bytes = 0, 0
    for s in list_stores(cache):
        if delete:
            s.read_only = False
        plan = s.gc(dry_run=True, grace_seconds=grace)
        if not plan:
            continue
        size = sum(p.tree_bytes() if p.is_dir() else p.stat().st_size for p in plan)
        total_files, total_bytes = total_files + len(plan), total_bytes + size
        out.print(f"[bold]{s.name}[/]: {len(plan)} item(s), {_mb(size)}")
        for p in plan[:MAX_LISTED]:
            out.print(f"  {p}", highlight=False)
        if delete:
            s.gc(dry_run=False, grace_seconds=grace)
    if not total_files:
        out.print("nothing to collect")
    elif delete:
        out.print(f"[green]deleted[/] {total_files} item(s), {_mb(total_bytes)}")
    else:
        out.print(f"dry run: {total_files} item(s), {_mb(total_bytes)} would be deleted; pass --delete to remove them")


def register(app: typer.Typer) -> None:
    app.command("ls")(friendly_errors(ls))
    app.command("info")(friendly_errors(info))
    app.command("verify")(friendly_errors(verify))
    app.command("gc")(friendly_errors(gc))
