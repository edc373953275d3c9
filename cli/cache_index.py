"""`sak-cache index` and `sak-cache demo-data`: turn a dataset folder into a manifest in the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ..manifests.schemas import STATUS_OK, label_column, label_tasks
from ..pipeline.data.datasets import check_name, index_dataset, write_dataset_index
from ..pipeline.data.demo import make_demo_dataset
from .common import console, exit_code_for, friendly_errors, out

MAX_LISTED_FAILURES = 10


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=console,
    )


def _summary(table: pa.Table) -> Table:
    rows = table.to_pylist()
    ok = [r for r in rows if r["status"] == STATUS_OK]
    splits: dict[str, int] = {}
    for r in ok:
        splits[r["split"]] = splits.get(r["split"], 0) + 1
    fmt = (table.schema.metadata or {}).get(b"sak.format", b"?").decode()
    summary = Table(title=f"dataset index ({fmt} layout)", show_header=False, title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("images ok", str(len(ok)))
    summary.add_row("images failed", f"[red]{len(rows) - len(ok)}[/]" if len(rows) > len(ok) else "0")
    summary.add_row("splits", ", ".join(f"{k} {v}" for k, v in sorted(splits.items())) or "-")
    labels = [(t, sum(r[label_column(t)] is not None for r in ok)) for t in label_tasks(table.schema)]
    summary.add_row("labels", ", ".join(f"{t} {n}" for t, n in labels if n) or "none (images only)")
    return summary


def index(
    root: Path = typer.Argument(..., help="Dataset folder: an image folder, or the NYUD-v2 / PASCAL-Context layout."),
    cache: Path = typer.Option(Path("./cache"), "--cache", "-c", help="Cache root; the index goes to <cache>/datasets/<name>.parquet."),
    name: str | None = typer.Option(None, "--name", "-n", help="Dataset name (and the 'source' column). Default: nyud / pascal for those layouts, else the folder name."),
    fmt: str = typer.Option("auto", "--format", "-f", help="auto | folder | nyud | pascal. auto: gt_sets/ means nyud, ImageSets/Context means pascal, else folder."),
    workers: int = typer.Option(8, "--workers", "-w", min=1, help="Threads hashing files and reading image headers."),
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
        task = bar.add_task(f"indexing {root.name}", total=None)

        def progress(advance: int, **info: Any) -> None:
            if "total" in info:
                bar.update(task, total=info["total"])
            bar.advance(task, advance)

        table = index_dataset(root, name=name, fmt=fmt, workers=workers, progress=progress)
    source = table.column("source")[0].as_py()
    path = write_dataset_index(cache, source, table, root, replace=replace)
    out.print(_summary(table))
    out.print(f"index written to [bold]{path}[/] (dataset '{source}')", soft_wrap=True, highlight=False)
    failed = [r for r in table.to_pylist() if r["status"] != STATUS_OK]
    if failed:
        console.print(f"[bold red]{len(failed)} image(s) failed[/]; first {min(len(failed), MAX_LISTED_FAILURES)}:")
        for r in failed[:MAX_LISTED_FAILURES]:
            console.print(f"  [bold]{r['path']}[/]: {r['error']}", highlight=False, soft_wrap=True)
        console.print("Failed rows are kept in the index (status 'failed') and skipped by extract and train. "
                      "Fix the files and run the same command again.")
    raise typer.Exit(exit_code_for(len(failed)))


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"size must look like 64x80 (height x width), got {text!r}") from None
    return h, w


def demo_data(
    out_dir: Path = typer.Argument(..., metavar="OUT", help="Folder to write the dataset into (created)."),
    n: int = typer.Option(96, "--n", min=2, help="Number of scenes (75% train, 25% val)."),
    size: str = typer.Option("64x80", "--size", help="Image size as HEIGHTxWIDTH."),
    seed: int = typer.Option(0, "--seed", help="Scenes depend only on (seed, index): same seed, same bytes."),
) -> None:
    """Write a small procedural dataset in the NYUD-v2 layout (images, semseg, depth, normals, edges).

    Rooms with a floor, walls and 1-3 boxes, spheres and cylinders, ray-cast so that every label agrees with the others. Good for trying the whole pipeline without downloads.

    Examples:

      sak-cache demo-data ./demo

      sak-cache demo-data ./demo --n 512 --size 128x160 --seed 1

      sak-cache index ./demo --cache ./cache --name nyud
    """
    height, width = _parse_size(size)
    root = make_demo_dataset(out_dir, n=n, size=(height, width), seed=seed)
    out.print(f"wrote {n} scenes ({height}x{width}, seed {seed}) in the NYUD-v2 layout to [bold]{root}[/]")
    out.print(f"next: sak-cache index {root} --cache ./cache --name nyud")


def register(app: typer.Typer) -> None:
    app.command("index")(friendly_errors(index))
    app.command("demo-data")(friendly_errors(demo_data))
