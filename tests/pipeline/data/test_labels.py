"""Label loading: exact value conventions per task and clear errors naming the file."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from PIL import Image

from sak.manifests.errors import BadImage, DatasetError
from sak.pipeline.data.labels import load_label


def _png(tmp_path, arr, name="l.png", mode=None):
    path = tmp_path / name
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(path)
    return path


def test_semseg_nyud_shifts_and_marks_unlabeled(tmp_path):
    path = _png(tmp_path, np.array([[0, 1, 40, 7]], dtype=np.uint8))
    out = load_label("semseg", path)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [[255, 0, 39, 6]])


def test_semseg_pascal_as_stored(tmp_path):
    path = _png(tmp_path, np.array([[0, 20, 255]], dtype=np.uint8))
    np.testing.assert_array_equal(load_label("semseg", path, dataset="pascal"), [[0, 20, 255]])


def test_semseg_palette_png_gives_indices(tmp_path):
    img = Image.fromarray(np.array([[3, 5]], dtype=np.uint8), "P")
    img.putpalette(list(range(256)) * 3)
    path = tmp_path / "p.png"
    img.save(path)
    np.testing.assert_array_equal(load_label("semseg", path), [[2, 4]])


def test_semseg_rgb_png_is_refused(tmp_path):
    path = _png(tmp_path, np.zeros((2, 2, 3), dtype=np.uint8))
    with pytest.raises(DatasetError, match="single-channel") as info:
        load_label("semseg", path)
    assert str(path) in str(info.value)


def test_parts_as_stored(tmp_path):
    path = _png(tmp_path, np.array([[0, 6, 255]], dtype=np.uint8))
    out = load_label("parts", path, dataset="pascal")
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [[0, 6, 255]])


def test_parts_mat_is_read_not_refused(tmp_path):
    # .mat part files were refused before scipy; now a file that is not MATLAB v5 says so (and how to fix it)
    path = tmp_path / "2008_000001.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file")
    with pytest.raises(BadImage, match="not a readable MATLAB v5") as info:
        load_label("parts", path)
    assert str(path) in str(info.value)


def test_depth_npy_invalid_values_become_zero(tmp_path):
    path = tmp_path / "d.npy"
    np.save(path, np.array([[1.5, np.nan], [-2.0, np.inf]], dtype=np.float64))
    out = load_label("depth", path)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[1.5, 0.0], [0.0, 0.0]])


def test_depth_16bit_png_in_millimetres(tmp_path):
    path = _png(tmp_path, np.array([[0, 1500, 65535]], dtype=np.uint16))
    np.testing.assert_allclose(load_label("depth", path), [[0.0, 1.5, 65.535]], rtol=1e-6)


def test_depth_8bit_png_is_refused(tmp_path):
    path = _png(tmp_path, np.array([[0, 15]], dtype=np.uint8))
    with pytest.raises(DatasetError, match="8-bit"):
        load_label("depth", path)


def test_normals_png_decoding_and_invalid_zero(tmp_path):
    arr = np.array([[[255, 0, 128], [0, 0, 0]]], dtype=np.uint8)
    out = load_label("normals", _png(tmp_path, arr))
    assert out.dtype == np.float32 and out.shape == (1, 2, 3)
    np.testing.assert_allclose(out[0, 0], [1.0, -1.0, 128 / 255 * 2 - 1], atol=1e-6)
    np.testing.assert_array_equal(out[0, 1], [0.0, 0.0, 0.0])


def test_normals_npy(tmp_path):
    path = tmp_path / "n.npy"
    np.save(path, np.array([[[0.0, 0.0, -1.0], [np.nan, 0, 0]]], dtype=np.float32))
    np.testing.assert_array_equal(load_label("normals", path), [[[0, 0, -1], [0, 0, 0]]])


def test_normals_gray_png_is_refused(tmp_path):
    with pytest.raises(DatasetError, match=r"expected \(H, W, 3\)"):
        load_label("normals", _png(tmp_path, np.zeros((2, 2), dtype=np.uint8)))


@pytest.mark.parametrize("task", ["edge", "saliency"])
def test_binary_maps(tmp_path, task):
    out = load_label(task, _png(tmp_path, np.array([[0, 127, 128, 255]], dtype=np.uint8)))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 0, 1, 1]])


def test_pickled_npy_is_never_loaded(tmp_path):
    path = tmp_path / "evil.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match="Pickled arrays are refused") as info:
        load_label("depth", path)
    assert str(path) in str(info.value)


def test_missing_file_names_it(tmp_path):
    path = tmp_path / "gone.png"
    with pytest.raises(DatasetError, match="does not exist") as info:
        load_label("semseg", path)
    assert str(path) in str(info.value)


def test_corrupt_png_is_bad_image(tmp_path):
    path = tmp_path / "bad.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(BadImage) as info:
        load_label("edge", path)
    assert str(path) in str(info.value)


def test_unknown_task(tmp_path):
    with pytest.raises(DatasetError, match="unknown task 'albedo'; known tasks: semseg, depth"):
        load_label("albedo", tmp_path / "x.png")


@pytest.mark.parametrize("name", ["depth.png", "depth.npy", "label.mat"])
def test_a_fifo_named_like_a_label_is_an_error_not_a_hang(tmp_path, name):
    """A label swapped for a FIFO after indexing: training gets a DatasetError naming it at once (the open used to block)."""
    fifo = tmp_path / name
    os.mkfifo(fifo)
    done = threading.Event()
    caught: list[BaseException] = []

    def load() -> None:
        try:
            load_label("depth", fifo)
        except BaseException as exc:  # handed to the test thread
            caught.append(exc)
        done.set()

    threading.Thread(target=load, daemon=True).start()
    assert done.wait(20), "load_label blocked on a FIFO"
    assert len(caught) == 1 and isinstance(caught[0], DatasetError), caught
    assert str(fifo) in str(caught[0]) and "FIFO" in str(caught[0])
