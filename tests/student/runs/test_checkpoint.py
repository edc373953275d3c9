"""Checkpoints: safetensors + JSON round trip of model, optimizer and RNG state; atomic; clear errors."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from sak.student.runs.checkpoint import CheckpointError, load_checkpoint, restore_rng, save_checkpoint


def _model_and_opt():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    for _ in range(2):
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def test_round_trip_continues_identically(tmp_path) -> None:
    model, opt = _model_and_opt()
    torch.manual_seed(11)
    np.random.seed(12)
    random.seed(13)
    save_checkpoint(tmp_path / "ckpt", model=model.state_dict(), optimizer=opt.state_dict(),
                    record={"step": 2, "sampler": {"epoch": 1, "offset": 3}})
    expected_draws = (torch.rand(3), np.random.rand(2), random.random())
    x = torch.randn(5, 4)
    model(x).pow(2).sum().backward()
    opt.step()
    expected = [p.detach().clone() for p in model.parameters()]

    model2, opt2 = _model_and_opt()  # same architecture, but we overwrite everything from the checkpoint
    weights, optim, record = load_checkpoint(tmp_path / "ckpt")
    model2.load_state_dict(weights)
    opt2.load_state_dict(optim)
    restore_rng(record)
    assert record["step"] == 2 and record["sampler"] == {"epoch": 1, "offset": 3}
    draws = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(draws[0], expected_draws[0])
    assert np.array_equal(draws[1], expected_draws[1]) and draws[2] == expected_draws[2]
    model2(x).pow(2).sum().backward()
    opt2.step()
    for a, b in zip(model2.parameters(), expected, strict=True):
        assert torch.equal(a, b)


def test_files_and_readable_json(tmp_path) -> None:
    model, opt = _model_and_opt()
    path = save_checkpoint(tmp_path, model=model.state_dict(), optimizer=None, record={"step": 7})
    assert path == tmp_path / "last.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.json", "last.safetensors"]  # no temp files left
    readable = json.loads((tmp_path / "last.json").read_text())
    assert readable["step"] == 7 and "rng" not in readable


def test_missing_and_foreign_files(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="drop --resume"):
        load_checkpoint(tmp_path)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "last.safetensors"))
    with pytest.raises(CheckpointError, match="not written by sak-train"):
        load_checkpoint(tmp_path)
    (tmp_path / "last.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(tmp_path)
