"""`sak-train eval` (a run's metrics) and `sak-train export` (a one-task sub-model)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..student.evaluate.evaluator import evaluate, export_run
from .common import friendly_errors, out, renamed
from .train_view import metrics_table


def register(app: typer.Typer) -> None:
    @app.command("eval")
    @friendly_errors
    def eval_cmd(
        run: Path = typer.Argument(..., help="Run dir (runs/NAME)."),
        split: str = typer.Option("val", "--split", help="Dataset split to evaluate."),
        step0: bool = typer.Option(False, "--step0", help="Also evaluate the untrained student the run started from."),
        device: str = typer.Option("auto", "--device"),
        limit: int | None = typer.Option(None, "--limit", min=1, help="Evaluate the first N samples of the split only."),
        max_samples_old: int | None = renamed("--max-samples", "--limit"),
        amp: str = typer.Option("off", "--amp", help="off (fp32, as the official test.py) | auto | bf16 (autocast on cuda)."),
        miou: str | None = typer.Option(None, "--miou", help="official (mean over all classes, absent = 0) | present. Default: the run's own (eval.miou in its config)."),
    ) -> None:
        """Metrics of a run's last checkpoint (next to the untrained step-0 student when known)."""
        res = evaluate(run, split, step0=step0, device=device, max_samples=limit, amp=amp, miou=miou)
        out.print(metrics_table(res["metrics"], res.get("baseline"), f"{run}: {split} split, step {res['step']}"))

    @app.command("export")
    @friendly_errors
    def export_cmd(
        run: Path = typer.Argument(..., help="Run dir (runs/NAME)."),
        task: str = typer.Option(..., "--task", help="The task of the sub-model (semseg, depth, ...)."),
        out_file: Path = typer.Option(..., "--out", help="Output .safetensors file."),
        threshold: float = typer.Option(0.1, "--threshold", help="Keep teachers whose mean routing weight exceeds this."),
        split: str = typer.Option("val", "--split", help="Images whose routing weights decide."),
        limit: int = typer.Option(64, "--limit", min=1, help="Routing weights from the first N images of --split."),
        max_images_old: int | None = renamed("--max-images", "--limit"),
        device: str = typer.Option("auto", "--device"),
    ) -> None:
        """A one-task student keeping only the teacher branches its routers use (SAK's task-specific export)."""
        res = export_run(run, task, out_file, threshold=threshold, split=split, max_images=limit, device=device)
        table = Table(title=f"routing weights of {task} (mean over levels)", title_justify="left")
        table.add_column("expert")
        table.add_column("weight", justify="right")
        table.add_column("kept")
        for name, w in zip(res["experts"], res["routing"], strict=True):
            table.add_row(name, f"{w:.3f}", "yes" if name == "stem" or name in res["kept"] else "[red]dropped[/]")
        out.print(table)
        cmp = Table(title="full student vs sub-model", title_justify="left")
        cmp.add_column("metric")
        cmp.add_column("full", justify="right")
        cmp.add_column("sub-model", justify="right")
        for key in sorted(res["full_metrics"]):
            cmp.add_row(key, f"{res['full_metrics'][key]:.4g}", f"{res['sub_metrics'][key]:.4g}")
        cmp.add_row("parameters", f"{res['full_params'] / 1e6:.2f}M", f"{res['sub_params'] / 1e6:.2f}M")
        out.print(cmp)
        out.print(f"dropped gate mass {res['dropped_gate_mass']:.3f}; wrote {res['path']}", highlight=False)
