"""Run every benchmark (each in its own process), then print all RATIO lines and a Markdown table.

    python -m benchmarks.run_all [--quick] [--device cpu|cuda] [--only loader,storage] [--out DIR] [--markdown FILE]

Each benchmark writes ``<out>/<name>.json`` (its ratios, parts and the machine record); the
summary repeats every RATIO line and, with ``--markdown``, writes a table for the README.

``--device cuda`` runs every benchmark's GPU preset (the paper's sizes) under a time budget each
(:data:`CUDA_BUDGET_S`, under 8 minutes in all): a benchmark over its budget is stopped and listed
as failed, so one run always ends in time with a table (``<out>/cuda.md`` unless ``--markdown``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = ("extract_overhead", "cached_vs_online", "loader", "storage", "scaling", "concurrent_writers")
#: Seconds each GPU preset may take (start-up and data generation included); 480 s in all.
CUDA_BUDGET_S = {"extract_overhead": 110, "cached_vs_online": 90, "loader": 110, "storage": 50, "scaling": 90,
                 "concurrent_writers": 30}
TOTAL_CUDA_BUDGET_S = 480


def markdown(records: list[dict]) -> str:
    if not records:
        return ""
    m = records[0]["machine"]
    head = (f"Measured on {m['cpu']} ({m['cores']} cores), torch {m['torch']}, device {m['device']}"
            + (f" ({m['gpu']})" if m.get("gpu") else "") + f", size preset `{records[0]['size']}`, "
            f"OMP_WAIT_POLICY={m.get('omp_wait_policy')}, load average at start {m['load_avg_start']}.\n\n")
    lines = ["| benchmark | ratio | value | target | met | parts |", "|---|---|---|---|---|---|"]
    for rec in records:
        for r in rec["ratios"]:
            parts = ", ".join(f"{k}={_short(v)}" for k, v in r["parts"].items())
            lines.append(f"| {rec['benchmark']} | `{r['name']}` | {_short(r['value'])} | {r['op']} {_short(r['target'])} | "
                         f"{'yes' if r['met'] else '**no**'} | {parts} |")
    return head + "\n".join(lines) + "\n"


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--only", default=None, help="comma-separated subset of: " + ", ".join(BENCHMARKS))
    p.add_argument("--out", default=os.path.join(os.environ.get("SAK_BENCH_DIR", "/tmp/sak-bench"), "results"))
    p.add_argument("--markdown", default=None, help="write the summary table (Markdown) to this file")
    args, extra = p.parse_known_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = args.device.startswith("cuda")
    if cuda and not args.quick:
        assert sum(CUDA_BUDGET_S.values()) <= TOTAL_CUDA_BUDGET_S
        args.markdown = args.markdown or str(out / "cuda.md")
    records, failed = [], []
    for name in names:
        cmd = [sys.executable, "-m", f"benchmarks.{name}", "--device", args.device, "--json", str(out / f"{name}.json"),
               *(["--quick"] if args.quick else []), *extra]
        print(f"# running: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        budget = CUDA_BUDGET_S[name] if cuda and not args.quick else None
        t0 = time.perf_counter()
        rc: int | str
        try:
            rc = subprocess.call(cmd, cwd=Path(__file__).resolve().parent.parent, timeout=budget)
        except subprocess.TimeoutExpired:
            rc = "over budget"
        print(f"# {name}: exit {rc} after {time.perf_counter() - t0:.0f} s" + (f" (budget {budget} s)" if budget else ""),
              file=sys.stderr, flush=True)
        if rc != 0:
            failed.append(f"{name} ({rc})")
            continue
        records.append(json.loads((out / f"{name}.json").read_text()))
    print("\n# summary", flush=True)
    for rec in records:
        for r in rec["ratios"]:
            print(r["line"])
    table = markdown(records)
    if failed:
        table += f"\nNot measured (failed or over its time budget): {', '.join(failed)}.\n"
    if args.markdown:
        Path(args.markdown).write_text(table)
        print(f"# wrote {args.markdown}", file=sys.stderr)
    if failed:
        print(f"# FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
