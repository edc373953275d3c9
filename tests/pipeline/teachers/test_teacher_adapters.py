"""Teacher adapters (test, timm, SAM, open_clip), weights files, hub failures, preprocessing: tiny random-init models only, no downloads."""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sak.manifests.errors import ConfigError, TeacherUnavailable
from sak.manifests.hashing import sha256_file
from sak.pipeline.teachers import Preprocess, create_teacher, timm_teacher, weights
from sak.pipeline.teachers.base import default_layers


def _x(shape=(2, 3, 64, 64), seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_default_layers():
    assert default_layers(12) == (2, 5, 8, 11)
    assert default_layers(24) == (5, 11, 17, 23)
    assert default_layers(32) == (7, 15, 23, 31)
    assert default_layers(4) == (0, 1, 2, 3)
    assert default_layers(2) == (0, 1)


# ---------------------------------------------------------------- test:tiny


def test_tiny_attributes_and_speed():
    import timm.models.vision_transformer  # noqa: F401  (timm's import time is not the build time measured here)

    create_teacher("test:tiny2")  # first lookup scans the plugin entry points once per process
    start = time.perf_counter()
    t = create_teacher("test:tiny")
    assert time.perf_counter() - start < 0.5
    assert (t.name, t.weights_id, t.width, t.patch_size, t.num_blocks, t.num_prefix_tokens) == (
        "test:tiny", "random-init:0", 32, 8, 4, 1,
    )
    assert t.default_layers == (0, 1, 2, 3)
    assert t.grid == (8, 8)
    assert t.preprocess == Preprocess(resolution=(64, 64), resize="squash", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert not t.training and not any(p.requires_grad for p in t.parameters())
    t2 = create_teacher("test:tiny2", seed=4)
    assert (t2.width, t2.weights_id, t2.grid) == (48, "random-init:4", (8, 8))


def test_tiny_is_deterministic_per_seed_and_leaves_global_rng_alone():
    x = _x()
    state = torch.get_rng_state()
    a, pa = create_teacher("test:tiny", seed=0).forward_layers(x, (1, 3))
    b, pb = create_teacher("test:tiny", seed=0).forward_layers(x, (1, 3))
    c, _ = create_teacher("test:tiny", seed=1).forward_layers(x, (1, 3))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert all(torch.equal(u, v) for u, v in zip(pa, pb, strict=True))
    assert not torch.equal(a[1], c[1])


def test_layer_maps_shapes_order_and_equal_direct_forward_intermediates():
    t = create_teacher("test:tiny")
    x = _x()
    maps, prefix = t.forward_layers(x, (3, 1))
    assert [tuple(m.shape) for m in maps] == [(2, 8, 8, 32)] * 2
    assert [tuple(p.shape) for p in prefix] == [(2, 1, 32)] * 2
    assert all(m.is_contiguous() for m in maps)
    direct = t.model.forward_intermediates(
        x, indices=[1, 3], output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True
    )
    for got, got_prefix, (tokens, pre) in zip(maps, prefix, direct[::-1], strict=True):
        assert torch.equal(got, tokens.reshape(2, 8, 8, 32))
        assert torch.equal(got_prefix, pre)
    # raw block outputs (no final norm): a manual run of the blocks gives the same numbers
    with torch.no_grad():
        h = t.model.norm_pre(t.model._pos_embed(t.model.patch_embed(x)))
        for blk in t.model.blocks[:2]:
            h = blk(h)
    assert torch.equal(maps[1], h[:, 1:].reshape(2, 8, 8, 32))
    assert torch.equal(prefix[1], h[:, :1])


def test_bad_layers_and_input_size_are_explained():
    t = create_teacher("test:tiny")
    with pytest.raises(ConfigError, match=r"blocks 0\.\.3.*default layers are 0,1,2,3"):
        t.forward_layers(_x(), (4,))
    with pytest.raises(ConfigError, match="expects inputs of"):
        t.forward_layers(_x((1, 3, 32, 32)), (0,))


def test_resolution_override_changes_grid():
    t = create_teacher("test:tiny", resolution=32)
    assert t.grid == (4, 4) and t.preprocess.resolution == (32, 32)
    maps, _ = t.forward_layers(_x((1, 3, 32, 32)), (0,))
    assert maps[0].shape == (1, 4, 4, 32)
    with pytest.raises(ConfigError, match="multiple of the patch size 8; pass --native-size 40"):
        create_teacher("test:tiny", resolution=42)


# ---------------------------------------------------------------- weights files


def test_timm_weights_file_roundtrip(tmp_path):
    src = create_teacher("timm:vit_tiny_patch16_224", random_init=True, seed=3, resolution=64)
    assert src.name == "timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    assert (src.width, src.patch_size, src.num_blocks, src.default_layers) == (192, 16, 12, (2, 5, 8, 11))
    path = tmp_path / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(path))
    loaded = create_teacher("timm:vit_tiny_patch16_224", weights=str(path), seed=99, resolution=64)
    assert loaded.weights_id == f"file:{sha256_file(path)}"
    x = _x((1, 3, 64, 64))
    a, pa = src.forward_layers(x, (2, 11))
    b, pb = loaded.forward_layers(x, (2, 11))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert all(torch.equal(u, v) for u, v in zip(pa, pb, strict=True))
    # a plain torch file of tensors works too (weights_only=True)
    pt = tmp_path / "vit_tiny.pt"
    torch.save(src.model.state_dict(), pt)
    again = create_teacher("timm:vit_tiny_patch16_224", weights=str(pt), resolution=64)
    assert torch.equal(again.forward_layers(x, (11,))[0][0], a[1])


def test_weights_file_mismatch_lists_keys(tmp_path):
    tiny2 = create_teacher("test:tiny2")
    path = tmp_path / "tiny2.safetensors"
    save_file({k: v.contiguous() for k, v in tiny2.model.state_dict().items()}, str(path))
    with pytest.raises(TeacherUnavailable, match=r"shape mismatches .*cls_token \(1, 1, 48\) vs \(1, 1, 32\)"):
        create_teacher("test:tiny", weights=str(path))
    state = {k: v.contiguous() for k, v in create_teacher("test:tiny").model.state_dict().items()}
    del state["pos_embed"]
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(path))
    with pytest.raises(TeacherUnavailable) as info:
        create_teacher("test:tiny", weights=str(path))
    msg = str(info.value)
    assert "missing keys [pos_embed] (1 in all)" in msg and "unexpected keys [extra.weight] (1 in all)" in msg
    with pytest.raises(TeacherUnavailable, match="does not exist"):
        create_teacher("test:tiny", weights=str(tmp_path / "absent.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(TeacherUnavailable, match="cannot read weights file"):
        create_teacher("test:tiny", weights=str(tmp_path / "junk.safetensors"))


# ---------------------------------------------------------------- hub


@pytest.fixture()
def no_hub(monkeypatch, tmp_path):
    """Simulate a machine without network and with an empty Hugging Face cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(weights, "hub_reachable", lambda: False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))


@pytest.mark.parametrize("name", ["timm:vit_tiny_patch16_224.augreg_in21k", "open_clip:ViT-B-32@openai"])
def test_hub_unreachable_fails_fast_with_advice(no_hub, name):
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    start = time.perf_counter()
    with pytest.raises(TeacherUnavailable) as info:
        create_teacher(name)
    assert time.perf_counter() - start < 10
    assert "No network access to the hub — pass --weights FILE.safetensors or --random-init (for tests/demos)." in str(info.value)
    assert "could not be reached" in str(info.value)
    assert constants.HF_HUB_OFFLINE == before


def test_hub_mode_restores_offline_flag():
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    with weights.hub_mode(False):
        assert constants.HF_HUB_OFFLINE is True
    assert constants.HF_HUB_OFFLINE == before


def test_failed_download_becomes_teacher_unavailable(monkeypatch):
    monkeypatch.setattr(weights, "hub_reachable", lambda: True)

    def fail(name, **kw):
        assert kw["pretrained"] is True
        raise OSError("connection reset")

    monkeypatch.setattr(timm_teacher, "_create_model", fail)
    with pytest.raises(TeacherUnavailable, match="the download failed .*connection reset.*--random-init"):
        create_teacher("dinov2")


# ---------------------------------------------------------------- SAM


@pytest.fixture()
def small_sam(monkeypatch):
    """Shrink samvit_base_patch16 (same class and code path) so it builds in milliseconds."""
    real = timm_teacher._create_model

    def create(name, **kw):
        assert "img_size" not in kw  # SAM is built at its native size
        return real(name, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=[1], neck_chans=16, **kw)

    monkeypatch.setattr(timm_teacher, "_create_model", create)


def test_sam_adapter_block_outputs_without_neck(small_sam, tmp_path):
    t = create_teacher("sam", random_init=True, resolution=64)
    assert t.name == "timm:samvit_base_patch16.sa1b"
    assert (t.width, t.patch_size, t.num_blocks, t.num_prefix_tokens, t.default_layers, t.grid) == (32, 16, 2, 0, (0, 1), (4, 4))
    assert t.preprocess.resize == "longest-pad" and t.preprocess.mean == (0.485, 0.456, 0.406)
    assert isinstance(t.model.neck, torch.nn.Identity)
    x = _x((1, 3, 64, 64))
    maps, prefix = t.forward_layers(x, (1, 0))
    assert prefix is None and [m.shape for m in maps] == [(1, 4, 4, 32)] * 2
    direct = t.model.forward_intermediates(x, indices=[0, 1], norm=False, intermediates_only=True)
    assert torch.equal(maps[0], direct[1].permute(0, 2, 3, 1)) and torch.equal(maps[1], direct[0].permute(0, 2, 3, 1))
    # a weights file without the (discarded) neck loads
    path = tmp_path / "sam.safetensors"
    save_file({k: v.contiguous() for k, v in t.model.state_dict().items()}, str(path))
    loaded = create_teacher("sam", weights=str(path), resolution=64)
    assert torch.equal(loaded.forward_layers(x, (1,))[0][0], maps[0])


# ---------------------------------------------------------------- open_clip


@pytest.fixture(scope="module")
def tiny_clip_name(tmp_path_factory) -> str:
    import open_clip

    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 3, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
    }
    path = tmp_path_factory.mktemp("oc") / "sak-tiny-clip.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return "open_clip:sak-tiny-clip"


def test_open_clip_hooks_equal_manual_forward(tiny_clip_name):
    t = create_teacher(tiny_clip_name, random_init=True, seed=2)
    assert (t.name, t.weights_id, t.width, t.patch_size, t.num_blocks, t.num_prefix_tokens, t.grid) == (
        "open_clip:sak-tiny-clip", "random-init:2", 32, 8, 3, 1, (4, 4),
    )
    assert t.default_layers == (0, 1, 2)
    assert t.preprocess.resolution == (32, 32) and t.preprocess.mean == (0.48145466, 0.4578275, 0.40821073)
    x = _x((2, 3, 32, 32))
    maps, prefix = t.forward_layers(x, (2, 0))
    with torch.no_grad():
        h = t.visual._embeds(x)
        outs = []
        for blk in t.visual.transformer.resblocks:
            h = blk(h)
            outs.append(h)
        ref = t.visual.forward_intermediates(x, indices=[0, 2], intermediates_only=True, output_fmt="NLC", output_extra_tokens=True)
    for got, got_prefix, i in zip(maps, prefix, (2, 0), strict=True):
        assert got.shape == (2, 4, 4, 32) and got_prefix.shape == (2, 1, 32)
        assert torch.equal(got, outs[i][:, 1:].reshape(2, 4, 4, 32))
        assert torch.equal(got_prefix, outs[i][:, :1])
    assert torch.equal(maps[1].reshape(2, 16, 32), ref["image_intermediates"][0])
    again, _ = create_teacher(tiny_clip_name, random_init=True, seed=2).forward_layers(x, (2, 0))
    assert all(torch.equal(u, v) for u, v in zip(maps, again, strict=True))


def test_open_clip_weights_file_full_clip_state_and_resolution(tiny_clip_name, tmp_path):
    import open_clip

    src = create_teacher(tiny_clip_name, random_init=True, seed=5)
    full = open_clip.create_model("sak-tiny-clip")
    full.visual.load_state_dict(src.visual.state_dict())
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(path))
    loaded = create_teacher(tiny_clip_name, weights=str(path))
    assert loaded.weights_id == f"file:{sha256_file(path)}"
    x = _x((1, 3, 32, 32))
    assert all(torch.equal(u, v) for u, v in zip(src.forward_layers(x, (1,))[0], loaded.forward_layers(x, (1,))[0], strict=True))
    bigger = create_teacher(tiny_clip_name, weights=str(path), resolution=48)
    assert bigger.grid == (6, 6)
    assert bigger.forward_layers(_x((1, 3, 48, 48)), (2,))[0][0].shape == (1, 6, 6, 32)


# ---------------------------------------------------------------- preprocessing


def test_preprocess_squash_exact_values():
    pre = Preprocess(resolution=(2, 3), mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    img = np.array([[[0, 255, 51], [255, 0, 102], [51, 51, 51]], [[0, 0, 0], [255, 255, 255], [102, 204, 0]]], np.uint8)
    img.flags.writeable = False  # decoded images are often read-only; that must not warn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = pre(img)
    ref = (torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255 - torch.tensor([0.5, 0.25, 0.0])[:, None, None]) / torch.tensor(
        [0.5, 0.25, 1.0]
    )[:, None, None]
    assert out.dtype == torch.float32 and torch.equal(out, ref)
    assert out[0, 0, 0].item() == -1.0 and out[1, 0, 0].item() == 3.0
    # a constant image stays constant through the bicubic squash
    const = np.full((5, 7, 3), 255, np.uint8)
    assert torch.allclose(Preprocess(resolution=(4, 4), mean=(0, 0, 0), std=(1, 1, 1))(const), torch.ones(3, 4, 4))


def test_preprocess_longest_pad_exact_values():
    pre = Preprocess(resolution=(8, 8), resize="longest-pad", mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    img = np.zeros((2, 4, 3), np.uint8)
    img[..., 0] = 255  # constant colour: resizing cannot change it
    out = pre(img)
    assert out.shape == (3, 8, 8)
    # longest side 4 -> 8: the image fills rows 0..3, rows 4..7 are zero padding (after normalization)
    assert torch.equal(out[:, 4:], torch.zeros(3, 4, 8))
    assert torch.allclose(out[0, :4], torch.full((4, 8), 2.0))
    assert torch.allclose(out[1, :4], torch.full((4, 8), -1.0)) and torch.allclose(out[2, :4], torch.full((4, 8), -0.5))
