"""Issue 16 item 4: Ctrl-C (SIGINT) or a scheduler's SIGTERM during ``sak-train fit`` finishes the step, writes a
checkpoint of it (even with --ckpt-every larger than --iters), prints the exact resume command and exits 130; that
command ends the run bit-identical to an uninterrupted one. (kill -9: tests/reliability/test_kill_train.py.)"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _caches import extract_store, indexed_cache
from safetensors.torch import load_file

from sak.student.runs.config import TrainConfig
from sak.student.train.trainer import TrainingInterrupted, fit

ITERS = 12


@pytest.fixture(scope="module")
def cache(tmp_path_factory, demo_nyud) -> Path:
    cache = indexed_cache(tmp_path_factory.mktemp("interrupt"), demo_nyud)
    extract_store(cache)
    return cache


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "400",
           "XDG_STATE_HOME": str(tmp_path / "state")}
    env.pop("RANK", None)
    return env


def _sak_train(*args: str) -> list[str]:
    return [sys.executable, "-m", "sak.cli.train", *args]


def _logged_steps(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (FileNotFoundError, ValueError, IndexError):
        return 0


def _cfg(cache: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(**{**dict(cache=str(cache), backbone="test_vit", iters=ITERS, batch_size=4, lr=1e-3, out=str(out),
                                 workers=0, device="cpu", log_every=1, ckpt_every=1000, eval_samples=2), **kw})


@pytest.fixture(scope="module")
def reference(cache, tmp_path_factory) -> Path:
    """The uninterrupted run (in-process: the same code on one torch thread, bit for bit)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    fit(_cfg(cache, out))
    return out


def _assert_same_run(got: Path, want: Path) -> None:
    a, b = load_file(str(got / "ckpt" / "last.safetensors")), load_file(str(want / "ckpt" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)  # bit for bit
    assert [json.loads(x)["losses"] for x in (got / "metrics.jsonl").read_text().splitlines()] == \
        [json.loads(x)["losses"] for x in (want / "metrics.jsonl").read_text().splitlines()]


def test_sigint_checkpoints_the_last_step_and_the_printed_command_resumes_bit_for_bit(cache, reference, tmp_path) -> None:
    run = tmp_path / "run"
    cmd = _sak_train("fit", "--cache", str(cache), "--iters", str(ITERS), "--ckpt-every", "1000", "--out", str(run),
                     "--backbone", "test_vit", "--batch-size", "4", "--lr", "1e-3", "--threads", "0", "--device", "cpu",
                     "--log-every", "1", "--eval-limit", "2")
    proc = subprocess.Popen(cmd, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while proc.poll() is None and _logged_steps(run) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before the signal: raise ITERS"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 130, stdout + stderr
    step = json.loads((run / "ckpt" / "last.json").read_text())["step"]
    assert 2 <= step < ITERS and step == _logged_steps(run)  # the last finished step, none lost
    assert f"interrupted: SIGINT after step {step}; its checkpoint is in {run}/ckpt; continue with:" in stderr
    resume = stdout.strip().splitlines()[-1].strip()
    assert resume == f"sak-train fit --out {run} --resume --iters {ITERS} --device cpu --threads 0 --eval-limit 2 " \
                     "--log-every 1 --ckpt-every 1000"
    assert f"SIGINT: checkpoint of step {step} written" in (run / "run.log").read_text()

    args = shlex.split(resume)
    assert args[0] == "sak-train"
    done = subprocess.run(_sak_train(*args[1:]), env=_env(tmp_path), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    _assert_same_run(run, reference)
    log = (run / "run.log").read_text()
    assert log.count("covered 9/9 samples of nyud/train") == 2 and f"resumed {run} at step {step}" in log  # appended
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == ITERS and summary["seconds"] > 0


def _signal_at(step: int, *signals: signal.Signals):
    def progress(advance, **info):
        if info["step"] == step:
            for sig in signals:
                os.kill(os.getpid(), sig)
                time.sleep(0.05)  # let Python run the handler

    return progress


def test_sigterm_in_python_raises_training_interrupted_and_resume_continues(cache, reference, tmp_path) -> None:
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as info:
        fit(_cfg(cache, run), progress=_signal_at(3, signal.SIGTERM))
    assert (info.value.step, info.value.signal_name, info.value.run_dir) == (3, "SIGTERM", run)
    assert json.loads((run / "ckpt" / "last.json").read_text())["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back
    result = fit(_cfg(cache, run), resume=True)
    _assert_same_run(run, reference)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["seconds"] == result.seconds > 0  # it was written as 0.0 before issue 16


def test_a_second_signal_aborts_at_once_without_a_checkpoint(cache, tmp_path) -> None:
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt) as info:
        fit(_cfg(cache, run), progress=_signal_at(2, signal.SIGINT, signal.SIGINT))
    assert not isinstance(info.value, TrainingInterrupted)
    assert not (run / "ckpt" / "last.safetensors").exists() and (run / "config.json").exists()
