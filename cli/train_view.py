"""What `sak-train` shows: the live training view and the metrics tables."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ..pipeline.tasks import metric_direction
from ..student.evaluate.distill_metric import split_key
from .common import console


def distill_lines(metrics: dict[str, float]) -> list[tuple[str, str]]:
    """One ``(teacher, text)`` per teacher: its mean val cosine, then the cosine per level (``(L1 0.710 L2 0.801)``)."""
    teachers: dict[str, dict[int | None, float]] = {}
    for key, value in metrics.items():
        parsed = split_key(key)
        if parsed is not None:
            teachers.setdefault(parsed[0], {})[parsed[1]] = value
    lines = []
    for name, values in sorted(teachers.items()):
        parts = [f"{values[None]:.3f}"] if None in values else []
        levels = sorted((k, v) for k, v in values.items() if k is not None)
        if levels:
            parts.append("(" + " ".join(f"L{k} {v:.3f}" for k, v in levels) + ")")
        lines.append((name, " ".join(parts)))
    return lines


class LiveView:
    """Progress bar + a table of the latest loss parts, throughput, data wait and ETA, and the latest evaluation's
    distillation cosines (one line per teacher)."""

    def __init__(self, total: int) -> None:
        self.bar = Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=console)
        self.task = self.bar.add_task("train", total=total)
        self.info: dict[str, Any] = {}

    def __call__(self, advance: int, **info: Any) -> None:
        self.info = info
        self.bar.update(self.task, completed=info.get("step", 0), total=info.get("total"))

    def __rich__(self) -> Group:
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        i = self.info
        for col in ("loss part", "value"):
            table.add_column(col, justify="right" if col == "value" else "left")
        for name, value in sorted(i.get("losses", {}).items(), key=lambda kv: (kv[0] != "total", kv[0])):
            table.add_row(name, f"{value:.4f}")
        if i:
            table.add_row("lr", f"{i['lr']:.3g}")
            table.add_row("samples/s", f"{i['samples_per_s']:.1f}")
            table.add_row("s/step", f"{i['s_per_step']:.3f}")
            table.add_row("data wait", f"{i['data_wait']:.0%}")
            table.add_row("ETA", f"{i['eta_s']:.0f} s")
        latest = i.get("eval") or {}
        for label, text in distill_lines(latest.get("metrics", {})):
            table.add_row(f"val cosine {label} (step {latest.get('step')})", text)
        return Group(self.bar, table)


def _better(key: str, new: float, old: float) -> bool:
    return new > old if metric_direction(key) else new < old


def metrics_table(metrics: dict[str, float], baseline: dict[str, float] | None, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    if baseline:
        table.add_column("untrained (step 0)", justify="right")
    table.add_column("trained", justify="right")
    for key in sorted(metrics):
        row = [key]
        value = f"{metrics[key]:.4g}"
        if baseline:
            base = baseline.get(key)
            row.append("-" if base is None else f"{base:.4g}")
            if base is not None and key.split("/")[-1] != "ods_threshold":
                value = f"[green]{value}[/]" if _better(key, metrics[key], base) else f"[red]{value}[/]"
        row.append(value)
        table.add_row(*row)
    return table
