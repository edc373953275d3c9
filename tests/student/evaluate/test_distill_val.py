"""Distillation metrics on val in real runs: joined with the stores, batch-size independent, partial stores,
and an unlabelled image folder whose evaluation is the distillation cosine (trained beats untrained)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from _caches import extract_store, indexed_cache
from rich.console import Console
from typer.testing import CliRunner

from sak.cli.train import app as train_app
from sak.cli.train_view import LiveView, metrics_table
from sak.pipeline.data.datasets import index_dataset, write_dataset_index
from sak.student.evaluate.evaluator import evaluate, evaluate_model
from sak.student.runs.config import TrainConfig
from sak.student.train.setup import prepare

LEVELS = ("level1", "level2", "level3", "level4")  # test:tiny's default layers
DISTILL_KEYS = {f"distill/tiny/{lv}/cosine" for lv in LEVELS} | {"distill/tiny/cosine"}


def _cfg(cache: Path, out: Path, **kw) -> TrainConfig:
    base = dict(cache=str(cache), backbone="test_vit", batch_size=4, lr=1e-3, block_size=4, window=2, workers=0,
                log_every=10, ckpt_every=0, out=str(out))
    return TrainConfig(**{**base, **kw})


def _cache(root: Path, data: Path, **extract) -> Path:
    cache = indexed_cache(root, data)
    extract_store(cache, **extract)
    return cache


def _render(renderable, *, styles: bool = False) -> str:
    """What an 80-column terminal shows (``styles``: with its ANSI colour codes)."""
    with open(os.devnull, "w") as sink:
        console = Console(width=80, record=True, file=sink, force_terminal=styles, color_system="standard")
        console.print(renderable)
    return console.export_text(styles=styles)


@pytest.mark.parametrize("protocol", ["student", "native"])
def test_val_is_scored_against_the_stores_the_same_for_any_batch_size(protocol, demo_nyud, tmp_path) -> None:
    cache = _cache(tmp_path, demo_nyud, input_protocol=protocol)
    setup = prepare(_cfg(cache, tmp_path / "run", iters=1, standardize=True), device=torch.device("cpu"))
    if protocol == "student":  # teachers saw the padded val images the task metrics score: one pass
        assert setup.val is not None and setup.val.read_targets and setup.val_targets is None
    else:  # native targets are of the squashed image, as training fits it: a second pass over the resized images
        assert setup.val is not None and not setup.val.read_targets and setup.val_targets is not None
        assert (setup.val.fit, setup.val_targets.fit, len(setup.val_targets)) == ("pad", "resize", 3)
    assert setup.stats is not None
    one, three = (evaluate_model(setup.model, setup.val, batch_size=b, targets=setup.val_targets, stats=setup.stats,
                                 workers=0) for b in (1, 3))
    assert DISTILL_KEYS <= set(one) and set(one) == set(three)
    for key in DISTILL_KEYS:
        assert one[key] == pytest.approx(three[key], abs=1e-6)
    assert -1.0 < one["distill/tiny/cosine"] < 1.0
    if protocol == "native":  # val itself carries no targets: without them, the task metrics only
        tasks_only = evaluate_model(setup.model, setup.val, batch_size=3, workers=0)
        assert set(tasks_only) == {k for k in three if not k.startswith("distill/")}
    capped = evaluate_model(setup.model, setup.val, batch_size=3, targets=setup.val_targets, stats=setup.stats,
                            workers=0, max_samples=2)  # the cut batch scores exactly the first 2 images
    first_two = evaluate_model(setup.model, setup.val, batch_size=1, targets=setup.val_targets, stats=setup.stats,
                               workers=0, max_samples=2)
    assert capped["distill/tiny/cosine"] == pytest.approx(first_two["distill/tiny/cosine"], abs=1e-6)
    assert capped["distill/tiny/cosine"] != pytest.approx(three["distill/tiny/cosine"], abs=1e-6)


def test_a_store_lacking_val_samples_scores_the_covered_ones_and_says_how_many(demo_nyud, tmp_path, caplog) -> None:
    # the store holds the first 10 images: 000009 of the val split (000009-000011), every train image
    cache = _cache(tmp_path / "part", demo_nyud, limit=10)
    with caplog.at_level(logging.WARNING):
        setup = prepare(_cfg(cache, tmp_path / "run", iters=1), device=torch.device("cpu"))
    assert "distillation metrics on nyud/val score the 1 of 3 samples every store holds" in caplog.text
    assert setup.val is not None and setup.val_targets is not None
    assert len(setup.val) == 3 and len(setup.val_targets) == 1  # the task metrics keep every val sample
    got = evaluate_model(setup.model, setup.val, targets=setup.val_targets, workers=0)
    tasks = evaluate_model(setup.model, setup.val, workers=0)
    assert DISTILL_KEYS <= set(got) and {k: v for k, v in got.items() if k in tasks} == tasks

    none = _cache(tmp_path / "none", demo_nyud, limit=9)  # no val image in the store: tasks only, and why
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        setup = prepare(_cfg(none, tmp_path / "run2", iters=1), device=torch.device("cpu"))
    assert "no distillation metrics on nyud/val" in caplog.text and setup.val_targets is None
    assert setup.val is not None and not setup.val.read_targets and len(setup.val) == 3


@pytest.fixture(scope="module")
def folder_run(demo_nyud, tmp_path_factory):
    """An unlabelled image folder (train/ 8 images, val/ 4) with a student-protocol store, trained 40 steps by the CLI."""
    root = tmp_path_factory.mktemp("folder")
    images = sorted((demo_nyud / "images").iterdir())
    for i, src in enumerate(images):
        split = root / "imgs" / ("val" if i >= 8 else "train")
        split.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, split / src.name)
    cache = root / "cache"
    write_dataset_index(cache, "imgs", index_dataset(root / "imgs", name="imgs", fmt="folder", workers=1), root / "imgs")
    extract_store(cache, input_protocol="student")
    run = root / "run"
    res = CliRunner().invoke(train_app, ["fit", "--cache", str(cache), "--backbone", "test_vit", "--iters", "40",
                                         "--batch-size", "4", "--lr", "1e-3", "--eval-every", "20", "--out", str(run),
                                         "--workers", "0", "--device", "cpu", "--log-every", "10"])
    assert res.exit_code == 0, res.output + str(res.exception)
    return run, res.output


def test_an_unlabelled_folder_run_is_evaluated_by_its_distillation_cosine(folder_run) -> None:
    run, output = folder_run
    summary = json.loads((run / "summary.json").read_text())
    before, after = summary["baseline"], summary["metrics"]
    assert set(before) == set(after) == DISTILL_KEYS  # no task: the cosines are the whole evaluation
    assert after["distill/tiny/cosine"] > before["distill/tiny/cosine"] + 0.3
    assert all(after[f"distill/tiny/{lv}/cosine"] > before[f"distill/tiny/{lv}/cosine"] for lv in LEVELS)
    for step in (0, 20, 40):
        assert set(json.loads((run / "eval" / f"step_{step}.json").read_text())["metrics"]) == DISTILL_KEYS
    # the final table (printed by fit) has a row per key; trained values in green: higher is better
    assert "val metrics after 40 steps" in output
    for key in DISTILL_KEYS:
        assert key in output
    table = _render(metrics_table(after, before, "t"), styles=True)
    green = "\x1b[32m"
    assert f"{before['distill/tiny/cosine']:.4g}" in table and f"{green}{after['distill/tiny/cosine']:.4g}" in table
    assert "val cosine tiny (step 20)" in output  # the live view showed the step-20 evaluation


def test_eval_rebuilds_the_runs_stores_and_prints_json(folder_run) -> None:
    run, _ = folder_run
    summary = json.loads((run / "summary.json").read_text())
    res = evaluate(run, device="cpu")
    assert res["metrics"] == pytest.approx(summary["metrics"], abs=1e-6) and res["baseline"] == summary["baseline"]
    fresh = evaluate(run, device="cpu", step0=True)  # the untrained student recomputed: the step-0 record
    assert fresh["baseline"] == pytest.approx(summary["baseline"], abs=1e-6)
    out = CliRunner().invoke(train_app, ["eval", str(run), "--device", "cpu", "--json"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout)  # the logged warnings go to stderr
    assert (got["step"], got["split"]) == (40, "val")
    assert got["metrics"] == pytest.approx(summary["metrics"], abs=1e-6) and got["baseline"] == summary["baseline"]


def test_live_view_shows_the_latest_cosines_one_line_per_teacher() -> None:
    view = LiveView(40)
    view(1, step=20, total=40, lr=1e-3, losses={"total": 1.0, "distill": 1.0}, samples_per_s=10.0, s_per_step=0.1,
         data_wait=0.0, eta_s=2.0,
         eval={"step": 20, "metrics": {"distill/sam/level1/cosine": 0.5, "distill/sam/level2/cosine": 0.7,
                                        "distill/sam/cosine": 0.6, "distill/dinov2/level1/cosine": 0.81234,
                                        "distill/dinov2/cosine": 0.81234, "depth/rmse": 0.3}})
    lines = [line.strip() for line in _render(view).splitlines()]
    assert "val cosine dinov2 (step 20) 0.812 (L1 0.812)" in [" ".join(line.split()) for line in lines]
    assert "val cosine sam (step 20) 0.600 (L1 0.500 L2 0.700)" in [" ".join(line.split()) for line in lines]
    assert not any("rmse" in line for line in lines)
    view(1, step=21, total=40, lr=1e-3, losses={}, samples_per_s=10.0, s_per_step=0.1, data_wait=0.0, eta_s=2.0, eval={})
    assert "val cosine" not in _render(view)  # no evaluation yet (a resumed run): no line
