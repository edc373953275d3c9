"""Every benchmark runs at its --quick size and prints parseable RATIO lines and a machine record.

Quick sizes use the tiny test teachers and a few images: these check the plumbing, not the numbers.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/ lives at the repo root, not in the package

from benchmarks.common import Ratio, parse_ratio_lines

EXPECTED = {
    "extract_overhead": {"extract_vs_bare_forward", "extract_vs_bare_forward_paper_maps"},
    "cached_vs_online": {"cached_speedup", "cached_speedup_vs_ideal"},
    "loader": {"loader_vs_cat_warm_224", "loader_vs_cat_cold_224", "loader_vs_cat_warm_paper", "loader_vs_cat_cold_paper",
               "resident_gather_vs_memcpy_paper", "target_stage_cpu_efficiency_vs_before_paper",
               *(f"checked_{side}_vs_unchecked_warm_{size}" for side in ("first_epoch", "later_epochs", "every_read")
                 for size in ("224", "paper", "paper_int8")),
               "zstd_crc32c_vs_frame_checksum"},
    "storage": {"storage_fp16_none_vs_raw_fp16", "storage_fp16_zstd_vs_raw_fp16", "storage_int8_token-channel-offset_vs_raw_fp16",
                "fidelity_int8_token-channel-offset_worst_layer_std_cosine", "fidelity_int8_token_worst_layer_std_cosine",
                "storage_int8_default_lz4_vs_raw_fp16", "encode_int8_vs_fp16", "decode_int8_vs_fp16"},
    "scaling": {"extract_2_vs_1_dask_workers", "open_2000_rows_within_1s", "open_2000_vs_200_rows_time",
                "open_2000_rows_before_vs_after", "ls_2000_rows_within_1s"},
    "concurrent_writers": {"concurrent_2_writers_work_per_image", "concurrent_4_writers_work_per_image"},
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(autouse=True)
def _restore_process_state():
    """Benchmarks set log levels (and may set torch threads): give the rest of the session its own."""
    import torch

    names = ("sak", "distributed", "dask")
    before = {n: logging.getLogger(n).level for n in names}
    threads = torch.get_num_threads()
    yield
    for n, level in before.items():
        logging.getLogger(n).setLevel(level)
    torch.set_num_threads(threads)


def test_ratio_line_round_trips() -> None:
    line = Ratio("a_b", 0.5, 0.95, ">=", {"x": 1.23456, "y": "vit"}).line()
    assert line == "RATIO a_b = 0.5  (target >= 0.95)  [parts: x=1.235, y=vit]"
    (got,) = parse_ratio_lines("noise\n" + line + "\n")
    assert (got["name"], got["value"], got["op"], got["target"], got["parts"]) == ("a_b", 0.5, ">=", 0.95, "x=1.235, y=vit")
    assert not Ratio("t", 2.0, 1.0, "<=").met and Ratio("t", 1.0, 1.0, "<=").met


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_benchmark_quick_prints_ratios(name: str, workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    out_json = tmp_path / f"{name}.json"
    record = module.main(["--quick", "--device", "cpu", "--workdir", str(workdir), "--json", str(out_json)])
    printed = parse_ratio_lines(capsys.readouterr().out)
    names = {r["name"] for r in printed}
    assert EXPECTED[name] <= names, f"{name} printed {names}"
    assert all(math.isfinite(r["value"]) and r["value"] >= 0 and r["parts"] for r in printed)
    saved = json.loads(out_json.read_text())
    assert saved["benchmark"] == name and saved["size"] == "quick"
    assert {"cpu", "cores", "torch", "device"} <= set(saved["machine"]) and saved["machine"]["device"] == "cpu"
    assert [r["line"] for r in saved["ratios"]] == [r.line() for r in _ratios(record)]
    assert not list((workdir / "scratch").glob("*/*")), "a benchmark left its scratch stores behind"


def _ratios(record: dict) -> list[Ratio]:
    return [Ratio(r["name"], r["value"], r["target"], r["op"], r["parts"]) for r in record["ratios"]]
