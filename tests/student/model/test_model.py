"""The SAK student: config round trip, wiring of the TSAP recurrence, routers, heads, parameter counts."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sak.manifests.errors import ConfigError
from sak.student.model.config import StudentConfig, TaskSpec, TeacherTarget, default_levels, parse_img_size
from sak.student.model.params import count_config, count_parameters, describe_student
from sak.student.model.router import MoRRouter, mix
from sak.student.model.student import SAKStudent


def test_config_round_trip(tiny_student_cfg):
    cfg = tiny_student_cfg
    assert StudentConfig.from_dict(cfg.to_dict()) == cfg
    assert StudentConfig.from_json(cfg.to_json()) == cfg
    assert cfg.levels == (2, 5, 8, 11) and cfg.img_size == (32, 48)
    assert cfg.expert_names == ("stem", "a", "test:tiny2", "c")
    assert cfg.teachers[1].grid == (8, 8)


_names = st.text(alphabet="abcdefghij:-_0123456789", min_size=1, max_size=12)
_teachers = st.lists(
    st.builds(TeacherTarget, name=_names, width=st.integers(1, 4096),
              grid=st.none() | st.tuples(st.integers(1, 99), st.integers(1, 99))),
    max_size=4, unique_by=lambda t: t.name,
)
_tasks = st.lists(st.builds(TaskSpec, name=st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
                            channels=st.integers(1, 300)), max_size=5, unique_by=lambda t: t.name)


@settings(max_examples=60, deadline=None)
@given(teachers=_teachers, tasks=_tasks, h=st.integers(1, 2048), w=st.integers(1, 2048),
       ratio=st.floats(0.01, 1.0), aligner=st.sampled_from(["auto", "linear", "none"]), noisy=st.booleans())
def test_config_round_trip_property(teachers, tasks, h, w, ratio, aligner, noisy):
    cfg = StudentConfig(img_size=(h, w), teachers=tuple(teachers), tasks=tuple(tasks), adapter_ratio=ratio,
                        aligner=aligner, noisy_gating=noisy)
    again = StudentConfig.from_json(cfg.to_json())
    assert again == cfg and again.config_hash() == cfg.config_hash()


def test_config_helpers_and_validation():
    assert default_levels("vit_large_patch16_384") == (5, 11, 17, 23)
    assert default_levels("vit_base_patch16_384") == (2, 5, 8, 11)
    assert StudentConfig.for_backbone("vit_base_patch16_384").img_size == (384, 384)
    assert parse_img_size("448x576") == (448, 576) and parse_img_size(512) == (512, 512)
    with pytest.raises(ConfigError, match="increasing"):
        StudentConfig(levels=(5, 2))
    with pytest.raises(ConfigError, match="unique"):
        StudentConfig(teachers=(TeacherTarget(name="a", width=8), TeacherTarget(name="a", width=8)))
    with pytest.raises(ConfigError, match="aligner"):
        StudentConfig(aligner="conv")
    with pytest.raises(ConfigError, match="task name"):
        TaskSpec(name="sem.seg", channels=3)


def test_forward_shapes_non_square(tiny_student, tiny_images):
    out = tiny_student(tiny_images)
    assert {k: tuple(v.shape) for k, v in out.tasks.items()} == {
        "semseg": (2, 5, 32, 48), "depth": (2, 1, 32, 48), "normals": (2, 3, 32, 48), "edge": (2, 1, 32, 48)
    }
    # distill maps at the student's 2x3 patch grid (32/16 x 48/16), teacher widths after the aligners
    assert {k: [tuple(m.shape) for m in v] for k, v in out.distill.items()} == {
        "a": [(2, 32, 2, 3)] * 4, "test:tiny2": [(2, 48, 2, 3)] * 4, "c": [(2, 64, 2, 3)] * 4
    }
    assert {k: tuple(v.shape) for k, v in out.gates.items()} == {t: (2, 4, 4) for t in out.tasks}
    assert tiny_student(tiny_images, distill=False).distill == {}


def test_wrong_input_size_is_a_clear_error(tiny_student):
    with pytest.raises(ConfigError, match="built for 32x48"):
        tiny_student(torch.randn(1, 3, 48, 32))


def test_official_structure(tiny_student):
    m, d = tiny_student, 192
    assert isinstance(m.vit.norm, nn.Identity)
    for branch in m.tsap:
        assert len(branch.adapters) == 13  # patch embedding + 12 blocks
        a = branch.adapters[0]
        assert (a.down.in_features, a.down.out_features, a.up.out_features) == (d, d // 4, d)
        assert a.scale.item() == 1.0
        assert len(branch.norms) == 4 and all(isinstance(n, nn.LayerNorm) for n in branch.norms)
    mlp = m.routers["semseg"][0].mlp
    assert [type(x) for x in mlp] == [nn.Linear, nn.LayerNorm, nn.GELU, nn.Linear]
    assert (mlp[0].out_features, mlp[3].out_features) == (d // 2, 2 * 4)  # 2E logits, E = 3 teachers + stem
    head = m.heads["normals"]
    assert [lin.out_features for lin in head.linears] == [d // 4] * 4
    conv, bn = head.fuse[0], head.fuse[1]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (d, d, (3, 3)) and isinstance(bn, nn.BatchNorm2d)
    assert (head.out.out_channels, head.out.kernel_size) == (3, (1, 1))
    assert head.work_size == (8, 12)  # 1/4 of 32x48


def test_tsap_recurrence_and_routing_match_a_hand_computation(tiny_student, tiny_images):
    """Recompute level 0 (block 2) by hand: r_0 = A_0(x_0), r_i = A_i(r_{i-1} + x_i), LN, aligner, MoR."""
    m = tiny_student
    out = m(tiny_images)
    vit = m.vit
    x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(tiny_images))))
    r = [b.adapters[0](x) for b in m.tsap]
    for i in range(3):
        x = vit.blocks[i](x)
        r = [b.adapters[i + 1](rr + x) for b, rr in zip(m.tsap, r, strict=True)]
    reps = [b.norms[0](rr[:, 1:]) for b, rr in zip(m.tsap, r, strict=True)]  # cls token dropped
    for k, name in enumerate(["a", "test:tiny2", "c"]):
        aligned = m.aligners[k][0](reps[k])  # (B, 6, C_t)
        expected = aligned.transpose(1, 2).reshape(2, -1, 2, 3)
        torch.testing.assert_close(out.distill[name][0], expected, rtol=0, atol=0)
    stem = x[:, 1:]
    logits = m.routers["depth"][0].mlp(stem).mean(1)[:, :4]  # clean half, eval mode
    gates = torch.softmax(logits, 1)
    torch.testing.assert_close(out.gates["depth"][:, 0], gates, rtol=0, atol=0)
    mixed = sum(gates[:, e, None, None] * rep for e, rep in enumerate([stem, *reps]))
    head = m.heads["depth"]
    first = head.linears[0](mixed).transpose(1, 2).reshape(2, -1, 2, 3)
    assert first.shape == (2, 48, 2, 3)
    resized = F.interpolate(first, size=(8, 12), mode="bilinear", align_corners=False)
    assert resized.shape == (2, 48, 8, 12)


def test_router_noise_is_per_pixel_as_official():
    """G10 (official models/backbones/sak.py:77-82,90-96): the pooled logits are expanded to (B, 2E, H, W), split
    into clean and raw, and ``eps = randn_like(clean)`` has shape (B, E, H, W): one draw per pixel, while the clean
    logits and the std (softplus(raw) + 0.01) are constant over the pixels. B=2, T=3 teachers (E=4), grid 3x4."""
    torch.manual_seed(0)
    router = MoRRouter(8, 4)
    tokens = torch.randn(2, 12, 8)  # (B, H*W, d) on a 3x4 grid
    pooled = router.mlp(tokens).mean(1)
    logits_bchw = pooled[:, :, None, None].expand(2, 8, 3, 4)  # the official (B, 2(T+1), H, W) logits
    clean, raw = logits_bchw.chunk(2, dim=1)
    assert clean.shape == (2, 4, 3, 4)
    router.train()
    torch.manual_seed(123)
    noisy = router.logits(tokens)
    torch.manual_seed(123)
    eps = torch.randn_like(clean)  # (2, 4, 3, 4), as official
    expected = (clean + eps * (F.softplus(raw) + 0.01)).reshape(2, 4, 12)
    assert noisy.shape == (2, 4, 12)
    torch.testing.assert_close(noisy, expected, rtol=0, atol=0)
    assert not torch.equal(noisy[:, :, 0], noisy[:, :, 1])  # the noise differs per pixel
    gates = router(tokens)
    torch.testing.assert_close(gates.sum(1), torch.ones(2, 12))
    reps = [torch.randn(2, 12, 8) for _ in range(4)]
    per_pixel = sum(gates[:, e, :, None] * reps[e] for e in range(4))
    torch.testing.assert_close(mix(gates, reps), per_pixel)
    router.eval()
    torch.testing.assert_close(router.logits(tokens), clean[:, :, 0, 0])  # eval: clean, one vector per image
    assert torch.equal(router(tokens), torch.softmax(clean[:, :, 0, 0], 1))


def test_gates_sum_to_one_and_noise_only_in_training(tiny_student, tiny_images):
    m = tiny_student
    m.eval()
    a, b = m(tiny_images), m(tiny_images)
    for t in a.tasks:
        assert torch.equal(a.tasks[t], b.tasks[t]) and torch.equal(a.gates[t], b.gates[t])
    m.train()
    torch.manual_seed(5)
    c = m(tiny_images)
    torch.manual_seed(6)
    d = m(tiny_images)
    for out in (a, c, d):
        for g in out.gates.values():
            torch.testing.assert_close(g.sum(-1), torch.ones(2, 4))
            assert bool((g >= 0).all())
    assert not torch.equal(c.gates["semseg"], d.gates["semseg"])


def test_forward_backward_reaches_every_parameter(tiny_student, tiny_images):
    m = tiny_student.train()
    out = m(tiny_images)
    loss = sum(v.square().mean() for v in out.tasks.values())
    loss = loss + sum(x.square().mean() for maps in out.distill.values() for x in maps)
    loss.backward()
    no_grad = [n for n, p in m.named_parameters() if p.grad is None]
    assert no_grad == []
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_aligner_modes_and_degenerate_students(tiny_student_cfg):
    same = dataclasses.replace(tiny_student_cfg, teachers=(TeacherTarget(name="w", width=192),), tasks=())
    torch.manual_seed(0)
    auto = SAKStudent(same)
    assert isinstance(auto.aligners[0][0], nn.Identity) and count_parameters(auto).aligners == 0
    out = auto(torch.zeros(1, 3, 32, 48))
    assert out.tasks == {} and out.gates == {} and out.distill["w"][0].shape == (1, 192, 2, 3)
    linear = SAKStudent(dataclasses.replace(same, aligner="linear"))
    assert count_parameters(linear).aligners == 4 * (192 * 192 + 192)
    stem_only = SAKStudent(dataclasses.replace(tiny_student_cfg, teachers=(), aligner="none"))
    g = stem_only.eval()(torch.zeros(1, 3, 32, 48)).gates["edge"]
    assert torch.equal(g, torch.ones(1, 4, 1))


def test_bad_levels_and_sizes_are_rejected(tiny_student_cfg):
    with pytest.raises(ConfigError, match="12 blocks"):
        SAKStudent(dataclasses.replace(tiny_student_cfg, levels=(5, 11, 17, 23)))
    with pytest.raises(ConfigError, match="multiple"):
        SAKStudent(dataclasses.replace(tiny_student_cfg, img_size=(30, 48)))


def test_parameter_counts_tiny_analytic_and_meta_agree(tiny_student, tiny_student_cfg):
    d, h = 192, 48
    adapter = d * h + h + h * d + d + 1  # down, up, scale
    real = count_parameters(tiny_student)
    assert real.adapters == 3 * 13 * adapter
    assert real.adapters_per_teacher == {"a": 13 * adapter, "test:tiny2": 13 * adapter, "c": 13 * adapter}
    assert real.norms == 3 * 4 * 2 * d
    assert real.aligners == 4 * sum(d * w + w for w in (32, 48, 64))
    router = d * (d // 2) + d // 2 + 2 * (d // 2) + (d // 2) * 8 + 8
    assert real.routers == 4 * 4 * router
    assert real.total == sum(p.numel() for p in tiny_student.parameters())
    meta = count_config(tiny_student_cfg)
    assert dataclasses.replace(meta, config=None) == dataclasses.replace(real, config=None)


@pytest.mark.parametrize(
    ("backbone", "paper_adapters", "exact"),
    [("vit_base_patch16_384", 11.5e6, 3 * 13 * 295_873), ("vit_large_patch16_384", 39.4e6, 3 * 25 * 525_569)],
)
def test_adapter_parameters_match_the_paper(backbone, paper_adapters, exact):
    counts = describe_student(backbone, ["dinov2", "sam", "clip"], ["semseg", "depth", "normals", "edge"],
                              img_size="448x576")
    assert counts.adapters == exact
    assert abs(counts.adapters - paper_adapters) / paper_adapters < 0.02


def test_gate_noise_per_image_stays_an_option_for_old_configs(tiny_student_cfg):
    """Configs written before issue 12 (no gate_noise field) keep one noise draw per image."""
    old = {k: v for k, v in tiny_student_cfg.to_dict().items() if k != "gate_noise"}
    assert StudentConfig.from_dict(old).gate_noise == "image" and tiny_student_cfg.gate_noise == "pixel"
    assert StudentConfig.from_dict(tiny_student_cfg.to_dict()) == tiny_student_cfg
    router = MoRRouter(8, 3, per_pixel=False).train()
    assert router.logits(torch.randn(2, 5, 8)).shape == (2, 3)
