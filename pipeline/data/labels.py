"""Load a task's label file into an array in that task's convention.

Reading is shared by every task: pngs (8-bit, 16-bit, palette pngs as their indices),
``.npy`` files, read with ``allow_pickle=False`` so a label file can never run code, and the
PASCAL ``.mat`` files (context ``LabelMap``, PASCAL-Part ``anno``; :mod:`sak.pipeline.tasks.pascal`). The
conversion to the task's convention (class indices, meters, unit vectors, {0, 1} maps) is the
task's ``decode`` rule in :mod:`sak.pipeline.tasks`; each task module documents its convention.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ...manifests.errors import BadImage, DatasetError
from ...manifests.hashing import NotRegularFile, open_regular
from ..tasks import get_task
from ..tasks.pascal import read_mat


def _read_png(path: Path) -> np.ndarray:
    try:
        with open_regular(path) as fh, Image.open(fh) as img:  # a FIFO named .png fails at once, never blocks
            img.load()
            return np.asarray(img)  # palette ("P") pngs give their indices: the class values
    except NotRegularFile as exc:
        raise DatasetError(f"label file {exc}") from None
    except FileNotFoundError:
        raise DatasetError(f"label file {path} does not exist. Re-index the dataset (sak-cache index).") from None
    except Exception as exc:  # PIL raises many types for bad files
        raise BadImage(f"label file {path}: cannot decode ({type(exc).__name__}: {exc}). Replace the file.") from None


def _read_npy(path: Path) -> np.ndarray:
    try:
        with open_regular(path) as fh:
            return np.load(fh, allow_pickle=False)
    except NotRegularFile as exc:
        raise DatasetError(f"label file {exc}") from None
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
        try:
            open_regular(path).close()  # scipy reads by name: refuse a FIFO before it can block
        except NotRegularFile as exc:
            raise DatasetError(f"label file {exc}") from None
        except FileNotFoundError:
            raise DatasetError(f"label file {path} does not exist. Re-index the dataset (sak-cache index).") from None
        return read_mat(path)  # PASCAL-Context LabelMap / PASCAL-Part anno (sak.pipeline.tasks.pascal)
    return _read_png(path)


def load_label(task: str, path: str | os.PathLike[str], *, dataset: str = "nyud") -> np.ndarray:
    """Load the ``task`` label stored at ``path`` in the task's convention.

    ``dataset`` is the layout the file comes from (a task may decode per layout, e.g. NYUD
    semseg stores class c as c + 1). :class:`DatasetError` for a missing or malformed file,
    :class:`BadImage` for an image that cannot be decoded; both name the file. An unknown
    task is an :class:`~sak.pipeline.tasks.UnknownTask` listing the known ones.
    """
    spec = get_task(task)
    path = Path(path)
    return spec.decode(_read(path), path, dataset)
