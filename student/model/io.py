"""Save / load a SAK student as one safetensors file: the state dict plus its config JSON.

The :class:`~sak.student.model.config.StudentConfig` is stored as canonical JSON in the
safetensors metadata (key ``sak.student_config``), so the file alone rebuilds the model;
no pickle is involved. Writes go to a temporary file moved into place with ``os.replace``.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ...manifests.atomic import atomic_write
from ...manifests.errors import SakError
from .config import StudentConfig
from .student import SAKStudent

CONFIG_KEY = "sak.student_config"
FORMAT_KEY = "sak.student_format"
FORMAT = "1"
FIT_KEY = "sak.input_fit"  # how an image is fitted to img_size: pad (official val transform) | resize
FITS = ("pad", "resize")


class StudentFileError(SakError):
    """A student file is missing, unreadable or does not match its own config."""


def save_student(path: str | os.PathLike[str], model: SAKStudent, *, fit: str = "pad") -> Path:
    """Write ``model``'s weights and config to ``path`` (a ``.safetensors`` file); returns the path.

    ``fit``: how the run fitted an image to its input size (pad: official val transform; resize: runs with
    eval_resize), recorded so ``sak-train predict`` feeds new images the same way (files without it: pad)."""
    if fit not in FITS:
        raise SakError(f"fit must be one of {FITS}, got {fit!r}")
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {CONFIG_KEY: model.cfg.to_json(), FORMAT_KEY: FORMAT, FIT_KEY: fit}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read_student_config(path: str | os.PathLike[str]) -> StudentConfig:
    """The config stored in a student file, without reading the weights."""
    return StudentConfig.from_json(_metadata(path)[CONFIG_KEY])


def read_input_fit(path: str | os.PathLike[str]) -> str:
    """How the file's run fitted images to its input (``pad`` for files written before it was recorded)."""
    fit = _metadata(path).get(FIT_KEY, "pad")
    return fit if fit in FITS else "pad"


def _metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise StudentFileError(f"student file {path} does not exist; write one with save_student(path, model)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise StudentFileError(f"{path} is not a readable safetensors file ({exc}); save it again") from None
    if CONFIG_KEY not in meta:
        raise StudentFileError(
            f"{path} has no '{CONFIG_KEY}' metadata, so it is not a sak student file "
            "(training checkpoints are read with sak.student.runs.checkpoint); save it with save_student"
        )
    if meta.get(FORMAT_KEY) != FORMAT:
        raise StudentFileError(f"{path} has student format {meta.get(FORMAT_KEY)!r}; this sak reads {FORMAT!r}: upgrade sak")
    return meta


def load_student(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> SAKStudent:
    """Rebuild the student stored at ``path`` (eval mode). Never downloads backbone weights."""
    cfg = read_student_config(path)
    model = SAKStudent(replace(cfg, pretrained=False))
    model.cfg = cfg
    state = load_file(str(path), device="cpu")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise StudentFileError(
            f"{path}: weights do not match its config (missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}); the file is damaged or was edited: save it again"
        )
    return model.to(device).eval()
