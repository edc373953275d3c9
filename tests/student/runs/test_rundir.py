"""RunDir: the layout of a run directory, its records, and the one weight loader for every source."""

from __future__ import annotations

import json

import pytest
import torch

from sak.manifests.errors import SakError
from sak.student.model.io import save_student
from sak.student.runs.checkpoint import CheckpointError
from sak.student.runs.config import TrainConfig
from sak.student.runs.rundir import RunDir, load_weights
from sak.student.train.trainer import resume_point


def test_layout_and_records(tmp_path) -> None:
    run = RunDir(tmp_path / "r")
    assert not run.exists()
    with pytest.raises(SakError, match="is not a training run \\(no config.json\\); train one with sak-train fit"):
        run.read_record()
    cfg = TrainConfig(cache="c", iters=4)
    run.write_record({"train": cfg.to_dict(), "student": {}})
    assert run.exists() and run.config_file == tmp_path / "r" / "config.json" and run.train_config() == cfg
    assert (run.checkpoint_file, run.metrics_file) == (tmp_path / "r" / "ckpt" / "last.safetensors",
                                                       tmp_path / "r" / "metrics.jsonl")
    assert run.plot_file("loss") == tmp_path / "r" / "plots" / "loss.png"

    assert run.read_eval(0) == {} and not run.has_eval(0)
    assert run.write_eval(0, {"semseg/mIoU": 1.5}) == {"semseg/mIoU": 1.5}
    assert json.loads((tmp_path / "r" / "eval" / "step_0.json").read_text()) == {
        "step": 0, "split": "val", "metrics": {"semseg/mIoU": 1.5}}
    assert run.read_eval(0) == {"semseg/mIoU": 1.5} and run.has_eval(0)

    run.write_summary({"run_dir": tmp_path / "r", "steps": 4})
    assert json.loads(run.summary_file.read_text()) == {"run_dir": str(tmp_path / "r"), "steps": 4}


def test_metrics_append_read_and_truncate_for_a_resume(tmp_path) -> None:
    run = RunDir(tmp_path)
    assert run.read_metrics() == []
    with run.open_metrics() as fh:
        for step in (1, 2, 3, 4):
            fh.write(json.dumps({"step": step}) + "\n")
    run.truncate_metrics(2)
    assert [r["step"] for r in run.read_metrics()] == [1, 2]
    with run.open_metrics() as fh:  # appends after the kept records
        fh.write(json.dumps({"step": 3}) + "\n")
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3]


def test_one_loader_reads_weights_from_a_run_dir_a_checkpoint_or_a_student_file(tmp_path, tiny_student) -> None:
    state = tiny_student.state_dict()
    run = RunDir(tmp_path / "run")
    path = run.save_checkpoint(model=state, optimizer=None, record={"step": 5, "sampler": [0, 0]})
    student_file = save_student(tmp_path / "student.safetensors", tiny_student)
    for source in (run.path, path, student_file):
        weights = load_weights(source)
        assert weights.keys() == state.keys() and all(torch.equal(weights[k], state[k]) for k in state)
    ckpt = run.load_checkpoint()
    assert ckpt.record["step"] == 5 and ckpt.optimizer is None and ckpt.weights.keys() == state.keys()
    with pytest.raises(CheckpointError, match="pass a run dir or a .safetensors file"):
        load_weights(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="drop --resume"):
        RunDir(tmp_path / "nothing").load_checkpoint()


def test_resume_takes_the_runs_settings_even_from_a_flat_record(tmp_path) -> None:
    run = RunDir(tmp_path / "run")
    saved = TrainConfig(cache="c", backbone="test_vit", lr=1e-3, iters=6, seed=3, out=str(run.path))
    flat = saved.to_flat()  # a checkpoint written before the config sections
    run.save_checkpoint(model={"w": torch.zeros(2)}, optimizer=None, record={"step": 3, "config": flat})
    asked = TrainConfig(cache="c", iters=10, workers=0, out=str(run.path))
    cfg, ckpt = resume_point(asked, resume=True)
    assert ckpt.record["step"] == 3
    assert cfg == TrainConfig.from_dict({**flat, "iters": 10, "workers": 0})  # only RESUME_FREE fields follow the ask
    with pytest.raises(SakError, match=r"lr: the run used 0.001, this command asks 5.0; seed: the run used 3, "):
        resume_point(TrainConfig(cache="c", lr=5.0, seed=9, out=str(run.path)), resume=True)  # issue 15: refused
    run.write_record({"train": saved.to_dict()})
    with pytest.raises(SakError, match="already holds a training run: pass --resume"):
        resume_point(asked, resume=False)
    assert resume_point(TrainConfig(cache="c", out=str(tmp_path / "new")), resume=False)[1] is None
