"""`sak-cache teachers`: every teacher name `extract -t` accepts, its metadata, and where it comes from (built-in or plugin)."""

from __future__ import annotations

from typing import Any

import typer

from ..pipeline.teachers import TeacherInfo, list_sources, list_teachers, source_origin, teacher_origin
from .common import friendly_errors, out
from .render import NAME, NUMERIC, TEXT, cell, emit_json, line, table

SOURCE_HELP = {
    "timm": "any timm model: timm:<arch>[.<pretrained tag>]",
    "open_clip": "any OpenCLIP visual tower: open_clip:<arch>@<pretrained>",
    "test": "tiny random-init teachers for tests and demos",
}


def teacher_record(name: str, info: TeacherInfo) -> dict[str, Any]:
    """One registered name as plain data (the JSON row and the table row carry the same fields)."""
    pre = info.preprocess
    return {
        "name": name, "teacher": info.name, "role": info.role, "width": info.width, "patch_size": info.patch_size,
        "depth": info.depth, "default_layers": list(info.default_layers), "input_size": list(info.input_size),
        "resize": pre.resize, "mean": list(pre.mean), "std": list(pre.std), "prefix_tokens": info.num_prefix_tokens,
        "from": teacher_origin(name),
    }


def source_record(prefix: str) -> dict[str, Any]:
    return {"prefix": prefix, "names": SOURCE_HELP.get(prefix, f"{prefix}:<model> (see the plugin's documentation)"),
            "from": source_origin(prefix)}


def _short(origin: str) -> str:
    """``built-in``, or a plugin's distribution name (the entry point itself is in ``--json``)."""
    return origin.removeprefix("plugin ").split(" (", 1)[0] if origin.startswith("plugin ") else origin


def teachers(as_json: bool = typer.Option(False, "--json", help="Print one JSON object (teachers and sources) instead of tables.")) -> None:
    """List the teachers `sak-cache extract -t NAME` accepts: aliases and registered names with their metadata
    (width, patch, depth, default layers, native input, preprocessing) and where each comes from: built-in or an
    installed plugin (a package with a `sak.teachers` / `sak.teacher_sources` entry point). Any
    `<source>:<model>` name of a listed source works too (`timm:vit_small_patch16_224`)."""
    rows = [teacher_record(name, info) for name, info in list_teachers().items()]
    sources = [source_record(p) for p in list_sources()]
    if as_json:
        emit_json({"teachers": rows, "sources": sources})
        return
    shown: dict[str, dict[str, Any]] = {}  # one row per teacher (full name), labelled by its first alias
    for r in rows:
        if r["teacher"] not in shown or shown[r["teacher"]]["name"] == r["teacher"]:
            shown[r["teacher"]] = r
    t = table("teachers (sak-cache extract -t NAME)", [("name", NAME), ("width", NUMERIC), ("patch", NUMERIC), ("depth", NUMERIC),
                                                       ("layers", NAME), ("input", NUMERIC), ("from (plugin)", NAME)])
    for r in shown.values():
        h, w = r["input_size"]
        t.add_row(cell(r["name"]), str(r["width"]), str(r["patch_size"]), str(r["depth"]), ",".join(map(str, r["default_layers"])),
                  f"{h}x{w}", cell(_short(r["from"])))
    out.print(t)
    named = [r for r in rows if r["name"] != r["teacher"]]
    if named:  # full names on lines of their own: never cut, whatever the terminal's width
        out.print("aliases (the name = the teacher it builds):")
        pad = max(len(r["name"]) for r in named)
        for r in named:
            line(f"  {r['name']:<{pad}} = {r['teacher']}")
    src = table("sources (any <source>:<model> name)", [("source", NAME), ("names", TEXT), ("from (plugin)", NAME)])
    for r in sources:
        src.add_row(cell(r["prefix"]), cell(r["names"]), cell(_short(r["from"])))
    out.print(src)


def register(app: typer.Typer) -> None:
    app.command("teachers")(friendly_errors(teachers))
