"""OpenCV's resize and 8-bit HSV conversions, rewritten in numpy (sak does not depend on OpenCV).

The official SAK augmentation (``datasets/custom_transforms.py``) resizes with ``cv2.resize``
and distorts colours in OpenCV's uint8 HSV space. These functions reproduce OpenCV's
arithmetic step by step, in the same float32 / integer operations, so the views sak replays are
the pixels the official pipeline would make for the same parameters:

- :func:`resize_linear` = ``cv2.resize(float32 image, INTER_LINEAR)`` as OpenCV 5.1 computes it:
  source coordinate ``(d + 0.5) * src / dst - 0.5`` in double, its fraction cast to float32,
  columns clamped at the borders with fraction 0, then a horizontal and a vertical pass, each
  ``p + (q - p) * f`` as a float32 fused multiply-add. Torch's bilinear (``w0 p + w1 q``) differs
  in the last float32 bit often enough to change the official ``astype(uint8)`` truncation, so
  it is not used. (OpenCV swaps in INTER_AREA for an exact 2x reduction; on integer-valued
  images both give the same exact halves.)
- :func:`nearest_index` = ``cv2.INTER_NEAREST``: source index ``floor(d * scale)`` (not the pixel
  centre), scale = 1 / (dst / src) in double.
- :func:`rgb_to_hsv` / :func:`hsv_to_rgb` = ``cv2.COLOR_RGB2HSV`` / ``COLOR_HSV2RGB`` on uint8:
  H in 0..179, fixed-point tables with a 12-bit shift one way, float32 sectors the other way.
  OpenCV's HSV->RGB truncates in its SIMD blocks and rounds in the scalar tail of each row, so
  the result depends on the CPU's vector width (:data:`HSV_SIMD_BLOCK`). The round trip is lossy.

Checked bit for bit against OpenCV 5.1 (opencv-python-headless, AVX-512 machine): every one of
the 2^24 RGB colours through ``rgb_to_hsv``, every H, S, V through ``hsv_to_rgb`` in full and
partial blocks, and 45 M resized values (random images, sizes 2..90 and 375..640, scales
0.5..2) through both resizes (``tests/pipeline/data/test_cvops.py`` keeps the golden
values measured with the official functions).
"""

from __future__ import annotations

import numpy as np

_HSV_SHIFT = 12


def _linear_taps(src: int, dst: int, *, clamp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index0, index1, fraction) of each destination pixel along one axis (fraction in float32)."""
    f = (np.arange(dst, dtype=np.float64) + 0.5) * (float(src) / float(dst)) - 0.5
    i0 = np.floor(f)
    frac = (f - i0).astype(np.float32)
    i0 = i0.astype(np.int64)
    if clamp:  # columns: outside the image the border pixel is taken whole
        frac[(i0 < 0) | (i0 >= src - 1)] = 0.0
    return np.clip(i0, 0, src - 1), np.clip(i0 + 1, 0, src - 1), frac


def _fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray | np.floating) -> np.ndarray:
    """float32(a * b + c) rounded once, like a fused multiply-add on float32 inputs.

    a * b is exact in float64 (24 + 24 bits); the float64 sum is rounded to odd (an inexact sum
    whose last bit is even moves one ulp towards the exact value), so rounding it to float32 gives
    the correctly rounded fused result.
    """
    p, c64 = np.broadcast_arrays(a.astype(np.float64) * b.astype(np.float64), c.astype(np.float64))
    s = p + c64
    bv = s - p
    err = (p - (s - bv)) + (c64 - bv)
    fix = (err != 0) & ((s.view(np.int64) & 1) == 0)
    s = np.where(fix, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(np.float32)


def resize_linear(img: np.ndarray, size_hw: tuple[int, int], rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
    """``cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)`` of a float32 (H, W[, C]) image.

    ``rows`` / ``cols`` select a window of the output (each output pixel depends only on its own
    coordinates, so a crop of the resized image is computed without the rest). Same size: a copy.
    """
    src = np.asarray(img, dtype=np.float32)
    h, w = src.shape[:2]
    dh, dw = int(size_hw[0]), int(size_hw[1])
    if (dh, dw) == (h, w):
        return src[rows, cols].copy()
    x0, x1, fx = (t[cols] for t in _linear_taps(w, dw, clamp=True))
    y0, y1, fy = (t[rows] for t in _linear_taps(h, dh, clamp=False))
    extra = (1,) * (src.ndim - 2)
    needed = np.unique(np.concatenate([y0, y1]))  # the horizontal pass runs on these source rows only
    part = src[needed]
    p, q = part[:, x0], part[:, x1]
    horiz = _fma32(q - p, fx.reshape(1, -1, *extra), p)
    p, q = horiz[np.searchsorted(needed, y0)], horiz[np.searchsorted(needed, y1)]
    return _fma32(q - p, fy.reshape(-1, 1, *extra), p)


def nearest_index(src: int, dst: int) -> np.ndarray:
    """Source index of each destination pixel under ``cv2.INTER_NEAREST``: ``min(floor(d * src / dst), src - 1)``."""
    scale = 1.0 / (float(dst) / float(src))
    return np.minimum(np.floor(np.arange(dst, dtype=np.float64) * scale).astype(np.int64), src - 1)


def convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``clip(img * alpha + beta, 0, 255)`` in float32, truncated to uint8 (official ``PhotoMetricDistortion.convert``)."""
    out = img.astype(np.float32) * np.float32(alpha) + np.float32(beta)
    return np.clip(out, 0, 255).astype(np.uint8)


def _tables() -> tuple[np.ndarray, np.ndarray]:
    i = np.arange(256, dtype=np.float64)
    with np.errstate(divide="ignore"):
        sdiv = np.rint((255 << _HSV_SHIFT) / i)
        hdiv = np.rint((180 << _HSV_SHIFT) / (6.0 * i))
    sdiv[0] = hdiv[0] = 0
    return sdiv.astype(np.int64), hdiv.astype(np.int64)


_SDIV, _HDIV180 = _tables()


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """``cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)`` for a uint8 (..., 3) image: H in 0..179, S and V in 0..255."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    v = np.maximum(np.maximum(b, g), r)
    diff = v - np.minimum(np.minimum(b, g), r)
    half = 1 << (_HSV_SHIFT - 1)
    s = (diff * _SDIV[v] + half) >> _HSV_SHIFT
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _HDIV180[diff] + half) >> _HSV_SHIFT
    h = np.where(h < 0, h + 180, h)
    return np.stack([h, s, v], axis=-1).astype(np.uint8)


# which of (v, v(1-s), v(1-s f), v(1-s(1-f))) each sector gives to b, g, r (OpenCV's sector table)
_SECTORS = np.array([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])

#: Pixels per SIMD block of OpenCV's HSV->RGB (4 float32 vectors): 64 with AVX-512 (measured here with
#: OpenCV 5.1), 32 with AVX2, 16 with SSE/NEON. Whole blocks truncate to uint8, the rest of a row rounds.
HSV_SIMD_BLOCK = 64


def hsv_to_rgb(hsv: np.ndarray, simd_block: int = HSV_SIMD_BLOCK) -> np.ndarray:
    """``cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)`` for a uint8 (H, W, 3) image with H in 0..179.

    OpenCV converts each row in blocks of ``simd_block`` pixels with vector code that truncates
    the float result to uint8, and the last ``W % simd_block`` pixels of the row with scalar code
    that rounds it (half to even); both compute the same float32 values otherwise.
    """
    one = np.float32(1.0)
    h = hsv[..., 0].astype(np.float32) * np.float32(6.0 / 180.0)
    s = hsv[..., 1].astype(np.float32) * np.float32(1.0 / 255.0)
    v = hsv[..., 2].astype(np.float32) * np.float32(1.0 / 255.0)
    sector = np.floor(h)
    f = (h - sector).astype(np.float32)
    sector = sector.astype(np.int64) % 6
    width = hsv.shape[1]
    vector = np.arange(width) < width - width % simd_block if simd_block > 0 else np.zeros(width, bool)
    # the vector code's ``1 - s * x`` is compiled to a fused multiply-add; the scalar code's is not
    one_minus = np.where(vector[None, :], _fma32(-s, f, one), one - s * f), np.where(
        vector[None, :], _fma32(-s, one - f, one), one - s * (one - f))
    tab = np.stack([v, v * (one - s), v * one_minus[0], v * one_minus[1]], axis=-1).astype(np.float32)
    bgr = np.take_along_axis(tab, _SECTORS[sector], axis=-1) * np.float32(255.0)
    out = np.where(vector[None, :, None], np.trunc(bgr), np.rint(bgr))
    return np.clip(out, 0, 255).astype(np.uint8)[..., ::-1].copy()  # b, g, r -> r, g, b
