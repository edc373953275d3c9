"""OpenCV's resize and uint8 HSV in numpy, against values measured with the official SAK functions.

Golden values: research/official_recipe.md G5, computed by running ``datasets/custom_transforms.py``
(innovator-zero/SAK c468ae9) with OpenCV 5.1. Exhaustive bit-for-bit checks against OpenCV itself
were run once (see ``sak.pipeline.data.cvops``); OpenCV is not a dependency, so they are not repeated here.
"""

from __future__ import annotations

import numpy as np

from sak.pipeline.data.cvops import convert, hsv_to_rgb, nearest_index, resize_linear, rgb_to_hsv


def _g5_image() -> np.ndarray:
    return np.arange(4 * 6 * 3, dtype=np.float32).reshape(4, 6, 3) * 3.0  # img[h, w, c] = 3 (18h + 3w + c)


def test_linear_resize_equals_official_random_scaling_image():
    img = _g5_image()
    # RandomScaling.scale(image, 1.5) (custom_transforms.py:88-92): cv2.INTER_LINEAR to int(4*1.5) x int(6*1.5)
    up = resize_linear(img, (6, 9))
    assert up[0, :, 0].tolist() == [0, 4.5, 10.5, 16.5, 22.5, 28.5, 34.5, 40.5, 45]
    assert up[5, :, 0].tolist() == [162, 166.5, 172.5, 178.5, 184.5, 190.5, 196.5, 202.5, 207]
    assert up[2, :, 0].tolist() == [63, 67.5, 73.5, 79.5, 85.5, 91.5, 97.5, 103.5, 108]  # exact, as OpenCV (torch-style w0 p + w1 q gives 91.49999)
    # scale 0.5 -> 2x3 (custom_transforms.py:88-92)
    assert resize_linear(img, (2, 3))[..., 0].tolist() == [[31.5, 49.5, 67.5], [139.5, 157.5, 175.5]]
    # scale 0.75 -> int(3.0) x int(4.5) = 3x4
    assert resize_linear(img, (3, 4))[..., 0].tolist() == [
        [11.25, 24.75, 38.25, 51.75], [83.25, 96.75, 110.25, 123.75], [155.25, 168.75, 182.25, 195.75]]
    # a window of the output is the same pixels as the window of the whole output
    assert np.array_equal(resize_linear(img, (6, 9), slice(1, 5), slice(2, 8)), up[1:5, 2:8])
    assert np.array_equal(resize_linear(img, (4, 6)), img)


def test_nearest_index_is_opencv_floor_not_pixel_centre():
    # semseg rows 0-2 "0 0 0 1 1 1 2 2 2" at scale 1.5 (G5): cols floor(d * 6/9)
    assert nearest_index(6, 9).tolist() == [0, 0, 1, 2, 2, 3, 4, 4, 5]
    assert nearest_index(4, 6).tolist() == [0, 0, 1, 2, 2, 3]
    assert nearest_index(6, 3).tolist() == [0, 2, 4]  # scale 0.5
    assert nearest_index(6, 4).tolist() == [0, 1, 3, 4]  # scale 0.75 (int(4.5) = 4)


def test_photometric_primitives_equal_official():
    px = np.array([[[10, 200, 250], [0, 128, 255]]], np.uint8)
    # PhotoMetricDistortion.convert (custom_transforms.py:340-343): float32, clip, truncate to uint8
    assert convert(px, beta=20.7).tolist() == [[[30, 220, 255], [20, 148, 255]]]
    assert convert(px, alpha=1.3).tolist() == [[[13, 255, 255], [0, 166, 255]]]
    assert convert(px, beta=-12.5).tolist() == [[[0, 187, 237], [0, 115, 242]]]
    # cv2.COLOR_RGB2HSV (custom_transforms.py:389): H in 0..179
    hsv = rgb_to_hsv(px)
    assert hsv.tolist() == [[[96, 245, 250], [105, 255, 255]]]
    # hue -18 (custom_transforms.py:371-374) then cv2.COLOR_HSV2RGB (:392)
    shifted = hsv.copy()
    shifted[..., 0] = (shifted[..., 0].astype(int) - 18) % 180
    assert shifted[..., 0].tolist() == [[78, 87]]
    assert hsv_to_rgb(shifted).tolist() == [[[10, 250, 154], [0, 255, 230]]]
    # the plain round trip is lossy
    assert hsv_to_rgb(rgb_to_hsv(px[:, :1])).tolist() == [[[10, 202, 250]]]


def test_hsv_to_rgb_truncates_in_simd_blocks_and_rounds_the_row_tail():
    # OpenCV's vector blocks truncate, the scalar tail rounds: (0, 1, 1) gives 0.996 * 255 / 255 -> 0 or 1
    row = np.tile(np.array([[[0, 1, 1]]], np.uint8), (1, 70, 1))
    out = hsv_to_rgb(row, simd_block=64)
    assert out[0, :64, 1].tolist() == [0] * 64 and out[0, 64:, 1].tolist() == [1] * 6
    assert hsv_to_rgb(row, simd_block=32)[0, 64:, 1].tolist() == [1] * 6
    assert hsv_to_rgb(row, simd_block=32)[0, :64, 1].tolist() == [0] * 64
