"""Routing weights, task sub-model export (exact when nothing is dropped), safetensors save/load."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from sak.manifests.errors import ConfigError
from sak.student.model.export import dropped_gate_mass, export_submodel, routing_weights
from sak.student.model.io import StudentFileError, load_student, read_student_config, save_student
from sak.student.model.params import count_parameters


def test_routing_weights_average_the_eval_gates(tiny_student, tiny_images):
    batches = [tiny_images, {"image": tiny_images[:1]}, (tiny_images[1:], "labels")]
    w = routing_weights(tiny_student, batches, "normals")
    gates = tiny_student(tiny_images).gates["normals"]  # (2, 4 levels, 4 experts)
    expected = torch.cat([gates, gates]).mean(0)
    assert w.shape == (4, 4)
    torch.testing.assert_close(w, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(w.sum(1), torch.ones(4))
    with pytest.raises(ConfigError, match="not one of"):
        routing_weights(tiny_student, tiny_images, "saliency")


def test_export_keeping_everything_is_exact(tiny_student, tiny_images):
    sub, kept = export_submodel(tiny_student, "depth", 0.0, images=tiny_images)
    assert kept == ("a", "test:tiny2", "c")
    assert sub.cfg.task_names == ("depth",) and sub.cfg.aligner == "none" and len(sub.aligners) == 0
    full = tiny_student(tiny_images).tasks["depth"]
    out = sub(tiny_images)
    assert torch.equal(out.tasks["depth"], full) and out.distill == {}


def test_export_dropping_a_silent_branch_matches_within_tolerance(tiny_student, tiny_images):
    m = tiny_student
    with torch.no_grad():  # force the gate of teacher "test:tiny2" (expert 2) to ~e^-30 at every level
        for router in m.routers["semseg"]:
            last = router.mlp[3]
            last.weight[2].zero_()
            last.bias[2] = -30.0
    w = routing_weights(m, tiny_images, "semseg")
    assert float(w[:, 2].max()) < 1e-10
    sub, kept = export_submodel(m, "semseg", 1e-3, weights=w)
    assert kept == ("a", "c") and len(sub.tsap) == 2
    assert dropped_gate_mass(w, kept, m.cfg.teacher_names) < 1e-10
    full, part = m(tiny_images).tasks["semseg"], sub(tiny_images).tasks["semseg"]
    torch.testing.assert_close(part, full, rtol=1e-5, atol=1e-5)
    # the renormalized gates equal the full gates on the kept experts
    torch.testing.assert_close(sub(tiny_images).gates["semseg"], m(tiny_images).gates["semseg"][..., [0, 1, 3]])
    assert count_parameters(sub).adapters == count_parameters(m).adapters * 2 // 3


def test_export_requires_evidence_and_can_drop_all_teachers(tiny_student, tiny_images):
    with pytest.raises(ConfigError, match="routing evidence"):
        export_submodel(tiny_student, "edge", 0.1)
    sub, kept = export_submodel(tiny_student, "edge", 1.0, images=tiny_images)
    assert kept == () and sub.cfg.num_experts == 1
    assert torch.equal(sub(tiny_images).gates["edge"], torch.ones(2, 4, 1))


def test_save_load_round_trip_without_pickle(tmp_path, tiny_student, tiny_images):
    sub, _ = export_submodel(tiny_student, "normals", 0.0, images=tiny_images)
    path = save_student(tmp_path / "normals.safetensors", sub)
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])  # safetensors: u64 length + JSON header
    assert json.loads(header["__metadata__"]["sak.student_config"]) == sub.cfg.to_dict()
    assert read_student_config(path) == sub.cfg
    loaded = load_student(path)
    assert not loaded.training
    assert torch.equal(loaded(tiny_images).tasks["normals"], sub(tiny_images).tasks["normals"])
    full = save_student(tmp_path / "full.safetensors", tiny_student)
    assert torch.equal(load_student(full)(tiny_images).distill["c"][3], tiny_student(tiny_images).distill["c"][3])


def test_load_student_errors(tmp_path):
    with pytest.raises(StudentFileError, match="does not exist"):
        load_student(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(StudentFileError, match="not a sak student file"):
        load_student(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(StudentFileError, match="not a readable"):
        load_student(tmp_path / "junk.safetensors")
