"""Where the student's weights start: backbone weights (hub | none | file) and the stage 1 -> 2 hand-off (--init)."""

from __future__ import annotations

import logging
import time

import pytest
import timm
import torch
from safetensors.torch import save_file

from sak.student.model.config import StudentConfig, TaskSpec, TeacherTarget
from sak.student.model.student import SAKStudent
from sak.student.model.weights import (
    BackboneWeightsError,
    HandoffError,
    handoff,
    load_backbone_weights,
    resample_pos_embed,
)

BACKBONE = "vit_tiny_patch16_224"
TASKS = (TaskSpec(name="semseg", channels=5), TaskSpec(name="depth", channels=1))


def _teachers(*names: str) -> tuple[TeacherTarget, ...]:
    return tuple(TeacherTarget(name=n, width=192) for n in names)


def _student(img: tuple[int, int], teachers: tuple[str, ...], tasks=(), seed: int = 0, backbone: str = BACKBONE):
    torch.manual_seed(seed)
    return SAKStudent(StudentConfig.for_backbone(backbone, img_size=img, teachers=_teachers(*teachers), tasks=tasks))


# -- G11: the hand-off's position embedding ----------------------------------------------------------
def test_handoff_pos_embed_matches_the_official_golden_values() -> None:
    """G11 (official train_utils.py:132-148: timm resample_abs_pos_embed, bicubic, antialias=False, 1 prefix token).
    ViT-S (C=384) stage-1 pos_embed at 384x384 (24x24) -> NYUD 448x576 (28x36); CLS row = arange(C),
    grid[i, j, c] = sin(0.3 i + 0.7 j + c)."""
    c = 384
    i, j, ch = torch.arange(24.0)[:, None, None], torch.arange(24.0)[None, :, None], torch.arange(float(c))[None, None]
    pos = torch.cat([torch.arange(float(c)).reshape(1, 1, c), torch.sin(0.3 * i + 0.7 * j + ch).reshape(1, 576, c)], 1)
    out = resample_pos_embed(pos, (28, 36), num_prefix_tokens=1, interpolation="bicubic", antialias=False)
    assert out.shape == (1, 1009, c) and torch.equal(out[0, 0], pos[0, 0])
    grid = out[0, 1:].reshape(28, 36, c)[..., 0]
    torch.testing.assert_close(grid[0, :6], torch.tensor([-0.069966, 0.277910, 0.743628, 0.956020, 1.010403, 0.798871]),
                               atol=2e-6, rtol=0)
    torch.testing.assert_close(grid[27, -4:], torch.tensor([0.235596, -0.181237, -0.650825, -0.901910]), atol=2e-6, rtol=0)
    assert float(grid[13, 17]) == pytest.approx(-0.991973, abs=2e-6)
    assert float(grid.sum()) == pytest.approx(11.36744, abs=2e-4)
    # antialias=True (timm's default, and what timm does when it loads pretrained weights) gives other numbers
    aa = resample_pos_embed(pos, (28, 36), num_prefix_tokens=1, interpolation="bicubic", antialias=True)
    assert float(aa[0, 1, 0]) == pytest.approx(-0.052100, abs=2e-6)


# -- the hand-off ------------------------------------------------------------------------------------
def test_stage1_at_384_shape_hands_off_into_stage2_at_448x576_shape(caplog) -> None:
    """Official train_utils.py:121-152: each key of the new model found in the source (by name) is loaded, the
    pos-embed resampled (grids 6x6 -> 7x9: 384x384 -> 448x576 scaled by 1/4), routers and heads kept at init.
    The teachers come in another order in stage 2: the adapter paths are matched by name, not by position."""
    s1 = _student((96, 96), ("dinov2", "clip", "sam"), seed=1)
    with torch.no_grad():
        for p in s1.parameters():
            p.add_(torch.randn_like(p))  # "trained": differs from any init
    s2 = _student((112, 144), ("sam", "dinov2", "clip"), tasks=TASKS, seed=2)
    fresh = {k: v.clone() for k, v in s2.state_dict().items()}
    report = handoff(s2, s1.state_dict(), ("dinov2", "clip", "sam"), teachers=("sam", "dinov2", "clip"), source="s1")
    got, src = s2.state_dict(), s1.state_dict()
    for new_i, old_i in ((0, 2), (1, 0), (2, 1)):  # sam, dinov2, clip <- positions 2, 0, 1 of the source
        for key in src:
            if key.startswith(f"tsap.{old_i}."):
                assert torch.equal(got[f"tsap.{new_i}." + key.split(".", 2)[2]], src[key]), key
    assert torch.equal(got["vit.blocks.3.attn.qkv.weight"], src["vit.blocks.3.attn.qkv.weight"])
    want_pos = resample_pos_embed(src["vit.pos_embed"], (7, 9), num_prefix_tokens=1, interpolation="bicubic")
    assert got["vit.pos_embed"].shape == (1, 64, 192) and torch.equal(got["vit.pos_embed"], want_pos)
    for key in got:
        if key.startswith(("routers.", "heads.")):
            assert torch.equal(got[key], fresh[key]), key
    assert report.kept == ["heads.depth", "heads.semseg", "routers.depth", "routers.semseg"]
    assert report.resampled == "6x6 -> 7x9" and report.loaded == len(src)
    assert "kept at init: heads.depth, heads.semseg, routers.depth, routers.semseg" in report.summary()


def test_handoff_refuses_other_teachers_and_other_backbones_briefly() -> None:
    s1 = _student((96, 96), ("dinov2", "sam"))
    with pytest.raises(HandoffError, match=r"distilled teachers \['dinov2', 'sam'\], this run distills \['clip'\]"):
        handoff(_student((96, 96), ("clip",)), s1.state_dict(), ("dinov2", "sam"), teachers=("clip",), source="s1")
    small = _student((96, 96), ("dinov2", "sam"), backbone="vit_small_patch16_224")  # "B into L"
    with pytest.raises(HandoffError, match=r"tensors have other shapes, e\.g\. ") as info:
        handoff(small, s1.state_dict(), ("dinov2", "sam"), teachers=("dinov2", "sam"), source="s1")
    assert len(str(info.value)) < 400 and "\n" not in str(info.value)  # never a state-dict dump


# -- backbone weights --------------------------------------------------------------------------------
def _timm_file(tmp_path, **extra: torch.Tensor):
    torch.manual_seed(7)
    vit = timm.create_model(BACKBONE, pretrained=False)  # with its classifier head and final norm
    state = {**vit.state_dict(), **extra}
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path, state


def test_backbone_weights_from_a_file_resample_the_pos_embed_bilinear(tmp_path, caplog) -> None:
    """Official vit.py:529-530,600-614: pretrained 384 weights at another size get a bilinear, non-antialiased
    pos-embed (here 14x14 -> 6x8)."""
    path, state = _timm_file(tmp_path)
    model = _student((96, 128), ("dinov2",))
    with caplog.at_level(logging.INFO, logger="sak"):
        wid = load_backbone_weights(model.vit, str(path), BACKBONE)
    assert wid.startswith("file:") and len(wid) == 5 + 64
    got = model.vit.state_dict()
    assert torch.equal(got["blocks.11.mlp.fc2.weight"], state["blocks.11.mlp.fc2.weight"])
    want = resample_pos_embed(state["pos_embed"], (6, 8), num_prefix_tokens=1, interpolation="bilinear")
    assert torch.equal(got["pos_embed"], want) and torch.equal(got["pos_embed"][0, 0], state["pos_embed"][0, 0])
    assert "skipped 4 tensors of parts the student drops (head, norm)" in caplog.text


def test_backbone_weights_file_must_fit(tmp_path) -> None:
    path, _ = _timm_file(tmp_path, **{"blocks.0.extra": torch.zeros(2)})
    with pytest.raises(BackboneWeightsError, match=r"unexpected \[blocks\.0\.extra\].*--backbone-weights none"):
        load_backbone_weights(_student((96, 96), ("a",)).vit, str(path), BACKBONE)
    with pytest.raises(BackboneWeightsError, match=r"other shapes \(file vs model\) \[cls_token \(1, 1, 192\) vs"):
        load_backbone_weights(_student((96, 96), ("a",), backbone="vit_small_patch16_224").vit, str(path), BACKBONE)
    _, state = _timm_file(tmp_path)
    save_file({k: v.contiguous() for k, v in state.items() if k != "blocks.0.norm1.weight"}, str(path))
    with pytest.raises(BackboneWeightsError, match=r"missing \[blocks\.0\.norm1\.weight\]"):
        load_backbone_weights(_student((96, 96), ("a",)).vit, str(path), BACKBONE)
    with pytest.raises(BackboneWeightsError, match="does not exist"):
        load_backbone_weights(_student((96, 96), ("a",)).vit, str(tmp_path / "no.safetensors"), BACKBONE)
    assert load_backbone_weights(_student((96, 96), ("a",)).vit, "none", BACKBONE) == "random-init"


def test_hub_weights_fail_fast_and_say_what_to_pass(tmp_path, monkeypatch) -> None:
    """No network here: the hub is never contacted in tests (offline mode, empty cache)."""
    import huggingface_hub.constants as hf

    import sak.student.model.weights as weights

    monkeypatch.setattr(weights, "hub_reachable", lambda: False)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    vit = _student((96, 96), ("a",)).vit
    t0 = time.perf_counter()
    with pytest.raises(BackboneWeightsError, match=r"cannot load timm's pretrained weights of student backbone "
                       r"vit_tiny_patch16_224.augreg_in21k_ft_in1k: the hub cannot be reached.*--backbone-weights "
                       r"FILE\.safetensors.*--backbone-weights none"):
        load_backbone_weights(vit, "hub", "vit_tiny_patch16_224.augreg_in21k_ft_in1k")
    assert time.perf_counter() - t0 < 10
