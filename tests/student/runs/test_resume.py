"""Issue 14 item 8: a run killed before its first checkpoint was a dead end (``--resume``: "no checkpoint"; the
plain command: "already holds a run"). ``--resume`` now starts it again from step 0 with its recorded config, and
the plain command names both ways on. The real kill -9 is in tests/reliability/test_kill_train.py."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from _caches import extract_store, indexed_cache

from sak.manifests.errors import ConfigError, SakError
from sak.student.runs.checkpoint import CheckpointError, load_checkpoint
from sak.student.runs.config import TrainConfig
from sak.student.runs.resume import refusal, resume_point
from sak.student.runs.rundir import RunDir, init_source
from sak.student.train.trainer import fit


@pytest.fixture(scope="module")
def cache(tmp_path_factory, demo_nyud) -> Path:
    cache = indexed_cache(tmp_path_factory.mktemp("resume"), demo_nyud)
    extract_store(cache)
    return cache


def _cfg(cache: Path, out: Path, **kw) -> TrainConfig:
    base = dict(cache=str(cache), backbone="test_vit", batch_size=4, lr=1e-3, block_size=4, window=2, workers=0,
                log_every=1, out=str(out), iters=4, ckpt_every=0, eval_samples=2)
    return TrainConfig(**{**base, **kw})


class Stop(Exception):
    pass


def _stop_at(at: int):
    def progress(advance, step, **info):
        if step == at:
            raise Stop

    return progress


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_from_step_0(cache, tmp_path, caplog) -> None:
    full = tmp_path / "full"
    fit(_cfg(cache, full))
    part = tmp_path / "part"
    with pytest.raises(Stop):
        fit(_cfg(cache, part), progress=_stop_at(2))
    assert (part / "config.json").exists() and not (part / "ckpt" / "last.safetensors").exists()
    assert _steps(part) == [1, 2]

    with pytest.raises(SakError) as info:  # the plain command names both ways on, by their flags
        fit(_cfg(cache, part))
    assert str(info.value) == (
        f"{part} already holds a training run: pass --resume to continue it (it stopped before its first checkpoint, "
        "so it starts again from step 0 with the settings in its config.json), or --out NEW_DIR to start another run")

    with pytest.raises(ConfigError, match=r"lr: the run used 0.001, this command asks 5.0: drop the option to resume"):
        fit(_cfg(cache, part, lr=5.0), resume=True)  # issue 15: a changed option is refused, never silently dropped
    with caplog.at_level(logging.WARNING, logger="sak"):
        again = fit(_cfg(cache, part, workers=1), resume=True)  # a free option follows the command
    assert f"no checkpoint yet in {part}: starting from step 0 with the run's own config" in caplog.text
    assert again.steps == 4 and _steps(part) == _steps(full) == [1, 2, 3, 4]  # the killed attempt's records dropped
    assert [json.loads(line)["losses"] for line in (part / "metrics.jsonl").read_text().splitlines()] == \
        [json.loads(line)["losses"] for line in (full / "metrics.jsonl").read_text().splitlines()]
    a, _, meta_a = load_checkpoint(full / "ckpt")
    b, _, meta_b = load_checkpoint(part / "ckpt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    assert meta_a["sampler"] == meta_b["sampler"] and meta_b["config"]["optim"]["lr"] == 1e-3
    assert json.loads((part / "eval" / "step_0.json").read_text()) == json.loads((full / "eval" / "step_0.json").read_text())


def test_resume_of_a_folder_without_a_run_starts_it(cache, tmp_path, caplog) -> None:
    """A job script may always pass --resume: a run killed before it wrote config.json (or never started) starts."""
    run = tmp_path / "new"
    with caplog.at_level(logging.WARNING, logger="sak"):
        res = fit(_cfg(cache, run, iters=1), resume=True)
    assert res.steps == 1 and f"--resume: {run} holds no training run yet: starting it from step 0" in caplog.text


def test_refusal_names_the_checkpoint_step(tmp_path) -> None:
    run = RunDir(tmp_path / "run")
    run.write_record({"train": TrainConfig(cache="c").to_dict()})
    run.save_checkpoint(model={"w": torch.zeros(2)}, optimizer=None, record={"step": 3})
    assert refusal(run) == (f"{run.path} already holds a training run: pass --resume to continue it (from its last "
                            "checkpoint, step 3), or --out NEW_DIR to start another run")
    with pytest.raises(SakError, match="already holds a training run: pass --resume"):
        resume_point(TrainConfig(cache="c", out=str(run.path)), resume=False)


def test_an_unreadable_run_record_without_checkpoint_says_what_to_do(tmp_path) -> None:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.config_file.write_text('{"train": {"optim": {"lr": "fast"}}}')
    with pytest.raises(SakError, match=r"config.json is not a readable run record .* start it again with --out NEW_DIR"):
        resume_point(TrainConfig(cache="c", out=str(run.path)), resume=True)


@pytest.mark.parametrize("content", [b"PK\x03\x04 a torch.save zip", b"", b"abc", b"\xff" * 64])
def test_init_with_a_file_that_is_not_safetensors_names_it_and_what_init_takes(tmp_path, content) -> None:
    """Issue 14 item 7: ``--init model.pt`` must say the file is not a safetensors file and what --init takes."""
    bad = tmp_path / "model.pt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        init_source(bad)
    msg = str(info.value)
    assert msg.startswith(f"{bad} is not a safetensors file (Error while deserializing header: ")
    assert msg.endswith("--init takes a run dir (runs/NAME), its ckpt/last.safetensors, or a .safetensors student "
                        "file written by sak-train export (a PyTorch .pt/.pth pickle is never loaded)")


# -- issue 15: --resume refuses an option that changes the run, never drops it silently -----------------------------
def _recorded_run(tmp_path, **kw) -> tuple[RunDir, TrainConfig]:
    """A run dir whose checkpoint records a resolved config (teachers dinov2, nyud, test_vit at 64x80, multitask)."""
    run = RunDir(tmp_path / "run")
    saved = TrainConfig(cache="c", dataset="nyud", teachers=("dinov2",), backbone="test_vit", img_size=(64, 80),
                        stage="multitask", lr=2e-5, iters=6, ckpt_every=3, out=str(run.path), **kw)
    student = {"levels": [2, 5, 8, 11], "backbone": "test_vit"}
    run.write_record({"train": saved.to_dict(), "student": student})
    run.save_checkpoint(model={"w": torch.zeros(2)}, optimizer=None,
                        record={"step": 3, "sampler": [0, 3], "config": saved.to_dict(), "student": student})
    return run, saved


def test_resume_refuses_a_changed_teacher_list_and_names_the_extension(tmp_path) -> None:
    run, _ = _recorded_run(tmp_path)
    asked = TrainConfig(cache="c", teachers=("dinov2", "sam"), out=str(run.path))
    with pytest.raises(ConfigError) as info:
        resume_point(asked, resume=True, given={"teachers": "--teacher", "out": "--out"})
    assert str(info.value) == (
        f"--resume continues {run.path} as recorded, but --teacher: the run distills dinov2, this command asks "
        f"dinov2,sam: drop the option to resume, or start a new run with --out NEW_DIR (or --init {run.path} "
        "--add-teacher sam to extend it)")


def test_resume_names_every_changed_option_with_both_values(tmp_path) -> None:
    run, _ = _recorded_run(tmp_path)
    asked = TrainConfig(cache="c", dataset="pascal", backbone="vit_small_patch16_224", student={"levels": (1, 3)},
                        img_size=(32, 32), stage="distill", init="runs/s1", add_tasks=("parts",), out=str(run.path))
    given = {"dataset": "--dataset", "backbone": "--backbone", "student": "--levels", "img_size": "--img-size",
             "stage": "--stage", "init": "--init", "add_tasks": "--add-task", "out": "--out"}
    with pytest.raises(ConfigError) as info:
        resume_point(asked, resume=True, given=given)
    assert str(info.value) == (
        f"--resume continues {run.path} as recorded, but --dataset: the run trains on nyud, this command asks pascal; "
        "--backbone: the run used test_vit, this command asks vit_small_patch16_224; --img-size: the run used 64x80, "
        "this command asks 32x32; --levels: the run used 2,5,8,11, this command asks 1,3; --init: the run used the "
        "default, this command asks runs/s1; --add-task: the run used none, this command asks parts; --stage: the run "
        "used multitask, this command asks distill: drop those options to resume, or start a new run with --out NEW_DIR")


def test_resume_ignores_what_was_not_typed_and_default_requests(tmp_path) -> None:
    """A recipe or a default is no request: only typed options count; typed 'auto'/None ask for what the run resolved."""
    run, saved = _recorded_run(tmp_path)
    asked = TrainConfig(cache="./cache", lr=1e-3, stage="auto", teachers=(), iters=1000, seed=9, out=str(run.path))
    cfg, ckpt = resume_point(asked, resume=True, given={"out": "--out", "stage": "--stage"})
    assert cfg == saved and ckpt is not None  # untyped free fields (iters) keep the run's values too
    cfg, _ = resume_point(asked, resume=True, given={"out": "--out", "iters": "--iters", "device": "--device"})
    assert cfg == saved.with_fields(iters=1000, device="auto")  # typed free fields follow the command
    same = TrainConfig(cache="c", dataset="nyud", teachers=("dinov2",), img_size=(64, 80), student={"levels": (2, 5, 8, 11)},
                       out=str(run.path))
    given = {"cache": "--cache", "dataset": "--dataset", "teachers": "--teacher", "img_size": "--img-size",
             "student": "--levels", "out": "--out"}
    assert resume_point(same, resume=True, given=given)[0] == saved  # typed, but equal to the record
    # a Python caller: every field that differs from its default counts as given
    with pytest.raises(ConfigError, match=r"as recorded, but seed: the run used 0, this command asks 9: drop the option"):
        resume_point(TrainConfig(cache="c", seed=9, out=str(run.path)), resume=True)


def test_resume_from_the_cli_passes_only_the_typed_options(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from sak.cli import train_fit
    from sak.cli.train import app

    run, saved = _recorded_run(tmp_path, recipe="nyud-vitb")
    seen = []

    def fake_fit(cfg, progress=None, *, resume, given):
        seen.append(resume_point(cfg, resume, given)[0])
        raise SakError("stopped after the resume check")

    monkeypatch.setattr(train_fit, "fit", fake_fit)
    res = CliRunner().invoke(app, ["fit", "--recipe", "nyud-vitb", "--out", str(run.path), "--resume"])
    assert "stopped after the resume check" in res.output  # the recipe's lr, img size, iters ... are not requests
    assert seen == [saved]
    res = CliRunner().invoke(app, ["fit", "--out", str(run.path), "--resume", "-t", "dinov2,sam", "--lr", "1e-3"])
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert re.search(r"--teachers?: the run distills dinov2, this command asks dinov2,sam; --lr: the run used 2e-05, "
                     r"this command asks 0.001: drop those options to resume, or start a new run with --out NEW_DIR "
                     r"\(or --init \S+ --add-teacher sam to extend it\)", text), text  # --teacher after issue 16's rename
