"""Issue 14 item 8: a run killed before its first checkpoint was a dead end (``--resume``: "no checkpoint"; the
plain command: "already holds a run"). ``--resume`` now starts it again from step 0 with its recorded config, and
the plain command names both ways on. The real kill -9 is in tests/reliability/test_kill_train.py."""

from __future__ import annotations

import json
import logging
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
