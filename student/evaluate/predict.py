"""`sak-train predict`: a trained student's task maps for new images, one colour PNG per task per image.

The student comes from a run dir (its last checkpoint, ``config.json`` for the architecture) or from a
one-task ``.safetensors`` file written by ``sak-train export`` (its config is in the file's metadata):
neither needs the feature cache or the dataset. Each image is fed as evaluation feeds it: the official
val transform centre-pads it to the student's input (an image larger than the input is first scaled
down, keeping its aspect ratio, to fit), or resized for runs that evaluated with ``eval_resize``. The
prediction is cropped back to the image's area and resized to the image's own size, then drawn by the
task's plot style (:func:`~sak.student.evaluate.plots.display_map`: class palette for semseg/parts,
viridis for depth, RGB for normals, grey probabilities for edges and saliency).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...manifests.errors import SakError
from ...manifests.sizes import centre_offsets
from ...pipeline.data.augment import pad_eval_image
from ...pipeline.data.formats import IMAGE_EXTENSIONS
from ...pipeline.data.images import decode_rgb
from ...pipeline.devices import resolve_device
from ..data.cached import normalize_image
from ..model.io import load_student, read_input_fit
from ..model.student import SAKStudent
from ..runs.rundir import RunDir
from .plots import display_map, render_map

log = logging.getLogger(__name__)


@dataclass
class Predictor:
    """A student ready to predict, and how it wants its images fitted."""

    model: SAKStudent
    fit: str  # pad (official val transform) | resize
    source: str
    step: int | None  # the checkpoint's step (None: an exported file)

    @property
    def img_size(self) -> tuple[int, int]:
        h, w = self.model.cfg.img_size
        return int(h), int(w)


def load_predictor(source: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> Predictor:
    """The student of a run dir (last checkpoint) or of a student file written by ``sak-train export``."""
    path = Path(source)
    if path.is_dir():
        run = RunDir(path)
        model, step = run.trained_student()
        fit = "resize" if run.train_config().eval.eval_resize else "pad"
        return Predictor(model.to(device).eval(), fit, str(path), step)
    if path.is_file():
        return Predictor(load_student(path, device=device), read_input_fit(path), str(path), None)
    raise SakError(f"{path} does not exist: sak-train predict takes a run dir (runs/NAME: its last checkpoint) or a "
                   ".safetensors student file written by sak-train export")


def image_files(inputs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The image files named by ``inputs``: files as given, folders searched (recursively, sorted) for images."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise SakError(f"folder {path} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise SakError(f"{path} does not exist: pass image files or folders of images")
    if not files:
        raise SakError("no images given: pass image files or folders, e.g. sak-train predict runs/a photos/ --out preds")
    return files


def fit_image(img01_chw: torch.Tensor, size: tuple[int, int], fit: str) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """The student's input (3, H, W) in [0, 1] and the box (top, left, height, width) the image occupies in it."""
    (h, w), (oh, ow) = img01_chw.shape[-2:], size
    if fit == "resize":
        return F.interpolate(img01_chw[None], size=size, mode="bilinear", align_corners=False,
                             antialias=True)[0].clamp_(0.0, 1.0), (0, 0, oh, ow)
    if h > oh or w > ow:  # scale down to fit, keeping the aspect ratio (evaluation never crops)
        scale = min(oh / h, ow / w)
        h, w = min(oh, max(1, round(h * scale))), min(ow, max(1, round(w * scale)))
        img01_chw = F.interpolate(img01_chw[None], size=(h, w), mode="bilinear", align_corners=False,
                                  antialias=True)[0].clamp_(0.0, 1.0)
    top, left = centre_offsets((h, w), (oh, ow))
    return pad_eval_image(img01_chw, (oh, ow)), (top, left, h, w)


def colourize(task: str, value: np.ndarray) -> np.ndarray:
    """A display map (:func:`display_map`) as an (H, W, 3) uint8 image, by the task's plot style."""
    arr, kw = render_map(task, value)
    if "cmap" in kw:
        import matplotlib

        lo, hi = float(kw["vmin"]), float(kw["vmax"])
        norm = np.clip((np.asarray(arr, dtype=np.float64) - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
        arr = matplotlib.colormaps[kw["cmap"]](norm)[..., :3]
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@torch.no_grad()
def predict_image(predictor: Predictor, rgb: np.ndarray) -> dict[str, np.ndarray]:
    """Each task's display map of one (H, W, 3) uint8 image, at the image's own size."""
    model = predictor.model
    device = next(model.parameters()).device
    img01 = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)
    x, (top, left, h, w) = fit_image(img01, predictor.img_size, predictor.fit)
    out = model(normalize_image(x)[None].to(device), distill=False)
    maps = {}
    for task, y in out.tasks.items():
        y = y[0].float().cpu()[:, top:top + h, left:left + w]
        if tuple(y.shape[-2:]) != rgb.shape[:2]:
            y = F.interpolate(y[None], size=rgb.shape[:2], mode="bilinear", align_corners=False)[0]
        maps[task] = display_map(task, y, prediction=True)
    return maps


def _names(files: list[Path]) -> list[str]:
    """One output name per image: its file stem, made unique with -2, -3, ... in order."""
    seen: dict[str, int] = {}
    names = []
    for f in files:
        seen[f.stem] = seen.get(f.stem, 0) + 1
        names.append(f.stem if seen[f.stem] == 1 else f"{f.stem}-{seen[f.stem]}")
    return names


def predict(source: str | os.PathLike[str], images: Iterable[str | os.PathLike[str]], out: str | os.PathLike[str], *,
            device: str = "auto", limit: int | None = None,
            progress: Callable[..., None] | None = None) -> dict[str, Any]:
    """Write ``out/<image stem>_<task>.png`` for every image and task of the student at ``source``.

    Returns ``{"source", "step", "tasks", "fit", "img_size", "images": [paths], "files": [written PNGs]}``.
    """
    files = image_files(images)
    if limit is not None:
        files = files[:limit]
    predictor = load_predictor(source, device=resolve_device(device))
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    for path, name in zip(files, _names(files), strict=True):
        maps = predict_image(predictor, decode_rgb(path))
        for task, value in maps.items():
            target = folder / f"{name}_{task}.png"
            Image.fromarray(colourize(task, value)).save(target)
            written.append(str(target))
        if progress is not None:
            progress(1)
    log.info("predicted %d image(s) with %s: %d PNG(s) in %s", len(files), predictor.source, len(written), folder)
    return {"source": predictor.source, "step": predictor.step, "tasks": list(predictor.model.cfg.task_names),
            "fit": predictor.fit, "img_size": list(predictor.img_size), "images": [str(f) for f in files],
            "files": written}
