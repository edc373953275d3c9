"""The procedural NYUD-v2 demo set: layout, determinism, labels that agree with each other, learnability."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
from PIL import Image

from sak.manifests.errors import DatasetError
from sak.pipeline.data.demo import OBJECT_CLASSES, camera_intrinsics, make_demo_dataset
from sak.pipeline.data.labels import load_label

H, W = 64, 80


def _ids(root, split):
    return (root / "gt_sets" / f"{split}.txt").read_text().split()


def _digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_splits(demo_nyud):
    train, val = _ids(demo_nyud, "train"), _ids(demo_nyud, "val")
    assert len(train) == 9 and len(val) == 3 and not set(train) & set(val)
    for sid in train + val:
        for rel in (f"images/{sid}.png", f"segmentation/{sid}.png", f"depth/{sid}.npy",
                    f"normals/{sid}.png", f"edge/{sid}.png"):
            assert (demo_nyud / rel).is_file(), rel


def test_same_seed_gives_identical_files(tmp_path, demo_nyud):
    again = make_demo_dataset(tmp_path / "again", n=12, size=(H, W), seed=0)
    assert _digests(again) == _digests(demo_nyud)


def test_other_seed_gives_other_images(tmp_path, demo_nyud):
    other = make_demo_dataset(tmp_path / "other", n=12, size=(H, W), seed=1)
    a, b = _digests(demo_nyud), _digests(other)
    assert a["gt_sets/train.txt"] == b["gt_sets/train.txt"]
    assert all(a[f"images/{s}.png"] != b[f"images/{s}.png"] for s in _ids(demo_nyud, "train"))


def test_sample_depends_only_on_seed_and_index(tmp_path, demo_nyud):
    small = make_demo_dataset(tmp_path / "small", n=3, size=(H, W), seed=0)
    assert (small / "images/000002.png").read_bytes() == (demo_nyud / "images/000002.png").read_bytes()


def _samples(root):
    for sid in _ids(root, "train") + _ids(root, "val"):
        yield {
            "png_semseg": np.asarray(Image.open(root / f"segmentation/{sid}.png")),
            "semseg": load_label("semseg", root / f"segmentation/{sid}.png"),
            "depth": load_label("depth", root / f"depth/{sid}.npy"),
            "normals": load_label("normals", root / f"normals/{sid}.png"),
            "edge": load_label("edge", root / f"edge/{sid}.png"),
            "image": np.asarray(Image.open(root / f"images/{sid}.png")),
        }


def test_label_ranges_and_types(demo_nyud):
    for s in _samples(demo_nyud):
        assert s["image"].shape == (H, W, 3) and s["image"].dtype == np.uint8
        assert s["depth"].shape == (H, W) and s["depth"].dtype == np.float32
        assert np.isfinite(s["depth"]).all() and (s["depth"] > 0.5).all() and (s["depth"] < 20).all()
        assert s["png_semseg"].min() >= 1 and s["png_semseg"].max() <= 40  # no unlabeled pixels
        assert s["semseg"].min() >= 0 and s["semseg"].max() <= 39
        norm = np.linalg.norm(s["normals"], axis=-1)
        np.testing.assert_allclose(norm, 1.0, atol=0.02)  # unit vectors up to 8-bit quantisation
        f, cx, cy = camera_intrinsics(H, W)
        rays = np.stack(np.broadcast_arrays((np.arange(W)[None, :] + 0.5 - cx) / f,
                                            (np.arange(H)[:, None] + 0.5 - cy) / f, 1.0), -1)
        assert ((s["normals"] * rays).sum(-1) < 0.02).all()  # every visible surface faces the camera
        assert set(np.unique(s["edge"])) <= {0.0, 1.0}


def test_edges_are_exactly_the_semseg_boundaries(demo_nyud):
    for s in _samples(demo_nyud):
        c = s["semseg"]
        expected = np.zeros((H, W), dtype=bool)
        for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            shifted = np.full((H + 2, W + 2), -1)
            shifted[1:-1, 1:-1] = c
            neighbour = shifted[1 + dy:H + 1 + dy, 1 + dx:W + 1 + dx]
            expected |= (neighbour != -1) & (neighbour != c)
        np.testing.assert_array_equal(s["edge"] == 1.0, expected)
        assert expected.any()


def test_normals_agree_with_depth_gradients(demo_nyud):
    """Normals from back-projected depth (central differences) match the stored normals inside smooth regions."""
    f, cx, cy = camera_intrinsics(H, W)
    u = (np.arange(W) + 0.5 - cx) / f
    v = (np.arange(H) + 0.5 - cy) / f
    angles = []
    for s in _samples(demo_nyud):
        z = s["depth"].astype(np.float64)
        pts = np.stack([u[None, :] * z, v[:, None] * z, z], -1)
        n = np.cross(pts[1:-1, 2:] - pts[1:-1, :-2], pts[2:, 1:-1] - pts[:-2, 1:-1])
        n /= np.linalg.norm(n, axis=-1, keepdims=True)
        n *= -np.sign((n * pts[1:-1, 1:-1]).sum(-1, keepdims=True))  # face the camera
        stored = s["normals"] / np.linalg.norm(s["normals"], axis=-1, keepdims=True)
        centre = stored[1:-1, 1:-1]
        smooth = np.ones((H - 2, W - 2), dtype=bool)  # 3x3 window of one class and similar normals
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                smooth &= s["semseg"][1 + dy:H - 1 + dy, 1 + dx:W - 1 + dx] == s["semseg"][1:-1, 1:-1]
                smooth &= (stored[1 + dy:H - 1 + dy, 1 + dx:W - 1 + dx] * centre).sum(-1) > np.cos(np.radians(20))
        angles.append(np.degrees(np.arccos(np.clip((n * centre).sum(-1), -1, 1)))[smooth])
    a = np.concatenate(angles)
    assert a.size > 0.8 * 12 * (H - 2) * (W - 2)
    assert np.median(a) < 0.5  # png quantisation is ~0.2 degrees
    assert np.percentile(a, 99) < 3.0  # the rest: two same-class objects overlapping with parallel faces


def test_appearance_predicts_class(demo_nyud):
    """Nearest mean colour (fit on train, scored on val) beats the majority class: the scenes are learnable."""
    samples = list(_samples(demo_nyud))
    train, val = samples[:9], samples[9:]
    classes = sorted({int(c) for s in samples for c in np.unique(s["semseg"])})
    pix = np.concatenate([s["image"].reshape(-1, 3) for s in train]).astype(np.float64)
    lab = np.concatenate([s["semseg"].ravel() for s in train])
    means = np.stack([pix[lab == c].mean(0) if (lab == c).any() else np.full(3, 1e9) for c in classes])
    vpix = np.concatenate([s["image"].reshape(-1, 3) for s in val]).astype(np.float64)
    vlab = np.concatenate([s["semseg"].ravel() for s in val])
    pred = np.asarray(classes)[np.argmin(((vpix[:, None, :] - means[None]) ** 2).sum(-1), axis=1)]
    majority = max((vlab == c).mean() for c in classes)
    assert (pred == vlab).mean() > majority + 0.1


def test_object_classes_are_nyud_classes():
    assert all(1 <= c <= 40 for c in OBJECT_CLASSES)
    assert {shape for shape, _, _ in OBJECT_CLASSES.values()} == {"box", "sphere", "cylinder"}


def test_fast_enough(tmp_path):
    start = time.perf_counter()
    make_demo_dataset(tmp_path / "d", n=96, size=(H, W), seed=3)
    assert time.perf_counter() - start < 30.0  # about 1 s on an idle core: a guard against a pathological slowdown


@pytest.mark.parametrize("kw", [{"n": 1}, {"size": (4, 80)}])
def test_rejects_bad_arguments(tmp_path, kw):
    with pytest.raises(DatasetError):
        make_demo_dataset(tmp_path / "x", **kw)
