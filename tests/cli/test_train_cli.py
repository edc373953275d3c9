"""sak-train end to end on the demo cache: extract -> fit -> eval -> export, the default command, refusals."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from sak.cli import train_fit
from sak.cli.cache import app as cache_app
from sak.cli.train import app as train_app
from sak.student.runs.config import OWNER, TrainConfig, field_default

runner = CliRunner()


def _ok(result) -> str:
    assert result.exit_code == 0, result.output + (str(result.exception) if result.exception else "")
    return result.output


def test_fit_eval_export_end_to_end(demo_cache, tmp_path) -> None:
    cache, _ = demo_cache
    _ok(runner.invoke(cache_app, ["extract", "-t", "test:tiny", "--random-init", "--cache", str(cache), "--device", "cpu"]))
    run = tmp_path / "runs" / "a"
    out = _ok(runner.invoke(train_app, [
        "fit", "--cache", str(cache), "--backbone", "test_vit", "--iters", "4", "--batch-size", "4", "--lr", "1e-3",
        "--out", str(run), "--workers", "0", "--device", "cpu", "--log-every", "2",
    ]))
    assert "val metrics after 4 steps" in out and "untrained (step 0)" in out
    assert "covered 9/9 samples of nyud/train" in out and "samples/s" in out
    assert (run / "ckpt" / "last.safetensors").exists() and (run / "plots" / "loss.png").exists()

    out = _ok(runner.invoke(train_app, ["eval", str(run), "--device", "cpu"]))
    assert "val split, step 4" in out and "semseg/mIoU" in out and "untrained (step 0)" in out
    trained = json.loads((run / "eval" / "step_4.json").read_text())["metrics"]
    assert f"{trained['semseg/pixAcc']:.4g}" in out

    sub = tmp_path / "semseg.safetensors"
    out = _ok(runner.invoke(train_app, ["export", str(run), "--task", "semseg", "--out", str(sub), "--device", "cpu"]))
    assert "routing weights of semseg" in out and "full student vs sub-model" in out
    from sak.student.model.io import load_student

    model = load_student(sub)
    assert model.cfg.task_names == ("semseg",) and model.cfg.aligner == "none"

    again = _ok(runner.invoke(train_app, ["fit", "--cache", str(cache), "--backbone", "test_vit", "--iters", "6",
                                          "--out", str(run), "--resume", "--workers", "0", "--device", "cpu"]))
    assert "val metrics after 6 steps" in again


def test_plain_sak_train_uses_the_defaults(demo_cache, tmp_path) -> None:
    cache, _ = demo_cache
    _ok(runner.invoke(cache_app, ["extract", "-t", "test:tiny", "--random-init", "--cache", str(cache), "--device", "cpu"]))
    run = tmp_path / "default"
    res = runner.invoke(train_app, ["--cache", str(cache), "--iters", "1", "--out", str(run), "--device", "cpu"])
    _ok(res)
    record = json.loads((run / "config.json").read_text())
    train = record["train"]
    assert train["optim"]["stage"] == "multitask" and train["data"]["dataset"] == "nyud"
    assert train["data"]["teachers"] == [record["stores"][0]["name"]]
    assert train["model"]["backbone"] == "vit_small_patch16_224" and train["model"]["img_size"] == [64, 80]


def test_refusals_exit_2_with_the_fix(demo_cache, tmp_path) -> None:
    cache, _ = demo_cache
    res = runner.invoke(train_app, ["fit", "--cache", str(cache), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "no feature stores in" in res.output and "sak-cache extract" in res.output
    _ok(runner.invoke(cache_app, ["extract", "-t", "test:tiny", "--random-init", "--cache", str(cache), "--device", "cpu"]))
    res = runner.invoke(train_app, ["fit", "--cache", str(cache), "--teachers", "dinov2", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "no feature store for teacher 'dinov2'" in res.output
    res = runner.invoke(train_app, ["eval", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "is not a training run" in res.output


#: fit options that are not a TrainConfig field of the same name, and what they set
NOT_A_FIELD = {"out_dir": "out", "levels": "student", "resume": None, "threads": "workers", "eval_limit": "eval_samples",
               "no_sync_bn": None}  # --no-sync-bn is sync_bn negated (checked below)


def _fit_options() -> dict[str, object]:
    command = typer.main.get_command(train_app).commands["fit"]
    return {p.name: p.default for p in command.params if not p.hidden}  # hidden: old spellings (test_naming.py)


def test_every_fit_option_is_a_config_field_with_the_same_default() -> None:
    options = _fit_options()
    assert len(options) >= 30
    assert options["no_sync_bn"] is (not field_default("sync_bn"))
    for name, default in options.items():
        field = NOT_A_FIELD.get(name, name)
        if field is None or name in ("cache", "teacher", "teacher_weights", "img_size", "levels"):
            continue  # --resume is no field; --cache is required by the config; the rest are parsed from text
        assert field in OWNER, f"--{name.replace('_', '-')} is not a TrainConfig field"
        assert default == field_default(field), f"--{name.replace('_', '-')}: CLI {default!r} != config {field_default(field)!r}"


def test_fit_without_options_builds_the_default_config(monkeypatch) -> None:
    seen = []
    monkeypatch.setattr(train_fit, "_run_fit", lambda cfg, resume: seen.append((cfg, resume)))
    _ok(runner.invoke(train_app, ["fit"]))
    _ok(runner.invoke(train_app, ["--cache", "somewhere"]))
    assert seen == [(TrainConfig(cache="./cache"), False), (TrainConfig(cache="somewhere"), False)]
    _ok(runner.invoke(train_app, ["fit", "--img-size", "448x576", "--levels", "1,3", "--teachers", "a,b", "--out", "r"]))
    cfg = seen[-1][0]
    assert (cfg.model.img_size, cfg.model.student, cfg.data.teachers, cfg.checkpoint.out) == (
        (448, 576), {"levels": (1, 3)}, ("a", "b"), "r")
    res = runner.invoke(train_app, ["fit", "--img-size", "448y576"])
    assert res.exit_code == 2 and "is not HxW or a single side" in res.output


def test_recipe_values_with_explicit_flags_on_top(monkeypatch) -> None:
    seen = []
    monkeypatch.setattr(train_fit, "_run_fit", lambda cfg, resume: seen.append(cfg))
    _ok(runner.invoke(train_app, ["fit", "--recipe", "nyud-vitb", "--cache", "c", "--iters", "10", "--levels", "1,3,5,7",
                                  "--out", "r"]))
    cfg = seen[-1]
    from sak.student.runs.recipes import get_recipe

    want = get_recipe("nyud-vitb").config(cache="c", iters=10, out="r",
                                          student={**get_recipe("nyud-vitb").fields["student"], "levels": (1, 3, 5, 7)})
    assert cfg == want and cfg.runtime.recipe == "nyud-vitb" and cfg.optim.lr == 2e-5 and cfg.model.img_size == (448, 576)
    _ok(runner.invoke(train_app, ["fit", "--cache", "c", "--standardize", "--backbone-weights", "w.safetensors"]))
    assert (seen[-1].data.standardize, seen[-1].model.backbone_weights, seen[-1].runtime.recipe) == (
        True, "w.safetensors", None)
    assert seen[-1].runtime.sync_bn is True  # official SyncBatchNorm unless --no-sync-bn
    _ok(runner.invoke(train_app, ["fit", "--cache", "c", "--no-sync-bn"]))
    assert seen[-1].runtime.sync_bn is False
    _ok(runner.invoke(train_app, ["fit", "--recipe", "s1-vitb", "--cache", "c"]))
    assert seen[-1].eval.val_split is None  # stage 1 trains on ImageNet train only
    _ok(runner.invoke(train_app, ["fit", "--recipe", "s1-vitb", "--cache", "c", "--val-split", "val"]))
    assert seen[-1].eval.val_split == "val"  # a held-out split: the val cosines show
    _ok(runner.invoke(train_app, ["fit", "--cache", "c", "--val-split", "none"]))
    assert seen[-1].eval.val_split is None
    res = runner.invoke(train_app, ["fit", "--recipe", "nope"])
    assert res.exit_code == 2 and "no recipe 'nope'" in res.output


def test_recipes_lists_every_value() -> None:
    out = _ok(runner.invoke(train_app, ["recipes", "--json"]))
    data = json.loads(out)
    assert sorted(data) == ["nyud-vitb", "nyud-vitl", "pascal-vitb", "pascal-vitl", "s1-vitb", "s1-vitb-lt",
                            "s1-vitl", "s1-vits"]
    assert data["nyud-vitl"]["fields"]["teachers"] == ["dinov2-l", "clip-l", "sam-l"] and data["s1-vitb"]["gpus"] == 8
    table = _ok(runner.invoke(train_app, ["recipes"], terminal_width=400))
    assert "nyud-vitl: stage 2: NYUD-v2" in table and "warmup_lr" in table and "1.25e-07" in table


def test_random_init_backbone_is_flagged_on_the_cli(demo_cache, tmp_path) -> None:
    cache, _ = demo_cache
    _ok(runner.invoke(cache_app, ["extract", "-t", "test:tiny", "--random-init", "--cache", str(cache), "--device", "cpu"]))
    run = tmp_path / "r"
    out = _ok(runner.invoke(train_app, ["fit", "--cache", str(cache), "--backbone", "test_vit", "--iters", "1",
                                        "--out", str(run), "--workers", "0", "--device", "cpu"]))
    assert "WARNING" in out and out.count("starts from RANDOM weights") == 1  # said once (it was printed twice)
    assert json.loads((run / "config.json").read_text())["start"] == {"backbone_weights": "random-init"}


def test_init_with_a_non_safetensors_file_exits_2_naming_it(demo_cache, tmp_path) -> None:
    """Issue 14 item 7: ``--init model.pt`` (a torch pickle) is refused with what --init takes, never unpickled."""
    cache, _ = demo_cache
    _ok(runner.invoke(cache_app, ["extract", "-t", "test:tiny", "--random-init", "--cache", str(cache), "--device", "cpu"]))
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"PK\x03\x04" + bytes(60))  # a torch.save zip starts so
    res = runner.invoke(train_app, ["fit", "--cache", str(cache), "--backbone", "test_vit", "--iters", "1", "--out",
                                    str(tmp_path / "r"), "--device", "cpu", "--init", str(bad)])
    text = " ".join(res.output.split())
    assert res.exit_code == 2, text
    assert f"error: --init {bad}: {bad} is not a safetensors file (" in text and "Traceback" not in text
    assert "--init takes a run dir (runs/NAME), its ckpt/last.safetensors, or a .safetensors student file written by " \
           "sak-train export" in text


def test_plain_fit_on_a_run_without_checkpoint_names_both_ways_on(tmp_path) -> None:
    """Issue 14 item 8: the refusal names --resume (restart from step 0) and --out, exit 2."""
    from sak.student.runs.rundir import RunDir

    run = RunDir(tmp_path / "run")
    run.write_record({"train": TrainConfig(cache=str(tmp_path / "cache"), out=str(run.path)).to_dict()})
    res = runner.invoke(train_app, ["fit", "--cache", str(tmp_path / "cache"), "--out", str(run.path), "--device", "cpu"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2, text
    assert f"error: {run.path} already holds a training run: pass --resume to continue it (it stopped before its first " \
           "checkpoint, so it starts again from step 0 with the settings in its config.json), or --out NEW_DIR to " \
           "start another run" in text
