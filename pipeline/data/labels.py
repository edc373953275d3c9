"""Load dense task labels from their files into arrays with one convention per task.

=========  ======================  ===============================================
task       array                   convention
=========  ======================  ===============================================
semseg     (H, W) int64            class index, 255 = ignore. NYUD png: 0 (unlabeled)
                                   -> 255, 1..40 -> 0..39. PASCAL png: as stored.
depth      (H, W) float32          meters; 0 = invalid (NaN/inf/negative become 0).
                                   .npy as stored; 16-bit png in millimeters.
normals    (H, W, 3) float32       unit vectors in [-1, 1]; zero vector = invalid.
                                   png: v / 255 * 2 - 1, a (0, 0, 0) pixel = invalid.
edge       (H, W) float32          {0, 1} (png values > 127 are edges).
parts      (H, W) int64            part index, 255 = ignore (png as stored).
saliency   (H, W) float32          {0, 1} (png values > 127 are salient).
=========  ======================  ===============================================

``.npy`` files are read with ``allow_pickle=False``: a label file can never run code.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ...manifests.errors import BadImage, DatasetError

#: Output channels a student head needs per task (semseg/parts: class count of the default dataset).
TASK_CHANNELS: dict[str, int] = {"semseg": 40, "depth": 1, "normals": 3, "edge": 1, "parts": 7, "saliency": 1}

#: Semantic-segmentation class counts per dataset format (overrides TASK_CHANNELS["semseg"]).
NUM_CLASSES: dict[str, int] = {"nyud": 40, "pascal": 21}

IGNORE_INDEX = 255

#: Formats whose semseg png stores class c as c + 1 and 0 as "unlabeled".
_SHIFTED_SEMSEG = ("nyud",)


def task_channels(task: str, dataset: str | None = None) -> int:
    """Channels of ``task`` for a dataset format (``NUM_CLASSES`` for semseg when known)."""
    if task not in TASK_CHANNELS:
        raise DatasetError(f"unknown task '{task}'; known tasks: {sorted(TASK_CHANNELS)}")
    if task == "semseg" and dataset in NUM_CLASSES:
        return NUM_CLASSES[dataset]
    return TASK_CHANNELS[task]


def _read_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img)  # palette ("P") pngs give their indices: the class values
    except FileNotFoundError:
        raise DatasetError(f"label file {path} does not exist. Re-index the dataset (sak-cache index).") from None
    except Exception as exc:  # PIL raises many types for bad files
        raise BadImage(f"label file {path}: cannot decode ({type(exc).__name__}: {exc}). Replace the file.") from None


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DatasetError(f"label file {path} does not exist. Re-index the dataset (sak-cache index).") from None
    except ValueError as exc:
        raise DatasetError(
            f"label file {path}: not a plain numeric .npy array ({exc}). Pickled arrays are refused; "
            "save it with np.save(path, array.astype(np.float32))."
        ) from None
    except Exception as exc:
        raise DatasetError(f"label file {path}: cannot read ({type(exc).__name__}: {exc}). Replace the file.") from None


def _read(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _read_npy(path)
    if suffix == ".mat":
        raise DatasetError(
            f"label file {path} is a MATLAB .mat file, which sak does not read. Convert it to a single-channel "
            "png of part indices (0 = background, 255 = ignore) next to it and index the dataset again."
        )
    return _read_png(path)


def _single_channel(arr: np.ndarray, path: Path, task: str) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DatasetError(
            f"{task} label {path} has shape {arr.shape}; expected a single-channel (H, W) map "
            "(an 8-bit grayscale or palette png of class indices)."
        )
    return arr


def _class_map(arr: np.ndarray, path: Path, task: str, shifted: bool) -> np.ndarray:
    arr = _single_channel(arr, path, task)
    if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
        raise DatasetError(f"{task} label {path} has dtype {arr.dtype}; expected integer class indices.")
    out = arr.astype(np.int64)
    if shifted:
        unlabeled = out == 0
        out = out - 1
        out[unlabeled] = IGNORE_INDEX
    return out


def _depth(arr: np.ndarray, path: Path) -> np.ndarray:
    arr = _single_channel(arr, path, "depth")
    if path.suffix.lower() != ".npy":
        if arr.dtype != np.uint16 and arr.dtype != np.int32:
            raise DatasetError(f"depth label {path} is an 8-bit image; store depth as float32 .npy in meters "
                               "or a 16-bit png in millimeters.")
        arr = arr.astype(np.float32) / 1000.0
    out = np.asarray(arr, dtype=np.float32).copy()
    out[~np.isfinite(out) | (out < 0)] = 0.0
    return out


def _normals(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise DatasetError(f"normals label {path} has shape {arr.shape}; expected (H, W, 3).")
    arr = arr[..., :3]
    if path.suffix.lower() == ".npy":
        out = np.asarray(arr, dtype=np.float32).copy()
        out[~np.isfinite(out).all(axis=2)] = 0.0
        return np.clip(out, -1.0, 1.0)
    if arr.dtype != np.uint8:
        raise DatasetError(f"normals label {path} has dtype {arr.dtype}; expected an 8-bit RGB png.")
    invalid = (arr == 0).all(axis=2)
    out = arr.astype(np.float32) / 255.0 * 2.0 - 1.0
    out[invalid] = 0.0
    return out


def _binary(arr: np.ndarray, path: Path, task: str) -> np.ndarray:
    arr = _single_channel(arr, path, task)
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if path.suffix.lower() == ".npy" and np.issubdtype(arr.dtype, np.floating):
        return (arr > 0.5).astype(np.float32)
    return (arr > 127).astype(np.float32)


def load_label(task: str, path: str | os.PathLike[str], *, dataset: str = "nyud") -> np.ndarray:
    """Load the ``task`` label stored at ``path`` (see the module table for the conventions).

    ``dataset`` is the layout the file comes from; it only changes semseg decoding
    (NYUD stores class c as c + 1). :class:`DatasetError` for a missing or
    malformed file, :class:`BadImage` for an image that cannot be decoded;
    both name the file.
    """
    path = Path(path)
    if task not in TASK_CHANNELS:
        raise DatasetError(f"unknown task '{task}' for label {path}; known tasks: {sorted(TASK_CHANNELS)}")
    arr = _read(path)
    if task == "semseg":
        return _class_map(arr, path, task, shifted=dataset in _SHIFTED_SEMSEG)
    if task == "parts":
        return _class_map(arr, path, task, shifted=False)
    if task == "depth":
        return _depth(arr, path)
    if task == "normals":
        return _normals(arr, path)
    return _binary(arr, path, task)  # edge, saliency
