"""The procedural PASCAL-Context-layout and unlabelled-folder demo sets (issue 15): indexable, labels that decode and
agree, deterministic, about as fast as the NYUD demo."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sak.manifests.errors import DatasetError
from sak.pipeline.data.datasets import index_dataset, open_dataset, write_dataset_index
from sak.pipeline.data.demo import make_demo_dataset
from sak.pipeline.data.demo_pascal import PERSON, make_demo_folder, make_demo_pascal
from sak.pipeline.tasks.pascal import context_boundaries, read_mat

H, W = 40, 52


@pytest.fixture(scope="module")
def pascal(tmp_path_factory) -> Path:
    return make_demo_pascal(tmp_path_factory.mktemp("p") / "pascal", n=8, size=(H, W), seed=0)


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_indexes_as_pascal_with_its_tasks_and_no_depth(tmp_path, pascal):
    table = index_dataset(pascal, workers=2)
    write_dataset_index(tmp_path / "cache", "pascal", table, pascal)
    ds = open_dataset(tmp_path / "cache", "pascal")
    assert ds.format == "pascal" and len(ds) == 8
    assert ds.splits() == {"train": 6, "val": 2}
    assert ds.tasks == ("semseg", "normals", "edge", "parts", "saliency")  # registry order; no depth
    assert {t: ds.task_channels(t) for t in ds.tasks} == {"semseg": 21, "normals": 3, "edge": 1, "parts": 7,
                                                          "saliency": 1}
    assert all(r["status"] == "ok" and (r["width"], r["height"]) == (W, H) and r["path"].endswith(".jpg")
               for r in ds.ok_rows())


def test_labels_decode_and_agree(tmp_path, pascal):
    write_dataset_index(tmp_path / "cache", "pascal", index_dataset(pascal, workers=2), pascal)
    ds = open_dataset(tmp_path / "cache", "pascal")
    people, seen_parts = 0, set()
    for row in ds.ok_rows():
        semseg, parts = ds.load_label(row, "semseg"), ds.load_label(row, "parts")
        sal, normals, edge = ds.load_label(row, "saliency"), ds.load_label(row, "normals"), ds.load_label(row, "edge")
        assert semseg.shape == parts.shape == sal.shape == edge.shape == (H, W) and normals.shape == (H, W, 3)
        assert set(np.unique(semseg)) <= {0, 5, 9, 11, 15, 16, 18, 20} and (semseg > 0).any()
        assert set(np.unique(parts)) <= set(range(7))
        np.testing.assert_array_equal(parts > 0, semseg == PERSON)  # parts exactly on the person pixels
        np.testing.assert_array_equal(sal, (semseg > 0).astype(np.float32))
        np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=0.02)
        context = read_mat(ds.label_path(row, "edge"))
        assert context.dtype == np.uint16 and context.shape == (H, W)
        np.testing.assert_array_equal(edge, context_boundaries(context))
        assert edge.any() and set(np.unique(edge)) <= {0.0, 1.0}
        people += bool((semseg == PERSON).any())
        seen_parts |= set(np.unique(parts).tolist())
    assert people >= 4 and seen_parts == set(range(7))  # every part group of the 7-class task appears


def test_same_seed_same_bytes_other_seed_other_images(tmp_path, pascal):
    again = make_demo_pascal(tmp_path / "again", n=8, size=(H, W), seed=0)
    assert _digests(again) == _digests(pascal)
    other = _digests(make_demo_pascal(tmp_path / "other", n=8, size=(H, W), seed=1))
    assert other["JPEGImages/2008_000000.jpg"] != _digests(pascal)["JPEGImages/2008_000000.jpg"]


def test_folder_demo_is_an_unlabelled_image_folder(tmp_path):
    root = make_demo_folder(tmp_path / "photos", n=8, size=(32, 32), seed=0)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        *(f"train/{i:06d}.jpg" for i in range(6)), "val/000006.jpg", "val/000007.jpg"]
    table = index_dataset(root, workers=2)
    write_dataset_index(tmp_path / "cache", "photos", table, root)
    ds = open_dataset(tmp_path / "cache", "photos")
    assert (ds.format, ds.tasks, ds.splits()) == ("folder", (), {"train": 6, "val": 2})
    assert Image.open(root / "val" / "000007.jpg").size == (32, 32)
    assert _digests(make_demo_folder(tmp_path / "again", n=8, size=(32, 32), seed=0)) == _digests(root)


def test_about_as_fast_as_the_nyud_demo(tmp_path):
    """Measured in one run (load-independent ratio): pascal ~1.8x, folder ~0.8x the NYUD demo's time."""
    times = []
    for make, size in ((make_demo_dataset, (64, 80)), (make_demo_pascal, (72, 96)), (make_demo_folder, (64, 64))):
        start = time.perf_counter()
        make(tmp_path / make.__name__, n=24, size=size, seed=0)
        times.append(time.perf_counter() - start)
    assert times[1] < 3.5 * times[0] and times[2] < 2.5 * times[0], times


@pytest.mark.parametrize("kw", [{"n": 1}, {"size": (4, 80)}])
@pytest.mark.parametrize("make", [make_demo_pascal, make_demo_folder])
def test_rejects_bad_arguments(tmp_path, make, kw):
    with pytest.raises(DatasetError):
        make(tmp_path / "x", **kw)
