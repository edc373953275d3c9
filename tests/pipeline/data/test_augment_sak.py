"""Official SAK views (``--aug sak``) and the official val padding, against the official functions.

Golden values: research/official_recipe.md G5 (innovator-zero/SAK c468ae9, ``datasets/custom_transforms.py``).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from sak.manifests.errors import ConfigError
from sak.pipeline.data.augment import (
    POLICIES,
    SakView,
    ViewParams,
    apply_view_image,
    apply_view_label,
    pad_eval_image,
    pad_eval_label,
    parse_view,
    sample_view,
)
from sak.pipeline.data.augment_sak import photometric
from sak.pipeline.data.cvops import resize_linear
from sak.student.data.cached import normalize_image

SHA = "ab" * 32
SEMSEG = np.array([[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2], [3, 3, 255, 255, 2, 2], [3, 3, 255, 255, 2, 2]], np.int64)
DEPTH = np.array([[1, 2, 3, 4, 5, 0]] * 4, np.float32)


def _view(**kw) -> SakView:
    base = dict(image_hw=(4, 6), out_hw=(4, 6), scaled_hw=(4, 6))
    return SakView(**{**base, **kw})


def test_policy_names():
    assert POLICIES == ("none", "sak", "sak-v1")
    assert isinstance(sample_view(SHA, 0, (8, 10)), SakView)  # the official policy is the default
    assert isinstance(sample_view(SHA, 0, (8, 10), policy="sak-v1"), ViewParams)


def test_scaled_labels_and_depth_equal_official_random_scaling():
    # RandomScaling.scale (custom_transforms.py:83-104): labels INTER_NEAREST, depth divided by the scale
    v = _view(scale=1.5, scaled_hw=(6, 9), out_hw=(6, 9))
    sem = apply_view_label(SEMSEG, v, "semseg")
    assert sem[:3].tolist() == [[0, 0, 0, 1, 1, 1, 2, 2, 2]] * 3
    assert sem[3:].tolist() == [[3, 3, 3, 255, 255, 255, 2, 2, 2]] * 3
    depth = apply_view_label(DEPTH, v, "depth")
    want = np.array([1, 1, 2, 3, 3, 4, 5, 5, 0], np.float32) / np.float32(1.5)
    assert np.array_equal(depth[0].numpy(), want)  # [0.66667, 0.66667, 1.33333, 2, 2, 2.66667, 3.33333, 3.33333, 0]
    half = _view(scale=0.5, scaled_hw=(2, 3), out_hw=(2, 3))
    assert apply_view_label(SEMSEG, half, "semseg").tolist() == [[0, 1, 2], [3, 255, 2]]
    assert apply_view_label(DEPTH, half, "depth").tolist() == [[2, 6, 10], [2, 6, 10]]
    q = _view(scale=0.75, scaled_hw=(3, 4), out_hw=(3, 4))
    np.testing.assert_allclose(apply_view_label(DEPTH, q, "depth")[0], [1.33333, 2.66667, 5.33333, 6.66667], atol=1e-5)
    # the image: the same scaling, then PhotoMetricDistortion's uint8 truncation and HSV round trip
    img = np.arange(72, dtype=np.float32).reshape(4, 6, 3) * 3.0
    out = apply_view_image(torch.from_numpy(img / 255).permute(2, 0, 1), v)
    expect = photometric(resize_linear(img, (6, 9)), v)
    assert torch.equal(out, torch.from_numpy(expect).permute(2, 0, 1).float().div(255))


def test_crop_retry_draws_eleven_locations_on_a_one_class_label():
    # RandomCrop (custom_transforms.py:163-174): 10 checks, then the 11th location unchecked
    one_class = np.ones((20, 30), np.int64)
    v = sample_view(SHA, 0, (20, 30), crop_hw=(8, 8), semseg=one_class)
    assert v.crop_draws == 11
    assert sample_view(SHA, 0, (20, 30), crop_hw=(8, 8)).crop_draws == 1  # no semseg label: no retry
    mixed = np.random.default_rng(0).integers(0, 3, (20, 30))
    mixed[::3] = 255  # ignored pixels are not counted
    for view in range(20):
        w = sample_view(SHA, view, (20, 30), crop_hw=(8, 8), semseg=mixed)
        assert w.crop_draws == 1  # every crop holds three classes near 1/3 each
    # a label whose crops mostly fail: the accepted crop passes the official check
    corner = np.zeros((20, 30), np.int64)
    corner[:6, :6] = 1
    for view in range(20):
        w = sample_view(SHA, view, (20, 30), seed=1, crop_hw=(8, 8), semseg=corner)
        crop = apply_view_label(corner, w, "semseg").numpy()
        _, counts = np.unique(crop[crop != 255], return_counts=True)
        assert w.crop_draws == 11 or (len(counts) > 1 and counts.max() / counts.sum() < 0.75)


def test_flip_negates_normals_x_and_mirrors_depth():
    # RandomHorizontallyFlip (custom_transforms.py:187-195)
    v = _view(flip=True)
    normals = np.tile(np.array([0.6, 0.0, 0.8], np.float32), (4, 6, 1))
    out = apply_view_label(normals, v, "normals")
    assert out[0, 0].tolist() == pytest.approx([-0.6, 0.0, 0.8])
    assert apply_view_label(DEPTH, v, "depth")[0].tolist() == [0, 5, 4, 3, 2, 1]


def test_pad_5x9_centred_with_every_fill_and_ignore():
    # PadImage((5, 9)) on 4x6 (custom_transforms.py:212-246): rows 0-3 / cols 1-6 hold the image
    v = _view(out_hw=(5, 9))
    assert v.pad_tl == (0, 1)
    sem = apply_view_label(SEMSEG, v, "semseg")
    assert sem[0].tolist() == [255, 0, 0, 1, 1, 2, 2, 255, 255] and sem[4].tolist() == [255] * 9
    edge = apply_view_label(np.array([[0, 1, 0, 0, 1, 0]] * 4, np.float32), v, "edge")
    assert edge[0].tolist() == [255, 0, 1, 0, 0, 1, 0, 255, 255] and edge[4].tolist() == [255] * 9
    assert apply_view_label(np.ones((4, 6), np.float32), v, "saliency")[:, 0].tolist() == [255] * 5
    depth = apply_view_label(DEPTH, v, "depth")  # 0 = invalid = ignored (official: 0 -> 255, :302-304)
    assert depth[0].tolist() == [0, 1, 2, 3, 4, 5, 0, 0, 0] and depth[4].tolist() == [0] * 9
    normals = np.tile(np.array([0.6, 0.0, 0.8], np.float32), (4, 6, 1))
    n = apply_view_label(normals, v, "normals")  # zero vectors = ignored (official: norm 0 -> 255, :290-296)
    assert n[:, 0].abs().sum() == 0 and n[4].abs().sum() == 0 and n[0, 1].tolist() == pytest.approx([0.6, 0, 0.8])
    # AddIgnoreRegions (:297-301): a parts map of only background and 255 is all ignored; one part keeps it
    assert apply_view_label(np.zeros((4, 6), np.int64), v, "parts").eq(255).all()
    parts = np.zeros((4, 6), np.int64)
    parts[1, 1] = 3
    kept = apply_view_label(parts, v, "parts")
    assert kept[1, 2] == 3 and kept[0, 1] == 0 and kept[0, 0] == 255
    # the image: padded with 0 after normalization
    img = np.arange(72, dtype=np.float32).reshape(4, 6, 3) * 3.0
    x = normalize_image(apply_view_image(torch.from_numpy(img / 255).permute(2, 0, 1), v))
    assert x.shape == (3, 5, 9) and x[:, :, 0].eq(0).all() and x[:, 4].eq(0).all() and x[:, :, 7:].eq(0).all()


def test_eval_pad_and_normalize_equal_official_val_transform():
    # val transform (custom_transforms.py:30-38): Normalize, PadImage, no resize
    img = np.arange(72, dtype=np.float32).reshape(4, 6, 3) * 3.0
    x = normalize_image(pad_eval_image(torch.from_numpy(img).permute(2, 0, 1) / 255, (5, 9)))
    row0 = [0, -2.1179, -1.96378, -1.80966, -1.65554, -1.50141, -1.34729, 0, 0]  # G5 PadImage image ch0
    np.testing.assert_allclose(x[0, 0], row0, atol=1e-5)
    assert x[:, 4].eq(0).all()
    assert pad_eval_label(SEMSEG, (5, 9), "semseg")[0].tolist() == [255, 0, 0, 1, 1, 2, 2, 255, 255]
    # Normalize (custom_transforms.py:264-274)
    px = torch.tensor([[0, 255, 124], [0, 255, 116], [0, 255, 104]], dtype=torch.float32)[:, None, :] / 255
    np.testing.assert_allclose(normalize_image(px)[:, 0].T, [[-2.1179, -2.03571, -1.80444], [2.24891, 2.42857, 2.64],
                                                             [0.00557, -0.0049, 0.00819]], atol=1e-5)
    with pytest.raises(ConfigError, match="larger than the student input 4x4.*eval_resize"):
        pad_eval_image(torch.zeros(3, 4, 6), (4, 4))


def test_replay_twice_and_after_json_gives_identical_bytes():
    g = np.random.default_rng(0)
    img = torch.from_numpy(g.integers(0, 256, (3, 37, 45)).astype(np.float32) / 255)
    sem = g.integers(0, 4, (37, 45)).astype(np.int64)
    depth = g.uniform(0.5, 5, (37, 45)).astype(np.float32)
    for view in range(8):
        p = sample_view(SHA, view, (37, 45), seed=3, crop_hw=(32, 40), semseg=sem)
        q = parse_view(p.to_json())
        assert q == p and q.to_json() == p.to_json()
        a, b = apply_view_image(img, p), apply_view_image(img.clone(), q)
        assert a.shape == (3, 32, 40) and torch.equal(a, b)
        assert torch.equal(apply_view_label(depth, p, "depth"), apply_view_label(depth, q, "depth"))
    assert sample_view(SHA, 1, (37, 45), seed=3, semseg=sem) == sample_view(SHA, 1, (37, 45), seed=3, semseg=sem)


def _h(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]


def test_old_v1_view_replays_exactly_as_before():
    # a view stored by sak before issue 12 (no policy key); the hashes were computed with that code
    # (pipeline/data/augment.py at 8134eb7): bilinear antialiased scale, flip, torchvision photometric,
    # top-left crop and pad with edge/saliency 0, depth kept
    stored = ('{"brightness":0.009599,"contrast":0.997575,"contrast_last":true,"crop_box":[0,1,32,36],"flip":true,'
              '"hue":0.044429,"image_hw":[30,40],"saturation":0.994089,"scale":1.049314,"scaled_hw":[31,42],"view":5}')
    v = parse_view(stored)
    assert isinstance(v, ViewParams) and v.to_json() == stored
    g = np.random.default_rng(7)
    img = torch.from_numpy(g.integers(0, 256, (3, 30, 40)).astype(np.float32) / 255)
    labels = {"semseg": g.integers(0, 40, (30, 40)).astype(np.int64), "depth": g.uniform(0, 5, (30, 40)).astype(np.float32),
              "normals": g.uniform(-1, 1, (30, 40, 3)).astype(np.float32),
              "edge": (g.random((30, 40)) > 0.8).astype(np.float32),
              "saliency": (g.random((30, 40)) > 0.5).astype(np.float32), "parts": np.zeros((30, 40), np.int64)}
    assert _h(apply_view_image(img, v)) == "6f2ea9408eccdd0a"
    want = {"semseg": "1469e12153a5eaeb", "depth": "28ac35503a6274e6", "normals": "7921cf7116601548",
            "edge": "c30131a05144dbd0", "saliency": "e962d1196f403e77", "parts": "61a9d401366b54a1"}
    assert {t: _h(apply_view_label(lab, v, t)) for t, lab in labels.items()} == want
    assert apply_view_label(labels["edge"], v, "edge")[31].eq(0).all()  # v1 pads edge with 0
