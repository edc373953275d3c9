"""PASCAL-Context labels from MATLAB files: boundaries from the 459-class LabelMap, human parts from PASCAL-Part.

Golden arrays come from the official loader's calls (``datasets/pascal_context.py:267-274``:
``thin(|cv2.Laplacian(LabelMap, cv2.CV_64F)| > 0)`` with ``skimage.morphology.thin``), run once with
OpenCV 5.1 / scikit-image 0.26 (research doc G6, and two more maps derived the same way).
"""

from __future__ import annotations

import numpy as np
import pytest

from sak.manifests.errors import BadImage, DatasetError
from sak.pipeline.data.labels import load_label
from sak.pipeline.tasks.pascal import HUMAN_PART_GROUPS, context_boundaries, laplacian4, thin

scipy_io = pytest.importorskip("scipy.io")


def _grid(rows: list[str]) -> np.ndarray:
    return np.array([[int(c) for c in row] for row in rows])


def _g6_label_map(dtype) -> np.ndarray:
    # research doc G6: 0 in rows 0-4 / cols 0-3, 5 in rows 0-4 / cols 4-7, 9 in rows 5-7
    lm = np.zeros((8, 8), dtype)
    lm[:, 4:] = 5
    lm[5:, :] = 9
    return lm


@pytest.mark.parametrize("dtype", [np.uint16, np.float64])
def test_g6_boundary_pixels(dtype):
    lm = _g6_label_map(dtype)
    # official cv2.Laplacian(LabelMap, CV_64F) rows 3-5 (pascal_context.py:269; golden3.out)
    lap = laplacian4(lm)
    np.testing.assert_array_equal(lap[3], [0, 0, 0, 5, -5, 0, 0, 0])
    np.testing.assert_array_equal(lap[4], [9, 9, 9, 14, -1, 4, 4, 4])
    np.testing.assert_array_equal(lap[5], [-9, -9, -9, -9, -4, -4, -4, -4])
    raw = np.abs(lap) > 0  # cols 3-4 in rows 0-3, all of rows 4-5
    assert set(map(tuple, np.argwhere(raw))) == {(r, c) for r in range(4) for c in (3, 4)} | {
        (r, c) for r in (4, 5) for c in range(8)}
    # after skimage thin (pascal_context.py:273; research doc G6)
    edge = context_boundaries(lm)
    assert edge.dtype == np.float32
    assert np.argwhere(edge).tolist() == [[1, 3], [2, 3], [3, 3], [4, 3], [4, 4], [5, 0], [5, 1], [5, 2], [5, 5], [5, 6]]


def test_g6_stripes_middle_label_is_not_an_edge():
    # labels 1|1|2|3|3: Laplacian columns [0, 1, 0, -1, 0], so the label-2 column is no edge (research doc G6)
    lm = np.array([[1, 1, 2, 3, 3]] * 5, np.uint16)
    np.testing.assert_array_equal(laplacian4(lm)[0], [0, 1, 0, -1, 0])
    np.testing.assert_array_equal(context_boundaries(lm), _grid(["01010"] * 5))


# Two more maps run through the official calls (cv2 5.1 Laplacian + skimage 0.26 thin), as digit rows.
_RANDOM_CASES = [
    (["22211133333", "22211133333", "22211133333", "00000000000", "00000700000",
      "00000000000", "22211111100", "22211111100", "22211111100", "33322222200"],
     ["00000000000", "00010000000", "00101000000", "11011111110", "00001100000",
      "00011110000", "11101001000", "00110000100", "01010001010", "11111111100"]),
    (["0202201", "1102011", "0121220", "0102222", "1222002", "2010221"],
     ["0100000", "1010000", "1001000", "0110000", "0100000", "1000000"]),
]


@pytest.mark.parametrize("label_rows, edge_rows", _RANDOM_CASES)
def test_boundaries_match_official_on_other_maps(label_rows, edge_rows):
    np.testing.assert_array_equal(context_boundaries(_grid(label_rows).astype(np.uint16)), _grid(edge_rows))


def test_thin_keeps_one_pixel_lines_and_removes_thick_blobs():
    line = np.zeros((5, 7), bool)
    line[2, 1:6] = True
    np.testing.assert_array_equal(thin(line), line)  # already thin: unchanged
    block = np.zeros((7, 7), bool)
    block[1:6, 1:6] = True
    out = thin(block)
    assert 0 < out.sum() < block.sum() and not (out & ~block).any()


def _person(parts: list[tuple[str, np.ndarray]], mask: np.ndarray, classind: int = 15) -> tuple:
    if parts:
        arr = np.empty((1, len(parts)), dtype=[("part_name", "O"), ("mask", "O")])
        for j, (name, m) in enumerate(parts):
            arr[0, j] = (name, m.astype(np.uint8))
    else:
        arr = np.zeros((0, 0))
    return ("person" if classind == 15 else "cat", float(classind), mask.astype(np.uint8), arr)


def _save_anno(path, objects: list[tuple]) -> None:
    arr = np.empty((1, len(objects)), dtype=[("class", "O"), ("classind", "O"), ("mask", "O"), ("parts", "O")])
    for i, obj in enumerate(objects):
        arr[0, i] = obj
    scipy_io.savemat(str(path), {"anno": {"imname": path.stem, "objects": arr}})


def _box(r0, r1, c0, c1, shape=(4, 6)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def test_human_parts_mat_as_official(tmp_path):
    # pascal_context.py:282-321: persons (class 15) with parts; parts -> 6 groups (HUMAN_PART, :15-40);
    # later parts and persons overwrite earlier ones; a cat's parts and a part-less person are skipped.
    path = tmp_path / "2008_000001.mat"
    _save_anno(path, [
        _person([("head", _box(0, 1, 0, 2)), ("torso", _box(1, 3, 0, 2)), ("llleg", _box(2, 4, 1, 2))], _box(0, 4, 0, 2)),
        _person([("head", _box(0, 2, 3, 4))], _box(0, 4, 3, 6), classind=8),  # a cat: ignored
        _person([], _box(0, 4, 4, 6)),  # a person without parts: ignored
        _person([("rhand", _box(3, 4, 4, 6)), ("neck", _box(0, 1, 1, 2))], _box(0, 4, 4, 6)),
    ])
    out = load_label("parts", path, dataset="pascal")
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, _grid(["120000", "220000", "260000", "060044"]))
    assert sorted(set(HUMAN_PART_GROUPS.values())) == [1, 2, 3, 4, 5, 6] and len(HUMAN_PART_GROUPS) == 24


def test_human_parts_mat_without_person_is_background(tmp_path):
    path = tmp_path / "2008_000002.mat"
    _save_anno(path, [_person([("head", _box(0, 1, 0, 1))], _box(0, 2, 0, 2), classind=8)])
    np.testing.assert_array_equal(load_label("parts", path, dataset="pascal"), np.zeros((4, 6)))


def test_edge_from_context_mat(tmp_path):
    path = tmp_path / "2008_000001.mat"
    scipy_io.savemat(str(path), {"LabelMap": _g6_label_map(np.uint16)})
    edge = load_label("edge", path, dataset="pascal")
    np.testing.assert_array_equal(edge, context_boundaries(_g6_label_map(np.uint16)))
    assert edge.sum() == 10


def test_unreadable_or_unknown_mat_is_refused_with_fix(tmp_path):
    bad = tmp_path / "a.mat"
    bad.write_bytes(b"MATLAB 5.0 MAT-file, garbage")
    with pytest.raises(BadImage, match="MATLAB v5") as info:
        load_label("edge", bad, dataset="pascal")
    assert str(bad) in str(info.value)
    other = tmp_path / "b.mat"
    scipy_io.savemat(str(other), {"depth": np.zeros((2, 2))})
    with pytest.raises(DatasetError, match="holds \\['depth'\\].*LabelMap"):
        load_label("edge", other, dataset="pascal")
    with pytest.raises(DatasetError, match="does not exist"):
        load_label("parts", tmp_path / "missing.mat", dataset="pascal")
