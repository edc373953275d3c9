"""`sak-train describe`: the parameter table of a SAK student (nothing downloaded or allocated);
`sak-train recipes`: the official training recipes with every value."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from ..student.model.params import describe_student
from ..student.runs.config import field_default
from ..student.runs.recipes import RECIPES, Recipe
from .common import friendly_errors, out, parse_hw_option, parse_names, parse_str_list, renamed


def _parse_widths(text: str | None) -> dict[str, int]:
    widths: dict[str, int] = {}
    for item in parse_str_list(text) or ():
        name, sep, value = item.rpartition("=")
        if not sep or not name:
            raise typer.BadParameter(f"--teacher-widths items look like name=768, got {item!r}")
        try:
            widths[name] = int(value)
        except ValueError:
            raise typer.BadParameter(f"--teacher-widths: width of {name!r} must be an integer, got {value!r}") from None
    return widths


def _m(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def _value(value: object) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return " ".join(f"{k}={_value(v)}" for k, v in value.items())
    return "-" if value is None else str(value)


def recipe_table(recipe: Recipe) -> Table:
    """Every value of one recipe (a value it leaves to the config shows the config's default)."""
    table = Table(title=f"{recipe.name}: {recipe.description}", title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("official config", recipe.official)
    table.add_row("GPUs", f"{recipe.gpus} (global batch {recipe.fields['batch_size'] * recipe.gpus}: "
                          f"torchrun --nproc-per-node {recipe.gpus})")
    for key in sorted(set(recipe.fields) | set(SHOWN_DEFAULTS)):
        value = recipe.fields[key] if key in recipe.fields else field_default(key)
        table.add_row(key, f"{value[0]}x{value[1]}" if key == "img_size" and value else _value(value))  # as --img-size
    table.add_row("task loss weights", _value(recipe.loss_weights) or "- (distillation only)")
    return table


#: config fields every recipe leaves at their defaults, shown anyway
SHOWN_DEFAULTS = ("eval_every", "seed", "sync_bn", "aug")


def register(app: typer.Typer) -> None:
    @app.command("recipes")
    def recipes(as_json: bool = typer.Option(False, "--json", help="Print a JSON object instead of a table.")) -> None:
        """List the official recipes (stage 1 on ImageNet at 384, stage 2 NYUD-v2 / PASCAL-Context) with every value."""
        if as_json:
            data = {name: r.to_dict() for name, r in RECIPES.items()}
            out.print(json.dumps(data, sort_keys=True), soft_wrap=True, highlight=False, markup=False)
            return
        for recipe in RECIPES.values():
            out.print(recipe_table(recipe))

    @app.command("describe")
    @friendly_errors
    def describe(
        backbone: str = typer.Option(field_default("backbone"), "--backbone", help="timm ViT used as the stem (TAS); the default is fit's."),
        teacher: list[str] = typer.Option(["dinov2", "sam", "clip"], "--teacher", "-t", help="Teacher name or alias (repeatable, or a comma list; one adapter path each); widths come from the teacher registry."),
        teachers_old: str | None = renamed("--teachers", "--teacher"),
        tasks: str = typer.Option(
            "semseg,depth,normals,edge", help="Comma-separated tasks; 'name:channels' overrides the channel count."
        ),
        img_size: str | None = typer.Option(None, "--img-size", help="HxW (e.g. 448x576); default: the backbone's."),
        teacher_widths: str | None = typer.Option(
            None, "--teacher-widths", help="Widths of teachers the registry cannot describe (e.g. unregistered plugins): 'name=768,other=1024'."
        ),
        fmt: str = typer.Option("nyud", "--format", "-f", help="Dataset format for default class counts (nyud: 40, pascal: 21)."),
        dataset_old: str | None = renamed("--dataset", "--format"),
        aligner: str = typer.Option("auto", help="auto (Linear only if widths differ, official), linear, none."),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON object instead of a table."),
    ) -> None:
        """Count the student's parameters by part: backbone, adapters, routers, heads, aligners."""
        counts = describe_student(
            backbone,
            parse_names(teacher),
            parse_str_list(tasks) or (),
            img_size=parse_hw_option(img_size, "--img-size"),
            teacher_widths=_parse_widths(teacher_widths),
            dataset=fmt,
            aligner=aligner,
        )
        data = counts.to_dict()
        if as_json:
            out.print(json.dumps(data, sort_keys=True), soft_wrap=True, highlight=False, markup=False)
            return
        cfg = counts.config
        title = f"{cfg.backbone} {cfg.img_size[0]}x{cfg.img_size[1]}, levels {list(cfg.levels)}" if cfg else backbone
        table = Table(title=title)
        table.add_column("part")
        table.add_column("parameters", justify="right")
        table.add_column("", justify="right")
        table.add_row("backbone (TAS)", f"{counts.backbone:,}", _m(counts.backbone))
        table.add_row("adapters (TSAP)", f"{counts.adapters:,}", _m(counts.adapters))
        for name, n in counts.adapters_per_teacher.items():
            table.add_row(f"  {name}", f"{n:,}", _m(n))
        table.add_row("TSAP norms", f"{counts.norms:,}", _m(counts.norms))
        table.add_row("routers (MoR)", f"{counts.routers:,}", _m(counts.routers))
        table.add_row("heads", f"{counts.heads:,}", _m(counts.heads))
        table.add_row("aligners (training only)", f"{counts.aligners:,}", _m(counts.aligners))
        table.add_row("total", f"{counts.total:,}", _m(counts.total), style="bold")
        out.print(table)
