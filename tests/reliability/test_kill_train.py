"""kill -9 ``sak-train fit`` at seeded random points, before and after its first checkpoint, then ``--resume``:
the run ends bit-identical to an uninterrupted one (every tensor of the final checkpoint, every logged loss).

Issue 14 item 8: a run killed before its first checkpoint used to be a dead end (``--resume``: "no
checkpoint"; the plain command: "already holds a run"); ``--resume`` now starts it again from step 0."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from _harness import cli, kill_at_event, ok, run
from safetensors.torch import load_file

from sak.pipeline.extract.job import ExtractConfig, extract
from sak.student.runs.config import TrainConfig
from sak.student.train.trainer import fit

pytestmark = pytest.mark.reliability

ITERS, CKPT_EVERY = 6, 3


@pytest.fixture()
def cache(demo_cache) -> Path:
    cache, _ = demo_cache
    extract(ExtractConfig(cache=str(cache), teachers=("test:tiny",), random_init=True, device="cpu", batch_size=16,
                          segment_size=8, io_threads=1))
    return cache


def _fit(cache: Path, out: Path, *extra: str) -> list[str]:
    return cli("sak-train", "fit", "--cache", str(cache), "--backbone", "test_vit", "--iters", str(ITERS),
               "--batch-size", "4", "--lr", "1e-3", "--out", str(out), "--workers", "0", "--device", "cpu",
               "--log-every", "1", "--ckpt-every", str(CKPT_EVERY), "--eval-samples", "2", *extra)


def _step_logged(run_dir: Path, since: float):
    """The last step in metrics.jsonl once this process wrote it (a resume truncates and rewrites the file);
    -1 before that, 0 once the run's config.json exists."""
    def step() -> int:
        try:
            if (run_dir / "config.json").stat().st_mtime < since:
                return -1
            if (run_dir / "metrics.jsonl").stat().st_mtime < since:
                return 0
            lines = (run_dir / "metrics.jsonl").read_text().splitlines()
            return json.loads(lines[-1])["step"] if lines else 0
        except FileNotFoundError:  # not there yet
            return 0 if (run_dir / "config.json").exists() else -1
        except (ValueError, IndexError):  # a line half written
            return 0
    return step


def _losses(run_dir: Path) -> list[dict]:
    return [json.loads(line)["losses"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(got: Path, want: Path, points) -> None:
    a, b = load_file(str(got / "ckpt" / "last.safetensors")), load_file(str(want / "ckpt" / "last.safetensors"))
    assert a.keys() == b.keys(), points
    differ = [k for k in b if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}; kill points {points}"
    assert _losses(got) == _losses(want), points
    assert json.loads((got / "ckpt" / "last.json").read_text())["step"] == ITERS


def test_kill_fit_before_and_after_the_first_checkpoint_then_resume(cache, tmp_path, rng, cli_env) -> None:
    """One run killed three times, twice before its first checkpoint (the second time in the restart from step 0)
    and once after it; --resume each time. (--resume of a folder killed before config.json: tests/student/runs;
    the plain command's refusal: tests/cli/test_train_cli.py.)"""
    reference = tmp_path / "reference"  # in-process: the same code on one torch thread, bit for bit (and faster)
    fit(TrainConfig(cache=str(cache), backbone="test_vit", iters=ITERS, batch_size=4, lr=1e-3, out=str(reference),
                    workers=0, device="cpu", log_every=1, ckpt_every=CKPT_EVERY, eval_samples=2))
    out = tmp_path / "run"
    points: list[tuple] = []  # (step at which the kill was armed, delay, killed, checkpoint step afterwards)

    def kill(step: int, delay: float, *extra: str) -> None:
        k = kill_at_event(_fit(cache, out, *extra), cli_env, _step_logged(out, time.time()), step, delay,
                          tmp_path / f"kill{len(points)}.log")
        last = out / "ckpt" / "last.json"
        points.append((step, round(delay, 3), k.killed, json.loads(last.read_text())["step"] if last.exists() else None))
        assert k.killed, f"{points}\n{k.output[-3000:]}"

    kill(0, rng.uniform(0.0, 0.3))  # once config.json is written: the step-0 evaluation or the first steps
    assert points[-1][-1] is None, points
    kill(rng.randint(1, CKPT_EVERY - 1), rng.uniform(0.0, 0.02), "--resume")  # before the first checkpoint
    assert points[-1][-1] is None, points
    kill(rng.randint(CKPT_EVERY + 1, ITERS - 1), rng.uniform(0.0, 0.02), "--resume")  # after it
    assert points[-1][-1] == CKPT_EVERY, points
    ok(run(_fit(cache, out, "--resume"), cli_env))
    _assert_same_run(out, reference, points)
