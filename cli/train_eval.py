"""`sak-train eval` (a run's metrics) and `sak-train export` (a one-task sub-model)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from ..student.evaluate.datasets import evaluate_run as evaluate  # every run, one dataset or several
from ..student.evaluate.evaluator import export_run
from .common import friendly_errors, out, renamed
from .train_view import metrics_table

CACHE_HELP = ("Cache root when it moved (a directory or an fsspec URL). Default: the one the run recorded (older runs recorded "
              "it relative: it is found from the run dir's place).")
DATA_ROOT_HELP = "The dataset's image folder when it moved since sak-cache index (default: the indexed folder)."


def register(app: typer.Typer) -> None:
    @app.command("eval")
    @friendly_errors
    def eval_cmd(
        run: Path = typer.Argument(..., help="Run dir (runs/NAME)."),
        split: str = typer.Option("val", "--split", help="Dataset split to evaluate."),
        step0: bool = typer.Option(False, "--step0", help="Also evaluate the untrained student the run started from."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
        limit: int | None = typer.Option(None, "--limit", min=1, help="Evaluate the first N samples of the split only."),
        max_samples_old: int | None = renamed("--max-samples", "--limit"),
        amp: str = typer.Option("off", "--amp", help="off (fp32, as the official test.py) | auto | bf16 (autocast on cuda)."),
        miou: str | None = typer.Option(None, "--miou", help="official (mean over all classes, absent = 0) | present. Default: the run's own (eval.miou in its config)."),
        baseline: list[str] | None = typer.Option(None, "--baseline", help="[DATASET=]RUN_DIR_OR_JSON: Delta_m of the run's metrics on DATASET against this run's last evaluation (or a JSON file of metrics), e.g. a single-dataset run; repeatable, one per dataset."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object ({step, split, metrics, baseline, datasets, delta_m}) instead of tables."),
        cache: str | None = typer.Option(None, "--cache", "-c", help=CACHE_HELP),
        data_root: Path | None = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
    ) -> None:
        """Metrics of a run's last checkpoint (next to the untrained step-0 student when known), distillation
        cosines per teacher and level included; per dataset in a multi-dataset run (keys DATASET/TASK/METRIC),
        with Delta_m per dataset against --baseline runs."""
        res = evaluate(run, split, baselines=baseline or (), step0=step0, device=device, max_samples=limit,
                       amp=amp, miou=miou, cache=cache, data_root=data_root)
        if as_json:
            out.print_json(json.dumps(res))
            return
        out.print(metrics_table(res["metrics"], res.get("baseline"), f"{run}: {split} split, step {res['step']}"))
        if res["delta_m"]:
            table = Table(title="Delta_m per dataset (mean relative gain over the baseline, %)", title_justify="left")
            for col in ("dataset", "Delta_m", "metrics", "baseline"):
                table.add_column(col, justify="right" if col == "Delta_m" else "left", overflow="fold")
            for name, row in res["delta_m"].items():
                table.add_row(name, f"{row['delta_m']:+.2f}", ", ".join(row["keys"]), escape(row["baseline"]))
            out.print(table)
        q = shlex.quote(str(run))
        out.print(f"next: sak-train predict {q} IMAGES... --out preds\n      sak-train export {q} --task TASK --out TASK.safetensors",
                  highlight=False, markup=False, soft_wrap=True)

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
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
        cache: str | None = typer.Option(None, "--cache", "-c", help=CACHE_HELP),
        data_root: Path | None = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
    ) -> None:
        """A one-task student keeping only the teacher branches its routers use (SAK's task-specific export)."""
        res = export_run(run, task, out_file, threshold=threshold, split=split, max_images=limit, device=device,
                         cache=cache, data_root=data_root)
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
