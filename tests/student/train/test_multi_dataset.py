"""Issue 15 item 1 end to end: demo NYUD + a PASCAL-Context-layout set + an unlabelled folder in one fit.

The PASCAL set is built here (a tiny procedural layout: a vertical boundary between two classes whose
colours tell them apart), read by the pascal format reader; the folder has no labels (train and val
images): its only metric is the distillation cosine.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _caches import extract_store
from PIL import Image
from typer.testing import CliRunner

from sak.cli.train import app as train_app
from sak.manifests.errors import SakError
from sak.pipeline.data.datasets import index_dataset, write_dataset_index
from sak.pipeline.tasks import metric_direction
from sak.student.evaluate.datasets import evaluate_run
from sak.student.runs.checkpoint import load_checkpoint
from sak.student.runs.config import TrainConfig
from sak.student.train.trainer import fit

COLOURS = {1: (220, 40, 40), 2: (40, 200, 60), 3: (40, 60, 220)}


def _pascal(root: Path, n: int = 10, size: tuple[int, int] = (64, 80)) -> Path:
    rng = np.random.default_rng(5)
    h, w = size
    ids = [f"2008_{i:06d}" for i in range(n)]
    for sid in ids:
        a, b = rng.choice([1, 2, 3], size=2, replace=False)
        cut = int(rng.integers(w // 4, 3 * w // 4))
        label = np.full((h, w), a, np.uint8)
        label[:, cut:] = b
        img = np.array([COLOURS[c] for c in label.ravel()], np.uint8).reshape(h, w, 3)
        img = np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        (root / "semseg" / "pascal-context").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "JPEGImages" / f"{sid}.png")
        Image.fromarray(label).save(root / "semseg" / "pascal-context" / f"{sid}.png")
    (root / "ImageSets" / "Context").mkdir(parents=True)
    (root / "ImageSets" / "Context" / "train.txt").write_text("\n".join(ids[:7]) + "\n")
    (root / "ImageSets" / "Context" / "val.txt").write_text("\n".join(ids[7:]) + "\n")
    return root


def _folder(root: Path, n: int = 6, n_val: int = 3) -> Path:
    rng = np.random.default_rng(6)
    for split, count in (("train", n), ("val", n_val)):
        (root / split).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(root / split / f"img{i}.png")
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory, demo_nyud) -> Path:
    root = tmp_path_factory.mktemp("multi")
    cache = root / "cache"
    for name, data, fmt in (("nyud", demo_nyud, "nyud"), ("pascal", _pascal(root / "pascal"), "pascal"),
                            ("plain", _folder(root / "plain"), "folder")):
        write_dataset_index(cache, name, index_dataset(data, name=name, fmt=fmt, workers=1), data)
    extract_store(cache)  # one test:tiny store over all three datasets
    return cache


def _cfg(cache: Path, out: Path, **kw) -> TrainConfig:
    base = dict(cache=str(cache), datasets=("nyud", "pascal", "plain"), backbone="test_vit", batch_size=4, lr=2e-3,
                block_size=4, window=2, workers=0, log_every=1, out=str(out), iters=30, ckpt_every=0,
                stage="multitask", mix="balanced")
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "mixed"
    fit(_cfg(cache, run))
    return run


def test_one_fit_trains_on_three_datasets_and_scores_each_labelled_one(trained) -> None:
    record = json.loads((trained / "config.json").read_text())
    assert record["train"]["data"]["datasets"] == ["nyud", "pascal", "plain"] and record["mix"] == "balanced"
    assert record["train"]["data"]["dataset"] == "nyud"
    tasks = {d["name"]: d["tasks"] for d in record["datasets"]}
    assert tasks == {"nyud": {"semseg": "semseg", "depth": "depth", "normals": "normals", "edge": "edge"},
                     "pascal": {"semseg": "semseg_pascal"}, "plain": {}}
    cov = {d["name"]: (d["format"], d["coverage"]["items"], d["coverage"]["teachers"]) for d in record["datasets"]}
    assert cov == {"nyud": ("nyud", 9, {"tiny": 9}), "pascal": ("pascal", 7, {"tiny": 7}),
                   "plain": ("folder", 6, {"tiny": 6})}
    heads = [(t["name"], t["channels"], t["kind"]) for t in record["student"]["tasks"]]
    assert heads == [("semseg", 40, None), ("depth", 1, None), ("normals", 3, None), ("edge", 1, None),
                     ("semseg_pascal", 21, "semseg")]

    before = json.loads((trained / "eval" / "step_0.json").read_text())["metrics"]
    after = json.loads((trained / "eval" / "step_30.json").read_text())["metrics"]
    assert sorted({k.split("/")[0] for k in after}) == ["nyud", "pascal", "plain"]
    cosines = {"distill/tiny/cosine"} | {f"distill/tiny/level{k}/cosine" for k in (1, 2, 3, 4)}
    assert {k for k in after if k.startswith("pascal/")} == {"pascal/semseg/mIoU", "pascal/semseg/pixAcc"} | {
        f"pascal/{k}" for k in cosines}
    assert {k for k in after if k.startswith("plain/")} == {f"plain/{k}" for k in cosines}  # no labels: distill only
    assert set(before) == set(after) and "nyud/depth/rmse" in after
    for ds in ("nyud", "pascal", "plain"):
        better = [k for k in after if k.startswith(f"{ds}/") and metric_direction(k) is not None
                  and (after[k] > before[k] if metric_direction(k) else after[k] < before[k])]
        assert better, f"{ds}: trained student beats the untrained one on no metric ({before} -> {after})"
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["metrics"] == after and (trained / "plots" / "predictions_pascal.png").exists()
    losses = [json.loads(line)["losses"] for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert {"task/semseg_pascal", "task/depth", "distill/tiny"} <= set(losses[0])


def test_eval_scores_each_dataset_and_gives_delta_m_per_dataset(trained, tmp_path) -> None:
    res = evaluate_run(trained, device="cpu")
    after = json.loads((trained / "eval" / "step_30.json").read_text())["metrics"]
    assert res["metrics"] == pytest.approx(after, rel=1e-5) and res["datasets"] == ["nyud", "pascal", "plain"]
    assert res["delta_m"] == {}
    half = {"semseg/mIoU": after["pascal/semseg/mIoU"] / 2, "semseg/pixAcc": after["pascal/semseg/pixAcc"]}
    (tmp_path / "base.json").write_text(json.dumps({"metrics": half}))
    res = evaluate_run(trained, device="cpu", baselines=[f"pascal={tmp_path / 'base.json'}", f"nyud={trained}"])
    assert res["delta_m"]["pascal"]["delta_m"] == pytest.approx(50.0, rel=1e-4)  # (+100% + 0%) / 2
    assert res["delta_m"]["pascal"]["keys"] == ["semseg/mIoU", "semseg/pixAcc"]
    assert res["delta_m"]["nyud"]["delta_m"] == pytest.approx(0.0, abs=1e-3)  # the run against itself
    assert "edge/ods_threshold" not in res["delta_m"]["nyud"]["keys"]  # no direction
    json.dumps(res)
    with pytest.raises(SakError, match=r"say which dataset it is for: --baseline DATASET="):
        evaluate_run(trained, device="cpu", baselines=[str(tmp_path / "base.json")])


def test_a_killed_mixed_run_resumes_bit_identically(cache, tmp_path) -> None:
    full, part = tmp_path / "full", tmp_path / "part"
    kw = dict(iters=6, ckpt_every=3, val_split=None, mix="temperature:2")
    fit(_cfg(cache, full, **kw))

    class Stop(Exception):
        pass

    def stop(advance, step, **info):
        if step == 4:
            raise Stop

    with pytest.raises(Stop):
        fit(_cfg(cache, part, **kw), progress=stop)
    assert load_checkpoint(part / "ckpt").record["sampler"][:2] == [0, 12]  # 3 steps x 4 samples of a 22-slot epoch
    fit(_cfg(cache, part, **kw), resume=True)
    a, b = load_checkpoint(full / "ckpt"), load_checkpoint(part / "ckpt")
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert a.record["sampler"] == b.record["sampler"] and len(a.record["sampler"][2]) == 3


def test_fit_cli_takes_repeated_and_comma_separated_datasets(cache, tmp_path) -> None:
    run = tmp_path / "cli"
    res = CliRunner().invoke(train_app, ["fit", "--cache", str(cache), "-d", "nyud", "-d", "pascal,plain", "--mix",
                                         "balanced", "--backbone", "test_vit", "--iters", "1", "--batch-size", "2",
                                         "--eval-samples", "2", "--out", str(run), "--device", "cpu", "-w", "0"])
    assert res.exit_code == 0, res.output
    data = json.loads((run / "config.json").read_text())["train"]["data"]
    assert (data["datasets"], data["mix"]) == (["nyud", "pascal", "plain"], "balanced")
    res = CliRunner().invoke(train_app, ["eval", str(run), "--device", "cpu", "--max-samples", "2",
                                         "--baseline", f"nyud={run}"])
    assert res.exit_code == 0, res.output
    assert "Delta_m per dataset" in res.output and "pascal/semseg/mIoU" in res.output


def test_delta_m_skips_metrics_whose_baseline_is_zero(tmp_path) -> None:
    from sak.student.evaluate.datasets import delta_m_by_dataset

    (tmp_path / "b.json").write_text(json.dumps({"semseg/mIoU": 0.0, "depth/rmse": 2.0, "edge/ods_threshold": 0.5}))
    res = delta_m_by_dataset({"semseg/mIoU": 10.0, "depth/rmse": 1.5, "edge/ods_threshold": 0.3}, ["nyud"],
                             [str(tmp_path / "b.json")])
    assert res == {"nyud": {"delta_m": 25.0, "keys": ["depth/rmse"], "skipped": ["semseg/mIoU"],
                            "baseline": str(tmp_path / "b.json")}}
