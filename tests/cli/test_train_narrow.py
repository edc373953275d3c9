"""Every `sak-train` command at 80 columns (issue 16 item 1, the training side): fit, eval (tables and --json),
export, predict, describe and recipes on a run whose directory path is longer than 80 characters. No output cuts a
word (no ellipsis); the run path appears whole (on its own line, or folded at a line end); eval --json carries
exactly the metrics the table shows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sak.cli import common
from sak.cli.train import app as train_app
from sak.pipeline.extract.job import ExtractConfig, extract

ELLIPSIS = "…"


def _run(*args: object) -> str:
    common.out.width = common.console.width = 80  # the module consoles were made at import: set their width too
    res = CliRunner().invoke(train_app, [str(a) for a in args], env={"COLUMNS": "80"}, terminal_width=80)
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert ELLIPSIS not in res.output, res.output
    return res.output


def _whole(name: str, text: str) -> bool:
    return name in text or name in text.replace("\n", "")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, demo_nyud: Path) -> tuple[Path, str]:
    from sak.pipeline.data.datasets import index_dataset, write_dataset_index

    base = tmp_path_factory.mktemp("train_narrow")
    cache = base / "cache"
    write_dataset_index(cache, "nyud", index_dataset(demo_nyud, name="nyud", fmt="nyud", workers=1), demo_nyud)
    extract(ExtractConfig(cache=str(cache), teachers=("test:tiny",), random_init=True, device="cpu", batch_size=16,
                          segment_size=8, io_threads=1, input_protocol="native"))
    run = base / "runs_of_a_lab_with_long_folder_names" / "nyud_multitask_student_trained_from_the_cached_tiny_teacher"
    assert len(str(run)) > 80
    out = _run("fit", "--cache", cache, "--backbone", "test_vit", "--iters", 2, "--batch-size", 4, "--lr", "1e-3",
               "--out", run, "--threads", 0, "--device", "cpu", "--eval-limit", 2)
    return run, out


def test_fit_at_80_columns(trained) -> None:
    run, out = trained
    assert _whole(str(run), out) and "val metrics after 2 steps" in out


def test_eval_table_and_json_at_80_columns(trained) -> None:
    run, _ = trained
    table = _run("eval", run, "--device", "cpu", "--limit", 2)
    assert _whole(str(run), table)
    res = json.loads(_run("eval", run, "--device", "cpu", "--limit", 2, "--json"))
    assert res["step"] == 2 and "semseg/mIoU" in res["metrics"] and "distill/tiny/cosine" in res["metrics"]
    for key, value in res["metrics"].items():  # every metric of the JSON is a row of the table, with its value
        row = next(line for line in table.splitlines() if f" {key} " in line)
        assert f"{value:.4g}" in row, (key, value, row)


def test_export_predict_describe_recipes_at_80_columns(trained, demo_nyud, tmp_path) -> None:
    run, _ = trained
    sub = tmp_path / "semseg_sub_model_exported_from_the_long_named_run_for_an_eighty_column_check.safetensors"
    assert _whole(str(sub), _run("export", run, "--task", "semseg", "--out", sub, "--device", "cpu", "--limit", 2))
    out = _run("predict", sub, demo_nyud / "images", "--out", tmp_path / "preds", "--limit", 1, "--device", "cpu")
    assert "wrote 1 PNG(s) for 1 image(s)" in out
    _run("describe", "--backbone", "test_vit", "-t", "test:tiny", "--tasks", "semseg,depth")
    _run("recipes")
