"""Issue 15 item 3 end to end: train, extend with a teacher and with a task; old tasks unchanged, new parts learn.

The source trains on "nodepth" (the demo images without depth labels) from teacher test:tiny; one extension adds
teacher test:tiny2 on the same data, another adds the depth task on "nyud" (the same images with depth)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from _caches import extract_store, indexed_cache

from sak.manifests.errors import ConfigError
from sak.pipeline.data.datasets import index_dataset, write_dataset_index
from sak.student.runs.config import TrainConfig
from sak.student.runs.rundir import RunDir
from sak.student.train.trainer import fit

OLD_TASKS = ("semseg", "normals", "edge")


@pytest.fixture(scope="module")
def cache(tmp_path_factory, demo_nyud) -> Path:
    cache = indexed_cache(tmp_path_factory.mktemp("extend"), demo_nyud)
    table = index_dataset(demo_nyud, name="nodepth", fmt="nyud", workers=1)
    col = table.schema.get_field_index("label_depth")
    table = table.set_column(col, "label_depth", pa.nulls(table.num_rows, table.schema.field(col).type))
    write_dataset_index(cache, "nodepth", table, demo_nyud)
    extract_store(cache, "test:tiny")
    extract_store(cache, "test:tiny2")
    return cache


def _cfg(cache: Path, out: Path, **kw) -> TrainConfig:
    base = dict(cache=str(cache), backbone="test_vit", batch_size=4, lr=1e-3, block_size=4, window=2, workers=0,
                log_every=1, out=str(out), iters=4, ckpt_every=0, eval_samples=4, dataset="nodepth")
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def source(cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("src") / "s2"
    fit(_cfg(cache, out, teachers=("test:tiny",)))
    return out


def _losses(run: Path, key: str) -> list[float]:
    return [json.loads(line)["losses"][key] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _outputs(run: Path, x: torch.Tensor):
    model, _ = RunDir(run).trained_student()
    with torch.no_grad():
        return model.eval()(x)


def _old_equal(a, b, teachers=("tiny",)) -> bool:
    return all(torch.equal(a.tasks[t], b.tasks[t]) for t in OLD_TASKS) and all(
        torch.equal(p, q) for t in teachers for p, q in zip(a.distill[t], b.distill[t], strict=True))


def _old_metrics(run: Path, step: int) -> dict[str, float]:
    return {k: v for k, v in RunDir(run).read_eval(step).items() if k.split("/")[0] in OLD_TASKS}


def test_add_teacher_keeps_old_tasks_exactly_and_the_new_teacher_learns(cache, source, tmp_path) -> None:
    ext = tmp_path / "ext"
    res = fit(_cfg(cache, ext, init=str(source), add_teachers=("test:tiny2",), iters=6))
    x = torch.randn(3, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    src_out, ext_out = _outputs(source, x), _outputs(ext, x)
    assert _old_equal(src_out, ext_out)  # after 6 steps: old tasks and the old teacher's maps, bit for bit
    assert _old_metrics(source, 4) == _old_metrics(ext, 0) == _old_metrics(ext, 6) and _old_metrics(source, 4)
    new = _losses(ext, "distill/tiny2")
    assert new[-1] < new[0]  # the new adapter path learns its teacher
    record = json.loads((ext / "config.json").read_text())
    assert record["train"]["model"]["add_teachers"] == ["test:tiny2"]
    assert record["train"]["data"]["teachers"] == ["test:tiny", "test:tiny2"]
    assert record["student"]["teachers"][1]["name"] == "tiny2"
    assert [t["teachers"] for t in record["student"]["tasks"]] == [["tiny"]] * 3
    extension = record["start"]["extension"]
    assert (extension["source"], extension["added_teachers"], extension["added_tasks"]) == (str(source), ["tiny2"], [])
    assert extension["frozen"][:3] == ["vit", "tsap.tiny", "aligners.tiny"] and "tsap.tiny2" not in extension["frozen"]
    assert res.steps == 6

    # --resume of an extension: the recorded student and its frozen parts, without the source
    again = fit(_cfg(cache, ext, init=str(source), add_teachers=("test:tiny2",), iters=8), resume=True)
    assert again.steps == 8 and _old_equal(src_out, _outputs(ext, x))
    with pytest.raises(ConfigError, match=r"add_tasks: the run used none, this command asks depth"):
        fit(_cfg(cache, ext, init=str(source), add_teachers=("test:tiny2",), add_tasks=("depth",), iters=8),
            resume=True)


def test_add_task_trains_a_new_head_and_keeps_the_old_ones(cache, source, tmp_path) -> None:
    ext = tmp_path / "ext_task"
    fit(_cfg(cache, ext, init=str(source), add_tasks=("depth",), dataset="nyud", iters=6, lr=2e-3))
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    assert _old_equal(_outputs(source, x), _outputs(ext, x))
    assert _old_metrics(source, 4) == _old_metrics(ext, 6)  # the same val images and labels of the old tasks
    depth = _losses(ext, "task/depth")
    assert depth[-1] < depth[0] and "depth/rmse" in RunDir(ext).read_eval(6)
    record = json.loads((ext / "config.json").read_text())
    assert record["start"]["extension"]["added_tasks"] == ["depth"]
    assert "routers.depth" not in record["start"]["extension"]["frozen"]


def test_unfreeze_trains_the_old_parts(cache, source, tmp_path) -> None:
    ext = tmp_path / "ext_unfrozen"
    fit(_cfg(cache, ext, init=str(source), add_teachers=("test:tiny2",), unfreeze=True, iters=2))
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(2))
    assert not _old_equal(_outputs(source, x), _outputs(ext, x))
    assert json.loads((ext / "config.json").read_text())["start"]["extension"]["frozen"] == []


def test_extension_refusals(cache, source, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"--add-task depth: dataset 'nodepth' has no labels for it"):
        fit(_cfg(cache, tmp_path / "a", init=str(source), add_tasks=("depth",)))
    with pytest.raises(ConfigError, match=r"keeps the source's student, but this command asks --img-size 32x32"):
        fit(_cfg(cache, tmp_path / "b", init=str(source), add_teachers=("test:tiny2",), img_size=(32, 32)))
    with pytest.raises(ConfigError, match=r"distills \['tiny'\]; with --add-teacher test:tiny this run's stores"):
        fit(_cfg(cache, tmp_path / "c", init=str(source), add_teachers=("test:tiny",)))
    with pytest.raises(ConfigError, match=r"--add-task trains the new head on labels, but --stage distill"):
        fit(_cfg(cache, tmp_path / "d", init=str(source), add_tasks=("depth",), dataset="nyud", stage="distill"))
    with pytest.raises(ConfigError, match=r"trains on one dataset, got nodepth, nyud: extend on one \(-d NAME\)"):
        fit(_cfg(cache, tmp_path / "e", init=str(source), add_teachers=("test:tiny2",), datasets=("nodepth", "nyud")))
    with pytest.raises(ConfigError, match="pass it with --init RUN"):
        TrainConfig(cache="c", add_teachers=("sam",))
    assert not any((tmp_path / n / "config.json").exists() for n in "abcde")


def test_an_extension_on_another_format_trains_and_scores_only_the_heads_its_labels_fit(demo_nyud, tmp_path) -> None:
    from sak.pipeline.data.demo_pascal import make_demo_pascal
    from sak.student.evaluate.datasets import evaluate_run

    cache = indexed_cache(tmp_path, demo_nyud)
    pascal = make_demo_pascal(tmp_path / "pascal", n=8, size=(64, 80))
    write_dataset_index(cache, "pascal", index_dataset(pascal, name="pascal", fmt="pascal", workers=1), pascal)
    extract_store(cache, "test:tiny")
    source, ext = tmp_path / "src", tmp_path / "ext"
    fit(_cfg(cache, source, dataset="nyud", iters=2))
    fit(_cfg(cache, ext, dataset="pascal", init=str(source), add_tasks=("parts",), iters=2))
    record = json.loads((ext / "config.json").read_text())
    # NYUD's 40-class semseg head never sees PASCAL's 21-class labels (nor depth, which PASCAL lacks); the frozen
    # normals and edge heads are scored on PASCAL's labels, the new parts head learns them
    assert record["datasets"][0]["tasks"] == {"normals": "normals", "edge": "edge", "parts": "parts"}
    res = evaluate_run(ext, device="cpu")
    assert {k.split("/")[0] for k in res["metrics"]} == {"normals", "edge", "parts", "distill"}
    assert res["metrics"] == pytest.approx(json.loads((ext / "eval" / "step_2.json").read_text())["metrics"], rel=1e-5)
