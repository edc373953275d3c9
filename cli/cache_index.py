"""`sak-cache index`, `sak-cache datasets` and `sak-cache demo-data`: dataset folders and their manifests in a cache."""

from __future__ import annotations

import json
import shlex
import textwrap
from pathlib import Path
from typing import Any

import pyarrow as pa
import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ..manifests.errors import DatasetError
from ..manifests.schemas import STATUS_OK
from ..pipeline.data.datasets import check_name, index_dataset, write_dataset_index
from ..pipeline.data.demo import make_demo_dataset
from ..pipeline.data.demo_pascal import make_demo_folder, make_demo_pascal
from ..pipeline.data.formats import LayoutsInFolder
from ..pipeline.data.listing import DatasetInfo, describe_datasets, table_counts
from .common import console, exit_code_for, friendly_errors, out, renamed

MAX_LISTED_FAILURES = 10


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=console,
    )


def _summary(table: pa.Table) -> Table:
    ok, failed, splits, labels = table_counts(table)
    fmt = (table.schema.metadata or {}).get(b"sak.format", b"?").decode()
    summary = Table(title=f"dataset index ({fmt} layout)", show_header=False, title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("images ok", str(ok))
    summary.add_row("images failed", f"[red]{failed}[/]" if failed else "0")
    summary.add_row("splits", ", ".join(f"{k} {v}" for k, v in splits.items()) or "-")
    summary.add_row("labels", ", ".join(f"{t} {n}" for t, n in labels.items()) or "none (images only)")
    return summary


def index(
    root: Path = typer.Argument(..., help="Dataset folder: an image folder, or the NYUD-v2 / PASCAL-Context layout."),
    cache: str = typer.Option("./cache", "--cache", "-c", help="Cache root; the index goes to <cache>/datasets/<name>.parquet."),
    name: str | None = typer.Option(None, "--name", "-n", help="Dataset name (and the 'source' column). Default: nyud / pascal for those layouts, else the folder name."),
    fmt: str = typer.Option("auto", "--format", "-f", help="auto | folder | nyud | pascal. auto: gt_sets/ means nyud, ImageSets/Context means pascal, else folder."),
    threads: int = typer.Option(8, "--threads", min=1, help="Threads hashing files and reading image headers."),
    workers_old: int | None = renamed("--workers", "--threads", "-w"),
    replace: bool = typer.Option(False, "--replace", help="Replace an index of the same name that comes from another folder, or whose images were removed or changed (refused otherwise; added images are always fine)."),
) -> None:
    """Index a dataset folder: one manifest row per image with its sha256, size, split and label files.

    Images that cannot be used (unreadable, not an image, not a regular file, listed but missing, a symlink leading outside the folder) are kept as [red]failed[/] rows with the reason; the command then exits with code 1 and lists the first failures. Run it again after fixing files: the index is rewritten. Indexing another folder, or the same folder with images removed or changed, under an existing name is refused (exit 2) unless --replace: training by that name would silently use other images.

    Examples:

      sak-cache index ./NYUD_MT --cache ./cache                 # NYUD-v2 layout, name 'nyud'

      sak-cache index ./PASCAL_MT --cache ./cache --name pascal

      sak-cache index ./photos --cache ./cache --format folder  # train/ val/ test/ sub-folders become splits
    """
    if name is not None:
        check_name(name)
    with _progress() as bar:
        task = bar.add_task(f"indexing {root.resolve().name}", total=None)

        def progress(advance: int, **info: Any) -> None:
            if "total" in info:
                bar.update(task, total=info["total"])
            bar.advance(task, advance)

        try:
            table = index_dataset(root, name=name, fmt=fmt, workers=threads, progress=progress)
        except LayoutsInFolder as exc:  # its commands must name this cache too
            raise exc.with_options(f"--cache {shlex.quote(str(cache))}") from None
    source = table.column("source")[0].as_py()
    path = write_dataset_index(cache, source, table, root, replace=replace)
    out.print(_summary(table))
    out.print(f"index written to [bold]{escape(str(path))}[/] (dataset '{escape(source)}')", soft_wrap=True, highlight=False)
    failed = [r for r in table.to_pylist() if r["status"] != STATUS_OK]
    if failed:
        console.print(f"[bold red]{len(failed)} image(s) failed[/]; first {min(len(failed), MAX_LISTED_FAILURES)}:")
        for r in failed[:MAX_LISTED_FAILURES]:
            console.print(f"  [bold]{escape(str(r['path']))}[/]: {escape(str(r['error']))}", highlight=False, soft_wrap=True)
        console.print("Failed rows are kept in the index (status 'failed') and skipped by extract and train. "
                      "Fix the files and run the same command again.")
    out.print(f"next: sak-cache extract -t <teacher> -d {source} --cache {shlex.quote(str(cache))}   "
              "(sak-cache teachers lists the teacher names)", soft_wrap=True, highlight=False, markup=False)
    raise typer.Exit(exit_code_for(len(failed)))


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"size must look like 64x80 (height x width), got {text!r}") from None
    return h, w


#: demo-data --format -> (writer, default --size, what it writes, index options of the next step)
DEMO_FORMATS = {
    "nyud": (make_demo_dataset, "64x80", "scenes ({size}, seed {seed}) in the NYUD-v2 layout", "--name nyud"),
    "pascal": (make_demo_pascal, "72x96", "scenes ({size}, seed {seed}) in the PASCAL-Context layout", "--name pascal"),
    "folder": (make_demo_folder, "64x64", "unlabelled images ({size}, seed {seed}) in train/ and val/",
               "--format folder --name {name}"),
}


def demo_data(
    out_dir: Path = typer.Argument(..., metavar="OUT", help="Folder to write the dataset into (created)."),
    n: int = typer.Option(96, "--n", min=2, help="Number of scenes (75% train, 25% val)."),
    size: str | None = typer.Option(None, "--size", help="Image size as HEIGHTxWIDTH. Default: 64x80 (nyud), 72x96 (pascal), 64x64 (folder)."),
    seed: int = typer.Option(0, "--seed", help="Scenes depend only on (seed, index): same seed, same bytes."),
    fmt: str = typer.Option("nyud", "--format", "-f", help="nyud: images, semseg (40 classes), depth, normals, edges. pascal: PASCAL-Context layout with semseg (21 classes), human parts, saliency, normals and the context LabelMap edges come from; no depth. folder: unlabelled images in train/ and val/."),
) -> None:
    """Write a small procedural dataset: NYUD-v2 layout (default), PASCAL-Context layout, or an unlabelled image folder.

    Rooms with a floor, walls and objects, ray-cast so that every label agrees with the others; the pascal scenes hold VOC objects and people with labelled parts. Three label sets for trying heterogeneous training without downloads.

    Examples:

      sak-cache demo-data ./demo

      sak-cache demo-data ./demo-pascal --format pascal

      sak-cache demo-data ./demo-photos --format folder --n 64

      sak-cache demo-data ./demo --n 512 --size 128x160 --seed 1
    """
    if fmt not in DEMO_FORMATS:
        raise DatasetError(f"unknown demo-data format '{fmt}'; choose one of {', '.join(DEMO_FORMATS)} (--format)")
    write, default_size, what, index_options = DEMO_FORMATS[fmt]
    height, width = _parse_size(size if size is not None else default_size)
    root = write(out_dir, n=n, size=(height, width), seed=seed)
    out.print(f"wrote {n} {what.format(size=f'{height}x{width}', seed=seed)} to [bold]{escape(str(root))}[/]",
              soft_wrap=True, highlight=False)
    name = root.resolve().name
    try:
        check_name(name)
    except DatasetError:
        name = "photos"
    out.print(f"next: sak-cache index {shlex.quote(str(root))} --cache ./cache {index_options.format(name=name)}",
              soft_wrap=True, highlight=False, markup=False)


def _fold(label: str, text: str, width: int) -> list[str]:
    """``  label  text`` wrapped at ``width`` on spaces only (never a cut word), continuation lines indented."""
    head = f"  {label:<7} "
    if len(head) + len(text) > width and " " not in text:  # one long path: on its own line, whole
        return [f"  {label}", f"    {text}"]
    return textwrap.wrap(text, width=max(width, 40), initial_indent=head, subsequent_indent=" " * len(head),
                         break_long_words=False, break_on_hyphens=False) or [head.rstrip()]


def dataset_lines(info: DatasetInfo, cache: str | Path, width: int = 80) -> list[str]:
    """The lines ``sak-cache datasets`` prints for one dataset: nothing cut at ``width``, long paths on their own line."""
    if info.error is not None:
        return [f"{info.name}  unreadable index", *_fold("error", info.error, width)]
    lines = [f"{info.name}  {info.format}  {info.images_ok} ok, {info.images_failed} failed"]
    lines += _fold("root", info.root or "(not recorded)", width)
    if not info.root_exists:
        lines += _fold("", f"(root missing) if the images moved, index the new folder: sak-cache index NEWDIR "
                           f"--cache {shlex.quote(str(cache))} --name {info.name} --replace", width)
    lines += _fold("splits", ", ".join(f"{k} {v}" for k, v in info.splits.items()) or "-", width)
    lines += _fold("labels", ", ".join(f"{k} {v}" for k, v in info.labels.items()) or "none (images only)", width)
    return lines


def datasets(
    cache: str = typer.Option("./cache", "--cache", "-c", help="Cache root (its datasets/ folder holds the indexes)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON list of records (name, index, format, root, root_exists, images_ok, images_failed, splits, labels, error) instead of the text."),
) -> None:
    """List the datasets indexed in a cache: layout, root, ok/failed images, images per split, labels per task.

    A dataset whose root folder no longer exists is marked (root missing) with the command that re-indexes it.

    Examples:

      sak-cache datasets --cache ./cache

      sak-cache datasets --cache ./cache --json
    """
    infos = describe_datasets(cache)
    if as_json:
        out.print(json.dumps([i.to_dict() for i in infos], indent=2), soft_wrap=True, highlight=False, markup=False)
        return
    if not infos:
        out.print(f"no datasets indexed in {cache}; index one: sak-cache index DIR --cache {shlex.quote(str(cache))}",
                  soft_wrap=True, highlight=False, markup=False)
        return
    for info in infos:
        for line in dataset_lines(info, cache, out.width):
            out.print(line, soft_wrap=True, highlight=False, markup=False)
    if any(i.error is not None for i in infos):
        raise typer.Exit(exit_code_for(1))


def register(app: typer.Typer) -> None:
    app.command("index")(friendly_errors(index))
    app.command("datasets")(friendly_errors(datasets))
    app.command("demo-data")(friendly_errors(demo_data))
