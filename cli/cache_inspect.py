"""`sak-cache ls | info`: look into feature stores (verify and gc: :mod:`.cache_verify`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import typer
from rich.table import Table

from ..pipeline.cache import scan_stores
from ..pipeline.store.catalog import resolve_store
from . import cache_verify
from .cache_verify import MAX_LISTED
from .common import EXIT_PARTIAL, STORE_HELP, console, friendly_errors, out
from .render import NAME, NUMERIC, TEXT, block, cell, emit_json, fits, line, mb, table


def _weights(spec) -> str:
    return f"{spec.weights} (RANDOM-INIT)" if spec.random_init else spec.weights


def _created(store) -> str:
    rec = store.created()
    return f"{rec.get('created_by', '?')} {rec.get('created_at', '')}".strip() if rec else "-"


def _dtype(spec) -> str:
    return f"{spec.dtype} ({spec.quant})" if spec.quant else spec.dtype


def store_record(s) -> dict[str, Any]:
    """What `ls` shows of one store, as plain data (the --json row; the block and the wide row show the same)."""
    spec, rec = s.spec, s.created() or {}
    return {
        "name": s.name, "path": str(s.path), "teacher": spec.teacher, "weights": spec.weights, "random_init": spec.random_init,
        "layers": list(spec.layers), "grid": list(spec.grid), "width": spec.width, "dtype": spec.dtype, "quant": spec.quant,
        "codec": spec.codec, "views": spec.views, "aug": spec.aug, "rows_ok": s.commits("ok").num_rows,
        "rows_failed": s.commits("failed").num_rows, "size_bytes": s.size_bytes(),
        "created_by": rec.get("created_by"), "created_at": rec.get("created_at"),
    }


def _cells(r: dict[str, Any]) -> dict[str, str]:
    """The shown text of each field of a :func:`store_record` (block and wide table alike)."""
    return {
        "teacher": r["teacher"], "weights": r["weights"] + (" (RANDOM-INIT)" if r["random_init"] else ""),
        "layers": ",".join(map(str, r["layers"])), "grid x width": f"{r['grid'][0]}x{r['grid'][1]} x {r['width']}",
        "dtype": f"{r['dtype']} ({r['quant']})" if r["quant"] else r["dtype"], "codec": r["codec"],
        "views": f"{r['views']} ({r['aug']})", "rows ok": str(r["rows_ok"]), "failed": str(r["rows_failed"]),
        "size": mb(r["size_bytes"]), "created": f"{r['created_by'] or '?'} {r['created_at'] or ''}".strip() if r["created_by"] or r["created_at"] else "-",
    }


WIDE_COLUMNS = [("store", NAME), ("teacher", NAME), ("weights", NAME), ("layers", NAME), ("grid x width", NAME),
                ("dtype", NAME), ("codec", NAME), ("views", NAME), ("rows ok", NUMERIC), ("failed", NUMERIC),
                ("size", NUMERIC), ("created", TEXT)]


def _wide_table(cache: str, records: list[dict[str, Any]]):
    t = table(f"feature stores in {cache}", WIDE_COLUMNS)
    for r in records:
        c = _cells(r)
        t.add_row(cell(r["name"]), *(cell(c[h], "bold red" if (h == "weights" and r["random_init"]) or (h == "failed" and r["rows_failed"]) else None)
                                     for h, _ in WIDE_COLUMNS[1:]))
    return t


def _store_blocks(cache: str, records: list[dict[str, Any]]) -> None:
    line(f"feature stores in {cache}:")
    for r in records:
        c = _cells(r)
        out.print()
        block(r["name"], [("teacher", c["teacher"]), ("weights", c["weights"]), ("layers", c["layers"]),
                          ("features", f"{c['grid x width']} channels, {c['dtype']}, codec {c['codec']}"),
                          ("views", c["views"]), ("rows", f"{r['rows_ok']} ok, {r['rows_failed']} failed"),
                          ("size", c["size"]), ("created", c["created"])])


def _fidelity_table(s) -> Table | None:
    """Per-layer fidelity measured at extraction (mean/min token cosine, raw and standardized), or None."""
    fid = s.fidelity()
    if not fid:
        return None
    t = table("per-layer fidelity to the teacher's values (cosine per token, measured at extraction)",
              [(h, NUMERIC) for h in ("layer", "tokens", "raw mean", "raw min", "standardized mean", "standardized min")])
    for layer, kinds in fid.items():
        raw, std = kinds.get("raw", {}), kinds.get("std", {})

        def value(d: dict, key: str) -> str:
            return f"{d[key]:.6f}" if key in d else "-"

        count = int(max(raw.get("count", 0), std.get("count", 0)))
        t.add_row(str(layer), f"{count:,}", value(raw, "mean"), value(raw, "min"), value(std, "mean"), value(std, "min"))
    return t


def ls(
    cache: str = typer.Option("./cache", "--cache", "-c", help="Cache root: a directory or an fsspec URL (s3://bucket/cache)."),
    wide: bool = typer.Option(False, "--wide", help="One row per store (a table), when the terminal is wide enough; otherwise one block per store."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (stores and damaged stores) instead of the listing."),
) -> None:
    """List the feature stores of a cache: teacher, weights, layers, shapes, rows and size (one block per store).

    A store whose spec.json is missing or damaged, or one of whose commit parts cannot be read, is listed
    as [bold]damaged: <reason>[/] after the healthy ones, and the command exits with code 1.
    """
    scan = scan_stores(cache)
    records = [store_record(s) for s in scan.stores]
    damaged = [{"name": path.name, "path": str(path), "reason": why} for path, why in scan.damaged]
    if as_json:
        emit_json({"cache": cache, "stores": records, "damaged": damaged})
    elif not records and not damaged:
        line(f"no feature stores in {cache}/features; create one with `sak-cache extract --cache {cache}`", console=console)
        return
    elif records:
        wide_table = _wide_table(cache, records) if wide else None
        if wide_table is not None and fits(wide_table):
            out.print(wide_table)
        else:
            if wide:
                console.print(f"(--wide: the table does not fit {out.width} columns; one block per store instead)", highlight=False)
            _store_blocks(cache, records)
    if not as_json:
        for d in damaged:
            line(f"{d['name']} damaged: {d['reason']}", console=out)
    if any(r["random_init"] for r in records):
        console.print("[bold yellow]WARNING: some stores hold RANDOM-INIT teacher features: use them for tests and demos only.[/]")
    if damaged:
        console.print(f"[bold red]{len(damaged)} damaged store(s)[/]: `sak-cache verify STORE` lists what is wrong, "
                      "`sak-cache verify STORE --fix` repairs what can be repaired.")
        raise typer.Exit(EXIT_PARTIAL)


def _stats_rows(s) -> list[dict[str, Any]]:
    rows = []
    for layer, st in s.stats().items():
        if st.count == 0:
            rows.append({"layer": layer, "values": 0})
            continue
        std = st.std
        rows.append({"layer": layer, "values": int(st.count), "mean_of_means": float(st.mean.mean()), "mean_std": float(std.mean()),
                     "min_std": float(std.min()), "max_std": float(std.max()), "max_abs_mean": float(np.abs(st.mean).max())})
    return rows


def info_record(s) -> dict[str, Any]:
    """What `info` shows, as plain data (--json)."""
    failed = s.commits("failed")
    return {
        "name": s.name, "path": str(s.path), "spec": s.spec.to_dict(), "spec_id": s.spec.spec_id,
        "segments_committed": len(s.committed_segments()), "size_bytes": s.size_bytes(), "stats": _stats_rows(s),
        "fidelity": {str(k): v for k, v in s.fidelity().items()}, "rows_ok": s.commits("ok").num_rows, "rows_failed": failed.num_rows,
        "failed": [{k: r[k] for k in ("sample_id", "source", "view", "error")} for r in failed.slice(0, MAX_LISTED).to_pylist()],
    }


def info(
    store: str = typer.Argument(..., metavar="STORE", help=STORE_HELP),
    cache: str = typer.Option("./cache", "--cache", "-c", help="Cache root, directory or URL (to find STORE by name)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (spec, statistics, fidelity, failed samples) instead of tables."),
) -> None:
    """Show a store's spec (dtype, quant, codec, ...), per-layer statistics and fidelity, and its failed samples."""
    s = resolve_store(store, cache)
    rec = info_record(s)
    if as_json:
        emit_json(rec)
        return
    pairs = [(key, _weights(s.spec) if key == "weights" else str(value)) for key, value in rec["spec"].items()]
    pairs += [("spec_id", rec["spec_id"]), ("segments committed", str(rec["segments_committed"])), ("size on disk", mb(rec["size_bytes"]))]
    line(s.name, style="bold")
    line(f"  path: {rec['path']}")
    block(None, pairs)

    st_table = table("per-layer channel statistics (over all positions of all committed rows)",
                     [(h, NUMERIC) for h in ("layer", "values", "mean of means", "mean std", "min std", "max std", "max |mean|")])
    for r in rec["stats"]:
        if not r["values"]:
            st_table.add_row(str(r["layer"]), "0", "-", "-", "-", "-", "-")
            continue
        st_table.add_row(str(r["layer"]), f"{r['values']:,}", *(f"{r[k]:.4g}" for k in ("mean_of_means", "mean_std", "min_std", "max_std", "max_abs_mean")))
    out.print(st_table)
    fid_table = _fidelity_table(s)
    if fid_table is not None:
        out.print(fid_table)
    elif s.spec.dtype == "int8":
        out.print("fidelity: none recorded (segments written without a fidelity measurement)")
    else:
        out.print(f"fidelity: none recorded ({s.spec.dtype} store: values are the teacher's, rounded to {s.spec.dtype})")

    out.print(f"rows: {rec['rows_ok']} ok, {rec['rows_failed']} failed")
    if rec["failed"]:
        ft = table(f"failed samples (first {len(rec['failed'])})", [("sample_id", NAME), ("source", NAME), ("view", NUMERIC), ("error", TEXT)])
        for r in rec["failed"]:
            ft.add_row(cell(r["sample_id"]), cell(r["source"]), str(r["view"]), cell(r["error"] or ""))
        out.print(ft)
    if s.spec.random_init:
        console.print("[bold yellow]WARNING: this store holds RANDOM-INIT teacher features.[/]")


def register(app: typer.Typer) -> None:
    app.command("ls")(friendly_errors(ls))
    app.command("info")(friendly_errors(info))
    cache_verify.register(app)
