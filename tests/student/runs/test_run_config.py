"""TrainConfig in sections: flat and sectioned construction agree, old flat records load, every check still refuses."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import textwrap
from itertools import pairwise

import pytest

from sak.manifests.errors import ConfigError
from sak.student.runs.config import (
    OWNER,
    SECTIONS,
    DataConfig,
    LoaderConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    field_default,
)

#: config.json "train" of a run written before the sections (commit e689c9d), verbatim.
FLAT_RECORD = json.loads("""{"allow_missing": false, "alpha": 1.0, "amp": "auto", "aug": "auto", "backbone": "test_vit",
 "batch_size": 4, "block_size": 4, "cache": "/tmp/runs_old/cache", "ckpt_every": 0, "dataset": "nyud", "device": "auto",
 "eval_every": 0, "eval_samples": null, "feature_flip": false, "grad_clip": 10.0, "img_size": [64, 80], "init": null,
 "iters": 3, "log_every": 1, "lr": 0.001, "min_lr": 0.0, "online": false, "out": "/tmp/runs_old/run", "prefetch": 4,
 "schedule": "poly", "seed": 0, "stage": "multitask", "standardize": true, "student": null, "teacher_weights": [],
 "teachers": ["tiny-1ca17bab6a2b"], "train_split": "train", "val_split": "val", "warmup": 0, "weight_decay": 1e-06,
 "window": 2, "workers": 0}""")


def test_a_flat_record_of_an_old_run_loads_into_the_sections() -> None:
    cfg = TrainConfig.from_dict(FLAT_RECORD)
    assert cfg.data.teachers == ("tiny-1ca17bab6a2b",) and cfg.data.cache == "/tmp/runs_old/cache"
    assert cfg.model.img_size == (64, 80) and cfg.model.backbone == "test_vit"
    assert (cfg.optim.stage, cfg.optim.lr, cfg.optim.iters, cfg.optim.grad_clip) == ("multitask", 1e-3, 3, 10.0)
    assert (cfg.loader.batch_size, cfg.loader.workers, cfg.eval.val_split, cfg.checkpoint.ckpt_every) == (4, 0, "val", 0)
    assert (cfg.runtime.log_every, cfg.runtime.seed) == (1, 0)
    flat = cfg.to_flat()
    assert {k: flat[k] for k in FLAT_RECORD if k != "student"} == {k: v for k, v in FLAT_RECORD.items() if k != "student"}
    assert flat["student"] == {"gate_noise": "image"}  # its routers drew one noise vector per image
    # fields added since keep what the old run did (LEGACY_DEFAULTS): random init, decay on matrices, ...
    assert {k: flat[k] for k in set(flat) - set(FLAT_RECORD)} == {
        "backbone_weights": "none", "decay_scope": "matrices", "schedule_style": "plain",
        "warmup_lr": 0.0, "sync_bn": False, "recipe": None, "miou": "present", "eval_resize": True,
        "targets": "auto", "targets_budget": None,  # where targets live never changes the batches
        "datasets": [], "mix": "proportional",  # () = the one "dataset"
        "add_teachers": [], "add_tasks": [], "unfreeze": False}  # no extension (issue 15)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg == TrainConfig.from_json(cfg.to_json())
    assert set(cfg.to_dict()) == set(SECTIONS) == {"data", "model", "optim", "loader", "eval", "checkpoint", "runtime"}


def test_flat_names_and_sections_build_the_same_config() -> None:
    flat = TrainConfig(cache="c", backbone="test_vit", iters=5, batch_size=2, img_size=(32, 48), out="r")
    sectioned = TrainConfig(data=DataConfig(cache="c"), model=ModelConfig(backbone="test_vit", img_size=(32, 48)),
                            optim=OptimConfig(iters=5), loader=LoaderConfig(batch_size=2), checkpoint={"out": "r"})
    assert flat == sectioned
    moved = dataclasses.replace(flat, iters=7, workers=0)  # a flat name changes only its own field
    assert (moved.optim.iters, moved.loader.workers, moved.loader.batch_size, moved.model) == (7, 0, 2, flat.model)
    assert moved.get("iters") == 7 and TrainConfig(cache="x", img_size="448x576").model.img_size == (448, 576)


def test_with_fields_is_dataclasses_replace() -> None:
    cfg = TrainConfig(cache="c", backbone="test_vit", iters=5, batch_size=2, out="r")
    for changes in ({"iters": 7, "workers": 0}, {"optim": OptimConfig(iters=9), "lr": 1e-3},
                    {"dataset": "nyud", "stage": "distill", "img_size": (32, 48), "teachers": ("a", "b")}):
        assert cfg.with_fields(**changes) == dataclasses.replace(cfg, **changes) != cfg
    assert cfg.with_fields(optim=OptimConfig(iters=9), lr=1e-3).optim == OptimConfig(iters=9, lr=1e-3)
    assert cfg == TrainConfig(cache="c", backbone="test_vit", iters=5, batch_size=2, out="r")  # the original stays
    with pytest.raises(ConfigError, match="TrainConfig has no field"):
        cfg.with_fields(itrs=3)


def test_every_field_has_one_section_and_a_docstring() -> None:
    assert len(OWNER) == 52  # 37 + issue 12: backbone_weights, decay_scope, schedule_style, warmup_lr, sync_bn, recipe, miou, eval_resize; issue 13: targets, targets_budget; issue 15: datasets, mix, add_teachers, add_tasks, unfreeze
    for section in SECTIONS.values():
        body = ast.parse(textwrap.dedent(inspect.getsource(section))).body[0].body
        documented = {stmt.target.id for stmt, after in pairwise(body) if isinstance(stmt, ast.AnnAssign)
                      and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)}
        assert documented == {f.name for f in dataclasses.fields(section)}, section.__name__
    assert field_default("iters") == 1000 and field_default("teachers") == () and field_default("device") == "auto"


@pytest.mark.parametrize("kw, match", [
    (dict(stage="stage3"), "stage must be one of"),
    (dict(aug="flip"), "aug must be one of"),
    (dict(amp="fp8"), "amp must be one of"),
    (dict(schedule="step"), "schedule must be one of"),
    (dict(iters=0), "iters must be >= 1"),
    (dict(window=0), "window must be >= 1"),
    (dict(log_every=0), "log_every must be >= 1"),
    (dict(lr=0.0), "lr must be > 0"),
    (dict(img_size=(0, 4)), "img_size must be"),
    (dict(workers=-1), "workers must be >= 0"),
    (dict(alpha=-1.0), "alpha must be >= 0"),
    (dict(teacher_weights=("dinov2",)), "teacher_weights entries look like"),
    (dict(epochs=3), r"has no field\(s\) \['epochs'\]"),
])
def test_invalid_values_are_refused_with_the_fix(kw, match) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainConfig(cache="c", **kw)


def test_records_without_a_cache_or_with_unknown_fields_are_refused() -> None:
    with pytest.raises(ConfigError, match="needs the cache root"):
        TrainConfig(iters=3)
    with pytest.raises(ConfigError, match="newer version of sak"):
        TrainConfig.from_dict({**FLAT_RECORD, "epochs": 2})
    with pytest.raises(ConfigError, match="OptimConfig has no field"):
        TrainConfig.from_dict({"data": {"cache": "c"}, "optim": {"epochs": 2}})


def test_resolved_fills_the_stage_defaults() -> None:
    cfg = TrainConfig(cache="c", stage="distill", iters=200).resolved()
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.schedule, cfg.optim.warmup, cfg.optim.grad_clip) == (
        1e-3, 0.01, "cosine", 13, 0.0)  # warmup: official 2 of 30 epochs = round(200 * 2 / 30)
    with pytest.raises(ConfigError, match="choose the stage"):
        TrainConfig(cache="c").resolved()


def test_targets_are_raw_by_default_and_standardize_is_recorded() -> None:
    """issue 12 (3): official distills raw block outputs (losses.py:201-248, no normalization anywhere)."""
    cfg = TrainConfig(cache="c")
    assert cfg.data.standardize is False and cfg.to_dict()["data"]["standardize"] is False
    on = TrainConfig(cache="c", standardize=True)
    assert TrainConfig.from_dict(on.to_dict()).data.standardize is True
    assert TrainConfig.from_dict(cfg.to_dict()).data.standardize is False  # a new record says False: stays False
    old = {k: v for k, v in cfg.to_dict()["data"].items() if k != "standardize"}
    assert TrainConfig.from_dict({**cfg.to_dict(), "data": old}).data.standardize is True  # old run: standardized
