"""The official teacher-input protocol ("student"): golden values G1/G2 of research/official_recipe.md.

Official SAK builds every teacher at the student's input size and feeds it the student's own
ImageNet-normalized tensor (``models/mt_distiller.py:34-35,72-83``, ``models/backbones/timm_encoders.py:145-152``);
SAM alone is resized by ``preprocess`` (``timm_encoders.py:14-28``). Architectures are shrunk in width
and depth (same timm classes, patch sizes and ``img_size`` handling) so the tests run in seconds.
"""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

from sak.manifests.errors import ConfigError, TeacherUnavailable
from sak.pipeline.teachers import IMAGENET_MEAN, IMAGENET_STD, Preprocess, create_teacher, timm_teacher
from sak.pipeline.teachers.preprocess import normalize, sam_resize_pad, student_preprocess


@pytest.fixture()
def shrunk(monkeypatch):
    """timm's DINOv2 / CLIP / SAM classes at width 32, depth 2 (grids and resizing untouched)."""
    real = timm_teacher._create_model
    built: list[dict] = []

    def create(name, **kw):
        built.append({"name": name, **kw})
        extra = dict(global_attn_indexes=[1], neck_chans=16) if name.startswith("samvit") else {}
        return real(name, embed_dim=32, depth=2, num_heads=2, **extra, **kw)

    monkeypatch.setattr(timm_teacher, "_create_model", create)
    return built


def _sin_image(h: int, w: int) -> torch.Tensor:
    # research G2 large case: x[c,h,w] = sin(0.01h + 0.02w + c)
    hh = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    ww = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    c = torch.arange(3, dtype=torch.float32).view(3, 1, 1)
    return torch.sin(0.01 * hh + 0.02 * ww + c)


# ---------------------------------------------------------------- G2: SAM's resize


def test_sam_resize_tiny_case_equals_the_official_values():
    # official preprocess(arange(8.).reshape(1,1,2,4), 8) (timm_encoders.py:14-28; research G2, golden5.out)
    y = sam_resize_pad(torch.arange(8.0).reshape(1, 1, 2, 4), 8)[0, 0]
    assert y.shape == (8, 8)
    row0 = [-0.527344, -0.230469, 0.246094, 0.875, 1.28125, 1.910156, 2.386719, 2.683594]
    row3 = [4.316406, 4.613281, 5.089844, 5.71875, 6.125, 6.753906, 7.230469, 7.527344]
    assert y[0].tolist() == pytest.approx(row0, abs=1e-5)
    assert y[3].tolist() == pytest.approx(row3, abs=1e-5)
    assert torch.equal(y[4:], torch.zeros(4, 8))  # zero padding at the bottom


def test_sam_resize_large_case_equals_the_official_values():
    # research G2 large case (timm_encoders.py:17-26): 448x576 -> scale 1.777778, 796x1024, 228 zero rows
    y = sam_resize_pad(_sin_image(448, 576)[None], 1024)
    assert y.shape == (1, 3, 1024, 1024)
    assert y[0, 0, 0, 0].item() == pytest.approx(-0.003004, abs=1e-6)
    assert y[0, 0, 0, 1023].item() == pytest.approx(-0.874992, abs=1e-6)
    assert y[0, 1, 400, 512].item() == pytest.approx(0.409032, abs=1e-6)
    assert y[0, 2, 795, 1023].item() == pytest.approx(-0.768559, abs=1e-6)
    assert torch.count_nonzero(y[:, :, 796:]) == 0  # rows 796..1023 exactly 0
    assert y[:, :, :796].sum().item() == pytest.approx(-21929.96, abs=0.05)


@pytest.mark.parametrize("hw, valid", [((448, 576), (796, 1024)), ((480, 640), (768, 1024)), ((375, 500), (768, 1024)),
                                       ((512, 512), (1024, 1024)), ((384, 384), (1024, 1024))])
def test_sam_resize_sizes_and_padding(hw, valid):
    # research G2: int(x*scale+0.5) rounding (timm_encoders.py:17-20), pad bottom/right only (24-26)
    y = sam_resize_pad(torch.ones(1, 1, *hw), 1024)[0, 0]
    rows = int((y.abs().sum(1) > 0).sum())
    cols = int((y.abs().sum(0) > 0).sum())
    assert (rows, cols) == valid
    assert torch.count_nonzero(y[valid[0]:]) == 0 and torch.count_nonzero(y[:, valid[1]:]) == 0


# ---------------------------------------------------------------- G1: grids and inputs at 448x576


@pytest.mark.parametrize(
    "alias, img, grid",
    [  # research G1 / section 1.5 (teachers.out)
        ("dinov2", (448, 576), (32, 41)), ("clip", (448, 576), (28, 36)), ("sam", (448, 576), (64, 64)),
        ("dinov2", (512, 512), (36, 36)), ("clip", (512, 512), (32, 32)), ("sam", (512, 512), (64, 64)),
        ("dinov2", (384, 384), (27, 27)), ("clip", (384, 384), (24, 24)), ("sam", (384, 384), (64, 64)),
        ("dinov2-l", (448, 576), (32, 41)), ("clip-l", (448, 576), (32, 41)),
    ],
)
def test_teachers_built_at_the_student_size_give_the_official_grids(shrunk, alias, img, grid):
    t = create_teacher(alias, random_init=True, img_size=img)
    sam = alias.startswith("sam")
    # timm_encoders.py:126-129: SAM built at 1024 whatever the student's size; the others at img_size
    assert ("img_size" not in shrunk[-1]) if sam else shrunk[-1]["img_size"] == img
    assert t.grid == grid
    assert t.preprocess == student_preprocess(img, sam=sam)
    assert (t.preprocess.mean, t.preprocess.std) == (IMAGENET_MEAN, IMAGENET_STD)  # every teacher: ImageNet
    x01 = torch.rand(3, *img, generator=torch.Generator().manual_seed(0))
    x = t.preprocess.from_tensor(x01)[None]
    maps, _ = t.forward_layers(x, (0, 1))
    assert [tuple(m.shape) for m in maps] == [(1, *grid, 32)] * 2


def test_teacher_inputs_are_the_students_tensor_and_sam_gets_it_resized(shrunk):
    img = (448, 576)
    x01 = torch.rand(3, *img, generator=torch.Generator().manual_seed(1))
    student = normalize(x01, IMAGENET_MEAN, IMAGENET_STD)  # the student's batch tensor (custom_transforms.py:257-279)
    for alias in ("dinov2", "clip"):
        assert torch.equal(create_teacher(alias, random_init=True, img_size=img).preprocess.from_tensor(x01), student)
    sam = create_teacher("sam", random_init=True, img_size=img).preprocess.from_tensor(x01)
    assert sam.shape == (3, 1024, 1024)
    assert torch.equal(sam, sam_resize_pad(student[None], 1024)[0])
    assert torch.count_nonzero(sam[:, 796:]) == 0  # G1: rows 796..1023 exactly 0
    assert torch.count_nonzero(sam[:, :796]) > 0


def test_dinov2_at_576_floors_the_grid_and_never_sees_the_last_two_columns(shrunk):
    # research 1.5: 576 = 41*14 + 2, strict PatchEmbed, no crop/pad: the last 2 pixel columns are unseen
    t = create_teacher("dinov2", random_init=True, img_size=(448, 576))
    x = torch.randn(1, 3, 448, 576, generator=torch.Generator().manual_seed(2))
    y = x.clone()
    y[..., 574:] = 100.0
    a, _ = t.forward_layers(x, (1,))
    b, _ = t.forward_layers(y, (1,))
    assert torch.equal(a[0], b[0])


def test_identity_views_are_centre_padded_and_larger_images_refused():
    pre = student_preprocess((6, 9), sam=False)
    x01 = torch.full((3, 4, 6), 0.5)
    out = pre.from_tensor(x01)
    # official PadImage (custom_transforms.py:231-233): top = dh//2, left = dw//2, fill 0 after normalization
    inside = torch.zeros(6, 9, dtype=torch.bool)
    inside[1:5, 1:7] = True
    assert out.shape == (3, 6, 9)
    assert torch.count_nonzero(out[:, ~inside]) == 0
    assert torch.allclose(out[:, inside], normalize(x01, IMAGENET_MEAN, IMAGENET_STD).flatten(1))
    with pytest.raises(ConfigError, match="larger than the student input 6x9.*--aug sak --aug-crop 6x9"):
        pre.from_tensor(torch.zeros(3, 7, 9))


def test_preprocess_protocol_fields_are_validated():
    with pytest.raises(ConfigError, match="needs a student frame"):
        Preprocess(resolution=(4, 4), resize="none")
    with pytest.raises(ConfigError, match="takes no student frame"):
        Preprocess(resolution=(4, 4), resize="squash", frame=(4, 4))
    assert student_preprocess((448, 576), sam=True).resolution == (1024, 1024)


def test_native_protocol_is_unchanged_by_default(shrunk):
    t = create_teacher("dinov2", random_init=True)
    assert t.preprocess.protocol == "native" and t.grid == (37, 37) and t.preprocess.resize == "squash"
    with pytest.raises(ConfigError, match="leave it out"):
        create_teacher("dinov2", random_init=True, resolution=224, img_size=(448, 576))


def test_open_clip_teacher_follows_the_student_protocol(tmp_path):
    import json

    import open_clip

    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
    }
    path = tmp_path / "sak-tiny-clip-s.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    t = create_teacher("open_clip:sak-tiny-clip-s", random_init=True, img_size=(32, 48))
    assert t.preprocess == student_preprocess((32, 48), sam=False) and t.grid == (4, 6)
    maps, _ = t.forward_layers(torch.zeros(1, 3, 32, 48), (1,))
    assert maps[0].shape == (1, 4, 6, 32)


# ---------------------------------------------------------------- deviation 10a: full timm checkpoints


def test_full_timm_checkpoint_with_head_loads_dropping_the_head_with_a_warning(tmp_path, caplog):
    import timm

    full = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=1000, img_size=224)
    path = tmp_path / "vit_tiny_full.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(path))
    with caplog.at_level(logging.WARNING, logger="sak.pipeline.teachers.weights"):
        t = create_teacher("timm:vit_tiny_patch16_224", weights=str(path), img_size=(64, 80))
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "dropped 2 key(s)" in text and "head.bias, head.weight" in text
    # the trunk is the file's, its pos-embed resampled by timm's own checkpoint filter (as official)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=(64, 80))
    state = timm.models.vision_transformer.checkpoint_filter_fn(dict(full.state_dict()), ref)
    ref.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")})
    x = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(3))
    want = ref.forward_intermediates(x, indices=[11], norm=False, intermediates_only=True)[0]
    assert torch.allclose(t.forward_layers(x, (11,))[0][0], want.permute(0, 2, 3, 1), atol=1e-6)


def test_clip_alias_loads_its_own_timm_state_dict(shrunk, tmp_path, caplog):
    own = timm_teacher._create_model("vit_base_patch16_clip_384", pretrained=False)  # num_classes 1000: head kept
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in own.state_dict().items()}, str(path))
    with caplog.at_level(logging.WARNING, logger="sak.pipeline.teachers.weights"):
        t = create_teacher("clip", weights=str(path), img_size=(448, 576))
    assert t.grid == (28, 36) and "head.bias, head.weight" in caplog.text


def test_a_file_whose_other_keys_do_not_match_is_still_refused_briefly(tmp_path):
    import timm

    full = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=1000)
    state = {k: v.contiguous() for k, v in full.state_dict().items()}
    del state["blocks.3.mlp.fc1.weight"]
    state["blocks.0.extra"] = torch.zeros(1)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(TeacherUnavailable) as info:
        create_teacher("timm:vit_tiny_patch16_224", weights=str(path), img_size=(64, 80))
    msg = str(info.value)
    assert "blocks.3.mlp.fc1.weight" in msg and "blocks.0.extra" in msg and "head." not in msg
    assert len(msg) < 600  # a short message, never a state-dict dump
