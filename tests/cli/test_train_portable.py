"""Issue 16 item 3: a run dir works from any directory. Trained in one directory with ``--cache ./cache``, it is
evaluated, exported and predicted from another (by absolute and relative run path) with no option; after the cache
moves, ``--cache NEW`` points at it; a moved dataset takes ``--data-root``; a run recorded before the cache was
stored absolute (``"./cache"``) still finds it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sak.cli.train import app as train_app
from sak.pipeline.extract.job import ExtractConfig, extract

runner = CliRunner()


def _ok(result) -> str:
    assert result.exit_code == 0, result.output + (str(result.exception) if result.exception else "")
    return result.output


@pytest.fixture()
def lab(demo_cache, monkeypatch) -> Path:
    """The training directory: ./cache (demo dataset + a test-teacher store) and ./runs/a trained from there."""
    cache, _ = demo_cache
    lab = cache.parent
    monkeypatch.chdir(lab)
    monkeypatch.setenv("COLUMNS", "400")  # long tmp paths stay on one line
    extract(ExtractConfig(cache="./cache", teachers=("test:tiny",), random_init=True, device="cpu", batch_size=16,
                          segment_size=8, io_threads=1, input_protocol="native"))
    out = _ok(runner.invoke(train_app, ["fit", "--cache", "./cache", "--backbone", "test_vit", "--iters", "2",
                                        "--batch-size", "4", "--lr", "1e-3", "--out", "runs/a", "--threads", "0",
                                        "--device", "cpu", "--eval-limit", "2"]))
    assert "next: sak-train eval runs/a\n      sak-train predict runs/a IMAGES... --out preds" in out
    assert "covered 9/9 samples of nyud/train" in (lab / "runs" / "a" / "run.log").read_text()
    return lab


def _eval(run: str, *extra: str):
    return runner.invoke(train_app, ["eval", run, "--device", "cpu", "--limit", "2", *extra])


def test_a_run_evaluates_exports_and_predicts_from_another_directory(lab, demo_nyud, tmp_path, monkeypatch) -> None:
    record = json.loads((lab / "runs" / "a" / "config.json").read_text())
    assert record["train"]["data"]["cache"] == str(lab / "cache")  # absolute, whatever was typed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    want = json.loads((lab / "runs" / "a" / "eval" / "step_2.json").read_text())["metrics"]
    for run in (str(lab / "runs" / "a"), os.path.relpath(lab / "runs" / "a")):
        out = _ok(_eval(run))
        assert "val split, step 2" in out and f"next: sak-train predict {run} IMAGES... --out preds" in out
    sub = elsewhere / "semseg.safetensors"
    _ok(runner.invoke(train_app, ["export", os.path.relpath(lab / "runs" / "a"), "--task", "semseg", "--out", str(sub), "--device", "cpu", "--limit", "2"]))
    out = _ok(runner.invoke(train_app, ["predict", os.path.relpath(lab / "runs" / "a"), str(demo_nyud / "images"),
                                        "--out", "preds", "--limit", "2", "--device", "cpu"]))
    pngs = sorted(p.name for p in (elsewhere / "preds").iterdir())
    assert len(pngs) == 2 * 4 and "wrote 8 PNG(s) for 2 image(s)" in out
    _ok(runner.invoke(train_app, ["predict", str(sub), str(demo_nyud / "images"), "--out", "sub", "--limit", "1",
                                  "--device", "cpu"]))
    assert [p.name.rsplit("_", 1)[1] for p in (elsewhere / "sub").iterdir()] == ["semseg.png"]

    moved = tmp_path / "moved-cache"
    shutil.move(str(lab / "cache"), moved)
    res = _eval(str(lab / "runs" / "a"))
    assert res.exit_code == 2
    assert f"cache {lab / 'cache'} of run {lab / 'runs' / 'a'} (recorded as {str(lab / 'cache')!r} in " in res.output
    assert "pass --cache DIR (its new place)" in res.output
    out = _ok(_eval(str(lab / "runs" / "a"), "--cache", str(moved)))
    assert f"{want['semseg/pixAcc']:.4g}" in out
    _ok(runner.invoke(train_app, ["export", str(lab / "runs" / "a"), "--task", "depth", "--out", str(elsewhere / "d.st"),
                                  "--device", "cpu", "--limit", "2", "--cache", str(moved)]))


def test_a_moved_dataset_is_found_with_data_root(lab, demo_nyud, tmp_path, monkeypatch) -> None:
    images = tmp_path / "nyud-moved"
    shutil.copytree(demo_nyud, images)
    monkeypatch.chdir(tmp_path)
    record = lab / "cache" / "datasets" / "nyud.parquet"
    import pyarrow.parquet as pq

    table = pq.read_table(record)
    meta = dict(table.schema.metadata)
    meta[b"sak.root"] = str(tmp_path / "gone").encode()
    pq.write_table(table.replace_schema_metadata(meta), record)
    res = _eval(str(lab / "runs" / "a"))
    assert res.exit_code == 2 and "file not found" in res.output
    out = _ok(_eval(str(lab / "runs" / "a"), "--data-root", str(images)))
    assert "val split, step 2" in out


def test_a_run_recorded_with_a_relative_cache_still_finds_it(lab, tmp_path, monkeypatch) -> None:
    """Runs before issue 16 recorded "./cache" as typed: the cache is found from the recorded out (runs/a)."""
    config = lab / "runs" / "a" / "config.json"
    record = json.loads(config.read_text())
    record["train"]["data"]["cache"] = "./cache"
    config.write_text(json.dumps(record))
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    assert "val split, step 2" in _ok(_eval(str(lab / "runs" / "a")))
    assert "val split, step 2" in _ok(_eval("../runs/a"))


def test_predict_pads_small_images_and_scales_down_large_ones(lab, tmp_path) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(folder / "small.png")
    Image.fromarray(rng.integers(0, 255, (200, 100, 3), dtype=np.uint8)).save(folder / "large.jpg")
    _ok(runner.invoke(train_app, ["predict", str(lab / "runs" / "a"), str(folder), "--out", str(tmp_path / "p"),
                                  "--device", "cpu"]))
    sizes = {p.name: Image.open(p).size for p in (tmp_path / "p").iterdir()}
    assert sizes == {f"{stem}_{task}.png": size for stem, size in (("small", (30, 20)), ("large", (100, 200)))
                     for task in ("semseg", "depth", "normals", "edge")}
