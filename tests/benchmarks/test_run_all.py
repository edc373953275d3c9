"""benchmarks/run_all.py: --device cuda budgets every GPU preset (under 8 minutes in all) and still writes a table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/ lives at the repo root

from benchmarks import run_all


def test_cuda_budgets_fit_eight_minutes() -> None:
    assert set(run_all.CUDA_BUDGET_S) == set(run_all.BENCHMARKS)
    assert sum(run_all.CUDA_BUDGET_S.values()) <= run_all.TOTAL_CUDA_BUDGET_S <= 8 * 60


def test_over_budget_is_reported_and_the_table_still_written(tmp_path: Path, monkeypatch) -> None:
    calls = []
    record = {"benchmark": "storage", "size": "cuda", "machine": {"cpu": "x", "cores": 1, "torch": "t", "device": "cuda",
              "load_avg_start": "0"}, "ratios": [{"name": "r", "value": 1.0, "target": 0.5, "op": ">=", "met": True,
                                                   "parts": {"a": 1}, "line": "RATIO r = 1  (target >= 0.5)  [parts: a=1]"}]}

    def fake_call(cmd, cwd=None, timeout=None):
        calls.append((cmd[2], timeout))
        if cmd[2] == "benchmarks.loader":
            raise subprocess.TimeoutExpired(cmd, timeout)
        Path(cmd[cmd.index("--json") + 1]).write_text(json.dumps(record))
        return 0

    monkeypatch.setattr(run_all.subprocess, "call", fake_call)
    rc = run_all.main(["--device", "cuda", "--only", "storage,loader", "--out", str(tmp_path)])
    assert rc == 1
    assert calls == [("benchmarks.storage", run_all.CUDA_BUDGET_S["storage"]), ("benchmarks.loader", run_all.CUDA_BUDGET_S["loader"])]
    table = (tmp_path / "cuda.md").read_text()
    assert "| storage | `r` |" in table and "loader (over budget)" in table
