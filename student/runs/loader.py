"""``load_student``: a trained student from a run directory or an exported student file, ready for inference."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ...manifests.errors import SakError
from ..model import io as student_file
from ..model.student import SAKStudent
from .rundir import RunDir


def load_student(source: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> SAKStudent:
    """The student of ``source`` in eval mode on ``device``; nothing is downloaded.

    ``source`` is a run directory (``sak-train fit --out``: its config and last checkpoint) or a
    student file (``sak-train export`` / :func:`sak.student.model.io.save_student`).
    """
    path = Path(source)
    if path.is_dir():
        run = RunDir(path)
        if not run.exists():
            raise SakError(f"{path} is a folder but not a training run (no config.json); pass a run dir or a .safetensors student file")
        return run.trained_student()[0].to(device).eval()
    if not path.is_file():
        raise SakError(f"{path} does not exist; pass a run dir (sak-train fit --out) or a student file (sak-train export)")
    return student_file.load_student(path, device=device)
