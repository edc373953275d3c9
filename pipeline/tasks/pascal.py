"""PASCAL-Context labels stored as MATLAB files: boundaries from the 459-class maps, human parts.

The official SAK loader (``datasets/pascal_context.py``) reads two kinds of ``.mat`` file, and so
does :func:`read_mat` (it tells them apart by the variable they hold):

- ``pascal-context/trainval/<id>.mat`` holds ``LabelMap``, the (H, W) 459-class context map.
  The boundary label is :func:`context_boundaries` of it: pixels where the 4-neighbour
  Laplacian (kernel ``[[0,1,0],[1,-4,1],[0,1,0]]``, border reflected without repeating the edge
  pixel, OpenCV's REFLECT_101) is not 0, thinned to one pixel by :func:`thin`. A pixel whose
  differing neighbours cancel (labels 1|2|3 in a row) has Laplacian 0 and is no edge, as in the
  official labels.
- ``human_parts/<id>.mat`` holds ``anno`` (PASCAL-Part): the objects of class 15 (person) that
  have parts are painted, part by part and person by person, with the part's group in
  :data:`HUMAN_PART_GROUPS` (1 head .. 6 lower legs/feet); everything else is 0 (background).
  An image without a part-annotated person gives all zeros.

The Laplacian and the thinning are written here in numpy (no OpenCV / scikit-image); they give
the official arrays bit for bit on the golden cases in ``tests/pipeline/tasks/test_pascal_labels.py``
and on random label maps checked against ``skimage.morphology.thin`` once. Reading the MATLAB v5
container is ``scipy.io.loadmat``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...manifests.errors import BadImage, DatasetError

#: PASCAL-Part person part name -> group index of the 7-class human-parts task (0 = background).
HUMAN_PART_GROUPS: dict[str, int] = {
    **dict.fromkeys(("hair", "head", "lear", "rear", "lebrow", "rebrow", "leye", "reye", "mouth", "nose"), 1),
    **dict.fromkeys(("neck", "torso"), 2),
    **dict.fromkeys(("luarm", "ruarm"), 3),
    **dict.fromkeys(("llarm", "rlarm", "lhand", "rhand"), 4),
    **dict.fromkeys(("luleg", "ruleg"), 5),
    **dict.fromkeys(("llleg", "rlleg", "lfoot", "rfoot"), 6),
}
PERSON_CLASS = 15


def read_mat(path: Path) -> np.ndarray:
    """The label array of a PASCAL ``.mat`` file: ``LabelMap`` as stored, or the human-part map of ``anno``."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=True)
    except FileNotFoundError:
        raise DatasetError(f"label file {path} does not exist. Re-index the dataset (sak-cache index).") from None
    except Exception as exc:  # scipy raises several types for damaged / non-v5 files
        raise BadImage(f"label file {path}: not a readable MATLAB v5 .mat file ({type(exc).__name__}: {exc}). "
                       "Replace the file (MATLAB v7.3 / HDF5 files are not read: save with -v7).") from None
    if "LabelMap" in mat:
        return np.asarray(mat["LabelMap"])
    if "anno" in mat:
        return human_parts(mat["anno"], path)
    found = sorted(k for k in mat if not k.startswith("__"))
    raise DatasetError(f"label file {path} holds {found}; sak reads PASCAL-Context .mat files with 'LabelMap' "
                       "(pascal-context/trainval) or PASCAL-Part 'anno' (human_parts). Store another label as png.")


def _field(record: Any, name: str, path: Path) -> Any:
    names = record.dtype.names or ()
    if name not in names:
        raise DatasetError(f"label file {path}: PASCAL-Part struct without field '{name}' (has {list(names)}); "
                           "use the PASCAL-Part annotations (anno.objects(i).class/classind/mask/parts)")
    return record[name]


def human_parts(anno: np.ndarray, path: Path) -> np.ndarray:
    """(H, W) int64 part groups 0..6 from a loaded PASCAL-Part ``anno`` struct."""
    objects = np.asarray(_field(anno.flat[0], "objects", path)).ravel()
    if objects.size == 0:
        raise DatasetError(f"label file {path}: anno.objects is empty, so the image size is unknown; "
                           "drop the file (an image without parts needs no part label)")
    target: np.ndarray | None = None
    for obj in objects:
        parts = np.asarray(_field(obj, "parts", path)).ravel()
        if int(np.asarray(_field(obj, "classind", path)).ravel()[0]) != PERSON_CLASS or parts.size == 0:
            continue
        if target is None:
            target = np.zeros(np.asarray(_field(obj, "mask", path)).shape, dtype=np.int64)
        for part in parts:
            name = str(np.asarray(_field(part, "part_name", path)).ravel()[0])
            if name not in HUMAN_PART_GROUPS:
                raise DatasetError(f"label file {path}: unknown person part '{name}'; known: "
                                   f"{', '.join(sorted(HUMAN_PART_GROUPS))}")
            target[np.asarray(_field(part, "mask", path)).astype(bool)] = HUMAN_PART_GROUPS[name]
    if target is None:
        target = np.zeros(np.asarray(_field(objects[0], "mask", path)).shape, dtype=np.int64)
    return target


def laplacian4(label_map: np.ndarray) -> np.ndarray:
    """4-neighbour Laplacian (float64) with a REFLECT_101 border: sum of the 4 neighbours - 4 x centre."""
    x = np.asarray(label_map, dtype=np.float64)
    if x.ndim != 2:
        raise DatasetError(f"a context LabelMap must be (H, W), got shape {x.shape}")
    p = x
    for axis in (0, 1):  # a 1-pixel-wide axis reflects onto itself, as in OpenCV
        width = [(0, 0), (0, 0)]
        width[axis] = (1, 1)
        p = np.pad(p, width, mode="reflect" if x.shape[axis] > 1 else "edge")
    return p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4.0 * x


# Neighbour order of the thinning rule (Guo & Hall 1989, as scikit-image): x1 = east, then counter-clockwise
# x2 = north-east, x3 = north, ..., x8 = south-east. Bit k-1 of a neighbourhood code is x_k.
_OFFSETS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))


def _thin_tables() -> tuple[np.ndarray, np.ndarray]:
    first = np.zeros(256, dtype=bool)
    second = np.zeros(256, dtype=bool)
    for code in range(256):
        x = [(code >> k) & 1 for k in range(8)] + [code & 1]  # x[0..7] = x1..x8, x[8] = x1 again
        crossings = sum(1 for i in (0, 2, 4, 6) if not x[i] and (x[i + 1] or x[i + 2]))
        n1 = sum(x[i] | x[i + 1] for i in (0, 2, 4, 6))  # (x1|x2) + (x3|x4) + (x5|x6) + (x7|x8)
        n2 = sum(x[i + 1] | x[i + 2] for i in (0, 2, 4, 6))  # (x2|x3) + (x4|x5) + (x6|x7) + (x8|x1)
        if crossings != 1 or not 2 <= min(n1, n2) <= 3:
            continue
        first[code] = ((x[1] or x[2] or not x[7]) and x[0]) == 0
        second[code] = ((x[5] or x[6] or not x[3]) and x[4]) == 0
    return first, second


_THIN_FIRST, _THIN_SECOND = _thin_tables()


def _codes(skel: np.ndarray) -> np.ndarray:
    h, w = skel.shape
    p = np.pad(skel, 1).astype(np.uint8)  # outside the image = background
    code = np.zeros((h, w), dtype=np.uint8)
    for k, (dy, dx) in enumerate(_OFFSETS):
        code |= p[1 + dy: 1 + dy + h, 1 + dx: 1 + dx + w] << k
    return code


def thin(mask: np.ndarray) -> np.ndarray:
    """Thin a boolean mask to one-pixel-wide lines (two sub-iterations until nothing changes)."""
    skel = np.asarray(mask, dtype=bool).copy()
    before = -1
    while before != int(skel.sum()):
        before = int(skel.sum())
        for table in (_THIN_FIRST, _THIN_SECOND):
            skel &= ~table[_codes(skel)]
    return skel


def context_boundaries(label_map: np.ndarray) -> np.ndarray:
    """The official PASCAL-Context boundary label: ``thin(|laplacian4(LabelMap)| > 0)`` as float32 {0, 1}."""
    return thin(np.abs(laplacian4(label_map)) > 0).astype(np.float32)
