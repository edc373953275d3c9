"""`sak-cache verify | gc`: check a store's integrity (and repair it), collect a killed writer's leftovers."""

from __future__ import annotations

from typing import Any, NoReturn

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from ..manifests.errors import StoreCorrupt
from ..pipeline.cache import store_damage
from ..pipeline.storage import as_location
from ..pipeline.store.catalog import list_stores, resolve_store
from ..pipeline.store.feature_store import FEATURES_DIR, SPEC_FILE
from ..pipeline.store.maintenance import FIXES
from ..pipeline.store.repair import repair_store
from .common import EXIT_PARTIAL, STORE_HELP, console, friendly_errors, out
from .render import NAME, NUMERIC, TEXT, cell, emit_json, line, mb, table

MAX_LISTED = 20


def report_record(s, report) -> dict[str, Any]:
    """What verify found, as plain data (--json): the same lists the tables show, with each kind's fix."""
    kinds = sorted({k for k, _, _ in report.problems} | ({"sample"} if report.corrupt else set()))
    return {
        "store": s.name, "path": str(s.path), "ok": report.ok, "checked": report.checked,
        "segments_committed": len(s.committed_segments()), "missing_segments": list(report.missing_segments),
        "corrupt": [{"segment": seg, "row": row, "image_sha256": sha, "problem": why} for seg, row, sha, why in report.corrupt],
        "problems": [{"kind": k, "file": where, "problem": detail} for k, where, detail in report.problems],
        "fixes": {kind: FIXES[kind].format(store=s.path) for kind in kinds},
    }


def _print_report(rec: dict[str, Any]) -> None:
    if rec["missing_segments"]:
        line(f"{len(rec['missing_segments'])} committed segment(s) missing: " + ", ".join(rec["missing_segments"][:MAX_LISTED]), style="bold red")
    if rec["corrupt"]:
        t = table(f"{len(rec['corrupt'])} of {rec['checked']} samples are corrupt or missing",
                  [("segment", NAME), ("row", NUMERIC), ("image sha256", NAME), ("problem", TEXT)])
        for r in rec["corrupt"][:MAX_LISTED]:
            t.add_row(cell(r["segment"]), str(r["row"]), cell(r["image_sha256"][:16]), cell(r["problem"]))
        out.print(t)
    if rec["problems"]:
        t = table(f"{len(rec['problems'])} store-level problem(s)", [("kind", NAME), ("file", NAME), ("problem", TEXT)])
        for r in rec["problems"][:MAX_LISTED]:
            t.add_row(cell(r["kind"]), cell(r["file"]), cell(r["problem"]))
        out.print(t)
    for kind, fix in rec["fixes"].items():
        line(f"fix ({kind}): {fix}")


def _damaged_spec(why: str, as_json: bool, store: str) -> NoReturn:
    if as_json:
        emit_json({"store": store, "ok": False, "problems": [{"kind": "spec", "file": SPEC_FILE, "problem": why}],
                   "fixes": {"spec": FIXES["spec"]}})
        raise typer.Exit(EXIT_PARTIAL)
    line(f"the store is damaged: {why}", style="bold red")
    line(f"fix (spec): {FIXES['spec']}")
    raise typer.Exit(EXIT_PARTIAL)


def verify(
    store: str = typer.Argument(..., metavar="STORE", help=STORE_HELP),
    cache: str = typer.Option("./cache", "--cache", "-c", help="Cache root, directory or URL (to find STORE by name)."),
    fix: bool = typer.Option(False, "--fix", help="Repair what verify finds: uncommit damaged samples (their parts are rewritten without them), recompute bad statistics, move unusable parts to manifest/damaged/; then print the `sak-cache extract ... --repair` command that extracts the uncommitted samples again."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (what was checked, every problem and its fix; with --fix what was repaired) instead of tables."),
) -> None:
    """Check everything a store holds: spec.json against the arrays, every commit part (schema, ids), every committed
    sample's checksum, and every segment's statistics against the committed rows.

    Exit 0: clean (or, with --fix, consistent again); 1: damaged (each problem listed with its fix); 2: cannot be
    checked or repaired (not a store, a newer format, or a spec.json that does not describe the arrays with --fix).
    """
    for path in (as_location(store), as_location(cache) / FEATURES_DIR / store):  # by path, or by name in --cache
        if not (path / SPEC_FILE).exists() and ((path / "manifest").exists() or (path / "segments").exists()):
            _damaged_spec(store_damage(path)[1] or "", as_json, store)
    try:
        s = resolve_store(store, cache)
    except StoreCorrupt as exc:  # spec.json present but unreadable or invalid
        _damaged_spec(str(exc), as_json, store)
    if fix:
        s.read_only = False
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("verifying", total=None)  # the store is named in the result line (never cut)

        def progress(advance: int, **info: Any) -> None:
            bar.advance(task, advance)

        report = s.verify(progress=progress)
    rec = report_record(s, report)
    fixed = repair_store(s, report) if fix and not report.ok else None
    if fixed is not None:
        rec["repaired"] = {"uncommitted": len(fixed.dropped), "moved_parts": list(fixed.moved_parts),
                           "recomputed_stats": list(fixed.rewritten_stats), "command": fixed.command or None}
    if as_json:
        emit_json(rec)
        raise typer.Exit(EXIT_PARTIAL if not report.ok and fixed is None else 0)
    if report.ok:
        line(f"ok: {report.checked} committed samples match their checksums, and spec.json, "
             f"{rec['segments_committed']} commit part(s) and their statistics are consistent in {s.path}")
        return
    _print_report(rec)
    if fixed is None:
        line(f"the store is damaged: run `sak-cache verify {s.path} --fix` to repair it.", style="bold red", console=console)
        raise typer.Exit(EXIT_PARTIAL)
    line(f"repaired {s.path}: uncommitted {len(fixed.dropped)} damaged sample(s), moved {len(fixed.moved_parts)} "
         f"part(s) to manifest/damaged/, recomputed {len(fixed.rewritten_stats)} statistics file(s)")
    if fixed.command:
        line("extract the uncommitted samples again with:")
        line(f"  {fixed.command}")


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
        line(s.name, style="bold")
        line(f"  {len(plan)} item(s), {mb(size)}")
        for p in plan[:MAX_LISTED]:
            line(f"  {p}")
        if delete:
            s.gc(dry_run=False, grace_seconds=grace)
    if not total_files:
        out.print("nothing to collect")
    elif delete:
        out.print(f"[green]deleted[/] {total_files} item(s), {mb(total_bytes)}")
    else:
        out.print(f"dry run: {total_files} item(s), {mb(total_bytes)} would be deleted; pass --delete to remove them")


def register(app: typer.Typer) -> None:
    app.command("verify")(friendly_errors(verify))
    app.command("gc")(friendly_errors(gc))
