"""fit(): learns on the demo data, writes the run dir, resumes exactly, refuses what it cannot do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _caches import extract_store, indexed_cache

from sak.manifests.errors import ConfigError, SakError, SpecMismatch
from sak.student.evaluate.evaluator import evaluate
from sak.student.runs.checkpoint import CheckpointError, load_checkpoint
from sak.student.runs.config import OptimConfig, TrainConfig
from sak.student.runs.rundir import RunDir
from sak.student.train.parts import Checkpointer, build_optimizer
from sak.student.train.setup import _train_fit, prepare
from sak.student.train.trainer import fit

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cache(tmp_path_factory, demo_nyud) -> Path:
    cache = indexed_cache(tmp_path_factory.mktemp("trainer"), demo_nyud)
    extract_store(cache)
    return cache


def _cfg(cache: Path, out: Path, **kw) -> TrainConfig:
    base = dict(cache=str(cache), backbone="test_vit", batch_size=4, lr=1e-3, block_size=4, window=2, workers=2,
                log_every=1, out=str(out))
    return TrainConfig(**{**base, **kw})


def _losses(run: Path) -> list[dict[str, float]]:
    return [json.loads(line)["losses"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "learn"
    return fit(_cfg(cache, out, iters=24, log_every=4, ckpt_every=0))


def test_short_fit_beats_the_untrained_student(trained) -> None:
    before, after = trained.baseline, trained.metrics
    assert trained.steps == 24 and trained.coverage == "covered 9/9 samples of nyud/train"
    assert after["semseg/pixAcc"] > before["semseg/pixAcc"] + 20.0
    assert after["semseg/mIoU"] > before["semseg/mIoU"] + 2.0
    assert after["normals/mean_angle"] < before["normals/mean_angle"] - 20.0
    assert after["edge/odsF"] > before["edge/odsF"] + 5.0
    losses = _losses(trained.run_dir)
    assert losses[-1]["total"] < 0.8 * losses[0]["total"]


def test_run_dir_is_a_complete_record(trained) -> None:
    run = trained.run_dir
    record = json.loads((run / "config.json").read_text())
    cfg = TrainConfig.from_dict(record["train"])
    assert (cfg.optim.stage, cfg.data.dataset, cfg.model.img_size, cfg.optim.schedule, cfg.optim.grad_clip) == (
        "multitask", "nyud", (64, 80), "poly", 10.0)
    assert record["stores"][0]["key"] == "tiny" and record["student"]["teachers"][0]["width"] == 32
    assert record["targets"]["mode"] == "ram" and "MemAvailable" in record["targets"]["reason"]  # auto, on cpu
    assert sorted(p.name for p in (run / "eval").iterdir()) == ["step_0.json", "step_24.json"]
    assert json.loads((run / "eval" / "step_24.json").read_text())["metrics"] == trained.metrics
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 4, 8, 12, 16, 20, 24]
    assert set(_losses(run)[0]) == {"total", "distill", "distill/tiny", "task", "task/semseg", "task/depth",
                                     "task/normals", "task/edge"}
    for name in ("loss.png", "predictions.png"):
        assert (run / "plots" / name).read_bytes()[:8] == PNG
    weights, optim, meta = load_checkpoint(run / "ckpt")
    assert meta["step"] == 24 and optim is not None and "vit.patch_embed.proj.weight" in weights
    # evaluate() rebuilds the same student from the run dir; step-0 recomputed from the seed matches the record
    res = evaluate(run, step0=True)
    assert res["metrics"] == pytest.approx(trained.metrics, rel=1e-5)
    assert res["baseline"] == pytest.approx(trained.baseline, rel=1e-5)


def test_a_run_dir_with_the_flat_config_of_older_versions_still_evaluates(trained, tmp_path) -> None:
    old = tmp_path / "old"
    shutil.copytree(trained.run_dir, old)
    record = json.loads((old / "config.json").read_text())
    record["train"] = TrainConfig.from_dict(record["train"]).to_flat()  # config.json as written before the sections
    assert "iters" in record["train"] and "optim" not in record["train"]
    (old / "config.json").write_text(json.dumps(record))
    res = evaluate(old)
    assert res["step"] == 24 and res["metrics"] == pytest.approx(trained.metrics, rel=1e-5)
    assert res["baseline"] == trained.baseline  # read back from eval/step_0.json


def test_init_starts_from_another_runs_last_weights(trained, cache, tmp_path) -> None:
    want, _, _ = load_checkpoint(trained.run_dir / "ckpt")
    for source in (trained.run_dir, trained.run_dir / "ckpt" / "last.safetensors"):
        setup = prepare(_cfg(cache, tmp_path / "s2", iters=1, init=str(source)), device=torch.device("cpu"))
        got = setup.model.state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(SakError, match=r"--init .*nothing: no checkpoint at .*: pass a run dir or a .safetensors file"):
        prepare(_cfg(cache, tmp_path / "s3", iters=1, init=str(tmp_path / "nothing")), device=torch.device("cpu"))


def test_multitask_total_is_tasks_plus_alpha_distill(trained) -> None:
    for parts in _losses(trained.run_dir):
        assert parts["total"] == pytest.approx(parts["task"] + 1.0 * parts["distill"], rel=1e-6)
        tasks = sum(v for k, v in parts.items() if k.startswith("task/"))
        assert parts["task"] == pytest.approx(tasks, rel=1e-6)


def test_resume_continues_exactly(cache, tmp_path) -> None:
    full = fit(_cfg(cache, tmp_path / "full", iters=6, ckpt_every=3, eval_every=0))

    class Stop(Exception):
        pass

    def stop_at_4(advance, step, **info):
        if step == 4:
            raise Stop

    with pytest.raises(Stop):
        fit(_cfg(cache, tmp_path / "part", iters=6, ckpt_every=3), progress=stop_at_4)
    assert load_checkpoint(tmp_path / "part" / "ckpt")[2]["step"] == 3
    with pytest.raises(SakError, match="already holds a training run: pass --resume"):
        fit(_cfg(cache, tmp_path / "part", iters=6, ckpt_every=3))
    fit(_cfg(cache, tmp_path / "part", iters=6, ckpt_every=3), resume=True)
    assert _losses(tmp_path / "part") == _losses(tmp_path / "full")  # same batches, same losses, bit for bit
    a, _, ma = load_checkpoint(tmp_path / "full" / "ckpt")
    b, _, mb = load_checkpoint(tmp_path / "part" / "ckpt")
    assert ma["sampler"] == mb["sampler"] and all(torch.equal(a[k], b[k]) for k in a)
    assert full.steps == 6


def test_distill_stage_trains_only_the_distillation(cache, tmp_path) -> None:
    res = fit(_cfg(cache, tmp_path / "d", iters=2, stage="distill", lr=None, workers=0))
    cfg = TrainConfig.from_dict(json.loads((tmp_path / "d" / "config.json").read_text())["train"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.schedule, cfg.optim.grad_clip) == (1e-3, 0.01, "cosine", 0.0)
    assert set(res.losses) == {"total", "distill", "distill/tiny"}
    assert res.losses["total"] == res.losses["distill"]


def test_student_levels_must_match_store_layers(cache, tmp_path) -> None:
    with pytest.raises(SpecMismatch, match=r"holds 4 layer maps but the student distills at 3 levels"):
        fit(_cfg(cache, tmp_path / "x", iters=1, student={"levels": (1, 3, 5)}))
    assert not (tmp_path / "x" / "config.json").exists()


def test_resume_without_out_is_refused(cache) -> None:
    with pytest.raises(ConfigError, match="--resume needs --out"):
        fit(TrainConfig(cache=str(cache), iters=1), resume=True)


def test_optimizer_decays_every_parameter_as_official() -> None:
    """Official: AdamW(model.parameters(), lr, weight_decay) (train_s1.py:153-157, train_utils.py:20-38)."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    (group,) = build_optimizer(model, OptimConfig(stage="distill").resolved()).param_groups
    assert (group["lr"], group["weight_decay"], group["betas"], group["eps"]) == (1e-3, 0.01, (0.9, 0.999), 1e-8)
    assert len(group["params"]) == 4  # the bias and the norm's weight and bias decay too
    # one AdamW step from zero grads: only the decay moves a parameter, p -> p * (1 - lr * wd)
    bias = model[1].bias.detach().clone() + 1.0
    with torch.no_grad():
        model[1].bias.copy_(bias)
    opt = build_optimizer(model, OptimConfig(stage="distill").resolved())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(model[1].bias.detach(), bias * (1 - 1e-3 * 0.01))


def test_optimizer_decays_matrices_only_and_needs_the_resolved_settings() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    with pytest.raises(ConfigError, match="resolved optimizer settings"):
        build_optimizer(model, OptimConfig(stage="distill"))
    opt = build_optimizer(model, OptimConfig(stage="distill", decay_scope="matrices").resolved())
    decay, no_decay = opt.param_groups
    assert (decay["lr"], decay["weight_decay"], no_decay["weight_decay"]) == (1e-3, 0.01, 0.0)
    assert [p is model[0].weight for p in decay["params"]] == [True]
    assert len(no_decay["params"]) == 3  # linear bias, norm weight and bias


def test_a_checkpoint_without_optimizer_state_cannot_be_resumed(tmp_path) -> None:
    run = RunDir(tmp_path / "run")
    model = torch.nn.Linear(3, 2)
    run.save_checkpoint(model=model.state_dict(), optimizer=None, record={"step": 3, "sampler": [0, 2]})
    opt = build_optimizer(model, OptimConfig(stage="distill", decay_scope="matrices").resolved())
    checkpointer = Checkpointer(run, TrainConfig(cache="c"), {}, main=True)
    with pytest.raises(CheckpointError, match=r"holds no optimizer state, so the run cannot resume from it; .*--init"):
        checkpointer.restore(run.load_checkpoint(), model, opt)


def test_heads_get_syncbatchnorm_under_ddp_on_cuda_and_eval_runs_in_float32(caplog) -> None:
    """Official train_s2.py:243 converts the BatchNorm to SyncBatchNorm; official test.py evaluates in fp32."""
    from contextlib import nullcontext

    from sak.student.runs.runtime import autocast
    from sak.student.train.trainer import sync_batchnorm

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    assert sync_batchnorm(model, torch.device("cpu")) is model and "SyncBatchNorm needs cuda" in caplog.text
    synced = sync_batchnorm(model, torch.device("cuda"))  # conversion only; nothing runs on a GPU here
    assert isinstance(synced[1], torch.nn.SyncBatchNorm) and synced[1].weight is model[1].weight
    assert isinstance(autocast(torch.device("cuda")), nullcontext)  # evaluation: float32 unless bf16 is asked for


def test_resume_does_not_load_the_init_source_again(cache, tmp_path) -> None:
    src = tmp_path / "src"
    fit(_cfg(cache, src, iters=2, ckpt_every=0, val_split="none"))
    run = tmp_path / "run"
    first = fit(_cfg(cache, run, iters=2, ckpt_every=0, val_split="none", init=str(src)))
    shutil.rmtree(src)  # the init run moved away (or the hub is unreachable): the checkpoint has every weight
    again = fit(_cfg(cache, run, iters=2, ckpt_every=0, val_split="none", init=str(src)), resume=True)
    assert again.steps == first.steps == 2


def test_training_fits_unaugmented_images_as_their_teachers_saw_them() -> None:
    def store(protocol: str, aug: str):
        return SimpleNamespace(spec=SimpleNamespace(input_protocol=protocol, aug=aug))

    assert _train_fit([store("student", "none")]) == "pad"  # extraction centre-padded them (official val transform)
    assert _train_fit([store("student", "sak")]) == "resize"  # stored views are replayed instead
    assert _train_fit([store("native", "none")]) == "resize"  # as sak always did for native stores
    assert _train_fit([]) == "resize"


def test_eval_uses_the_runs_own_miou_convention(cache, tmp_path) -> None:
    run = tmp_path / "present"
    result = fit(_cfg(cache, run, iters=2, ckpt_every=0, miou="present"))
    res = evaluate(run)
    assert res["metrics"] == pytest.approx(result.metrics, rel=1e-5)  # scored as the run scored itself
    assert res["baseline"] == pytest.approx(result.baseline, rel=1e-5)
    official = evaluate(run, miou="official")
    assert "baseline" not in official  # a step-0 record of another convention is not shown beside it
    assert official["metrics"]["semseg/mIoU"] <= res["metrics"]["semseg/mIoU"]
