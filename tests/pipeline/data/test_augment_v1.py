"""sak-v1 views (sak's augmentation before issue 12): deterministic sampling, exact replay, label semantics.

Stores written before issue 12 hold these views; they must replay exactly as they always did, so
these tests keep their expectations and only name the policy (``policy="sak-v1"``), which was the
default then."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sak.manifests.config import canonical_json
from sak.manifests.errors import ConfigError
from sak.pipeline.data.augment import (
    ViewParams,
    apply_view_image,
    apply_view_label,
    identity_view,
    sample_view,
)
from sak.pipeline.store.spec import FeatureSpec
from sak.pipeline.tasks import get_task

SHA = "ab" * 32


def _img(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def _plain(view: ViewParams, **changes) -> ViewParams:
    """A view with no photometric change, geometry edited by ``changes``."""
    return dataclasses.replace(view, brightness=0.0, contrast=1.0, saturation=1.0, hue=0.0, **changes)


def test_sampling_is_a_pure_function_of_sha_view_seed():
    a = sample_view(SHA, 3, (48, 64), seed=7, crop_hw=(32, 32), policy="sak-v1")
    assert a == sample_view(SHA, 3, (48, 64), seed=7, crop_hw=(32, 32), policy="sak-v1")
    assert a != sample_view(SHA, 4, (48, 64), seed=7, crop_hw=(32, 32), policy="sak-v1")
    assert a != sample_view(SHA, 3, (48, 64), seed=8, crop_hw=(32, 32), policy="sak-v1")
    assert a != sample_view("cd" * 32, 3, (48, 64), seed=7, crop_hw=(32, 32), policy="sak-v1")
    state = np.random.get_state()[1].copy()
    sample_view(SHA, 0, (48, 64), policy="sak-v1")
    assert np.array_equal(np.random.get_state()[1], state)  # no global RNG use
    assert ViewParams.from_json(a.to_json()) == a
    assert canonical_json(a) == a.to_json()
    assert a.out_hw == (32, 32) and a.view == 3


def test_sak_policy_ranges_over_many_views():
    views = [sample_view(SHA, v, (60, 80), crop_hw=(40, 40), policy="sak-v1") for v in range(300)]
    assert all(0.5 <= p.scale <= 2.0 for p in views)
    assert all(abs(p.scaled_hw[0] - 60 * p.scale) <= 0.5 and abs(p.scaled_hw[1] - 80 * p.scale) <= 0.5 for p in views)
    flips = sum(p.flip for p in views)
    assert 110 < flips < 190
    assert {p.contrast_last for p in views} == {True, False}
    for field, ident, lo, hi in [("brightness", 0.0, -32 / 255, 32 / 255), ("contrast", 1.0, 0.5, 1.5), ("saturation", 1.0, 0.5, 1.5), ("hue", 0.0, -0.1, 0.1)]:
        values = [getattr(p, field) for p in views]
        on = [v for v in values if v != ident]
        assert 100 < len(on) < 200, field  # p = 0.5
        assert all(lo <= v <= hi for v in on), field
    assert any(p.scaled_hw[0] < 40 for p in views) and any(p.scaled_hw[0] > 100 for p in views)


def test_policy_none_and_identity_view_change_nothing():
    assert sample_view(SHA, 0, (5, 7), policy="none") == identity_view((5, 7))
    ident = identity_view((5, 7))
    assert (ident.scale, ident.scaled_hw, ident.crop_box, ident.flip, ident.out_hw) == (1.0, (5, 7), (0, 0, 5, 7), False, (5, 7))
    img = _img(5, 7)
    out = apply_view_image(img, ident)
    assert torch.equal(out, img) and out.data_ptr() != img.data_ptr()
    sem = np.arange(35, dtype=np.int64).reshape(5, 7)
    assert torch.equal(apply_view_label(sem, ident, "semseg"), torch.from_numpy(sem))
    normals = np.random.default_rng(0).uniform(-1, 1, (5, 7, 3)).astype(np.float32)
    assert torch.equal(apply_view_label(normals, ident, "normals"), torch.from_numpy(normals))
    with pytest.raises(ConfigError, match="policy"):
        sample_view(SHA, 0, (5, 7), policy="randaug")


def test_replay_is_bit_identical_including_after_json():
    img = _img(48, 64, seed=1)
    sem = torch.randint(0, 40, (48, 64), generator=torch.Generator().manual_seed(1))
    for v in range(6):
        p = sample_view(SHA, v, (48, 64), crop_hw=(40, 40), policy="sak-v1")
        q = ViewParams.from_json(p.to_json())
        a, b = apply_view_image(img, p), apply_view_image(img.clone(), q)
        assert a.shape == (3, 40, 40) and torch.equal(a, b)
        assert 0.0 <= a.min().item() and a.max().item() <= 1.0
        assert torch.equal(apply_view_label(sem, p, "semseg"), apply_view_label(sem, q, "semseg"))


def test_flip_mirrors_and_negates_normal_x():
    normals = torch.from_numpy(np.random.default_rng(2).uniform(-1, 1, (4, 6, 3)).astype(np.float32))
    p = dataclasses.replace(identity_view((4, 6)), flip=True)
    out = apply_view_label(normals, p, "normals")
    mirrored = normals.flip(1)
    assert torch.equal(out[..., 0], -mirrored[..., 0])
    assert torch.equal(out[..., 1:], mirrored[..., 1:])
    sem = torch.arange(24).reshape(4, 6)
    assert torch.equal(apply_view_label(sem, p, "semseg"), sem.flip(1))
    depth = torch.rand(4, 6)
    assert torch.equal(apply_view_label(depth, p, "depth"), depth.flip(1))
    img = _img(4, 6)
    assert torch.equal(apply_view_image(img, p), img.flip(-1))
    assert torch.equal(normals, torch.from_numpy(np.random.default_rng(2).uniform(-1, 1, (4, 6, 3)).astype(np.float32)))


def test_downscale_then_pad_nearest_and_pad_values():
    # 4x6 image at scale 0.5 -> 2x3, cropped/padded to 4x4: nearest rows [1, 3], cols [1, 3, 5]
    p = _plain(identity_view((4, 6)), scale=0.5, scaled_hw=(2, 3), crop_box=(0, 0, 4, 4))
    assert p.valid_hw == (2, 3)
    sem = torch.arange(24).reshape(4, 6)
    out = apply_view_label(sem, p, "semseg")
    assert out.dtype == sem.dtype
    assert out.tolist() == [[7, 9, 11, 255], [19, 21, 23, 255], [255] * 4, [255] * 4]
    assert apply_view_label(sem, p, "parts")[3, 3].item() == 255
    depth = torch.arange(1, 25, dtype=torch.float32).reshape(4, 6)
    d = apply_view_label(depth, p, "depth")
    assert d[:2, :3].tolist() == [[8.0, 10.0, 12.0], [20.0, 22.0, 24.0]]
    assert d[2:].abs().sum().item() == 0 and d[:, 3].abs().sum().item() == 0
    for task in ("edge", "saliency"):
        assert apply_view_label(torch.ones(4, 6), p, task)[3, 3].item() == get_task(task).v1_pad_value == 0
    normals = torch.ones(4, 6, 3)
    n = apply_view_label(normals, p, "normals")
    assert n.shape == (4, 4, 3) and n[:2, :3].eq(1).all() and n[2:].eq(0).all() and n[:, 3].eq(0).all()
    img = torch.ones(3, 4, 6)
    im = apply_view_image(img, p)
    assert im.shape == (3, 4, 4) and torch.equal(im[:, :2, :3], torch.ones(3, 2, 3)) and im[:, 2:].eq(0).all() and im[:, :, 3].eq(0).all()


def test_upscale_crop_nearest_labels():
    # 2x2 at scale 2 -> 4x4; crop (1, 2, 2, 2): rows 1..2 -> source [0, 1], cols 2..3 -> source [1, 1]
    p = _plain(identity_view((2, 2)), scale=2.0, scaled_hw=(4, 4), crop_box=(1, 2, 2, 2))
    sem = torch.tensor([[1, 2], [3, 4]])
    assert apply_view_label(sem, p, "semseg").tolist() == [[2, 2], [4, 4]]
    assert apply_view_image(torch.full((3, 2, 2), 0.25), p).eq(0.25).all()


def test_photometric_changes_image_only_and_exactly():
    base = identity_view((6, 8))
    img = _img(6, 8, seed=3)
    sem = torch.randint(0, 40, (6, 8))
    depth = torch.rand(6, 8)
    p = dataclasses.replace(base, brightness=0.1, contrast=1.3, saturation=0.6, hue=0.05)
    assert not torch.equal(apply_view_image(img, p), img)
    assert torch.equal(apply_view_label(sem, p, "semseg"), sem)
    assert torch.equal(apply_view_label(depth, p, "depth"), depth)
    bright = dataclasses.replace(base, brightness=0.1)
    assert torch.equal(apply_view_image(img, bright), (img + 0.1).clamp(0, 1))
    contrast = dataclasses.replace(base, contrast=1.3)
    assert torch.equal(apply_view_image(img, contrast), (img * 1.3).clamp(0, 1))
    both_first = dataclasses.replace(base, brightness=0.1, contrast=1.3, contrast_last=False)
    assert torch.equal(apply_view_image(img, both_first), ((img + 0.1).clamp(0, 1) * 1.3).clamp(0, 1))
    gray = torch.full((3, 6, 8), 0.5)
    # grey has no hue or saturation to change (torchvision's grey weights sum to 0.9999)
    assert torch.allclose(apply_view_image(gray, dataclasses.replace(base, hue=0.2, saturation=0.5)), gray, atol=1e-4)


def test_mismatched_sizes_and_tasks_are_explained():
    p = sample_view(SHA, 0, (10, 12), policy="sak-v1")
    with pytest.raises(ConfigError, match=r"sampled for an image of \(10, 12\)"):
        apply_view_image(_img(12, 10), p)
    with pytest.raises(ConfigError, match="unknown task 'albedo'; known tasks: semseg"):
        apply_view_label(torch.zeros(10, 12), p, "albedo")
    with pytest.raises(ConfigError, match="float image"):
        apply_view_image(torch.zeros(3, 10, 12, dtype=torch.uint8), p)
    with pytest.raises(ConfigError, match="does not fit"):
        ViewParams(image_hw=(4, 4), scaled_hw=(4, 4), crop_box=(2, 0, 4, 4))


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 24), w=st.integers(1, 24), ch=st.integers(1, 24), cw=st.integers(1, 24),
    view=st.integers(0, 1000), seed=st.integers(0, 2**31),
)
def test_any_view_gives_out_hw_and_stable_json(h, w, ch, cw, view, seed):
    p = sample_view(SHA, view, (h, w), seed=seed, crop_hw=(ch, cw), policy="sak-v1")
    assert ViewParams.from_dict(p.to_dict()) == p
    assert apply_view_image(torch.rand(3, h, w), p).shape == (3, ch, cw)
    assert apply_view_label(np.zeros((h, w), np.int64), p, "semseg").shape == (ch, cw)
    assert apply_view_label(np.zeros((h, w, 3), np.float32), p, "normals").shape == (ch, cw, 3)


def test_feature_spec_aug_crop():
    base = dict(
        teacher="test:tiny", weights="random-init:0", layers=(1, 3), resolution=(64, 64), resize="squash",
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), patch_size=8, width=32, grid=(8, 8),
    )
    spec = FeatureSpec(**base, aug="sak", views=4, aug_crop=(48, 64))
    assert FeatureSpec.from_json(spec.to_json()) == spec and spec.aug_crop == (48, 64)
    assert spec.spec_id != FeatureSpec(**base, aug="sak", views=4).spec_id
    with pytest.raises(ConfigError, match="aug_crop"):
        FeatureSpec(**base, aug_crop=(48, 64))


def test_read_only_numpy_inputs_are_accepted_without_warnings(recwarn):
    sem = np.arange(12, dtype=np.int64).reshape(3, 4)
    sem.flags.writeable = False
    img = np.random.default_rng(0).random((3, 3, 4)).astype(np.float32)
    img.flags.writeable = False
    p = dataclasses.replace(identity_view((3, 4)), flip=True)
    assert apply_view_label(sem, p, "semseg").tolist() == np.flip(sem, 1).tolist()
    assert torch.equal(apply_view_image(img, p), torch.from_numpy(img.copy()).flip(-1))
    assert not [w for w in recwarn if "not writable" in str(w.message)]
