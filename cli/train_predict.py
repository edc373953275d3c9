"""`sak-train predict`: one colour PNG per task per image from a run dir or an exported student file."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..student.evaluate.predict import image_files, predict
from .common import console, friendly_errors, out


def register(app: typer.Typer) -> None:
    @app.command("predict")
    @friendly_errors
    def predict_cmd(
        source: Path = typer.Argument(..., help="Run dir (runs/NAME: its last checkpoint) or a .safetensors file written by sak-train export."),
        images: list[Path] = typer.Argument(..., help="Image files, or folders searched for images."),
        out_dir: Path = typer.Option(..., "--out", help="Folder for the PNGs: <image name>_<task>.png."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
        limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N images (in the order given, folders sorted)."),
    ) -> None:
        """The student's task maps for new images: semseg/parts in a class palette, depth in viridis, normals as
        RGB, edges and saliency as grey probabilities. Images are fed as evaluation feeds them (centre-padded to
        the student's input, scaled down first when larger); each PNG has the image's own size.

        Example:

          sak-train predict runs/a photos/ --out preds
        """
        n = len(image_files(images)[:limit])
        columns = (TextColumn("[bold]predicting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("predict", total=n)
            res = predict(source, images, out_dir, device=device, limit=limit,
                          progress=lambda advance, **_: bar.update(task, advance=advance))
        step = f" (step {res['step']})" if res["step"] is not None else ""
        out.print(f"wrote {len(res['files'])} PNG(s) for {len(res['images'])} image(s) x tasks {', '.join(res['tasks'])} "
                  f"of {res['source']}{step} to {out_dir}", highlight=False, markup=False, soft_wrap=True)
