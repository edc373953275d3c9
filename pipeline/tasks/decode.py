"""Label decoders shared by the built-in tasks: a file's raw array -> the task's convention.

Files are read (png, 16-bit png, ``.npy`` without pickle) by :mod:`sak.pipeline.data.labels`;
a decoder only checks the array's shape and dtype and converts its values. Every error is a
:class:`DatasetError` that names the file and says how to store the label instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...manifests.errors import DatasetError
from .base import IGNORE_INDEX


def single_channel(arr: np.ndarray, path: Path, task: str) -> np.ndarray:
    """(H, W) or (H, W, 1) -> (H, W); anything else is refused."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DatasetError(
            f"{task} label {path} has shape {arr.shape}; expected a single-channel (H, W) map "
            "(an 8-bit grayscale or palette png of class indices)."
        )
    return arr


def class_map(arr: np.ndarray, path: Path, task: str, *, shifted: bool = False) -> np.ndarray:
    """Integer class indices as int64; ``shifted``: stored c + 1 with 0 = unlabeled -> c, 0 -> ignore."""
    arr = single_channel(arr, path, task)
    if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
        raise DatasetError(f"{task} label {path} has dtype {arr.dtype}; expected integer class indices.")
    out = arr.astype(np.int64)
    if shifted:
        unlabeled = out == 0
        out = out - 1
        out[unlabeled] = IGNORE_INDEX
    return out


def binary_map(arr: np.ndarray, path: Path, task: str) -> np.ndarray:
    """{0, 1} float32: png values > 127, float .npy values > 0.5, bool as is."""
    arr = single_channel(arr, path, task)
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if path.suffix.lower() == ".npy" and np.issubdtype(arr.dtype, np.floating):
        return (arr > 0.5).astype(np.float32)
    return (arr > 127).astype(np.float32)


def metric_depth(arr: np.ndarray, path: Path, task: str) -> np.ndarray:
    """Meters as float32, 0 = invalid (NaN/inf/negative become 0); .npy as stored, 16-bit png in mm."""
    arr = single_channel(arr, path, task)
    if path.suffix.lower() != ".npy":
        if arr.dtype != np.uint16 and arr.dtype != np.int32:
            raise DatasetError(f"{task} label {path} is an 8-bit image; store depth as float32 .npy in meters "
                               "or a 16-bit png in millimeters.")
        arr = arr.astype(np.float32) / 1000.0
    out = np.asarray(arr, dtype=np.float32).copy()
    out[~np.isfinite(out) | (out < 0)] = 0.0
    return out


def unit_vectors(arr: np.ndarray, path: Path, task: str) -> np.ndarray:
    """(H, W, 3) float32 in [-1, 1], zero vector = invalid; png: v / 255 * 2 - 1 with (0, 0, 0) invalid."""
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise DatasetError(f"{task} label {path} has shape {arr.shape}; expected (H, W, 3).")
    arr = arr[..., :3]
    if path.suffix.lower() == ".npy":
        out = np.asarray(arr, dtype=np.float32).copy()
        out[~np.isfinite(out).all(axis=2)] = 0.0
        return np.clip(out, -1.0, 1.0)
    if arr.dtype != np.uint8:
        raise DatasetError(f"{task} label {path} has dtype {arr.dtype}; expected an 8-bit RGB png.")
    invalid = (arr == 0).all(axis=2)
    out = arr.astype(np.float32) / 255.0 * 2.0 - 1.0
    out[invalid] = 0.0
    return out
